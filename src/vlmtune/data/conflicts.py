"""Duplicate groups whose rows disagree on the listing, and what training sees of them.

The same photo under two titles, categories or prices teaches the model two answers to one
question. :func:`find_conflicts` lists such groups with every member row (for
``prepare_report.json`` and ``conflicts.csv``); :func:`resolve_conflicts` applies the
user's choice, a pure function of the rows:

- ``keep`` (default): every row stays; the conflicts are only reported;
- ``drop-group``: every row of a conflicting group goes;
- ``first``: the listing of the group's first row (catalog order) wins: rows that agree
  with it on every listing field stay, the others go.

Values are compared after trimming spaces, and as numbers when both parse as numbers, so
``"1,200.00"`` and ``1200`` agree; a missing value (None, NaN, blank) differs from any given one.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "CONFLICT_POLICIES",
    "LISTING_FIELDS",
    "Conflict",
    "conflict_records",
    "find_conflicts",
    "resolve_conflicts",
]

CONFLICT_POLICIES = ("keep", "drop-group", "first")
LISTING_FIELDS = ("title", "category3_code", "full_price")
"""The listing's columns under their DBQ names (``CatalogColumns`` defaults)."""


@dataclass(frozen=True)
class Conflict:
    """A duplicate group whose rows disagree on at least one listing field."""

    group: int
    rows: tuple[int, ...]
    """Every member row (indices into the rows given), in order."""
    fields: tuple[str, ...]
    """The listing fields on which the members disagree, in the order asked."""


def find_conflicts(
    rows: Sequence[Mapping[str, Any]],
    groups: Sequence[int],
    fields: Sequence[str] = LISTING_FIELDS,
) -> list[Conflict]:
    """The groups (of ``groups``, one number per row) whose rows differ on any of ``fields``, by group."""
    if len(rows) != len(groups):
        raise ValueError(f"{len(rows)} rows but {len(groups)} group numbers")
    members: dict[int, list[int]] = defaultdict(list)
    for row, group in enumerate(groups):
        members[group].append(row)
    conflicts = []
    for group in sorted(members):
        rows_of = members[group]
        differ = tuple(
            name for name in fields if len({_value(rows[r].get(name)) for r in rows_of}) > 1
        )
        if differ:
            conflicts.append(Conflict(group, tuple(rows_of), differ))
    return conflicts


def resolve_conflicts(
    rows: Sequence[Mapping[str, Any]],
    conflicts: Sequence[Conflict],
    policy: str = "keep",
    fields: Sequence[str] = LISTING_FIELDS,
) -> list[int]:
    """Indices of the rows training sees under ``policy`` (one of :data:`CONFLICT_POLICIES`), in order."""
    if policy not in CONFLICT_POLICIES:
        raise ValueError(
            f"on_conflict must be one of {', '.join(CONFLICT_POLICIES)}, got {policy!r}"
        )
    dropped: set[int] = set()
    for conflict in conflicts if policy != "keep" else ():
        if policy == "drop-group":
            dropped.update(conflict.rows)
        else:
            first = _listing(rows[conflict.rows[0]], fields)
            dropped.update(r for r in conflict.rows if _listing(rows[r], fields) != first)
    return [r for r in range(len(rows)) if r not in dropped]


def conflict_records(
    rows: Sequence[Mapping[str, Any]],
    conflicts: Sequence[Conflict],
    columns: Sequence[str],
) -> list[dict[str, Any]]:
    """One flat record per member row of each conflict (for ``conflicts.csv`` / the report).

    Each record holds ``group``, ``differs`` (the fields, ``|``-joined), ``row`` and ``columns``.
    """
    return [
        {"group": c.group, "differs": "|".join(c.fields), "row": r}
        | {name: rows[r].get(name) for name in columns}
        for c in conflicts
        for r in c.rows
    ]


def _listing(row: Mapping[str, Any], fields: Sequence[str]) -> tuple[object, ...]:
    return tuple(_value(row.get(name)) for name in fields)


def _value(value: Any) -> object:
    """A comparable form: None for missing, a float for a number, else the trimmed text."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    text = str(value).strip()
    if not text:
        return None
    try:
        number = float(text.replace(",", ""))
    except ValueError:
        return text
    return None if math.isnan(number) else number
