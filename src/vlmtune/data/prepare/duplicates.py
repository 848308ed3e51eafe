"""Duplicate groups in ``vlmtune prepare``: fingerprints of the stored photos, groups, conflicts.

After the pool has stored the images, every kept row's photo is fingerprinted
(:func:`vlmtune.data.dedup.image_fingerprint`; a fingerprint recorded in the earlier
manifest for the same file SHA-256 is reused, so a resumed or repeated run decodes only
new images). Rows are then grouped (:func:`vlmtune.data.dedup.group_duplicates`): same
product id (snapshots of one product, over *all* usable catalog rows, kept or not), same
decoded pixels, or a near-duplicate photo. Each group goes to one split
(:func:`vlmtune.data.group_splits.assign_group_splits`, from the members' ids and the
seed; with the earlier run's splits when the split settings are unchanged, so a product
that joins a group takes the group's split). Groups whose kept rows disagree on the
listing are conflicts (:mod:`vlmtune.data.conflicts`): reported in ``conflicts.csv`` and
``prepare_report.json`` with every member row, and resolved by ``--on-conflict``.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from PIL import Image

from vlmtune.data.catalog import CatalogColumns
from vlmtune.data.conflicts import Conflict, find_conflicts, resolve_conflicts
from vlmtune.data.dedup import Fingerprint, group_duplicates, image_fingerprint
from vlmtune.data.group_splits import assign_group_splits
from vlmtune.data.prepare.args import PrepareArgs
from vlmtune.data.prepare.journal import MANIFEST
from vlmtune.data.prepare.pool import PoolResult
from vlmtune.data.prepared import DATASET_INFO
from vlmtune.utils.io import atomic_path
from vlmtune.utils.logging import get_logger

__all__ = [
    "CONFLICTS",
    "FINGERPRINT_COLUMNS",
    "GROUP_COLUMN",
    "Grouping",
    "conflict_table",
    "fingerprint_columns",
    "group_rows",
    "previous_fingerprints",
    "previous_splits",
    "write_conflicts",
]

LOG = get_logger(__name__)
CONFLICTS = "conflicts.csv"
GROUP_COLUMN = "duplicate_group"
"""Manifest column: the row's duplicate group (0, 1, ... in the order of the groups' smallest id)."""
FINGERPRINT_COLUMNS = ("image_pixels_sha256", "image_phash", "image_colour")
"""Manifest columns holding each photo's fingerprint (:meth:`Fingerprint.to_dict`)."""
_FINGERPRINT_KEYS = dict(zip(FINGERPRINT_COLUMNS, ("exact", "phash", "colour"), strict=True))


@dataclass
class Grouping:
    """Duplicate groups, splits and conflicts of the usable catalog rows."""

    groups: list[int]
    """Group of every usable catalog row."""
    splits: list[str]
    """Split of every usable catalog row (a group's rows share it)."""
    fingerprints: dict[int, Fingerprint] = field(default_factory=dict)
    """Catalog row -> fingerprint of its stored photo (kept rows only)."""
    conflicts: list[Conflict] = field(default_factory=list)
    """Conflicting groups; ``rows`` are catalog rows."""
    dropped: dict[int, str] = field(default_factory=dict)
    """Catalog row -> reason, for rows ``--on-conflict`` takes out."""


def group_rows(
    rows: pd.DataFrame,
    ids: list[str],
    pool: PoolResult,
    args: PrepareArgs,
    out: Path,
    known: dict[str, Fingerprint],
    previous: dict[str, str] | None,
) -> Grouping:
    """Fingerprint the kept rows, group every usable row, split by group, find and resolve conflicts.

    ``known`` maps a stored file's SHA-256 to its fingerprint from an earlier run;
    ``previous`` maps ids to their split in the earlier run (None: split from ids alone).
    """
    stored = {r: res.stored for r, res in pool.rows.items() if res.stored is not None}
    fingerprints = _fingerprints(stored, out, known, args.concurrency)
    per_row = [fingerprints.get(r) for r in range(len(ids))]
    groups = group_duplicates(ids, per_row, args.dedup.max_bits, args.dedup.near_colour)
    strata = None if args.stratify is None else rows[args.stratify].astype(str).tolist()
    splits = assign_group_splits(ids, groups, tuple(args.split), args.seed, previous, strata)
    kept = sorted(stored)
    records = rows.iloc[kept].to_dict("records")
    fields = _listing_fields(args.columns)
    found = find_conflicts(records, [groups[r] for r in kept], fields)
    conflicts = [Conflict(c.group, tuple(kept[i] for i in c.rows), c.fields) for c in found]
    keep = set(resolve_conflicts(records, found, args.dedup.on_conflict, fields))
    dropped = {}
    for c in found:
        for i in c.rows:
            if i not in keep:
                dropped[kept[i]] = (
                    f"conflict: duplicate group {c.group} differs on {', '.join(c.fields)} "
                    f"(--on-conflict {args.dedup.on_conflict}; see conflicts.csv)"
                )
    return Grouping(groups, splits, fingerprints, conflicts, dropped)


