"""``DedupArgs``: the options of duplicate grouping and conflict handling, ready to embed in ``prepare``'s args.

Each field is a command-line option through :func:`vlmtune.utils.config.flag`; the
defaults are the measured ones of :mod:`vlmtune.data.dedup` (see BENCHMARKS.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from vlmtune.data.conflicts import CONFLICT_POLICIES
from vlmtune.data.dedup import DEFAULT_MAX_BITS, DEFAULT_MAX_COLOUR
from vlmtune.data.hash_index import HASH_BITS
from vlmtune.utils.config import ConfigError, flag

__all__ = ["DedupArgs"]


@dataclass
class DedupArgs:
    """How duplicate photos are found, and what training sees of groups that disagree."""

    near_bits: int = flag("--near-bits", default=DEFAULT_MAX_BITS)
    """Near duplicates differ in at most this many of the 64 pHash bits (with --near-colour); -1 turns near-duplicate search off."""
    near_colour: float = flag("--near-colour", default=DEFAULT_MAX_COLOUR)
    """Near duplicates' 8x8 colour thumbnails differ by at most this many levels (0-255) on average."""
    on_conflict: str = flag("--on-conflict", default="keep")
    """Duplicate groups whose rows disagree on title, category or price: keep (all rows), drop-group, or first (the first row's listing wins)."""

    def __post_init__(self) -> None:
        if not -1 <= self.near_bits <= HASH_BITS:
            raise ConfigError(
                f"near_bits must be between 0 and {HASH_BITS} (or -1 for off), got {self.near_bits}"
            )
        if math.isnan(self.near_colour) or not 0 <= self.near_colour <= 255:
            raise ConfigError(
                f"near_colour must be between 0 and 255 levels, got {self.near_colour}"
            )
        if self.on_conflict not in CONFLICT_POLICIES:
            raise ConfigError(
                f"on_conflict must be one of {', '.join(CONFLICT_POLICIES)}, got {self.on_conflict!r}"
            )

    @property
    def max_bits(self) -> int | None:
        """``near_bits`` as :func:`~vlmtune.data.dedup.group_duplicates` takes it (None = off)."""
        return None if self.near_bits < 0 else self.near_bits
