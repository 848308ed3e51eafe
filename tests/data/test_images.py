"""Image checks: only the common photo formats are decoded, and the default bomb limit is 40 MP."""

from __future__ import annotations

import io

import pytest
from fault_server import bomb_png
from PIL import Image

from vlmtune.data.images import DEFAULT_MAX_PIXELS, ImageRejected, process_image


def _encoded(fmt: str, **save: object) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (24, 16), (200, 30, 30)).save(buffer, format=fmt, **save)
    return buffer.getvalue()


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF"])
def test_common_photo_formats_are_accepted(fmt):
    image = process_image(_encoded(fmt))
    assert image.source_format == fmt and (image.width, image.height) == (24, 16)


def test_multi_picture_jpeg_is_accepted():
    second = Image.new("RGB", (24, 16))
    image = process_image(_encoded("MPO", save_all=True, append_images=[second]))
    assert image.source_format == "MPO" and image.extension == ".png"


@pytest.mark.parametrize("fmt", ["PPM", "PCX", "SGI", "QOI", "DDS"])
def test_other_pillow_formats_are_refused_with_the_reason(fmt):
    with pytest.raises(ImageRejected) as caught:
        process_image(_encoded(fmt))
    reason = caught.value.reason
    assert reason.startswith("unsupported format:") and f"looks like {fmt}" in reason
    assert "allowed: JPEG, PNG" in reason


def test_unknown_bytes_are_still_not_an_image():
    with pytest.raises(ImageRejected, match="^not an image:"):
        process_image(b"\x00\x01not an image at all" * 20)


def test_a_50_megapixel_header_is_a_bomb_by_default_and_the_limit_is_an_argument():
    assert DEFAULT_MAX_PIXELS == 40_000_000
    bomb = bomb_png(10_000, 5_000)  # declares 50 MP in a few bytes
    with pytest.raises(ImageRejected, match="^decompression bomb: 10000x5000 = 50000000 pixels"):
        process_image(bomb)
    with pytest.raises(ImageRejected, match="decompression bomb"):
        process_image(_encoded("PNG"), max_pixels=24 * 16 - 1)
    assert process_image(_encoded("PNG"), max_pixels=24 * 16).width == 24
