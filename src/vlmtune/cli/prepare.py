"""``vlmtune prepare``: build the image dataset from a catalog: fetch or copy, validate, split.

Concurrent, resumable (re-run the same command after a failure or Ctrl-C) and
explicit about every dropped row (failures.csv). Column names are mapped with
overrides such as columns.image=picture_url. Writes OUT/dataset.parquet (the
manifest with its split column), OUT/images/, OUT/failures.csv,
OUT/conflicts.csv, OUT/prepare_report.json and OUT/data_card.html. Duplicate photos (same pixels, or
near duplicates by perceptual hash) and snapshots of one product id form groups; each
group goes to one split whole.
"""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from vlmtune.data.prepare import PrepareArgs, PrepareReport
from vlmtune.utils.errors import Interrupted

__all__ = ["CONFIG", "run", "summary_table"]

CONFIG = PrepareArgs


def run(args: PrepareArgs) -> None:
    from vlmtune.data.prepare import prepare_dataset
    from vlmtune.models.image_tokens import image_token_counter

    try:
        report = prepare_dataset(args, image_tokens=image_token_counter(args.num_crops))
    except KeyboardInterrupt:
        raise Interrupted(
            f"interrupted; images stored so far are kept in {str(args.out)!r}. "
            "Run the same command again to resume."
        ) from None
    Console(stderr=True).print(summary_table(report))


def summary_table(report: PrepareReport) -> Table:
    """The end-of-run table: kept rows, dropped rows by stage/reason, time and rate."""
    table = Table(title=f"vlmtune prepare -> {report.out}", show_header=True)
    table.add_column("outcome")
    table.add_column("rows", justify="right")
    table.add_row("kept", str(report.kept))
    table.add_row("  reused from an earlier run", str(report.reused))
    table.add_row("  downloaded", str(report.downloaded))
    table.add_row("  copied from local files", str(report.copied))
    table.add_row("dropped (see failures.csv)", str(report.dropped))
    for reason, count in sorted(report.dropped_by_reason.items(), key=lambda kv: (-kv[1], kv[0])):
        table.add_row(f"  {reason}", str(count))
    splits = ", ".join(f"{name} {count}" for name, count in report.splits.items())
    table.add_section()
    table.add_row("splits", splits)
    table.add_row("duplicate groups (each in one split)", str(report.duplicate_groups))
    table.add_row(
        f"conflicting groups (--on-conflict {report.on_conflict}; conflicts.csv)",
        str(report.conflict_groups),
    )
    if report.conflict_rows_dropped:
        table.add_row("  rows dropped by --on-conflict", str(report.conflict_rows_dropped))
    table.add_row("http requests", str(report.http_requests))
    table.add_row("seconds", f"{report.seconds:.2f}")
    table.add_row("images/s", f"{report.images_per_second:.1f}")
    table.add_row("data card", f"{report.out}/data_card.html (vlmtune inspect {report.out})")
    return table
