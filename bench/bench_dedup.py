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
  copies keep their original's thumbnail within one level).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from bench_synth import machine_info

from vlmtune.data.dedup import COLOUR_SIDE, Fingerprint, group_duplicates
from vlmtune.data.hash_index import all_pairs_within, near_pairs


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


if __name__ == "__main__":
    main()
