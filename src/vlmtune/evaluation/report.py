"""``report.html``: one self-contained page a person reads to judge a model's listings.

The page holds, with no external resource (thumbnails are base64 JPEG, CSS, JS
and charts are inline): the metrics beside the training-split baselines (and
the base model before fine-tuning, when given) with each metric's definition;
a table of samples (photo, reference listing, generated listing with each field
green or red, price error; a click on the header sorts by price error, as does
opening the page with ``#sort=price-asc`` or ``#sort=price-desc``, which clicks the
header once or twice); a predicted-vs-actual price scatter on log axes (inline
SVG); a category confusion matrix; and the training curves read from a run
folder's ``metrics.jsonl``.

This module decides *what* the page says (values, their formatting, which cell is
right or wrong) and :mod:`vlmtune.evaluation.charts` *where* chart marks go; the
markup, CSS and JS are the packaged Jinja2 template ``templates/report.html``
(with ``report.css`` and ``report.js``), rendered with autoescaping on, so any
text from a model, a catalog or a path reaches the page escaped.
"""

from __future__ import annotations

import base64
import functools
import io
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
from PIL import Image, ImageOps

from vlmtune.evaluation.charts import scatter_chart, training_curves
from vlmtune.evaluation.metrics import METRICS, normalize_text
from vlmtune.utils.io import atomic_write_text
from vlmtune.utils.jsonl import read_jsonl
from vlmtune.utils.logging import get_logger

__all__ = [
    "BASELINE_LABELS",
    "ReportData",
    "find_training_log",
    "format_metric",
    "generated_fields",
    "read_training_log",
    "render_report",
    "render_template",
    "thumbnail_data_uri",
    "write_report",
]

log = get_logger(__name__)

BASELINE_LABELS = {
    "mean_price": "Mean price",
    "median_price": "Median price",
    "majority_category": "Majority category",
    "most_common_title": "Most common title",
}
MAX_CATEGORIES = 20
"""Confusion matrix size: the most frequent reference categories; the rest are pooled."""
_NARROW_NBSP = "\u202f"


@dataclass
class ReportData:
    """Everything the report shows; ``predictions`` rows are those of ``predictions.jsonl``."""

    metrics: dict[str, float]
    predictions: list[dict[str, Any]]
    baselines: dict[str, dict[str, Any]] = field(default_factory=dict)
    base_metrics: dict[str, float] | None = None
    base_predictions: list[dict[str, Any]] | None = None
    training_log: list[dict[str, Any]] | None = None
    info: dict[str, str] = field(default_factory=dict)
    """Header facts: model, data, split, date ... (shown as given)."""
    max_samples: int = 1000
    """Rows shown in the samples table (the page says when there are more)."""
    unique_groups: dict[str, Any] | None = None
    """Metrics on the rows whose duplicate group is unique to the split (``unique_group_metrics``)."""
    decoding: str = "unconstrained"
    """How the listings were decoded: ``constrained`` (listing pattern enforced) or ``unconstrained``."""
    compared: dict[str, float] | None = None
    """``eval --compare-constrained``: the model's metrics decoded the other way (a column beside)."""


def write_report(path: str | Path, data: ReportData) -> Path:
    """Render ``data`` and write it to ``path`` atomically."""
    return atomic_write_text(path, render_report(data))


def render_report(data: ReportData) -> str:
    """The whole HTML page as a string."""
    return render_template(
        "report.html",
        title=f"vlmtune evaluation: {data.info.get('model', '')}",
        info=data.info,
        metrics=_metrics_view(data),
        samples=_samples_view(data),
        scatter=_scatter_view(data.predictions),
        confusion=_confusion_view(data.predictions),
        curves=training_curves(data.training_log) if data.training_log else None,
        definitions=[(key, info) for key, info in METRICS.items() if key in data.metrics],
    )


def render_template(name: str, **context: Any) -> str:
    """Render the packaged template ``name`` (autoescaped) with ``context``."""
    return _environment().get_template(name).render(**context)


