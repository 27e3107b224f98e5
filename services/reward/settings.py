"""Settings of the reward service process (env prefix ``VR1_``)."""

from __future__ import annotations

import os

from pydantic import Field

from shared.settings import BaseVR1Settings


class RewardSettings(BaseVR1Settings):
    """Where the reward service listens and the limits it enforces."""

    host: str = "127.0.0.1"
    port: int = Field(default=8001, ge=1, le=65535)
    max_batch_items: int = Field(default=4096, ge=1, description="Items per request (413).")
    max_completion_chars: int = Field(
        default=200_000, ge=1, description="Characters per completion (413)."
    )
    max_body_bytes: int = Field(default=64 * 2**20, ge=1, description="Request body size (413).")
    item_timeout_s: float = Field(
        default=5.0, gt=0, description="Hard limit per symbolic comparison."
    )
    workers: int = Field(default=0, ge=0, description="Verifier processes; 0 = one per core.")
    cache_size: int = Field(default=100_000, ge=0, description="Cached verdicts.")

    @property
    def resolved_workers(self) -> int:
        """The configured worker count, or one per core."""
        return self.workers or os.cpu_count() or 1
