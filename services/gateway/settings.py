"""Gateway settings."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from shared.settings import BaseVR1Settings


class GatewaySettings(BaseVR1Settings):
    """The public REST API process."""

    host: str = "127.0.0.1"
    port: int = 8000
    import_roots: list[Path] = Field(
        default_factory=list,
        description="Folders dataset files may be registered from; empty = <home>/data.",
    )
    max_page_size: int = 500
    max_upload_bytes: int = Field(
        default=20 * 2**30,
        ge=1,
        description="Largest dataset upload (the request body; an archive's unpacked files "
        "too); larger ones are refused with a 413.",
    )
    visibility_timeout_s: int = 1800

    def resolved_import_roots(self) -> list[Path]:
        """Where dataset files may come from, resolved."""
        roots = self.import_roots or [self.home / "data"]
        return [root.resolve() for root in roots]
