"""What ``vlmtune prepare`` writes at the end: the manifest, ``failures.csv``, the dataset card, the report.

- ``dataset.parquet`` and ``dataset.csv``: the catalog's kept rows with
  ``local_image_path`` (relative), ``image_width``, ``image_height``,
  ``image_sha256``, ``split`` (the layout :mod:`vlmtune.data.prepared` reads),
  ``duplicate_group`` and the photo's fingerprint (:mod:`.duplicates`);
- ``conflicts.csv``: every member row of each duplicate group that disagrees on the listing;
- ``failures.csv``: one row per dropped catalog row, ``source_row`` (0-based),
  ``id``, ``url`` (the reference as written), ``stage`` (:data:`STAGES`) and
  ``reason`` (``"<kind>: <details>"``), so ``kept + dropped == rows read``;
- ``vlmtune_dataset.json``: the column mapping, split settings and image settings;
- ``prepare_report.json``: :class:`PrepareReport`.

Each file is written atomically; image files of earlier runs that no kept row
uses any more are pruned.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from vlmtune.data.catalog import Catalog
from vlmtune.data.prepare.args import PrepareArgs
from vlmtune.data.prepare.duplicates import (
    FINGERPRINT_COLUMNS,
    GROUP_COLUMN,
    Grouping,
    fingerprint_columns,
)
from vlmtune.data.prepare.journal import MANIFEST
from vlmtune.data.prepare.pool import IMAGES_DIR, PoolResult
from vlmtune.data.prepared import DATASET_INFO
from vlmtune.data.splits import SPLITS
from vlmtune.utils.io import atomic_path, atomic_write_json

__all__ = [
    "FAILURE_COLUMNS",
    "FAILURES",
    "REPORT",
    "STAGES",
    "PrepareReport",
    "build_failures",
    "build_manifest",
    "build_report",
    "record_duplicates",
    "prune_images",
    "write_dataset",
    "write_failures",
]

STAGES = ("catalog", "url", "download", "local", "image", "store", "conflict")
FAILURE_COLUMNS = ["source_row", "id", "url", "stage", "reason"]
NEW_COLUMNS = [
    "local_image_path", "image_width", "image_height", "image_sha256", "split", GROUP_COLUMN,
    *FINGERPRINT_COLUMNS,
]  # fmt: skip
FAILURES = "failures.csv"
REPORT = "prepare_report.json"
_STORED_NAME = re.compile(r"^[A-Za-z0-9._-]*-[0-9a-f]{16}\.(jpg|png)$")


@dataclass
class PrepareReport:
    """What a run did; also written to ``prepare_report.json``."""

    source: str
    out: str
    rows_read: int = 0
    """Catalog rows, usable or not."""
    kept: int = 0
    """Rows in the manifest (with a stored, valid image)."""
    dropped: int = 0
    """Rows in ``failures.csv`` (catalog rejects included); ``kept + dropped == rows_read``."""
    reused: int = 0
    """Kept rows whose image an earlier run had stored (no request made)."""
    downloaded: int = 0
    """Kept rows whose image was fetched over http(s) in this run."""
    copied: int = 0
    """Kept rows whose image was copied from a local path in this run."""
    dropped_by_stage: dict[str, int] = field(default_factory=dict)
    dropped_by_reason: dict[str, int] = field(default_factory=dict)
    """``"<stage>/<kind>"`` -> rows, e.g. ``"download/http 404"``."""
    splits: dict[str, int] = field(default_factory=dict)
    """Kept rows per split."""
    unique_references: int = 0
    """Distinct image references among usable catalog rows (duplicates fetched once)."""
    http_requests: int = 0
    """HTTP requests made (retries and redirect hops included)."""
    bytes_downloaded: int = 0
    bytes_stored: int = 0
    """Size of all kept images on disk."""
    pruned: int = 0
    """Image files of earlier runs removed because no kept row uses them any more."""
    duplicate_groups: int = 0
    """Groups of two or more usable catalog rows (same id, same pixels, or near-duplicate photos)."""
    duplicate_rows: int = 0
    """Usable catalog rows in those groups."""
    largest_group: int = 0
    """Rows in the largest group."""
    on_conflict: str = "keep"
    """The ``--on-conflict`` policy applied."""
    conflict_groups: int = 0
    """Groups whose kept rows disagree on the listing (title, category or price)."""
    conflict_rows_dropped: int = 0
    """Rows ``--on-conflict`` took out (stage ``conflict`` of ``failures.csv``)."""
    conflicts: list[dict[str, Any]] = field(default_factory=list)
    """Each conflicting group: ``group``, ``differs`` (fields) and ``rows`` (every member's listing)."""
    seconds: float = 0.0
    images_per_second: float = 0.0
    """Images stored in this run (downloaded + copied) per second of wall time."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def finish(self, seconds: float) -> None:
        """Set the wall time and the rate of images stored in this run."""
        self.seconds = round(seconds, 3)
        made = self.downloaded + self.copied
        self.images_per_second = round(made / self.seconds, 2) if self.seconds > 0 else 0.0


def build_manifest(rows: pd.DataFrame, pool: PoolResult, grouping: Grouping) -> pd.DataFrame:
    """The kept catalog rows (original columns) plus the image, split, group and fingerprint columns."""
    results = pool.rows
    kept = [
        i for i in range(len(rows))
        if results.get(i) and results[i].stored is not None and i not in grouping.dropped
    ]  # fmt: skip
    frame = rows.iloc[kept].reset_index(drop=True).drop(columns=NEW_COLUMNS, errors="ignore")
    stored = [results[i].stored for i in kept]
    frame["local_image_path"] = pd.Series([s.path for s in stored], dtype="object")
    frame["image_width"] = pd.Series([s.width for s in stored], dtype="int64")
    frame["image_height"] = pd.Series([s.height for s in stored], dtype="int64")
    frame["image_sha256"] = pd.Series([s.sha256 for s in stored], dtype="object")
    frame["split"] = pd.Series([grouping.splits[i] for i in kept], dtype="object")
    for name, values in fingerprint_columns(kept, grouping).items():
        frame[name] = pd.Series(values, dtype="int64" if name == GROUP_COLUMN else "object")
    return frame


def build_failures(catalog: Catalog, pool: PoolResult, grouping: Grouping) -> pd.DataFrame:
    """Catalog rejects, rows whose image failed and rows dropped by ``--on-conflict``, in source order."""
    source_rows = _kept_source_rows(catalog)
    id_col, image_col = catalog.columns.id, catalog.columns.image
    records = [
        {"source_row": int(r.source_row), "id": r.id, "url": r.image, "stage": r.stage,
         "reason": r.reason}
        for r in catalog.rejects.itertuples(index=False)
    ]  # fmt: skip
    for i in range(len(catalog.rows)):
        result = pool.rows.get(i)
        if result is None or (result.stored is not None and i not in grouping.dropped):
            continue
        stage, reason = (
            ("conflict", grouping.dropped[i]) if result.stored is not None
            else (result.stage, result.reason)
        )  # fmt: skip
        records.append(
            {
                "source_row": source_rows[i],
                "id": str(catalog.rows[id_col].iat[i]),
                "url": str(catalog.rows[image_col].iat[i]).strip(),
                "stage": stage,
                "reason": reason,
            }
        )
    frame = pd.DataFrame(records, columns=FAILURE_COLUMNS)
    return frame.sort_values("source_row", kind="stable").reset_index(drop=True)


def _kept_source_rows(catalog: Catalog) -> list[int]:
    """0-based source row of each kept catalog row (load_catalog keeps rows in order)."""
    rejected = set(int(r) for r in catalog.rejects["source_row"])
    total = len(catalog.rows) + len(catalog.rejects)
    return [r for r in range(total) if r not in rejected]


def prune_images(out: Path, keep: set[str]) -> int:
    """Remove files named like ours in ``images/`` that no kept row uses (left by earlier runs)."""
    pruned = 0
    for path in (out / IMAGES_DIR).iterdir():
        rel = f"{IMAGES_DIR}/{path.name}"
        if path.is_file() and _STORED_NAME.match(path.name) and rel not in keep:
            path.unlink(missing_ok=True)
            pruned += 1
    return pruned


def write_failures(out: Path, failures: pd.DataFrame) -> Path:
    """``failures.csv``, atomically."""
    with atomic_path(out / FAILURES) as tmp:
        failures.to_csv(tmp, index=False)
    return out / FAILURES


def write_dataset(out: Path, args: PrepareArgs, manifest: pd.DataFrame) -> None:
    """The manifest (Parquet and CSV) and the dataset card, each atomically."""
    with atomic_path(out / MANIFEST) as tmp:
        manifest.to_parquet(tmp, index=False)
    with atomic_path(out / "dataset.csv") as tmp:
        manifest.to_csv(tmp, index=False)
    counts = manifest["split"].value_counts()
    info = {
        "columns": asdict(args.columns),
        "source": args.source,
        "splits": {name: int(counts.get(name, 0)) for name in SPLITS},
        "split_fractions": list(args.split),
        "stratify": args.stratify,
        "seed": args.seed,
        "image_settings": args.image_settings(),
        "created_by": "vlmtune prepare",
    }
    atomic_write_json(out / DATASET_INFO, info)


def build_report(
    args: PrepareArgs,
    catalog: Catalog,
    manifest: pd.DataFrame,
    failures: pd.DataFrame,
    pool: PoolResult,
    unique_refs: int,
    out: Path,
) -> PrepareReport:
    """Counts of the run (times are set by :meth:`PrepareReport.finish`)."""
    how = Counter(r.how for r in pool.rows.values() if r.stored is not None)
    kinds = Counter(
        f"{s}/{str(r).split(':')[0]}"
        for s, r in zip(failures["stage"], failures["reason"], strict=True)
    )
    split_counts = manifest["split"].value_counts()
    return PrepareReport(
        source=args.source,
        out=str(args.out),
        rows_read=len(catalog.rows) + len(catalog.rejects),
        kept=len(manifest),
        dropped=len(failures),
        reused=how["reused"],
        downloaded=how["downloaded"],
        copied=how["copied"],
        dropped_by_stage={s: int(n) for s, n in failures["stage"].value_counts().items()},
        dropped_by_reason=dict(sorted(kinds.items())),
        splits={name: int(split_counts.get(name, 0)) for name in SPLITS},
        unique_references=unique_refs,
        http_requests=pool.http_requests,
        bytes_downloaded=pool.bytes_downloaded,
        bytes_stored=int(sum((out / p).stat().st_size for p in manifest["local_image_path"])),
    )


def record_duplicates(
    report: PrepareReport, grouping: Grouping, conflicts: pd.DataFrame, policy: str
) -> None:
    """Fill the duplicate and conflict fields of ``report`` (``conflicts``: :func:`conflict_table`)."""
    sizes = Counter(grouping.groups)
    report.duplicate_groups = sum(1 for n in sizes.values() if n > 1)
    report.duplicate_rows = sum(n for n in sizes.values() if n > 1)
    report.largest_group = max(sizes.values(), default=0)
    report.on_conflict = policy
    report.conflict_groups = len(grouping.conflicts)
    report.conflict_rows_dropped = len(grouping.dropped)
    listing = [c for c in conflicts.columns if c not in ("group", "differs")]
    report.conflicts = [
        {"group": int(group), "differs": str(rows["differs"].iat[0]).split("|"),
         "rows": json.loads(rows[listing].to_json(orient="records"))}
        for group, rows in conflicts.groupby("group", sort=True)
    ]  # fmt: skip
