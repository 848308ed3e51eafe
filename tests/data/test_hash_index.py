"""Multi-index hashing finds exactly the pairs the all-pairs loop finds."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vlmtune.data.hash_index import all_pairs_within, near_pairs, popcount


def _planted(n: int, threshold: int, seed: int) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """``n`` random hashes, a third of them copies of another with 0..threshold+2 bits flipped.

    Also returns the planted (copy, original) pairs.
    """
    rng = np.random.default_rng(seed)
    hashes = rng.integers(0, 2**64, size=n, dtype=np.uint64)
    planted = []
    for copy in range(0, n, 3):
        flips = rng.choice(64, size=int(rng.integers(0, threshold + 3)), replace=False)
        original = int(rng.integers(n))
        hashes[copy] = hashes[original] ^ np.uint64(sum(1 << int(f) for f in flips))
        planted.append((copy, original))
    return hashes, planted


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(0, 400),
    threshold=st.integers(0, 14),
    bands=st.one_of(st.none(), st.integers(4, 16)),
    seed=st.integers(0, 2**32 - 1),
)
def test_multi_index_finds_exactly_the_all_pairs_answer(n, threshold, bands, seed):
    hashes, _ = _planted(n, threshold, seed)
    expected = all_pairs_within(hashes, threshold)
    assert np.array_equal(near_pairs(hashes, threshold, bands=bands), expected)


def test_planted_pairs_are_found_and_distances_hold():
    hashes, planted = _planted(3000, 6, seed=1)
    pairs = near_pairs(hashes, 6, bands=4)
    found = {tuple(p) for p in pairs.tolist()}
    close = [(min(a, b), max(a, b)) for a, b in planted if a != b]
    close = [p for p in close if int(hashes[p[0]] ^ hashes[p[1]]).bit_count() <= 6]
    assert len(close) > 500 and set(close) <= found
    assert (popcount(hashes[pairs[:, 0]] ^ hashes[pairs[:, 1]]) <= 6).all()
    assert (pairs[:, 0] < pairs[:, 1]).all()
    assert np.array_equal(pairs, all_pairs_within(hashes, 6))


def test_worst_case_pair_on_band_boundaries_is_found():
    # 6 bits apart, spread so that every one of 7 bands but one differs: the pigeonhole case
    a = 0x0123_4567_89AB_CDEF
    b = a ^ sum(1 << bit for bit in (0, 10, 19, 28, 37, 46))
    assert near_pairs([a, b], 6, bands=7).tolist() == [[0, 1]]
    assert near_pairs([a, b], 5, bands=6).tolist() == []


def test_bad_arguments():
    with pytest.raises(ValueError, match="threshold"):
        near_pairs([1, 2], 65)
    with pytest.raises(ValueError, match="bands"):
        near_pairs([1, 2], 3, bands=2)
    with pytest.raises(ValueError, match="2\\*\\*64"):
        near_pairs([-1, 2], 3)
