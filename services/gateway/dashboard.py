"""The dashboard: static pages served by the gateway at ``/ui/``, calling the same API.

The pages are plain files (HTML, ES modules, CSS) with no build step and nothing fetched
from elsewhere, so the dashboard works wherever the gateway does, offline included.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import RedirectResponse
from fastapi.staticfiles import StaticFiles

STATIC = Path(__file__).with_name("static")


def mount_dashboard(app: FastAPI) -> None:
    """Serve the dashboard at ``/ui/``; the site root sends browsers there."""
    app.mount("/ui", StaticFiles(directory=STATIC, html=True), name="ui")

    @app.get("/", include_in_schema=False)
    def root() -> RedirectResponse:
        return RedirectResponse("/ui/")
