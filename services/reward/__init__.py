"""The reward service (HTTP). As a library, the reward rules are ``shared.rewards``."""
