"""``vlmtune eval``: judge what a model writes, field by field (see :mod:`vlmtune.evaluation.evaluate`)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from vlmtune.cli._common import CONFIG_OPTION, OVERRIDES_ARGUMENT, build_config
from vlmtune.evaluation.args import EvalArgs
from vlmtune.evaluation.evaluate import EvalResult
from vlmtune.evaluation.metrics import METRICS
from vlmtune.evaluation.report import BASELINE_LABELS
from vlmtune.evaluation.run import run_eval
from vlmtune.utils.errors import UserError

__all__ = ["command", "summary_table"]

_HEADLINE = (
    "parse_rate",
    "title_exact_match",
    "title_token_f1",
    "category_accuracy",
    "category_macro_f1",
    "price_mape",
    "price_within_25pct",
)


_MODEL_OPTION = typer.Option(
    None, "--model", "-m", help="Checkpoint, PEFT adapter or training run folder."
)
_DATA_OPTION = typer.Option(None, "--data", "-d", help="Prepared dataset folder.")
_BASE_OPTION = typer.Option(
    None, "--base-model", help="Model before fine-tuning, for a before/after comparison."
)
_OUT_OPTION = typer.Option(
    None, "--out", "-o", help="Output folder (default RUN/eval-SPLIT or ./eval-MODEL-SPLIT)."
)


def command(
    model: Path | None = _MODEL_OPTION,
    data: Path | None = _DATA_OPTION,
    split: str | None = typer.Option(None, "--split", help="train, val or test (default test)."),
    limit: int | None = typer.Option(None, "--limit", help="Evaluate only the first N rows."),
    base_model: Path | None = _BASE_OPTION,
    out: Path | None = _OUT_OPTION,
    batch_size: int | None = typer.Option(
        None, "--batch-size", help="Images per generate call (default 8)."
    ),
    max_new_tokens: int | None = typer.Option(
        None, "--max-new-tokens", help="Most tokens per listing (default 64)."
    ),
    device: str | None = typer.Option(None, "--device", help="cpu, cuda, cuda:1 ..."),
    config: Path | None = CONFIG_OPTION,
    overrides: list[str] | None = OVERRIDES_ARGUMENT,
) -> None:
    """Generate a listing for every image of a split and score it field by field against the catalog.

    Writes predictions.jsonl, metrics.json (model, baselines from the train split,
    base_model) and a self-contained report.html into the output folder.
    """
    flags = {
        "inference.model": model,
        "data": data,
        "split": split,
        "limit": limit,
        "base_model": base_model,
        "out": out,
        "inference.device": device,
        "inference.generation.batch_size": batch_size,
        "inference.generation.max_new_tokens": max_new_tokens,
    }
    args = build_config(EvalArgs, config, overrides, flags=flags)
    try:
        result = run_eval(args)
    except UserError as err:
        typer.echo(f"vlmtune eval: {err}", err=True)
        raise typer.Exit(2) from err
    Console(stderr=True).print(summary_table(result))


def summary_table(result: EvalResult) -> Table:
    """Headline metrics of the model (and base model) beside the baselines."""
    table = Table(title=f"vlmtune eval -> {result.out}", show_header=True)
    table.add_column("metric")
    table.add_column("model", justify="right")
    if result.base_metrics is not None:
        table.add_column("base model", justify="right")
    for name in result.baselines:
        table.add_column(BASELINE_LABELS.get(name, name).lower(), justify="right")
    for key in (k for k in _HEADLINE if k in result.metrics):
        cells = [_fmt(key, result.metrics[key])]
        if result.base_metrics is not None:
            cells.append(_fmt(key, result.base_metrics.get(key)))
        cells += [_fmt(key, b.get(key)) for b in result.baselines.values()]
        table.add_row(METRICS[key].label, *cells)
    table.add_section()
    table.add_row("rows", str(int(result.metrics["n"])))
    return table


def _fmt(key: str, value: float | None) -> str:
    if value is None:
        return "-"
    return f"{100 * value:.1f} %" if METRICS[key].percent else f"{value:,.2f}"
