"""Planted duplicate photos of the synthetic catalog (``vlmtune synth --duplicate-frac``).

Real catalogs reuse one photo under several product ids (colourways, re-listed products),
sometimes re-encoded, resized or slightly cropped on the way. :func:`plan_duplicates` picks
``round(frac * n)`` rows (never broken ones) to be such **copies**: each copy takes the
listing of a *source* product (title, category, price: a re-listed product) under its own
product code, and its photo is the source's photo, changed by one of :data:`CHANGES` in
turn:

- ``exact``: the same bytes;
- ``reencode``: decoded and saved again at JPEG quality 70;
- ``resize``: scaled to 75 % (Lanczos), JPEG 90;
- ``crop``: 1 % cut from each side, JPEG 90.

``vlmtune prepare`` groups every copy with its source (same pixels, or near duplicates
by pHash and colour; the 1 % crop is within the measured threshold for most photos), so
the pair lands in one split. The choice draws from its own random stream, so products that
are not copies keep their photos and listings whatever the fraction.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image

__all__ = ["CHANGES", "Copy", "apply_change", "plan_duplicates"]

CHANGES = ("exact", "reencode", "resize", "crop")
_STREAM = 2**32 - 2  # a random stream no product index (or the broken rows') uses


@dataclass(frozen=True)
class Copy:
    """Row ``index`` shows the photo (and listing) of row ``source``, changed by ``change``."""

    index: int
    source: int
    change: str


def plan_duplicates(seed: int, n: int, frac: float, excluded: set[int]) -> dict[int, Copy]:
    """Row index -> :class:`Copy` for ``round(frac * n)`` rows; sources and copies avoid ``excluded``.

    Sources are never copies themselves, so every group is one source and its copies.
    """
    usable = [i for i in range(n) if i not in excluded]
    count = min(round(frac * n), len(usable) // 2)
    if count <= 0:
        return {}
    rng = np.random.default_rng([seed, _STREAM])
    chosen = rng.permutation(usable)
    copies, sources = chosen[:count], chosen[count:]
    picks = rng.integers(len(sources), size=count)
    return {
        int(i): Copy(int(i), int(sources[p]), CHANGES[k % len(CHANGES)])
        for k, (i, p) in enumerate(zip(sorted(copies), picks, strict=True))
    }


def apply_change(data: bytes, change: str) -> bytes:
    """The JPEG ``data`` changed as :data:`CHANGES` describes."""
    if change == "exact":
        return data
    if change not in CHANGES:
        raise ValueError(f"change must be one of {', '.join(CHANGES)}, got {change!r}")
    image = Image.open(io.BytesIO(data)).convert("RGB")
    w, h = image.size
    quality = 90
    if change == "reencode":
        quality = 70
    elif change == "resize":
        image = image.resize((round(w * 0.75), round(h * 0.75)), Image.Resampling.LANCZOS)
    else:
        dx, dy = max(1, round(w * 0.01)), max(1, round(h * 0.01))
        image = image.crop((dx, dy, w - dx, h - dy))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()