def conflict_table(
    rows: pd.DataFrame, ids: list[str], grouping: Grouping, columns: CatalogColumns
) -> pd.DataFrame:
    """One line per member row of each conflicting group: group, differing fields, split, kept, listing."""
    names = [columns.id, *_listing_fields(columns), columns.image]
    records = []
    for c in grouping.conflicts:
        for r in c.rows:
            listing = {name: rows[name].iat[r] for name in names if name in rows.columns}
            records.append(
                {"group": c.group, "differs": "|".join(c.fields), "split": grouping.splits[r],
                 "kept": r not in grouping.dropped} | listing | {columns.id: ids[r]}
            )  # fmt: skip
    return pd.DataFrame(records, columns=["group", "differs", "split", "kept", *names])


def write_conflicts(out: Path, table: pd.DataFrame) -> Path:
    """``conflicts.csv`` (header only when there is none), atomically."""
    with atomic_path(out / CONFLICTS) as tmp:
        table.to_csv(tmp, index=False)
    return out / CONFLICTS


def previous_fingerprints(out: Path) -> dict[str, Fingerprint]:
    """Stored file SHA-256 -> fingerprint, from the manifest of an earlier run in ``out`` ({} if none)."""
    path = Path(out) / MANIFEST
    if not path.is_file():
        return {}
    try:
        frame = pd.read_parquet(path, columns=["image_sha256", *FINGERPRINT_COLUMNS])
    except (OSError, ValueError, KeyError):
        return {}  # an earlier manifest without fingerprints: every photo is fingerprinted again
    return {
        rec["image_sha256"]: Fingerprint.from_dict({_FINGERPRINT_KEYS[k]: rec[k] for k in _FINGERPRINT_KEYS})
        for rec in frame.to_dict("records")
    }  # fmt: skip


def previous_splits(out: Path, args: PrepareArgs) -> dict[str, str] | None:
    """Id -> split of the earlier run in ``out`` when it split with the same settings, else None."""
    info_path, manifest = Path(out) / DATASET_INFO, Path(out) / MANIFEST
    if not (info_path.is_file() and manifest.is_file()):
        return None
    try:
        info = json.loads(info_path.read_text(encoding="utf-8"))
        same = (
            info.get("split_fractions") == list(args.split)
            and info.get("seed") == args.seed
            and info.get("stratify") == args.stratify
        )
        if not same:
            return None
        id_col = info.get("columns", {}).get("id", args.columns.id)
        frame = pd.read_parquet(manifest, columns=[id_col, "split"])
    except (OSError, ValueError, KeyError) as err:
        LOG.warning("splitting from the ids alone: the earlier manifest is unreadable (%s)", err)
        return None
    return dict(zip(frame[id_col].astype(str), frame["split"], strict=True))


def fingerprint_columns(manifest_rows: list[int], grouping: Grouping) -> dict[str, list[Any]]:
    """The :data:`FINGERPRINT_COLUMNS` and :data:`GROUP_COLUMN` values of the manifest's rows."""
    prints = [grouping.fingerprints[r].to_dict() for r in manifest_rows]
    columns: dict[str, list[Any]] = {
        name: [p[key] for p in prints] for name, key in _FINGERPRINT_KEYS.items()
    }
    columns[GROUP_COLUMN] = [grouping.groups[r] for r in manifest_rows]
    return columns


def _listing_fields(columns: CatalogColumns) -> list[str]:
    return [columns.title, columns.category, columns.price]


def _fingerprints(
    stored: dict[int, Any], out: Path, known: dict[str, Fingerprint], workers: int
) -> dict[int, Fingerprint]:
    """Catalog row -> fingerprint of its stored image (from ``known`` by SHA-256, else decoded)."""
    todo = sorted({s.sha256: s.path for s in stored.values() if s.sha256 not in known}.items())
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        prints = list(pool.map(lambda item: _fingerprint(out / item[1]), todo))
    made = dict(zip([sha for sha, _ in todo], prints, strict=True))
    by_sha = {**known, **made}
    return {row: by_sha[s.sha256] for row, s in stored.items()}


def _fingerprint(path: Path) -> Fingerprint:
    with Image.open(path) as image:
        image.load()
        return image_fingerprint(image)
