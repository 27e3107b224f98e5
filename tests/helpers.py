"""Small helpers the test tiers share."""

from __future__ import annotations

from pathlib import Path

from PIL import Image


def write_image(path: Path, colour: str = "red", size: int = 32) -> Path:
    """A small PNG on disk."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), colour).save(path)
    return path
