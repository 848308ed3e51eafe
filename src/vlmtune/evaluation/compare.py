"""``vlmtune compare``: several eval runs of the same rows, side by side, on one page and in one table.

Each eval folder (written by ``vlmtune eval``) brings its model's field metrics
(``metrics.json``) and listings (``predictions.jsonl``); a training run folder
beside the evaluated model brings the training cost (``train_summary.json``: wall
time, trainable parameters, image tokens per photo). The runs must have been
evaluated on the same rows with the same references: a comparison of different
rows would rank models on different questions, so it is refused, naming the rows
that differ.

Written to the output folder: ``compare.html`` (the metric table with the best
value of each metric in bold, the costs, and the samples side by side with each
field coloured as in the eval report), ``compare.csv`` (the table) and
``compare.json`` (the same figures, machine-readable).
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlmtune.evaluation.metrics import METRICS
from vlmtune.evaluation.report import (
    format_metric,
    generated_fields,
    render_template,
    thumbnail_data_uri,
)
from vlmtune.utils.config import flag
from vlmtune.utils.errors import UserError
from vlmtune.utils.io import atomic_write_json, atomic_write_text
from vlmtune.utils.jsonl import JsonlError, read_jsonl
from vlmtune.utils.logging import get_logger
from vlmtune.utils.outputs import claim_output_dir, replace_dir

__all__ = [
    "COMPARE_FILES",
    "CompareArgs",
    "EvalRun",
    "check_same_rows",
    "load_eval_run",
    "run_compare",
]

log = get_logger(__name__)

COMPARE_FILES = ("compare.html", "compare.csv", "compare.json")
_SKIPPED_METRICS = ("n", "skipped_images")
"""Shown in the header (rows) or not at all (a count, not a quality)."""


@dataclass
class CompareArgs:
    """``vlmtune compare``: eval runs of the same rows side by side."""

    evals: list[Path] = flag(argument=True, default_factory=list)
    """Eval output folders (``vlmtune eval --out``), two or more, in the order of the columns."""
    out: Path | None = flag("--out", "-o", default=None)
    """Output folder for compare.html, compare.csv and compare.json."""
    overwrite: bool = flag("--overwrite", default=False)
    """Replace an output folder that holds something other than an earlier compare of the same runs."""
    max_samples: int = flag("--max-samples", default=200)
    """Rows shown side by side on the page (all rows are compared in the table)."""

    def __post_init__(self) -> None:
        self.evals = [Path(p) for p in self.evals]
        if len(self.evals) < 2:
            raise ValueError("evals: give two or more eval folders to compare")
        if self.out is None or not str(self.out).strip():
            raise ValueError("out: required (the folder for compare.html; --out)")
        self.out = Path(self.out)
        if isinstance(self.max_samples, bool) or self.max_samples < 1:
            raise ValueError(f"max_samples: must be a positive integer, got {self.max_samples!r}")


@dataclass
class EvalRun:
    """One eval folder, read: its model's metrics and listings, and the training cost when known."""

    folder: Path
    label: str
    model: str
    metrics: dict[str, float]
    predictions: list[dict[str, Any]]
    split: str | None = None
    cost: dict[str, float | None] = field(default_factory=dict)
    family: str | None = None
    """The model's family (``--family`` name), as eval recorded it."""


def run_compare(args: CompareArgs) -> Path:
    """Read every eval folder, check they share their rows, write the comparison; return its folder."""
    runs = [load_eval_run(folder) for folder in args.evals]
    _unique_labels(runs)
    check_same_rows(runs)
    identity = {"evals": [str(run.folder) for run in runs]}
    claim = claim_output_dir(
        args.out,
        "compare",
        inputs={f"the eval folder {run.folder}": run.folder for run in runs},
        overwrite=args.overwrite,
        identity=identity,
    )
    table = metric_table(runs)
    with replace_dir(claim.path, "compare", identity) as staging:
        atomic_write_text(
            staging / "compare.html", render_comparison(runs, table, args.max_samples)
        )
        atomic_write_text(staging / "compare.csv", _table_csv(runs, table))
        atomic_write_json(staging / "compare.json", _document(runs, table))
    log.info(
        "compared %d eval runs on %d rows -> %s", len(runs), len(runs[0].predictions), claim.path
    )
    return claim.path


# --------------------------------------------------------------------------- reading


