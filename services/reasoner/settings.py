"""Reasoner settings."""

from __future__ import annotations

from shared.worker import WorkerSettings


class ReasonerSettings(WorkerSettings):
    """The reasoner worker (queue ``reason``)."""
