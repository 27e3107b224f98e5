"""Fixtures of the integration tests that run the embedded platform on PostgreSQL."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from entrypoints.bootstrap import Embedded
from tests.helpers import platform_on, training_toy


@pytest.fixture
def platform(pg_migrated: str, tmp_path: Path) -> Embedded:
    """The embedded platform on a fresh migrated database, its files under ``tmp_path``."""
    return platform_on(pg_migrated, tmp_path)


@pytest.fixture
def toy(platform: Embedded, tmp_path: Path) -> dict[str, Any]:
    """A student model, a cold set of clean samples, and RL prompts from the toy world."""
    return training_toy(platform, tmp_path)
