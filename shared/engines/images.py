"""Load input images safely and encode them for HTTP engines.

Item images come from user datasets: some are missing, truncated, not images at all, or
huge.  Every problem becomes an ``ImageRejected`` with a machine-readable kind, so the
request that names the image fails alone.  The pixel count is checked from the header
before anything is decoded: a 100-megapixel PNG can be a few kilobytes on disk.
"""

from __future__ import annotations

import base64
import io

from PIL import Image, ImageOps, UnidentifiedImageError

from shared.errors import ImageRejected
from shared.storage import path_from_uri

DEFAULT_MAX_PIXELS = 40_000_000
UNREADABLE, TOO_LARGE = "image_unreadable", "image_too_large"
_KEEP_AS_IS = {"PNG": "image/png", "JPEG": "image/jpeg"}
_PLAIN_MODES = {"RGB", "RGBA", "L", "LA", "P"}  # servers decode these; CMYK or 16-bit vary


def _open(ref: str, max_pixels: int) -> Image.Image:
    """Open and fully decode ``ref`` after checking its header size."""
    path = path_from_uri(ref)
    try:
        image = Image.open(path)
    except FileNotFoundError as exc:
        raise ImageRejected(f"image file not found: {path}", kind=UNREADABLE, image=ref) from exc
    except Image.DecompressionBombError as exc:  # PIL's own guard, far above ours
        raise ImageRejected(f"image too large: {exc}", kind=TOO_LARGE, image=ref) from exc
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise ImageRejected(f"not a readable image: {exc}", kind=UNREADABLE, image=ref) from exc
    width, height = image.size
    if width * height > max_pixels:
        image.close()
        message = f"image is {width}x{height} = {width * height} pixels, limit {max_pixels}"
        raise ImageRejected(message, kind=TOO_LARGE, image=ref)
    try:
        image.load()
    except (OSError, ValueError, SyntaxError, EOFError) as exc:  # truncated or corrupt data
        image.close()
        raise ImageRejected(f"corrupt image data: {exc}", kind=UNREADABLE, image=ref) from exc
    return image


def load_image(ref: str, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Open ``ref`` as a fully decoded RGB image, upright per its EXIF orientation."""
    with _open(ref, max_pixels) as image:
        upright = ImageOps.exif_transpose(image)
        return upright.convert("RGB")


def image_data_url(
    ref: str, max_side: int | None = None, *, max_pixels: int = DEFAULT_MAX_PIXELS
) -> str:
    """A ``data:`` URL for ``ref``: the original PNG/JPEG bytes when usable as they are,
    otherwise a PNG re-encoding (downscaled so the longer side is at most ``max_side``)."""
    with _open(ref, max_pixels) as original:
        fmt = original.format or ""
        small_enough = max_side is None or max(original.size) <= max_side
        plain = original.mode in _PLAIN_MODES and not _needs_transpose(original)
        if fmt in _KEEP_AS_IS and small_enough and plain:
            raw = path_from_uri(ref).read_bytes()
            return _data_url(_KEEP_AS_IS[fmt], raw)
        image = ImageOps.exif_transpose(original).convert("RGB")
    if not small_enough and max_side is not None:
        image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return _data_url("image/png", buffer.getvalue())


def _needs_transpose(image: Image.Image) -> bool:
    orientation = image.getexif().get(0x0112, 1)  # EXIF Orientation tag
    return orientation not in (1, None)


def _data_url(mime: str, raw: bytes) -> str:
    return f"data:{mime};base64,{base64.b64encode(raw).decode('ascii')}"
