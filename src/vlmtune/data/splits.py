"""Deterministic train/val/test splits from product ids.

Each id gets a key, the SHA-256 of ``"{seed}\\0{id}"``. Nothing depends on the
row order, the process, the machine or Python's hash seed: the same catalog
and seed always give the same split. There are two ways to cut:

- **Without a stratify column** (the default), an id's split comes from its own
  key alone: the key's first 64 bits, read as a number ``u`` in [0, 1), are
  compared with the cumulative fractions (``u < train`` -> train, ``u < train +
  val`` -> val, else test). Adding rows to a catalog, or removing some, never
  moves another product to another split, so a catalog that grows between two
  ``prepare`` runs cannot leak earlier training rows into val or test. The
  price is that the counts are only close to ``n * fraction`` (binomial
  spread), not exact.
- **With a stratify column**, the rows of each stratum are ordered by key and
  cut in the requested proportions (largest-remainder rounding, so each
  stratum's counts add up exactly). This trades the stability above for exact
  proportions: adding rows to a stratum can move its rows near a cut to the
  neighbouring split.

Either way, when a split with a non-zero fraction would come out empty while
there are enough rows, the train row with the smallest key moves to it, so a
small demo catalog still has a val and a test row. Only such tiny catalogs
(a split with zero rows) can see a product change split when rows are added.
"""

from __future__ import annotations

import hashlib
import math
from collections import defaultdict
from collections.abc import Sequence

__all__ = ["SPLITS", "assign_splits", "parse_split_fractions"]

SPLITS = ("train", "val", "test")
_UNIT_BITS = 64  # bits of the key read as the number in [0, 1)


def parse_split_fractions(value: str | Sequence[float]) -> tuple[float, float, float]:
    """``"0.9,0.05,0.05"`` or three numbers -> (train, val, test) fractions summing to 1."""
    if isinstance(value, str):
        parts = [p.strip() for p in value.split(",")]
        try:
            numbers = [float(p) for p in parts]
        except ValueError as err:
            raise ValueError(
                f"split {value!r} must be three numbers such as 0.9,0.05,0.05"
            ) from err
    else:
        numbers = [float(v) for v in value]
    if len(numbers) != 3:
        raise ValueError(
            f"split {value!r} must have three parts (train, val, test), got {len(numbers)}"
        )
    if any(math.isnan(n) or n < 0 for n in numbers):
        raise ValueError(f"split {value!r}: fractions must be >= 0")
    if numbers[0] <= 0:
        raise ValueError(f"split {value!r}: the train fraction must be > 0")
    if abs(sum(numbers) - 1.0) > 1e-6:
        raise ValueError(f"split {value!r}: fractions must sum to 1, they sum to {sum(numbers):g}")
    return numbers[0], numbers[1], numbers[2]


def assign_splits(
    ids: Sequence[str],
    fractions: tuple[float, float, float],
    seed: int = 0,
    strata: Sequence[object] | None = None,
) -> list[str]:
    """Split name (``train``/``val``/``test``) for each of ``ids``, in the same order.

    Without ``strata`` each id's split depends on that id and ``seed`` only
    (counts close to, not exactly, ``len(ids) * fractions``); with ``strata``
    each stratum gets the exact proportions. See the module docstring.
    """
    if strata is not None and len(strata) != len(ids):
        raise ValueError(f"strata has {len(strata)} values for {len(ids)} ids")
    keys = [_key(i, seed) for i in ids]
    if strata is None:
        out = [_split_of(_unit(key), fractions) for key in keys]
    else:
        out = _ranked_splits(keys, strata, fractions)
    _fill_empty(out, keys, fractions)
    return out


def _key(product_id: str, seed: int) -> str:
    return hashlib.sha256(f"{seed}\0{product_id}".encode("utf-8", "surrogatepass")).hexdigest()


def _unit(key: str) -> float:
    """The key's first 64 bits as a number in [0, 1)."""
    return int(key[: _UNIT_BITS // 4], 16) / 2**_UNIT_BITS


def _split_of(u: float, fractions: tuple[float, float, float]) -> str:
    """The split whose cumulative-fraction interval holds ``u``."""
    wanted = [(name, f) for name, f in zip(SPLITS, fractions, strict=True) if f > 0]
    edge = 0.0
    for name, fraction in wanted[:-1]:
        edge += fraction
        if u < edge:
            return name
    return wanted[-1][0]  # the last non-empty split takes the rest (fractions sum to 1 +- 1e-6)


def _ranked_splits(
    keys: list[str], strata: Sequence[object], fractions: tuple[float, float, float]
) -> list[str]:
    """Order each stratum's rows by key and cut them in exact proportions."""
    groups: dict[str, list[int]] = defaultdict(list)
    for row, stratum in enumerate(strata):
        groups[str(stratum)].append(row)
    out = [""] * len(keys)
    for rows in groups.values():
        rows.sort(key=keys.__getitem__)
        start = 0
        for name, count in zip(SPLITS, _counts(len(rows), fractions), strict=True):
            for row in rows[start : start + count]:
                out[row] = name
            start += count
    return out


def _counts(n: int, fractions: tuple[float, float, float]) -> list[int]:
    """Integer counts summing to ``n``, closest to ``n * fractions`` (largest remainder)."""
    exact = [n * f for f in fractions]
    counts = [math.floor(x) for x in exact]
    by_remainder = sorted(range(3), key=lambda i: (-(exact[i] - counts[i]), i))
    for i in by_remainder[: n - sum(counts)]:
        counts[i] += 1
    return counts


def _fill_empty(out: list[str], keys: list[str], fractions: tuple[float, float, float]) -> None:
    wanted = [name for name, f in zip(SPLITS, fractions, strict=True) if f > 0]
    for name in wanted[1:]:
        if name in out or out.count("train") < 2:
            continue
        train_rows = [r for r, s in enumerate(out) if s == "train"]
        out[min(train_rows, key=keys.__getitem__)] = name
