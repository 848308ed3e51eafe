"""All pairs of 64-bit hashes within a Hamming distance, without comparing every pair.

Multi-index hashing (Norouzi, Punjani and Fleet, "Fast search in Hamming space with
multi-index hashing", CVPR 2012), vectorised with numpy:

- the 64 bits are cut into ``m`` disjoint bands (``m >= 4``, so a band has at most 16
  bits and its bucket table at most 65,536 entries);
- **guarantee**: if two hashes differ in at most ``t`` bits, at least one band differs in
  at most ``r = t // m`` bits (pigeonhole: were every band ``r + 1`` or more bits apart,
  the hashes would be ``m * (r + 1) > t`` apart). So, for every band, every hash is looked
  up in the buckets of all band values within ``r`` bits of its own (``XOR`` with each mask
  of at most ``r`` set bits), and every candidate's full distance is checked. No pair at
  distance ``<= t`` is missed and none farther is returned: the result equals the all-pairs
  loop's, which :func:`all_pairs_within` computes (blockwise) for the tests and the bench;
- ``m`` is chosen per call by a cost model (probes cost ``n`` look-ups each, candidates
  cost a check each, under uniformly spread bits). When even the best ``m`` would check
  more candidates than there are pairs (tiny inputs, huge thresholds), the blockwise
  all-pairs loop runs instead: same answer, less work.

Work for ``n`` uniform hashes at ``t = 6`` (the default of :mod:`vlmtune.data.dedup`): 4
bands of 16 bits, 17 masks each (``r = 1``), so 68 probes and about ``68 * n**2 / 2**17``
candidate checks instead of ``n**2 / 2``: 100k hashes in about a second (BENCHMARKS.md).
A pair of distinct buckets is visited from one side only, so each candidate is checked once
per band and mask.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from itertools import combinations

import numpy as np

__all__ = ["HASH_BITS", "all_pairs_within", "near_pairs", "popcount"]

HASH_BITS = 64
_MIN_BANDS = 4  # bands of at most 16 bits: dense bucket tables of at most 2**16 entries
_PROBE_COST = 3.0  # one probe of n hashes (XOR, two gathers) against one candidate check
_CHUNK = 1 << 22  # candidate pairs materialised at once (bounds memory on skewed data)
_BYTE_BITS = np.array([bin(b).count("1") for b in range(256)], dtype=np.uint8)


def popcount(values: np.ndarray) -> np.ndarray:
    """Set bits of each element of a uint64 array (same shape, small ints)."""
    if hasattr(np, "bitwise_count"):  # numpy >= 2.0
        return np.bitwise_count(values)
    as_bytes = np.ascontiguousarray(values, dtype=np.uint64).view(np.uint8)
    return _BYTE_BITS[as_bytes].reshape(*values.shape, 8).sum(axis=-1)


def near_pairs(
    hashes: Sequence[int] | np.ndarray, threshold: int, bands: int | None = None
) -> np.ndarray:
    """Every pair ``(i, j)``, ``i < j``, of ``hashes`` at Hamming distance ``<= threshold``.

    ``hashes``: n integers in ``[0, 2**64)``. Returns an int64 array of shape (P, 2), rows
    sorted. Exact: the same pairs as :func:`all_pairs_within` (see the module docstring).
    ``bands`` (4-64) overrides the cost model's choice; the answer is the same.
    """
    values = _as_uint64(hashes)
    _check_threshold(threshold)
    if bands is not None and not _MIN_BANDS <= bands <= HASH_BITS:
        raise ValueError(f"bands must be between {_MIN_BANDS} and {HASH_BITS}, got {bands}")
    bands = bands or _choose_bands(len(values), threshold)
    if bands is None:
        return all_pairs_within(values, threshold)
    radius = threshold // bands
    found = [
        _band_pairs(values, shift, width, radius, threshold) for shift, width in _layout(bands)
    ]
    return _unique_pairs(np.concatenate(found), len(values))


def all_pairs_within(hashes: Sequence[int] | np.ndarray, threshold: int) -> np.ndarray:
    """The all-pairs baseline: compare every pair, a block of rows at a time. Same output as :func:`near_pairs`."""
    values = _as_uint64(hashes)
    _check_threshold(threshold)
    n, found = len(values), []
    block = max(1, _CHUNK // max(1, n))
    for start in range(0, n, block):
        rows = values[start : start + block]
        close = popcount(rows[:, None] ^ values[None, :]) <= threshold
        i, j = np.nonzero(close)
        i += start
        keep = i < j
        found.append(np.stack([i[keep], j[keep]], axis=1))
    return _unique_pairs(np.concatenate(found) if found else np.empty((0, 2), np.int64), n)


# --------------------------------------------------------------------------- helpers


def _as_uint64(hashes: Sequence[int] | np.ndarray) -> np.ndarray:
    if isinstance(hashes, np.ndarray) and hashes.dtype == np.uint64:
        return hashes.ravel()
    values = [int(h) for h in hashes]
    if any(not 0 <= h < 1 << HASH_BITS for h in values):
        raise ValueError(f"hashes must be integers in [0, 2**{HASH_BITS})")
    return np.array(values, dtype=np.uint64)


def _check_threshold(threshold: int) -> None:
    if not 0 <= threshold <= HASH_BITS:
        raise ValueError(f"threshold must be between 0 and {HASH_BITS} bits, got {threshold}")


def _layout(bands: int) -> list[tuple[int, int]]:
    """(shift, width) of each band: ``bands`` disjoint runs of bits covering all 64."""
    base, extra = divmod(HASH_BITS, bands)
    widths = [base + (1 if k < extra else 0) for k in range(bands)]
    shifts = [sum(widths[:k]) for k in range(bands)]
    return list(zip(shifts, widths, strict=True))


def _ball(width: int, radius: int) -> int:
    """How many values lie within ``radius`` bits of a ``width``-bit value."""
    return sum(math.comb(width, k) for k in range(min(radius, width) + 1))


def _choose_bands(n: int, threshold: int) -> int | None:
    """The band count of least expected work for ``n`` uniform hashes, or None if all-pairs is cheaper."""
    best, best_cost = None, float(n) * n  # the blockwise all-pairs loop checks every ordered pair
    for bands in range(_MIN_BANDS, max(_MIN_BANDS, threshold + 1) + 1):
        radius = threshold // bands
        probes = sum(_ball(w, radius) for _, w in _layout(bands))
        candidates = sum(_ball(w, radius) * n * n / 2**w for _, w in _layout(bands))
        cost = probes * n * _PROBE_COST + candidates
        if cost < best_cost:
            best, best_cost = bands, cost
    return best


def _masks(width: int, radius: int) -> Iterator[int]:
    """Every ``width``-bit mask with at most ``radius`` bits set, 0 first."""
    for k in range(min(radius, width) + 1):
        for bits in combinations(range(width), k):
            yield sum(1 << b for b in bits)


def _band_pairs(
    values: np.ndarray, shift: int, width: int, radius: int, threshold: int
) -> np.ndarray:
    """Pairs ``i < j`` within ``threshold`` whose bits ``[shift, shift + width)`` are within ``radius``."""
    band = ((values >> np.uint64(shift)) & np.uint64((1 << width) - 1)).astype(np.int64)
    order = np.argsort(band, kind="stable")  # rows bucketed by band value
    counts = np.bincount(band, minlength=1 << width)
    starts = np.cumsum(counts) - counts
    found = []
    for mask in _masks(width, radius):
        target = band ^ mask
        # a pair of distinct buckets is visited once, from the one with the smaller value
        rows = np.flatnonzero(counts[target] > 0) if mask == 0 else np.flatnonzero(band < target)
        for i, j in _bucket_members(rows, starts[target[rows]], counts[target[rows]], order):
            if mask == 0:
                keep = i < j
                i, j = i[keep], j[keep]
            close = popcount(values[i] ^ values[j]) <= threshold
            found.append(np.stack([np.minimum(i, j)[close], np.maximum(i, j)[close]], axis=1))
    return np.concatenate(found) if found else np.empty((0, 2), np.int64)


def _bucket_members(
    rows: np.ndarray, lo: np.ndarray, count: np.ndarray, order: np.ndarray
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(row, member) arrays pairing ``rows[k]`` with each of ``order[lo[k] : lo[k] + count[k]]``.

    Yielded in chunks of about ``_CHUNK`` pairs, so a crowded bucket cannot exhaust memory.
    """
    ends = np.cumsum(count)
    begin = 0
    while begin < len(rows):
        done = int(ends[begin - 1]) if begin else 0
        stop = max(begin + 1, int(np.searchsorted(ends, done + _CHUNK, side="right")))
        sizes = count[begin:stop]
        # position in ``order`` of each pair's member: lo of its row, plus its rank in the row
        skip = lo[begin:stop] - (ends[begin:stop] - sizes - done)
        positions = np.arange(int(ends[stop - 1]) - done) + np.repeat(skip, sizes)
        yield np.repeat(rows[begin:stop], sizes), order[positions]
        begin = stop


def _unique_pairs(pairs: np.ndarray, n: int) -> np.ndarray:
    """Sorted distinct rows of a (P, 2) array of row numbers below ``n``."""
    if len(pairs) == 0:
        return np.empty((0, 2), np.int64)
    keys = np.unique(pairs[:, 0].astype(np.int64) * n + pairs[:, 1])
    return np.stack([keys // n, keys % n], axis=1)
