"""``prepare_dataset``: the steps of ``vlmtune prepare``, in order (see :mod:`vlmtune.data.prepare`)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from vlmtune.data.card import ImageTokenCounter, summarise, write_card
from vlmtune.data.catalog import Catalog, load_catalog
from vlmtune.data.images import safe_stem
from vlmtune.data.prepare.args import PrepareArgs, PrepareError
from vlmtune.data.prepare.duplicates import (
    conflict_table,
    group_rows,
    previous_fingerprints,
    previous_splits,
    write_conflicts,
)
from vlmtune.data.prepare.folder import catalog_identity, claim_output, workspace
from vlmtune.data.prepare.journal import Journal, previous_images
from vlmtune.data.prepare.outputs import (
    FAILURES,
    REPORT,
    PrepareReport,
    build_failures,
    build_manifest,
    build_report,
    prune_images,
    record_duplicates,
    write_dataset,
    write_failures,
)
from vlmtune.data.prepare.pool import run_pool
from vlmtune.data.prepare.references import catalog_folder, make_jobs
from vlmtune.utils.errors import RunFailure
from vlmtune.utils.io import atomic_write_json
from vlmtune.utils.logging import get_logger

__all__ = ["NothingKeptError", "check_unique_stems", "prepare_dataset"]

LOG = get_logger(__name__)


class NothingKeptError(RunFailure):
    """Every catalog row was dropped; ``failures.csv`` says why (exit code 1)."""


def prepare_dataset(
    args: PrepareArgs,
    *,
    sleep: Callable[[float], object] | None = None,
    image_tokens: ImageTokenCounter | None = None,
) -> PrepareReport:
    """Build the dataset in ``args.out`` from ``args.source``; see :mod:`vlmtune.data.prepare`.

    Everything that can be checked is checked before any image is fetched: the
    output folder, the catalog (format, columns, at least one row), the stratify
    column and the image file names. ``sleep`` replaces the download backoff
    waits (tests check the computed waits with it). ``image_tokens`` counts a
    photo's image tokens for the data card (the model's processor, handed in by
    the CLI; without it the card leaves the token counts out). Raises
    :class:`~vlmtune.utils.errors.UserError` subclasses for what the user must
    fix and :class:`NothingKeptError` when no row could be kept.
    """
    started = time.monotonic()
    claim = claim_output(args)
    catalog = load_catalog(args.source, args.columns)
    ids = catalog.rows[args.columns.id].astype(str).tolist()
    check_unique_stems(ids)
    _check_stratify(catalog.rows, args)
    refs = catalog.rows[args.columns.image].tolist()
    jobs = make_jobs(refs, catalog_folder(args.source), args.allow_local_paths)
    with workspace(claim, catalog_identity(args.source)) as out:
        journal = Journal(out, args.image_settings())
        previous = previous_images(out, args.image_settings(), args.columns)
        pool = run_pool(jobs, ids, previous, args, out, journal, sleep=sleep)
        known, earlier = previous_fingerprints(out), previous_splits(out, args)
        grouping = group_rows(catalog.rows, ids, pool, args, out, known, earlier)
        manifest = build_manifest(catalog.rows, pool, grouping)
        failures = build_failures(catalog, pool, grouping)
        conflicts = conflict_table(catalog.rows, ids, grouping, args.columns)
        write_failures(out, failures)
        write_conflicts(out, conflicts)
        if manifest.empty:
            raise NothingKeptError(
                _nothing_kept(catalog, failures, claim.path, claim.state == "overwrite")
            )
        pruned = prune_images(out, set(manifest["local_image_path"]))
        write_dataset(out, args, manifest)
        report = build_report(args, catalog, manifest, failures, pool, len(jobs), out)
        report.pruned = pruned
        record_duplicates(report, grouping, conflicts, args.dedup.on_conflict)
        report.finish(time.monotonic() - started)
        atomic_write_json(out / REPORT, report.to_dict())
        summary = summarise(
            out, manifest, args.columns, args.rare_min, image_tokens, args.num_crops
        )
        write_card(out, summary)
        journal.remove()
    LOG.info(
        "prepare: kept %d of %d rows (%d reused), dropped %d (failures.csv) in %.1f s -> %s",
        report.kept, report.rows_read, report.reused, report.dropped, report.seconds, claim.path,
    )  # fmt: skip
    LOG.info(
        "prepare: %d duplicate groups (%d rows), each in one split; %d conflicting groups "
        "(--on-conflict %s: %d rows dropped; conflicts.csv)", report.duplicate_groups,
        report.duplicate_rows, report.conflict_groups, report.on_conflict,
        report.conflict_rows_dropped,
    )  # fmt: skip
    return report


def check_unique_stems(ids: list[str], stem: Callable[[str], str] = safe_stem) -> None:
    """Raise :class:`PrepareError` if two product ids would share an image file name.

    The stem carries 64 bits of the id's SHA-256, so this never fires in practice; checking
    makes "one file per product" a guarantee rather than a probability.
    """
    seen: dict[str, str] = {}
    for product_id in ids:
        name = stem(product_id)
        other = seen.setdefault(name, product_id)
        if other != product_id:
            raise PrepareError(
                f"product ids {other!r} and {product_id!r} map to the same image file name "
                f"{name!r}; rename one of them in the catalog"
            )


def _check_stratify(rows: pd.DataFrame, args: PrepareArgs) -> None:
    """Refuse a stratify column the catalog lacks, before any image is fetched."""
    if args.stratify is not None and args.stratify not in rows.columns:
        raise PrepareError(
            f"stratify column {args.stratify!r} is not in the catalog; it has "
            f"{', '.join(map(str, rows.columns))}"
        )


def _nothing_kept(catalog: Catalog, failures: pd.DataFrame, out: Path, replacing: bool) -> str:
    kinds = (failures["stage"] + "/" + failures["reason"].str.split(":").str[0]).value_counts()
    top = ", ".join(f"{count} {kind}" for kind, count in kinds.head(3).items())
    where = (
        f"{str(out)!r} was left as it was"
        if replacing  # the staging folder holding failures.csv is discarded, not swapped in
        else f"{str(out / FAILURES)!r} lists every row"
    )
    return (
        f"prepare kept none of the {len(failures)} rows of {catalog.source!r} ({top}); {where}. "
        "Fix the image references (or the network) and run the same command again"
    )
