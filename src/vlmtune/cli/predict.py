"""``vlmtune predict``: a listing per product photo, as CSV (see :mod:`vlmtune.evaluation.predict`)."""

from __future__ import annotations

import re
from pathlib import Path

import typer

from vlmtune.cli._common import CONFIG_OPTION, build_config
from vlmtune.evaluation.args import PredictArgs
from vlmtune.evaluation.predict import run_predict
from vlmtune.utils.errors import UserError

__all__ = ["command", "split_inputs"]

_OVERRIDE = re.compile(r"^[A-Za-z_][\w.]*=")


def split_inputs(items: list[str]) -> tuple[list[str], list[str]]:
    """(image paths, key=value overrides): an item is an override when it looks like ``a.b=c``
    and names no existing file."""
    paths, overrides = [], []
    for item in items:
        is_override = bool(_OVERRIDE.match(item)) and not Path(item).exists()
        (overrides if is_override else paths).append(item)
    return paths, overrides


_ITEMS_ARGUMENT = typer.Argument(
    ...,
    help="Image files and/or folders, then optional key=value overrides (e.g. generation.batch_size=4).",
    show_default=False,
    metavar="IMAGES_OR_DIRS...",
)
_MODEL_OPTION = typer.Option(
    None, "--model", "-m", help="Checkpoint, PEFT adapter or training run folder."
)
_OUT_OPTION = typer.Option(None, "--out", "-o", help="CSV to write (default predictions.csv).")


def command(
    items: list[str] = _ITEMS_ARGUMENT,
    model: Path | None = _MODEL_OPTION,
    out: Path | None = _OUT_OPTION,
    batch_size: int | None = typer.Option(
        None, "--batch-size", help="Images per generate call (default 8)."
    ),
    max_new_tokens: int | None = typer.Option(
        None, "--max-new-tokens", help="Most tokens per listing (default 64)."
    ),
    device: str | None = typer.Option(None, "--device", help="cpu, cuda, cuda:1 ..."),
    config: Path | None = CONFIG_OPTION,
) -> None:
    """Write a listing (title, category, price) for each image; unreadable images are reported per file.

    The CSV has the columns image, title, category3_code, full_price, raw_text, error.
    The exit code is 1 when some image could not be read (its row carries the error),
    0 when every image got a listing.
    """
    paths, overrides = split_inputs(items)
    flags = {
        "inference.model": model,
        "out": out,
        "inference.device": device,
        "inference.generation.batch_size": batch_size,
        "inference.generation.max_new_tokens": max_new_tokens,
    }
    if paths:
        flags["inputs"] = paths
    args = build_config(PredictArgs, config, overrides, flags=flags)
    try:
        result = run_predict(args)
    except UserError as err:
        typer.echo(f"vlmtune predict: {err}", err=True)
        raise typer.Exit(2) from err
    for row in result.failures:
        typer.echo(f"vlmtune predict: {row['image']}: {row['error']}", err=True)
    done = len(result.rows) - len(result.failures)
    typer.echo(
        f"vlmtune predict: {done} listing(s), {len(result.failures)} failure(s) -> {result.out}",
        err=True,
    )
    if result.failures:
        raise typer.Exit(1)
