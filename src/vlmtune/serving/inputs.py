"""Images as requests carry them: uploaded bytes, base64 text, ``data:`` URLs and remote URLs.

Every image goes through the checks ``prepare`` applies to a catalog's photos
(:func:`vlmtune.data.images.open_image`: common photo formats only, the declared
size checked against a pixel limit before decoding) and through the processor's
own check (an image too elongated for the HD transform). A refusal is an
:class:`ImageInputError` carrying the HTTP status and the reason:

- ``415``: not an image (empty, HTML, unknown or unsupported format);
- ``400``: a decompression bomb, a truncated or corrupt image, an image the
  model cannot take, malformed base64 or ``data:`` URL, a remote URL that is refused
  or cannot be fetched.

Remote ``http(s)`` URLs are fetched only when the server allows them, with
``prepare``'s :class:`~vlmtune.data.download.Fetcher` (the URL policy of
:mod:`vlmtune.data.urls`: no link-local or cloud-metadata host, for the URL and
every redirect; size cap, timeouts, retries).
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any

from PIL import Image

from vlmtune.data.download import Fetcher
from vlmtune.data.images import ImageRejected, open_image
from vlmtune.inference.generate import check_image

__all__ = ["ImageInputError", "decode_image", "image_from_text", "image_from_url"]

_NOT_IMAGE = ("empty:", "html:", "not an image:", "unsupported format:")
_DATA_URL = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[^,;]*)*?);base64,", re.I)


class ImageInputError(ValueError):
    """An image of a request that cannot be used: ``status`` (400/413/415) and ``reason``."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def decode_image(
    data: bytes, processor: Any, max_pixels: int, content_type: str = "", name: str = "image"
) -> Image.Image:
    """``data`` as an RGB image the model can take, or :class:`ImageInputError` naming ``name``."""
    try:
        image = open_image(data, content_type, max_pixels)
    except ImageRejected as err:
        status = 415 if err.reason.startswith(_NOT_IMAGE) else 400
        raise ImageInputError(status, f"{name}: {err.reason}") from None
    try:
        check_image(processor, image)
    except ValueError as err:
        raise ImageInputError(400, f"{name}: the model cannot take this image: {err}") from None
    return image


def image_from_text(text: str, processor: Any, max_pixels: int, name: str = "image") -> Image.Image:
    """An image given as base64 text, bare or as a ``data:image/...;base64,`` URL."""
    data, mime = _base64_payload(text, name)
    return decode_image(data, processor, max_pixels, mime, name)


def image_from_url(
    url: str,
    processor: Any,
    max_pixels: int,
    fetcher: Fetcher | None,
    name: str = "image",
) -> Image.Image:
    """An image given as a URL: a ``data:`` URL, or (when ``fetcher`` is given) an http(s) URL."""
    if url[:5].lower() == "data:":
        return image_from_text(url, processor, max_pixels, name)
    if url.split(":", 1)[0].lower() not in ("http", "https"):
        raise ImageInputError(
            400, f"{name}: only data: URLs (and http/https with --allow-remote-images) are accepted"
        )
    if fetcher is None:
        raise ImageInputError(
            400,
            f"{name}: remote image URLs are refused by this server (send the image as a "
            "data:image/...;base64 URL, or start the server with --allow-remote-images)",
        )
    result = fetcher.fetch(url)
    if not result.ok:
        raise ImageInputError(400, f"{name}: {url!r} was not fetched: {result.reason}")
    return decode_image(result.data or b"", processor, max_pixels, result.content_type, name)


def _base64_payload(text: str, name: str) -> tuple[bytes, str]:
    mime = ""
    match = _DATA_URL.match(text)
    if match:
        mime, text = match.group("mime") or "", text[match.end() :]
    elif text[:5].lower() == "data:":
        raise ImageInputError(400, f"{name}: a data: URL must be data:image/...;base64,<data>")
    try:
        return base64.b64decode("".join(text.split()), validate=True), mime
    except (binascii.Error, ValueError) as err:
        raise ImageInputError(400, f"{name}: not valid base64 ({err})") from None
