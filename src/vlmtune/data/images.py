"""Image bytes -> a checked RGB image file, and safe file names for product ids.

:func:`process_image` accepts bytes only when Pillow can both ``verify`` them
and fully decode them, after the declared size has been checked against a
pixel limit (a decompression bomb is refused before it is decoded; 40
megapixels by default, below Pillow's own 89.5 MP warning, because many
workers decode at once and a 40 MP RGB image already takes 120 MB). Only the
common photo formats (:data:`IMAGE_FORMATS`) are ever handed to a decoder:
catalog images are untrusted bytes, and Pillow's rarer parsers (PSD, EPS,
FITS...) are a larger attack surface than any product photo needs. The
result is RGB (transparency composited on white, EXIF orientation applied),
optionally downsized so that its longer side is at most ``max_side``. A JPEG
that needs no change is kept byte for byte; anything else is re-encoded (JPEG
sources as JPEG at quality 95, every other format as PNG).

:func:`safe_stem` derives a file name from a product id: the id with every
character outside ``[A-Za-z0-9._-]`` replaced, cut to 80 characters, no
leading dot, plus 16 hex digits of the SHA-256 of the raw id. Two different
ids therefore never share a name (not even on a case-insensitive file system,
since the hash part differs), and no id can name a path outside its folder.

Rejection reasons start with a kind: ``empty:``, ``html:``, ``not an image:``,
``unsupported format:``, ``decompression bomb:``, ``truncated image:``,
``corrupt image:``.
"""

from __future__ import annotations

import hashlib
import io
import re
import struct
from dataclasses import dataclass

from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "IMAGE_FORMATS",
    "ImageRejected",
    "ProcessedImage",
    "open_image",
    "process_image",
    "safe_stem",
]

DEFAULT_MAX_PIXELS = 40_000_000
"""Images declaring more pixels are refused before decoding (Pillow's own limit is 89.5 MP)."""
IMAGE_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
"""Pillow formats that may be decoded. MPO, the multi-picture JPEG of many cameras, is opened
by Pillow's JPEG format (which has no separate ``MPO`` entry to list)."""
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_HTML_TAGS = (b"<!doctype html", b"<html", b"<head", b"<body")
_STEM_CHARS = 80
_ORIENTATION = 0x0112  # EXIF tag


