"""``vlmtune eval``: generate a listing for every image of a split and score it field by field.

Writes predictions.jsonl, metrics.json (the model on the whole split and on the
rows whose duplicate group lies wholly in it, the baselines of the train split and,
with --base-model, the model before fine-tuning) and a self-contained
report.html into the output folder. Every model folder, the split, the device and
the output folder are checked before any model is loaded.
"""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from vlmtune.evaluation.args import EvalArgs

__all__ = ["CONFIG", "run", "summary_table"]

CONFIG = EvalArgs

_HEADLINE = (
    "parse_rate",
    "title_exact_match",
    "title_token_f1",
    "category_accuracy",
    "category_macro_f1",
    "price_mape",
    "price_within_25pct",
)


def run(args: EvalArgs) -> None:
    from vlmtune.evaluation.run import run_eval

    Console(stderr=True).print(summary_table(run_eval(args)))


def summary_table(result: object) -> Table:
    """Headline metrics of the model (and base model) beside the baselines."""
    from vlmtune.evaluation.metrics import METRICS
    from vlmtune.evaluation.report import BASELINE_LABELS

    groups = result.unique_groups or {}
    unique = groups.get("metrics") if groups.get("recorded") else None
    table = Table(title=f"vlmtune eval -> {result.out}", show_header=True)
    table.add_column("metric")
    table.add_column("model", justify="right")
    if unique is not None:
        table.add_column("model, groups unique to the split", justify="right")
    if result.base_metrics is not None:
        table.add_column("base model", justify="right")
    for name in result.baselines:
        table.add_column(BASELINE_LABELS.get(name, name).lower(), justify="right")
    for key in (k for k in _HEADLINE if k in result.metrics):
        cells = [_fmt(METRICS[key], result.metrics[key])]
        if unique is not None:
            cells.append(_fmt(METRICS[key], unique.get(key)))
        if result.base_metrics is not None:
            cells.append(_fmt(METRICS[key], result.base_metrics.get(key)))
        cells += [_fmt(METRICS[key], b.get(key)) for b in result.baselines.values()]
        table.add_row(METRICS[key].label, *cells)
    table.add_section()
    table.add_row("rows", str(int(result.metrics["n"])))
    if groups.get("recorded"):
        table.add_row("  in groups unique to the split", str(groups["rows"]))
        table.add_row("  in groups reaching another split", str(groups["other_rows"]))
    return table


def _fmt(metric: object, value: float | None) -> str:
    if value is None:
        return "-"
    return f"{100 * value:.1f} %" if metric.percent else f"{value:,.2f}"
