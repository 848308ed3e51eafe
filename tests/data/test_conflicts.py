"""Conflicting duplicate groups: found with every row, and each policy's rows."""

from __future__ import annotations

import math

import pytest

from vlmtune.data.conflicts import conflict_records, find_conflicts, resolve_conflicts

ROWS = [
    {"id": "a", "title": "Scarf", "category3_code": "SCARVES", "full_price": 390},
    {"id": "b", "title": "Scarf ", "category3_code": "SCARVES", "full_price": "390.0"},
    {"id": "c", "title": "Scarf", "category3_code": "CAPS", "full_price": 390},
    {"id": "d", "title": "Belt", "category3_code": "BELTS", "full_price": math.nan},
    {"id": "e", "title": "Belt", "category3_code": "BELTS", "full_price": 450},
    {"id": "f", "title": "Cap", "category3_code": "CAPS", "full_price": 290},
]
GROUPS = [0, 0, 0, 1, 1, 2]


def test_find_conflicts_lists_every_row_and_the_fields_that_differ():
    conflicts = find_conflicts(ROWS, GROUPS)
    assert [(c.group, c.rows, c.fields) for c in conflicts] == [
        (0, (0, 1, 2), ("category3_code",)),  # spaces and 390 vs "390.0" agree
        (1, (3, 4), ("full_price",)),  # a missing price differs from a given one
    ]
    assert find_conflicts(ROWS, GROUPS, fields=("title",)) == []
    records = conflict_records(ROWS, conflicts, ["id", "full_price"])
    assert [(r["group"], r["differs"], r["row"], r["id"]) for r in records] == [
        (0, "category3_code", 0, "a"), (0, "category3_code", 1, "b"), (0, "category3_code", 2, "c"),
        (1, "full_price", 3, "d"), (1, "full_price", 4, "e"),
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("policy", "kept"),
    [("keep", [0, 1, 2, 3, 4, 5]), ("drop-group", [5]), ("first", [0, 1, 3, 5])],
)
def test_policies_decide_what_training_sees(policy, kept):
    assert resolve_conflicts(ROWS, find_conflicts(ROWS, GROUPS), policy) == kept


def test_unknown_policy_is_refused():
    with pytest.raises(ValueError, match="keep, drop-group, first"):
        resolve_conflicts(ROWS, [], "last")
