"""Settings: one pydantic-settings base (env prefix ``VR1_``) and one small class per process.

No other module reads ``os.environ``; a process builds its settings class once and passes
values down.  The embedded defaults need nothing installed: a SQLite file and an artifact
folder under ``./.vr1/``.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_HOME = Path(".vr1")


class BaseVR1Settings(BaseSettings):
    """What every process shares: where the database, broker and artifacts are."""

    model_config = SettingsConfigDict(env_prefix="VR1_", env_file=".env", extra="ignore")

    home: Path = Field(default=DEFAULT_HOME, description="Root of embedded-mode state.")
    database_url: str = Field(default="", description="SQLAlchemy URL; empty = SQLite file.")
    artifact_uri: str = Field(default="", description="Artifact store root; empty = folder.")
    redis_url: str = Field(default="", description="Celery broker; empty = embedded mode.")
    log_level: str = "INFO"

    @field_validator("log_level")
    @classmethod
    def _upper_level(cls, value: str) -> str:
        return value.upper()

    @property
    def resolved_database_url(self) -> str:
        """The configured database URL, or the embedded SQLite file."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.home / 'vr1.db').resolve()}"

    @property
    def resolved_artifact_uri(self) -> str:
        """The configured artifact store root, or the embedded folder."""
        if self.artifact_uri:
            return self.artifact_uri
        return (self.home / "artifacts").resolve().as_uri()

    @property
    def embedded(self) -> bool:
        """True when no broker is configured: work runs in-process."""
        return not self.redis_url


def secret_from_env(name: str) -> str | None:
    """The value of the environment variable ``name`` (e.g. an API key), or None if unset."""
    # The one direct environment read: secrets named in job specs are not settings fields.
    value = os.environ.get(name)
    return value or None
