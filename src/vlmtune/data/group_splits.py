"""Train/val/test splits by duplicate group: every group goes to one split as a whole.

A group (:func:`vlmtune.data.dedup.group_duplicates`) is split as if it were the one product
whose id sorts first among its members (its *representative*): the representatives go
through :func:`vlmtune.data.splits.assign_splits`, the same seeded id hash as ungrouped
products, and every member takes its representative's split. A product without duplicates
is its own representative, so it lands exactly where ``assign_splits`` puts it. The
representative is picked by string order, not by the hash, so the splits keep their
proportions (picking the member with the smallest hash would bias groups toward train).

Guarantees (without a stratify column, and apart from the tiny-catalog rule of
``assign_splits`` that fills an empty split):

- a group's split depends only on its members' ids and the seed, never on row order;
- **adding products that join no existing group never moves a group**: its members, hence
  its representative, are unchanged;
- a new product that joins a group moves it only when the newcomer's id sorts before all of
  the members'; and when it bridges groups that were in different splits, one of them must
  move.

With ``previous`` (id -> split of the last ``prepare`` run, from its manifest) both of those
cases are settled by the earlier run: a group with members that had a split takes the
*first* of their splits in train, val, test order. So a new product that joins a group
takes that group's split, **no row that was in train leaves train** (a bridge moves val or
test rows into train, never the reverse), and a group changes split only when a bridge
joins groups the earlier run kept apart. With a stratify column, a group's stratum is its
representative's, and proportions are exact per stratum at the cost of stability (as in
``assign_splits``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from vlmtune.data.splits import SPLITS, assign_splits

__all__ = ["assign_group_splits", "straddling_groups"]


def assign_group_splits(
    ids: Sequence[object],
    groups: Sequence[int],
    fractions: tuple[float, float, float],
    seed: int = 0,
    previous: Mapping[str, str] | None = None,
    strata: Sequence[object] | None = None,
) -> list[str]:
    """Split name of each row; rows of one group always share it (see the module docstring).

    ``ids``, ``groups`` (group number per row) and ``strata`` have one entry per row;
    ``previous`` maps ids of an earlier run to their split (unknown ids, and splits whose
    fraction is now 0, are ignored).
    """
    if len(groups) != len(ids) or (strata is not None and len(strata) != len(ids)):
        raise ValueError("ids, groups and strata must have one entry per row")
    reps = _representatives([str(i) for i in ids], groups)
    order = sorted(reps)
    rep_strata = None if strata is None else [strata[reps[g]] for g in order]
    chosen = assign_splits([str(ids[reps[g]]) for g in order], fractions, seed, rep_strata)
    split_of = dict(zip(order, chosen, strict=True))
    if previous:
        wanted = [name for name, f in zip(SPLITS, fractions, strict=True) if f > 0]
        split_of.update(_earlier_splits([str(i) for i in ids], groups, previous, wanted))
    return [split_of[g] for g in groups]


def straddling_groups(groups: Sequence[int], splits: Sequence[str]) -> list[int]:
    """The groups whose rows are in more than one split (sorted; empty when the split is clean)."""
    seen: dict[int, str] = {}
    bad: set[int] = set()
    for group, split in zip(groups, splits, strict=True):
        if seen.setdefault(group, split) != split:
            bad.add(group)
    return sorted(bad)


def _representatives(ids: list[str], groups: Sequence[int]) -> dict[int, int]:
    """Group -> the row holding its smallest id (the first such row)."""
    reps: dict[int, int] = {}
    for row, group in enumerate(groups):
        if group not in reps or ids[row] < ids[reps[group]]:
            reps[group] = row
    return reps


def _earlier_splits(
    ids: list[str], groups: Sequence[int], previous: Mapping[str, str], wanted: list[str]
) -> dict[int, str]:
    """Group -> the first (train, val, test order) split of ``wanted`` any member had in ``previous``."""
    rank = {name: k for k, name in enumerate(wanted)}
    best: dict[int, str] = {}
    for product_id, group in zip(ids, groups, strict=True):
        split = previous.get(product_id)
        if split in rank and (group not in best or rank[split] < rank[best[group]]):
            best[group] = split
    return best
