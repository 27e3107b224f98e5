"""Input images: loaded safely, rejected with a kind, encoded as data URLs."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import pytest
from PIL import Image

from shared.engines.images import image_data_url, load_image
from shared.errors import ImageRejected
from shared.storage import path_from_uri
from tests.helpers import write_image


def _decode(url: str) -> Image.Image:
    header, data = url.split(",", 1)
    assert header.endswith(";base64")
    return Image.open(io.BytesIO(base64.b64decode(data)))


def test_loads_rgb_from_a_path_or_a_file_uri(tmp_path: Path) -> None:
    path = write_image(tmp_path / "a b.png", "blue", size=20)
    Image.open(path).convert("L").save(path)  # greyscale on disk, RGB when loaded
    for ref in (str(path), path.as_uri()):
        image = load_image(ref)
        assert (image.mode, image.size) == ("RGB", (20, 20))
    assert path_from_uri(path.as_uri()) == path


@pytest.mark.parametrize(
    "content",
    [b"", b"not an image at all", b"\x89PNG\r\n\x1a\n" + b"\0" * 40],
    ids=["empty", "text", "bad-png"],
)
def test_corrupt_files_are_unreadable(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "x.png"
    path.write_bytes(content)
    with pytest.raises(ImageRejected) as caught:
        load_image(str(path))
    assert caught.value.kind == "image_unreadable"
    assert caught.value.ids["image"] == str(path)


def test_truncated_image_is_unreadable(tmp_path: Path) -> None:
    path = tmp_path / "t.jpg"
    Image.effect_noise((64, 64), 50).convert("RGB").save(path, "JPEG")
    path.write_bytes(path.read_bytes()[:300])  # header intact, data cut short
    with pytest.raises(ImageRejected) as caught:
        load_image(str(path))
    assert caught.value.kind == "image_unreadable"


def test_missing_file_is_unreadable(tmp_path: Path) -> None:
    with pytest.raises(ImageRejected) as caught:
        load_image(str(tmp_path / "nope.png"))
    assert caught.value.kind == "image_unreadable"


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_huge_image_is_refused_from_its_header(tmp_path: Path) -> None:
    path = tmp_path / "huge.png"
    Image.new("1", (10_000, 10_000)).save(path)  # 100 megapixels, a few KB on disk
    assert path.stat().st_size < 100_000
    with pytest.raises(ImageRejected) as caught:
        load_image(str(path))
    assert caught.value.kind == "image_too_large"
    with pytest.raises(ImageRejected) as caught:
        image_data_url(str(path))
    assert caught.value.kind == "image_too_large"


def test_pil_decompression_bomb_guard_is_mapped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_image(tmp_path / "a.png", size=40)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # PIL refuses above twice this
    with pytest.raises(ImageRejected) as caught:
        load_image(str(path), max_pixels=10_000_000)
    assert caught.value.kind == "image_too_large"


def test_max_pixels_is_configurable(tmp_path: Path) -> None:
    path = write_image(tmp_path / "a.png", size=40)
    with pytest.raises(ImageRejected):
        load_image(str(path), max_pixels=1000)
    assert load_image(str(path), max_pixels=1600).size == (40, 40)


def test_data_url_keeps_png_and_jpeg_bytes(tmp_path: Path) -> None:
    png = write_image(tmp_path / "a.png")
    jpeg = tmp_path / "a.jpg"
    Image.open(png).save(jpeg, "JPEG")
    assert image_data_url(str(png)) == (
        "data:image/png;base64," + base64.b64encode(png.read_bytes()).decode()
    )
    assert image_data_url(str(jpeg)).startswith("data:image/jpeg;base64,")


def test_data_url_reencodes_other_formats_and_downscales(tmp_path: Path) -> None:
    bmp = tmp_path / "a.bmp"
    Image.new("RGB", (300, 120), "green").save(bmp)
    url = image_data_url(str(bmp))
    assert url.startswith("data:image/png;base64,")
    assert _decode(url).size == (300, 120)
    small = _decode(image_data_url(str(bmp), max_side=100))
    assert small.size == (100, 40)
    assert small.convert("RGB").getpixel((50, 20)) == (0, 128, 0)
