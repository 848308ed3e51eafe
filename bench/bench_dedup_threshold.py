"""Measure the near-duplicate thresholds on the synthetic catalog: copies must match, distinct products must not.

    .venv/bin/python bench/bench_dedup_threshold.py [--n 2000] [--copies 200] [--size 224x280]

Draws ``n`` products of ``vlmtune synth`` (in memory, same parameters as the catalog),
stores each photo as a JPEG at quality 95, and makes modified copies of the first
``copies`` of them: re-encoded at quality 60, resized x0.5 and x1.5, cropped 1-8 % per
side, and cropped by a random 2-8 % on each side. It prints, for pHash, dHash, wHash
(64 bits each) and the colour thumbnail of :mod:`vlmtune.data.dedup`:

- the largest distance between a photo and each kind of copy;
- the smallest distance between two distinct products (all pairs), overall and among
  products of the same type, material, pattern and colour;
- for the rule of ``dedup`` (pHash within ``--bits`` AND thumbnail within ``--colour``):
  how many distinct pairs it would merge and what share of each kind of copy it catches.
"""

from __future__ import annotations

import argparse
import io
import time

import imagehash
import numpy as np
from bench_synth import machine_info
from PIL import Image

from vlmtune.data.dedup import (
    DEFAULT_MAX_BITS,
    DEFAULT_MAX_COLOUR,
    image_fingerprint,
    near_duplicate_pairs,
)
from vlmtune.data.hash_index import popcount
from vlmtune.data.synthetic import render_product, sample_product

HASHES = {"phash": imagehash.phash, "dhash": imagehash.dhash, "whash": imagehash.whash}


def jpeg(image: Image.Image, quality: int) -> Image.Image:
    """``image`` after a JPEG round trip at ``quality``."""
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=quality)
    buf.seek(0)
    return Image.open(buf).convert("RGB")


def crop(image: Image.Image, left: float, top: float, right: float, bottom: float) -> Image.Image:
    """``image`` with the given fraction of each side cut off."""
    w, h = image.size
    return image.crop(
        (round(w * left), round(h * top), w - round(w * right), h - round(h * bottom))
    )


def modifications(rng: np.random.Generator) -> dict[str, object]:
    """Name -> function making one kind of copy (the random crop draws from ``rng``)."""
    mods = {
        "jpeg q95->60": lambda im: jpeg(im, 60),
        "resize x0.5": lambda im: im.resize((im.width // 2, im.height // 2), Image.LANCZOS),
        "resize x1.5": lambda im: im.resize((im.width * 3 // 2, im.height * 3 // 2), Image.LANCZOS),
    }
    for pct in (1, 2, 4, 6, 8):
        mods[f"crop {pct}%"] = lambda im, f=pct / 100: crop(im, f, f, f, f)
    mods["crop 2-8% each side"] = lambda im: crop(im, *rng.uniform(0.02, 0.08, 4))
    return mods


def features(image: Image.Image) -> dict[str, object]:
    """The 64-bit hashes of ``HASHES`` and the ``dedup`` fingerprint of one photo."""
    out: dict[str, object] = {k: int(str(f(image)), 16) for k, f in HASHES.items()}
    out["fingerprint"] = image_fingerprint(image)
    return out


def colour_gap(a, b) -> float:
    """Mean absolute level difference of two fingerprints' thumbnails."""
    x, y = np.frombuffer(a.colour, np.uint8), np.frombuffer(b.colour, np.uint8)
    return float(np.abs(x.astype(np.int16) - y).mean())


def distinct_minima(feats: list[dict], attrs: list[tuple], bits: int) -> dict[str, str]:
    """Smallest distance between distinct products per measure: overall, and same attributes."""
    n, out = len(feats), {}
    same = np.array([[a == b for b in attrs] for a in attrs])
    iu = np.triu_indices(n, 1)
    for name in HASHES:
        h = np.array([f[name] for f in feats], dtype=np.uint64)
        d = popcount(h[:, None] ^ h[None, :]).astype(int)[iu]
        out[name] = f"{d.min()} (same type/material/pattern/colour: {d[same[iu]].min()})"
    thumbs = np.stack([np.frombuffer(f["fingerprint"].colour, np.uint8) for f in feats]).astype(
        np.int16
    )
    colour = np.stack([np.abs(thumbs - t).mean(axis=1) for t in thumbs])[iu]
    h = np.array([f["fingerprint"].phash for f in feats], dtype=np.uint64)
    close = (popcount(h[:, None] ^ h[None, :]).astype(int) <= bits)[iu]
    out["colour"] = (
        f"{colour.min():.2f} (same type/material/pattern/colour: {colour[same[iu]].min():.2f})"
    )
    out[f"colour, phash<={bits}"] = (
        f"{colour[close].min():.2f} ({close.sum()} pairs within {bits} pHash bits)"
    )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--copies", type=int, default=200)
    parser.add_argument("--size", default="224x280")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--bits", type=int, default=DEFAULT_MAX_BITS)
    parser.add_argument("--colour", type=float, default=DEFAULT_MAX_COLOUR)
    opts = parser.parse_args()
    for key, value in machine_info().items():
        print(f"{key:>16}: {value}")
    size = tuple(int(x) for x in opts.size.split("x"))
    start = time.perf_counter()
    products = [sample_product(opts.seed, i) for i in range(opts.n)]
    photos = [jpeg(render_product(p.render, size), 95) for p in products]
    feats = [features(p) for p in photos]
    attrs = [(p.type_key, p.material, p.pattern, p.colour) for p in products]
    print(
        f"{opts.n} products at {opts.size}: drawn and hashed in {time.perf_counter() - start:.1f}s"
    )
    report_copies(photos[: opts.copies], feats, opts)
    print(f"\nsmallest distance between distinct products ({opts.n * (opts.n - 1) // 2} pairs):")
    for name, text in distinct_minima(feats, attrs, opts.bits).items():
        print(f"  {name:>16}: {text}")
    merged = near_duplicate_pairs([f["fingerprint"] for f in feats], opts.bits, opts.colour)
    print(f"distinct pairs merged at phash<={opts.bits} and colour<={opts.colour}: {len(merged)}")


def report_copies(photos: list[Image.Image], feats: list[dict], opts: argparse.Namespace) -> None:
    """Print the largest photo-to-copy distances and the share caught at the thresholds."""
    rng = np.random.default_rng(opts.seed)
    print(f"\nlargest distance photo -> copy over {len(photos)} photos; caught at the thresholds:")
    print(f"  {'copy':>20} | {'phash':>5} {'dhash':>5} {'whash':>5} {'colour':>6} | caught")
    for name, make in modifications(rng).items():
        worst = dict.fromkeys([*HASHES, "colour"], 0.0)
        caught = 0
        for photo, orig in zip(photos, feats, strict=False):
            copy = features(make(photo))
            for k in HASHES:
                worst[k] = max(worst[k], (copy[k] ^ orig[k]).bit_count())
            gap = colour_gap(copy["fingerprint"], orig["fingerprint"])
            worst["colour"] = max(worst["colour"], gap)
            bits = (copy["fingerprint"].phash ^ orig["fingerprint"].phash).bit_count()
            caught += bits <= opts.bits and gap <= opts.colour
        print(
            f"  {name:>20} | {worst['phash']:5.0f} {worst['dhash']:5.0f} {worst['whash']:5.0f}"
            f" {worst['colour']:6.2f} | {100 * caught / len(photos):5.1f}%"
        )


if __name__ == "__main__":
    main()