def load_eval_run(folder: str | Path) -> EvalRun:
    """Read one eval folder; a folder that is not a readable eval output is a ``UserError``."""
    folder = Path(folder).expanduser().resolve()
    metrics_path, predictions_path = folder / "metrics.json", folder / "predictions.jsonl"
    if not metrics_path.is_file() or not predictions_path.is_file():
        raise UserError(
            f"{folder} is not a `vlmtune eval` output (it needs metrics.json and "
            "predictions.jsonl); give the folder eval wrote (its --out)"
        )
    try:
        document = json.loads(metrics_path.read_text(encoding="utf-8"))
        predictions = read_jsonl(predictions_path, missing_ok=False)
    except (ValueError, JsonlError) as err:
        raise UserError(f"{folder}: unreadable eval output: {err}") from err
    config = document.get("config") or {}
    model = str((config.get("inference") or {}).get("model") or folder.name)
    return EvalRun(
        folder=folder,
        label=_label(Path(model)),
        model=model,
        metrics={k: float(v) for k, v in (document.get("model") or {}).items() if _number(v)},
        predictions=predictions,
        split=config.get("split"),
        cost=_training_cost(Path(model)),
        family=document.get("family"),
    )


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _label(model: Path) -> str:
    """A short column name: the model folder's name, with its run's name when the folder is generic."""
    generic = model.name in ("model", "run", "final") or model.name.startswith("checkpoint-")
    return f"{model.parent.name}/{model.name}" if generic and model.parent.name else model.name


def _unique_labels(runs: Sequence[EvalRun]) -> None:
    """Labels that two runs share get, in turn, the family, the eval folder's name and its path,
    until every label is one run's."""
    tells = (
        lambda run: run.family,
        lambda run: run.folder.name,
        lambda run: f"{run.folder.parent.name}/{run.folder.name}",
        lambda run: str(run.folder),
    )
    for tell in tells:
        groups: dict[str, list[EvalRun]] = {}
        for run in runs:
            groups.setdefault(run.label, []).append(run)
        for label, members in groups.items():
            told = [tell(run) for run in members]
            if len(members) > 1 and all(told) and len(set(told)) > 1:
                for run, text in zip(members, told, strict=True):
                    run.label = f"{label} ({text})"


def _training_cost(model: Path) -> dict[str, float | None]:
    """Wall time, trainable parameters and image tokens of the run that trained ``model``, if found."""
    for folder in (model, model.parent):
        path = folder / "train_summary.json"
        if path.is_file():
            try:
                summary = json.loads(path.read_text(encoding="utf-8"))
            except ValueError:
                break
            return {
                "train_runtime_s": summary.get("train_runtime_s"),
                "trainable_parameters": (summary.get("parameters") or {}).get("trainable"),
                "image_tokens_mean": (summary.get("image_tokens") or {}).get("mean"),
                "sequence_length_mean": (summary.get("sequence_length") or {}).get("mean"),
            }
    return {}


# --------------------------------------------------------------------------- checks


def check_same_rows(runs: Sequence[EvalRun]) -> None:
    """Raise a ``UserError`` unless every run holds the same row ids with the same references."""
    first = runs[0]
    reference = {str(row.get("id")): row.get("reference") for row in first.predictions}
    for run in runs[1:]:
        theirs = {str(row.get("id")): row.get("reference") for row in run.predictions}
        missing, extra = sorted(set(reference) - set(theirs)), sorted(set(theirs) - set(reference))
        if missing or extra:
            raise UserError(
                f"the eval runs were made on different rows: {run.folder} "
                f"{_rows_phrase(missing, 'lacks')}{' and ' if missing and extra else ''}"
                f"{_rows_phrase(extra, 'has')}{' more' if extra else ''} than {first.folder}; "
                "evaluate every model on the same --data, --split and --limit"
            )
        changed = sorted(key for key in reference if reference[key] != theirs[key])
        if changed:
            raise UserError(
                f"the eval runs disagree on the reference listing of {_rows_phrase(changed, '')}"
                f"({run.folder} against {first.folder}): they read different datasets; "
                "evaluate every model on the same --data"
            )


def _rows_phrase(ids: Sequence[str], verb: str) -> str:
    if not ids:
        return ""
    shown = ", ".join(ids[:5]) + (f" (+{len(ids) - 5} more)" if len(ids) > 5 else "")
    return f"{verb} {len(ids)} row(s) ({shown}) ".lstrip()


# --------------------------------------------------------------------------- the table


