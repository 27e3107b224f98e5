"""Captioner settings."""

from __future__ import annotations

from shared.worker import WorkerSettings


class CaptionerSettings(WorkerSettings):
    """The captioner worker (queue ``caption``)."""
