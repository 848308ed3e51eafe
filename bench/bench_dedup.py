"""Benchmark duplicate grouping: 100k 64-bit hashes by multi-index hashing against all pairs.

    .venv/bin/python bench/bench_dedup.py [--n 100000] [--sample 10000] [--bits 6] [--repeat 3]

Draws ``n`` uniformly random 64-bit hashes and plants near-duplicate groups in them (10 %
of the rows are copies of another row with up to ``bits`` bits flipped). Prints the
machine, then (best of ``repeat``):

- ``near_pairs`` (multi-index hashing) on all ``n`` hashes, and whether it found every
  planted pair;
- on a ``sample`` of the hashes, ``near_pairs`` and the all-pairs baseline
  (``all_pairs_within``, numpy, blockwise), their ratio, and the all-pairs time scaled to
  ``n`` (quadratic);
- ``group_duplicates`` end to end on ``n`` rows (ids, fingerprints with colour thumbnails;
  copies keep their original's thumbnail within one level);
- ``prepare``'s whole grouping step on ``n`` rows: ``group_duplicates``, the splits by group
  (``assign_group_splits``) and the conflicts (``find_conflicts``; a tenth of the copies
  carry another price), against ``assign_splits`` by id alone (what prepare did before);
- the fingerprint of one stored photo (``image_fingerprint``: decode, SHA-256 of the pixels,
  pHash, thumbnail) on ``--photos`` synthetic 224x280 JPEGs, against decoding alone.
"""

from __future__ import annotations

import argparse
import io
import time

import numpy as np
from bench_synth import machine_info
from PIL import Image

from vlmtune.data.conflicts import find_conflicts
from vlmtune.data.dedup import COLOUR_SIDE, Fingerprint, group_duplicates, image_fingerprint
from vlmtune.data.group_splits import assign_group_splits, straddling_groups
from vlmtune.data.hash_index import all_pairs_within, near_pairs
from vlmtune.data.splits import assign_splits
from vlmtune.data.synthetic import render_jpeg, sample_product