class ImageRejected(ValueError):
    """The bytes are not a usable image; ``reason`` is ``"<kind>: <details>"``."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class ProcessedImage:
    """An image ready to be written: encoded bytes, extension, and size in pixels."""

    data: bytes
    extension: str
    """``.jpg`` or ``.png``, matching ``data``."""
    width: int
    height: int
    source_format: str
    """Format Pillow detected in the input (``JPEG``, ``PNG``, ``WEBP``...)."""


def safe_stem(product_id: str) -> str:
    """File stem for ``product_id``: readable, bounded, unique, and free of separators."""
    raw = str(product_id).encode("utf-8", "surrogatepass")
    digest = hashlib.sha256(raw).hexdigest()[:16]
    readable = _UNSAFE.sub("_", str(product_id))[:_STEM_CHARS].lstrip(".")
    return f"{readable}-{digest}" if readable else f"id-{digest}"


def process_image(
    data: bytes,
    content_type: str = "",
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_side: int | None = None,
) -> ProcessedImage:
    """Check ``data`` and return it as an RGB image file; raise :class:`ImageRejected` with the reason.

    ``max_pixels`` is the decompression-bomb limit (width x height declared in
    the header, :data:`DEFAULT_MAX_PIXELS` by default); ``max_side`` the
    longest side kept (larger images are downsized), None to keep the size.
    """
    image, fmt, size, changed = _checked_rgb(data, content_type, max_pixels)
    if max_side is not None and max(image.size) > max_side:
        image = image.copy()
        image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
        changed = True
    if fmt == "JPEG" and not changed:
        return ProcessedImage(data, ".jpg", size[0], size[1], fmt)
    return _encode(image, fmt)


def open_image(
    data: bytes, content_type: str = "", max_pixels: int = DEFAULT_MAX_PIXELS
) -> Image.Image:
    """``data`` checked as :func:`process_image` checks it, decoded as an upright RGB image;
    raise :class:`ImageRejected` with the reason (``serve`` reads uploads with it)."""
    return _checked_rgb(data, content_type, max_pixels)[0]


def _checked_rgb(
    data: bytes, content_type: str, max_pixels: int
) -> tuple[Image.Image, str, tuple[int, int], bool]:
    """(RGB upright image, source format, declared size, whether the pixels were changed)."""
    if not data:
        raise ImageRejected("empty: the body has no bytes")
    if _looks_like_html(data):
        shown = content_type or "no content type"
        raise ImageRejected(
            f"html: got an HTML page ({shown}, {len(data)} bytes) instead of an image"
        )
    fmt, size = _check_header(data, max_pixels)
    image = _decode(data)
    changed = False
    if image.mode != "RGB":
        image, changed = _to_rgb(image), True
    if image.getexif().get(_ORIENTATION, 1) != 1:  # a rotated camera JPEG: store it upright
        image, changed = ImageOps.exif_transpose(image).convert("RGB"), True
    return image, fmt, size, changed


def _looks_like_html(data: bytes) -> bool:
    head = data[:1024].removeprefix(b"\xef\xbb\xbf").lstrip().lower()
    return head.startswith(b"<") and any(tag in head for tag in _HTML_TAGS)


def _check_header(data: bytes, max_pixels: int) -> tuple[str, tuple[int, int]]:
    """Identify the format and size from the header alone; refuse bombs before decoding."""
    try:
        with Image.open(io.BytesIO(data), formats=IMAGE_FORMATS) as probe:
            fmt, size = probe.format or "unknown", probe.size
            _check_pixels(size, max_pixels)
            probe.verify()
    except Image.DecompressionBombError as err:
        raise ImageRejected(f"decompression bomb: {err}") from err
    except UnidentifiedImageError as err:
        raise ImageRejected(_unidentified_reason(data)) from err
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        if isinstance(err, ImageRejected):
            raise
        raise ImageRejected(_damage_reason(err)) from err
    return fmt, size


def _unidentified_reason(data: bytes) -> str:
    """``unsupported format:`` when another Pillow format claims the header, else ``not an image:``.

    Only each plugin's header test runs (a prefix comparison), never its parser.
    """
    Image.init()
    prefix = data[:16]  # what Image.open itself hands to the header tests
    for fmt, (_factory, accept) in Image.OPEN.items():
        if fmt in IMAGE_FORMATS:
            continue  # an allowed format that Image.open could not read is just not an image
        try:
            claimed = accept(prefix) if accept else False
        except (IndexError, TypeError, SyntaxError, struct.error):  # as Image.open tolerates them
            claimed = False
        if claimed and not isinstance(claimed, str):  # a str is a warning, not a match
            allowed = ", ".join(IMAGE_FORMATS)
            return (
                f"unsupported format: the header looks like {fmt}, which is not decoded "
                f"(allowed: {allowed})"
            )
    return f"not an image: Pillow cannot identify the {len(data)} bytes"


def _check_pixels(size: tuple[int, int], max_pixels: int) -> None:
    pixels = size[0] * size[1]
    if pixels > max_pixels:
        raise ImageRejected(
            f"decompression bomb: {size[0]}x{size[1]} = {pixels} pixels exceeds the limit of {max_pixels}"
        )
    if pixels == 0:
        raise ImageRejected(f"corrupt image: {size[0]}x{size[1]} has no pixels")


def _decode(data: bytes) -> Image.Image:
    """Fully decode ``data`` (``verify`` alone does not catch a truncated JPEG)."""
    try:
        image = Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)
        image.load()
    except Image.DecompressionBombError as err:
        raise ImageRejected(f"decompression bomb: {err}") from err
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        raise ImageRejected(_damage_reason(err)) from err
    return image


def _damage_reason(err: BaseException) -> str:
    text = str(err) or type(err).__name__
    if "truncat" in text.lower() or isinstance(err, EOFError):
        return f"truncated image: {text}"
    return f"corrupt image: {text}"


def _to_rgb(image: Image.Image) -> Image.Image:
    """RGB copy of ``image``; transparent pixels become white (product photos sit on white)."""
    has_alpha = image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info
    if not has_alpha:
        return image.convert("RGB")
    rgba = image.convert("RGBA")
    background = Image.new("RGB", rgba.size, (255, 255, 255))
    background.paste(rgba, mask=rgba.getchannel("A"))
    return background


def _encode(image: Image.Image, source_format: str) -> ProcessedImage:
    buffer = io.BytesIO()
    if source_format == "JPEG":
        image.save(buffer, format="JPEG", quality=95)
        extension = ".jpg"
    else:
        image.save(buffer, format="PNG", optimize=False)
        extension = ".png"
    return ProcessedImage(buffer.getvalue(), extension, image.width, image.height, source_format)
