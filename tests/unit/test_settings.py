"""Settings: embedded defaults, environment overrides with the VR1_ prefix."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.gateway.settings import GatewaySettings
from shared.settings import BaseVR1Settings


def test_embedded_defaults_live_under_dot_vr1(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    for name in ("VR1_DATABASE_URL", "VR1_REDIS_URL", "VR1_ARTIFACT_URI", "VR1_HOME"):
        monkeypatch.delenv(name, raising=False)
    settings = BaseVR1Settings()
    assert settings.resolved_database_url == f"sqlite:///{tmp_path / '.vr1' / 'vr1.db'}"
    assert settings.resolved_artifact_uri == (tmp_path / ".vr1" / "artifacts").as_uri()
    assert settings.embedded is True


def test_environment_overrides_with_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VR1_DATABASE_URL", "postgresql+psycopg://u@db/vr1")
    monkeypatch.setenv("VR1_REDIS_URL", "redis://redis:6379/0")
    monkeypatch.setenv("VR1_PORT", "9000")
    monkeypatch.setenv("VR1_IMPORT_ROOTS", '["/data", "/more"]')
    monkeypatch.setenv("VR1_LOG_LEVEL", "debug")
    settings = GatewaySettings()
    assert settings.resolved_database_url == "postgresql+psycopg://u@db/vr1"
    assert settings.embedded is False
    assert settings.port == 9000
    assert settings.resolved_import_roots() == [Path("/data"), Path("/more")]
    assert settings.log_level == "DEBUG"


def test_unprefixed_variables_are_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://elsewhere/db")
    monkeypatch.delenv("VR1_DATABASE_URL", raising=False)
    assert BaseVR1Settings().database_url == ""