def planted_hashes(n: int, bits: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(hashes (n,) uint64, planted (P, 2) pairs ``(original, copy)``): 10 % of rows are copies."""
    rng = np.random.default_rng(seed)
    hashes = rng.integers(0, 2**64, size=n, dtype=np.uint64, endpoint=False)
    copies = rng.choice(n, size=n // 10, replace=False)
    originals = rng.choice(np.setdiff1d(np.arange(n), copies), size=len(copies))
    for copy, original in zip(copies, originals, strict=True):
        flips = rng.choice(64, size=int(rng.integers(0, bits + 1)), replace=False)
        hashes[copy] = hashes[original] ^ np.uint64(sum(1 << int(f) for f in flips))
    return hashes, np.stack([originals, copies], axis=1)


def fingerprints(hashes: np.ndarray, planted: np.ndarray, seed: int = 0) -> list[Fingerprint]:
    """One fingerprint per hash; copies get their original's thumbnail, each level moved by <= 1."""
    rng = np.random.default_rng(seed)
    size = COLOUR_SIDE * COLOUR_SIDE * 3
    thumbs = rng.integers(0, 256, size=(len(hashes), size), dtype=np.int16)
    jitter = rng.integers(-1, 2, size=(len(planted), size), dtype=np.int16)
    thumbs[planted[:, 1]] = np.clip(thumbs[planted[:, 0]] + jitter, 0, 255)
    return [
        Fingerprint(f"{row:064x}", int(h), thumbs[row].astype(np.uint8).tobytes())
        for row, h in enumerate(hashes)
    ]


def best_time(fn, repeat: int) -> tuple[float, object]:
    """(fastest wall seconds, result) of ``repeat`` calls."""
    best, result = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--sample", type=int, default=10_000)
    parser.add_argument("--bits", type=int, default=6)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--photos", type=int, default=200)
    opts = parser.parse_args()
    for key, value in machine_info().items():
        print(f"{key:>16}: {value}")
    hashes, planted = planted_hashes(opts.n, opts.bits)
    seconds, pairs = best_time(lambda: near_pairs(hashes, opts.bits), opts.repeat)
    found = {tuple(p) for p in pairs.tolist()}
    missed = sum((min(a, b), max(a, b)) not in found for a, b in planted.tolist())
    print(f"near_pairs, {opts.n} hashes, <= {opts.bits} bits: {seconds:.2f}s, {len(pairs)} pairs, "
          f"{len(planted) - missed}/{len(planted)} planted pairs found")  # fmt: skip
    sample = hashes[: opts.sample]
    fast, a = best_time(lambda: near_pairs(sample, opts.bits), opts.repeat)
    slow, b = best_time(lambda: all_pairs_within(sample, opts.bits), 1)
    scaled = slow * (opts.n / opts.sample) ** 2
    print(f"sample of {opts.sample}: near_pairs {fast:.3f}s, all pairs {slow:.2f}s: {slow / fast:.0f}x; "
          f"same pairs: {np.array_equal(a, b)}; all pairs scaled to {opts.n}: {scaled:.0f}s "
          f"({scaled / seconds:.0f}x near_pairs on {opts.n})")  # fmt: skip
    prints = fingerprints(hashes, planted)
    ids = [f"p{row:07d}" for row in range(opts.n)]
    grouped, groups = best_time(lambda: group_duplicates(ids, prints, opts.bits), opts.repeat)
    sizes = np.bincount(groups)
    print(f"group_duplicates, {opts.n} rows: {grouped:.2f}s, {len(sizes)} groups, "
          f"{int((sizes > 1).sum())} with duplicates (largest {int(sizes.max())})")  # fmt: skip
    prepare_step(ids, prints, planted, opts)
    photo_fingerprints(opts.photos, opts.repeat)


def prepare_step(ids: list[str], prints: list[Fingerprint], planted: np.ndarray, opts) -> None:
    """prepare's grouping step (groups, splits by group, conflicts) against splitting by id alone."""
    rows = [{"title": f"t{r % 997}", "category3_code": f"c{r % 13}", "full_price": 100.0 + r % 50}
            for r in range(len(ids))]  # fmt: skip
    for copy, original in planted[:, ::-1][: len(planted) // 10].tolist():
        rows[copy] = dict(rows[original], full_price=rows[original]["full_price"] + 1)
    for copy, original in planted[:, ::-1][len(planted) // 10 :].tolist():
        rows[copy] = dict(rows[original])
    fractions = (0.9, 0.05, 0.05)

    def step() -> tuple[list[int], list[str], list]:
        groups = group_duplicates(ids, prints, opts.bits)
        splits = assign_group_splits(ids, groups, fractions, seed=0)
        return groups, splits, find_conflicts(rows, groups)

    seconds, (groups, splits, conflicts) = best_time(step, opts.repeat)
    by_id, _ = best_time(lambda: assign_splits(ids, fractions, seed=0), opts.repeat)
    print(f"prepare's grouping step, {len(ids)} rows: {seconds:.2f}s (splits by id alone "
          f"{by_id:.2f}s: {seconds / by_id:.1f}x); {len(conflicts)} conflicting groups; "
          f"straddling groups: {len(straddling_groups(groups, splits))}")  # fmt: skip


def photo_fingerprints(count: int, repeat: int) -> None:
    """Seconds per photo: ``image_fingerprint`` after decoding, against decoding alone."""
    photos = [render_jpeg(sample_product(0, i).render, (224, 280)) for i in range(count)]

    def decode() -> list[Image.Image]:
        return [Image.open(io.BytesIO(p)).convert("RGB") for p in photos]

    decoding, _ = best_time(decode, repeat)
    both, _ = best_time(lambda: [image_fingerprint(im) for im in decode()], repeat)
    print(f"fingerprint of a 224x280 photo: {1000 * both / count:.2f} ms with decoding, "
          f"{1000 * decoding / count:.2f} ms decoding alone ({both / decoding:.1f}x)")  # fmt: skip


if __name__ == "__main__":
    main()
