"""Splits by duplicate group: groups never straddle, and growing the catalog moves no group."""

from __future__ import annotations

import random

from vlmtune.data.group_splits import assign_group_splits, straddling_groups
from vlmtune.data.splits import assign_splits

FRACTIONS = (0.8, 0.1, 0.1)


def _catalog(n: int, seed: int) -> tuple[list[str], list[int]]:
    """``n`` ids in groups of 1-4 members (group numbers by first appearance)."""
    rng = random.Random(seed)
    ids, groups = [], []
    while len(ids) < n:
        group = len(set(groups))
        for _ in range(rng.choice([1, 1, 1, 2, 3, 4])):
            ids.append(f"{rng.randrange(10**8):08d}")
            groups.append(group)
    return ids, groups


def _by_id(ids, splits):
    return dict(zip(ids, splits, strict=True))


def test_groups_never_straddle_and_singletons_split_like_assign_splits():
    ids, groups = _catalog(600, seed=0)
    splits = assign_group_splits(ids, groups, FRACTIONS, seed=3)
    assert straddling_groups(groups, splits) == []
    alone = [r for r, g in enumerate(groups) if groups.count(g) == 1]
    per_id = assign_splits(ids, FRACTIONS, seed=3)
    assert [splits[r] for r in alone] == [per_id[r] for r in alone]
    counts = {s: splits.count(s) for s in ("train", "val", "test")}
    # groups are not biased toward train
    assert counts["train"] > 380 and counts["val"] > 25 and counts["test"] > 25


def test_adding_100_products_that_join_no_group_moves_no_group():
    ids, groups = _catalog(500, seed=1)
    before = _by_id(ids, assign_group_splits(ids, groups, FRACTIONS))
    new_ids, new_groups = _catalog(100, seed=2)
    offset = max(groups) + 1
    grown_ids = new_ids[:50] + ids + new_ids[50:]  # row order changes too
    grown_groups = (
        [g + offset for g in new_groups[:50]] + groups + [g + offset for g in new_groups[50:]]
    )
    after = _by_id(grown_ids, assign_group_splits(grown_ids, grown_groups, FRACTIONS))
    assert all(after[i] == before[i] for i in ids)


def test_adding_100_products_that_join_groups_moves_no_group_with_the_previous_splits():
    ids, groups = _catalog(500, seed=4)
    before = _by_id(ids, assign_group_splits(ids, groups, FRACTIONS))
    rng = random.Random(5)
    # the new ids sort before every old one: each would become its group's representative
    new_ids = [f"{k:02d}" for k in range(100)]
    joined = [rng.choice(groups) if k < 60 else max(groups) + 1 + k for k in range(100)]
    grown_ids, grown_groups = ids + new_ids, groups + joined
    pure = _by_id(grown_ids, assign_group_splits(grown_ids, grown_groups, FRACTIONS))
    assert any(pure[i] != before[i] for i in ids)  # without the earlier run, some groups move
    after = assign_group_splits(grown_ids, grown_groups, FRACTIONS, previous=before)
    assert all(after[r] == before[i] for r, i in enumerate(ids))
    assert straddling_groups(grown_groups, after) == []


def test_a_bridge_between_splits_keeps_train_rows_in_train():
    ids = ["a", "b", "c"]  # three groups of one in the earlier run
    previous = {"a": "test", "b": "train", "c": "val"}
    bridged = assign_group_splits(ids + ["n"], [0, 0, 1, 0], FRACTIONS, previous=previous)
    assert bridged == ["train", "train", "val", "train"]
    # a previous split whose fraction is now 0 is not kept
    assert assign_group_splits(["c"], [0], (0.5, 0.0, 0.5), previous=previous)[0] != "val"