@dataclass(frozen=True)
class MetricRow:
    key: str
    label: str
    values: list[float | None]
    best: list[bool]


def metric_table(runs: Sequence[EvalRun]) -> list[MetricRow]:
    """One row per metric every run has (in the report's order), its best value(s) marked."""
    keys = [k for k in METRICS if k not in _SKIPPED_METRICS and all(k in r.metrics for r in runs)]
    rows = []
    for key in keys:
        values = [run.metrics[key] for run in runs]
        finite = [v for v in values if not math.isnan(v)]
        target = (max if METRICS[key].higher_is_better else min)(finite) if finite else None
        best = [target is not None and v == target and len(set(finite)) > 1 for v in values]
        rows.append(MetricRow(key, METRICS[key].label, list(values), best))
    return rows


_COSTS = (
    ("train_runtime_s", "Training wall time (s)", "{:,.0f}"),
    ("trainable_parameters", "Trainable parameters", "{:,.0f}"),
    ("image_tokens_mean", "Image tokens per photo (mean)", "{:,.0f}"),
    ("sequence_length_mean", "Tokens per sample (mean)", "{:,.0f}"),
)


def _cost_rows(runs: Sequence[EvalRun]) -> list[dict[str, Any]]:
    rows = []
    for key, label, spec in _COSTS:
        values = [run.cost.get(key) for run in runs]
        if any(v is not None for v in values):
            rows.append(
                {
                    "label": label,
                    "cells": [spec.format(v) if v is not None else "\u2014" for v in values],
                }
            )
    return rows


def _table_csv(runs: Sequence[EvalRun], table: Sequence[MetricRow]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["metric", *[run.label for run in runs]])
    for row in table:
        writer.writerow([row.key, *map(_csv_number, row.values)])
    for key, _, _ in _COSTS:
        values = [run.cost.get(key) for run in runs]
        if any(v is not None for v in values):
            writer.writerow([key, *map(_csv_number, values)])
    return buffer.getvalue()


def _csv_number(value: float | None) -> str:
    if value is None:
        return ""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _document(runs: Sequence[EvalRun], table: Sequence[MetricRow]) -> dict[str, Any]:
    return {
        "rows": len(runs[0].predictions),
        "split": runs[0].split,
        "runs": [
            {
                "label": run.label,
                "eval": str(run.folder),
                "model": run.model,
                "family": run.family,
                "metrics": {row.key: row.values[i] for row in table},
                "best": [row.key for row in table if row.best[i]],
                "cost": run.cost,
            }
            for i, run in enumerate(runs)
        ],
    }


# --------------------------------------------------------------------------- the page


def render_comparison(runs: Sequence[EvalRun], table: Sequence[MetricRow], max_samples: int) -> str:
    """The whole ``compare.html`` page as a string."""
    return render_template(
        "compare.html",
        title=f"vlmtune compare: {', '.join(run.label for run in runs)}",
        runs=[
            {
                "label": run.label,
                "model": run.model,
                "folder": str(run.folder),
                "family": run.family,
            }
            for run in runs
        ],
        rows=len(runs[0].predictions),
        split=runs[0].split,
        metrics=[
            {
                "key": row.key,
                "label": row.label,
                "definition": METRICS[row.key].definition,
                "cells": [
                    {"text": format_metric(row.key, v), "best": b}
                    for v, b in zip(row.values, row.best, strict=True)
                ],
            }
            for row in table
        ],
        costs=_cost_rows(runs),
        samples=_samples(runs, max_samples),
        more=max(0, len(runs[0].predictions) - max_samples),
    )


def _samples(runs: Sequence[EvalRun], limit: int) -> list[dict[str, Any]]:
    by_id = [{str(row.get("id")): row for row in run.predictions} for run in runs]
    samples = []
    for index, row in enumerate(runs[0].predictions[:limit], start=1):
        key, ref = str(row.get("id")), row["reference"]
        samples.append(
            {
                "index": index,
                "id": key,
                "photo": thumbnail_data_uri(row["image"]),
                "name": Path(str(row["image"])).name,
                "reference": _reference(ref),
                "listings": [generated_fields(listings[key]) for listings in by_id],
            }
        )
    return samples


def _reference(ref: Mapping[str, Any]) -> list[tuple[str, str]]:
    return [
        ("Product", str(ref["title"])),
        ("Category", str(ref["category"])),
        ("Full Price", f"{float(ref['price']):,.2f}"),
    ]