def thumbnail_data_uri(path: str | Path, size: int = 112) -> str | None:
    """``data:image/jpeg;base64,...`` of a small thumbnail of the image, or None when unreadable."""
    try:
        with Image.open(path) as image:
            thumb = ImageOps.exif_transpose(image).convert("RGB")
            thumb.thumbnail((size, size))
            buffer = io.BytesIO()
            thumb.save(buffer, format="JPEG", quality=80)
    except (OSError, ValueError) as err:
        log.warning("report: no thumbnail for %s: %s", path, err)
        return None
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def find_training_log(model_path: str | Path) -> Path | None:
    """``metrics.jsonl`` of the training run ``model_path`` is (or whose ``model/`` it is), if any."""
    path = Path(model_path)
    for folder in (path, path.parent):
        candidate = folder / "metrics.jsonl"
        if candidate.is_file():
            return candidate
    return None


def read_training_log(path: str | Path) -> list[dict[str, Any]]:
    """Events of a run's ``metrics.jsonl``: a line torn by a killed run at the end is dropped with a
    warning; a bad line elsewhere raises :class:`~vlmtune.utils.jsonl.JsonlError` naming it."""
    return read_jsonl(path, missing_ok=False)


@functools.cache
def _environment() -> jinja2.Environment:
    # autoescape for every template, whatever its name: the page shows model output and paths
    return jinja2.Environment(
        loader=jinja2.PackageLoader("vlmtune.evaluation", "templates"),
        autoescape=True,
        trim_blocks=True,
        lstrip_blocks=True,
        undefined=jinja2.StrictUndefined,
    )


# --------------------------------------------------------------------------- metrics


def format_metric(key: str, value: Any) -> str:
    """``value`` of metric ``key`` as the pages show it (percent, count or number; a dash when missing)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "\u2014"
    info = METRICS.get(key)
    if key == "n":
        return f"{int(value)}"
    if info is not None and info.percent:
        return f"{100 * float(value):.1f}{_NARROW_NBSP}%"
    return f"{float(value):,.2f}"


def _delta(key: str, after: float, before: float) -> dict[str, str]:
    info = METRICS[key]
    diff = after - before
    better = diff > 0 if info.higher_is_better else diff < 0
    sign = "+" if diff > 0 else ""
    text = f"{sign}{100 * diff:.1f} pt" if info.percent else f"{sign}{diff:,.2f}"
    return {"text": text, "css": "ok" if better else ("bad" if diff != 0 else "")}


def _beats_baselines(
    key: str, value: float, baselines: Mapping[str, Mapping[str, Any]]
) -> bool | None:
    others = [b[key] for b in baselines.values() if key in b]
    if not others or key == "n":
        return None
    return all(value > o if METRICS[key].higher_is_better else value < o for o in others)


def _metrics_view(data: ReportData) -> dict[str, Any]:
    """Header labels and one row per metric: the model (all rows, unique groups), base model and change, each baseline."""
    names = list(data.baselines)
    groups = {"recorded": False, "note": "", "rows": 0, "other_rows": 0} | (
        data.unique_groups or {}
    )
    unique = groups.get("metrics") if groups["recorded"] else None
    rows = []
    for key in (k for k in METRICS if k in data.metrics):
        value = data.metrics[key]
        beats = _beats_baselines(key, value, data.baselines)
        row: dict[str, Any] = {
            "key": key,
            "info": METRICS[key],
            "value": format_metric(key, value),
            "css": {True: " ok", False: " bad", None: ""}[beats],
            "baselines": [format_metric(key, data.baselines[n].get(key)) for n in names],
        }
        if unique is not None:
            row["unique"] = format_metric(key, unique.get(key)) if key in unique else ""
        if data.compared is not None:
            row["compared"] = format_metric(key, data.compared.get(key))
        if data.base_metrics is not None:
            before = data.base_metrics.get(key)
            row["base"] = format_metric(key, before)
            row["delta"] = _delta(key, value, before) if before is not None and key != "n" else None
        rows.append(row)
    constants = [
        (BASELINE_LABELS.get(n, n), _constant(b.get("prediction")))
        for n, b in data.baselines.items()
    ]
    return {
        "baseline_labels": [f"Baseline: {BASELINE_LABELS.get(n, n)}" for n in names],
        "with_base": data.base_metrics is not None,
        "decoding": data.decoding,
        "compared": None
        if data.compared is None
        else ("unconstrained" if data.decoding == "constrained" else "constrained"),
        "rows": rows,
        "constants": constants,
        "unique": groups,
        "with_unique": unique is not None,
    }


def _constant(value: Any) -> str:
    return f"{value:,.2f}" if isinstance(value, float) else repr(value)


# --------------------------------------------------------------------------- samples


def generated_fields(row: Mapping[str, Any]) -> dict[str, Any]:
    """The generated listing's three fields with their verdicts, and the raw text."""
    parsed, correct = row["parsed"], row["correct"]
    price = parsed.get("price")
    shown_price = f"{price:,.2f}" if price is not None else None
    fields = [
        ("Product", parsed.get("title"), "title_exact", "title_read"),
        ("Category", parsed.get("category"), "category_correct", "category_read"),
        ("Full Price", shown_price, "price_within_10pct", "price_read"),
    ]
    tips = {
        "Product": f"token F1 {correct['title_token_f1']:.2f}",
        "Category": "",
        "Full Price": f"error {100 * correct['price_ape']:.1f} %",
    }
    return {
        "fields": [
            {
                "label": label,
                "value": str(value),
                "ok": correct[ok],
                "read": correct[read],
                "tip": tips[label],
            }
            for label, value, ok, read in fields
        ],
        "raw": str(row.get("generated", "")),
    }


