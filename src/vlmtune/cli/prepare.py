"""``vlmtune prepare``: build the image dataset from a catalog (see :mod:`vlmtune.data.prepare`)."""

from __future__ import annotations

from pathlib import Path

import click
import typer
from rich.console import Console
from rich.table import Table

from vlmtune.cli._common import CONFIG_OPTION, OVERRIDES_ARGUMENT, build_config
from vlmtune.data.catalog import CatalogError
from vlmtune.data.prepare import PrepareArgs, PrepareError, PrepareReport, prepare_dataset

__all__ = ["PrepareFailed", "command", "summary_table"]


class PrepareFailed(click.ClickException):
    """The catalog or the output folder cannot be used; reported in one line, exit code 2."""

    exit_code = 2


_OUT_OPTION = typer.Option(
    None, "--out", "-o", help="Output folder; re-running the same command resumes."
)


def command(
    source: str | None = typer.Option(
        None,
        "--source",
        "-s",
        help="Catalog: CSV/TSV/Parquet/JSONL file, save_to_disk folder, or hub name.",
    ),
    out: Path | None = _OUT_OPTION,
    concurrency: int | None = typer.Option(
        None, "--concurrency", help="Worker threads (default 16)."
    ),
    per_host: int | None = typer.Option(
        None, "--per-host", help="Requests in flight per host (default 16)."
    ),
    timeout: float | None = typer.Option(
        None, "--timeout", help="Connect and read timeout in seconds (default 10)."
    ),
    retries: int | None = typer.Option(
        None, "--retries", help="Retries on timeouts, connection errors, 408, 429, 5xx (default 3)."
    ),
    max_bytes: int | None = typer.Option(
        None, "--max-bytes", help="Largest image in bytes (default 20000000)."
    ),
    max_side: int | None = typer.Option(
        None, "--max-side", help="Downsize images whose longer side exceeds this."
    ),
    max_pixels: int | None = typer.Option(
        None, "--max-pixels", help="Refuse images with more pixels (bomb limit, default 40000000)."
    ),
    split: str | None = typer.Option(
        None, "--split", help="Train,val,test fractions (default 0.9,0.05,0.05)."
    ),
    stratify: str | None = typer.Option(
        None, "--stratify", help="Catalog column to stratify the split by."
    ),
    seed: int | None = typer.Option(None, "--seed", help="Seed of the split hash (default 0)."),
    allow_local_paths: bool = typer.Option(
        False,
        "--allow-local-paths",
        help="Also read absolute image paths and paths outside the catalog's folder.",
    ),
    no_progress: bool = typer.Option(False, "--no-progress", help="No progress bar."),
    config: Path | None = CONFIG_OPTION,
    overrides: list[str] | None = OVERRIDES_ARGUMENT,
) -> None:
    """Build the image dataset from a catalog: fetch or copy every image, validate, split, write the manifest.

    Concurrent, resumable (re-run the same command after a failure or Ctrl-C) and
    explicit about every dropped row (failures.csv). Column names are mapped with
    overrides such as columns.image=picture_url.
    """
    flags = {
        "source": source,
        "out": out,
        "concurrency": concurrency,
        "per_host": per_host,
        "timeout": timeout,
        "retries": retries,
        "max_bytes": max_bytes,
        "max_side": max_side,
        "max_pixels": max_pixels,
        "split": split,
        "stratify": stratify,
        "seed": seed,
        "allow_local_paths": True if allow_local_paths else None,
        "progress": False if no_progress else None,
    }
    args = build_config(PrepareArgs, config, overrides, flags=flags)
    try:
        report = prepare_dataset(args)
    except (CatalogError, PrepareError) as err:
        raise PrepareFailed(str(err)) from err
    except KeyboardInterrupt:
        typer.echo(
            f"vlmtune prepare: interrupted; images stored so far are kept in {str(args.out)!r}. "
            "Run the same command again to resume.",
            err=True,
        )
        raise typer.Abort() from None
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
    table.add_row("http requests", str(report.http_requests))
    table.add_row("seconds", f"{report.seconds:.2f}")
    table.add_row("images/s", f"{report.images_per_second:.1f}")
    return table