def _sample(index: int, row: Mapping[str, Any], base_row: Mapping[str, Any] | None) -> dict:
    correct, ref = row["correct"], row["reference"]
    ape = correct["price_ape"] if correct["price_read"] else math.inf
    return {
        "index": index,
        "ape": repr(ape),
        "shown_ape": f"{100 * ape:.1f}{_NARROW_NBSP}%" if correct["price_read"] else "unread",
        "photo": thumbnail_data_uri(row["image"]),
        "name": Path(str(row["image"])).name,
        "id": str(row.get("id", "")),
        "reference": [
            ("Product", str(ref["title"])),
            ("Category", str(ref["category"])),
            ("Full Price", f"{float(ref['price']):,.2f}"),
        ],
        "generated": generated_fields(row),
        "base": generated_fields(base_row) if base_row is not None else None,
    }


def _samples_view(data: ReportData) -> dict[str, Any]:
    rows = data.predictions[: data.max_samples]
    base = data.base_predictions
    return {
        "rows": [
            _sample(i, row, base[i - 1] if base is not None and i - 1 < len(base) else None)
            for i, row in enumerate(rows, start=1)
        ],
        "with_base": base is not None,
        "more": max(0, len(data.predictions) - len(rows)),
    }


# --------------------------------------------------------------------------- scatter, confusion


def _scatter_view(predictions: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    points = [
        (float(r["reference"]["price"]), float(r["parsed"]["price"]), str(r.get("id", "")))
        for r in predictions
        if r["parsed"].get("price") is not None
    ]
    return {
        "read": len(points),
        "unread": len(predictions) - len(points),
        "chart": scatter_chart(points) if points else None,
    }


def _confusion_view(predictions: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    counts = Counter(normalize_text(str(r["reference"]["category"])) for r in predictions)
    ordered = sorted(counts, key=lambda k: (-counts[k], k))
    labels, pooled = ordered[:MAX_CATEGORIES], len(ordered) > MAX_CATEGORIES
    other, unread = "(other)", "(unread)"
    columns = [*labels, other, unread]
    matrix: Counter[tuple[str, str]] = Counter()
    for r in predictions:
        truth = normalize_text(str(r["reference"]["category"]))
        truth = truth if truth in labels else other
        pred = r["parsed"].get("category")
        pred = unread if pred is None else normalize_text(pred)
        matrix[(truth, pred if pred in labels or pred == unread else other)] += 1
    rows = []
    for truth in [*labels, other] if pooled else labels:
        total = sum(matrix[(truth, c)] for c in columns) or 1
        cells = [
            _confusion_cell(matrix[(truth, c)], total, truth == c and c != other) for c in columns
        ]
        rows.append({"label": truth, "cells": cells})
    return {"columns": columns, "rows": rows, "pooled": pooled, "limit": MAX_CATEGORIES}


def _confusion_cell(count: int, total: int, diagonal: bool) -> dict[str, Any]:
    share = count / total
    color = (
        f"rgba(30,140,60,{0.1 + 0.8 * share:.2f})"
        if diagonal
        else f"rgba(200,40,40,{0.8 * share:.2f})"
    )
    return {"count": count, "diagonal": diagonal, "color": color if count else None}
