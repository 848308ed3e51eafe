"""``report.html``: one self-contained page a person reads to judge a model's listings.

The page holds, with no external resource (thumbnails are base64 JPEG, CSS, JS
and charts are inline): the metrics beside the training-split baselines (and
the base model before fine-tuning, when given) with each metric's definition;
a table of samples (photo, reference listing, generated listing with each field
green or red, price error; a click on the header sorts by price error, as does
opening the page with ``#sort=price-asc`` or ``#sort=price-desc``, which clicks the header once or twice); a
predicted-vs-actual price scatter on log axes (inline SVG); a category
confusion matrix; and the training curves read from a run folder's
``metrics.jsonl``.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image, ImageOps

from vlmtune.evaluation.metrics import METRICS, normalize_text
from vlmtune.utils.io import atomic_write_text
from vlmtune.utils.logging import get_logger

__all__ = [
    "BASELINE_LABELS",
    "ReportData",
    "find_training_log",
    "read_training_log",
    "render_report",
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
_SKIP_CURVES = {"step", "epoch", "eval_runtime", "eval_samples_per_second", "eval_steps_per_second"}


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


def write_report(path: str | Path, data: ReportData) -> Path:
    """Render ``data`` and write it to ``path`` atomically."""
    return atomic_write_text(path, render_report(data))


def render_report(data: ReportData) -> str:
    """The whole HTML page as a string."""
    sections = [
        _header(data),
        _metrics_section(data),
        _samples_section(data),
        _scatter_section(data.predictions),
        _confusion_section(data.predictions),
        _curves_section(data.training_log),
        _definitions_section(data.metrics),
    ]
    body = "\n".join(s for s in sections if s)
    title = html.escape(f"vlmtune evaluation: {data.info.get('model', '')}")
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{title}</title><style>{_CSS}</style></head>\n<body>\n{body}\n"
        f"<script>{_JS}</script>\n</body></html>\n"
    )


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
    """Events of a run's ``metrics.jsonl`` (one JSON object per line); bad lines are logged and skipped."""
    events = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            event = json.loads(line)
        except json.JSONDecodeError as err:
            log.warning("report: %s line %d is not JSON (%s); not plotted", path, number, err)
            continue
        if isinstance(event, dict):
            events.append(event)
        else:
            log.warning("report: %s line %d is not a JSON object; not plotted", path, number)
    return events


# --------------------------------------------------------------------------- header and metrics


def _header(data: ReportData) -> str:
    facts = "".join(
        f"<dt>{html.escape(k)}</dt><dd>{html.escape(str(v))}</dd>" for k, v in data.info.items()
    )
    return f'<header><h1>vlmtune evaluation</h1><dl class="facts">{facts}</dl></header>'


def _format(key: str, value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "&mdash;"
    info = METRICS.get(key)
    if key == "n":
        return f"{int(value)}"
    if info is not None and info.percent:
        return f"{100 * float(value):.1f}&#8239;%"
    return f"{float(value):,.2f}"


def _delta(key: str, after: float, before: float) -> str:
    info = METRICS[key]
    diff = after - before
    better = diff > 0 if info.higher_is_better else diff < 0
    css = "ok" if better else ("bad" if diff != 0 else "")
    sign = "+" if diff > 0 else ""
    text = f"{sign}{100 * diff:.1f} pt" if info.percent else f"{sign}{diff:,.2f}"
    return f'<td class="num {css}">{text}</td>'


def _beats_baselines(
    key: str, value: float, baselines: Mapping[str, Mapping[str, Any]]
) -> bool | None:
    others = [b[key] for b in baselines.values() if key in b]
    if not others or key == "n":
        return None
    return all(value > o if METRICS[key].higher_is_better else value < o for o in others)


def _metrics_section(data: ReportData) -> str:
    names = list(data.baselines)
    head = ["Metric", "Model"]
    if data.base_metrics is not None:
        head += ["Base model", "Change"]
    head += [f"Baseline: {BASELINE_LABELS.get(n, n)}" for n in names]
    rows = []
    for key in (k for k in METRICS if k in data.metrics):
        value = data.metrics[key]
        beats = _beats_baselines(key, value, data.baselines)
        css = {True: " ok", False: " bad", None: ""}[beats]
        cells = [
            f'<th scope="row" title="{html.escape(METRICS[key].definition)}">{METRICS[key].label}</th>'
        ]
        cells.append(f'<td class="num model{css}" data-key="{key}">{_format(key, value)}</td>')
        if data.base_metrics is not None:
            before = data.base_metrics.get(key)
            cells.append(f'<td class="num base">{_format(key, before)}</td>')
            cells.append(
                _delta(key, value, before) if before is not None and key != "n" else "<td></td>"
            )
        cells += [f'<td class="num">{_format(key, data.baselines[n].get(key))}</td>' for n in names]
        rows.append("<tr>" + "".join(cells) + "</tr>")
    header = "".join(f'<th scope="col">{html.escape(h)}</th>' for h in head)
    constants = "; ".join(
        f"{BASELINE_LABELS.get(n, n)} predicts {html.escape(_constant(b.get('prediction')))}"
        for n, b in data.baselines.items()
    )
    note = (
        f'<p class="note">Baselines predict one constant from the training split: {constants}.</p>'
        if constants
        else ""
    )
    legend = '<p class="note">Green: the model beats every baseline for that metric; red: it does not.</p>'
    return (
        f'<section id="metrics"><h2>Metrics</h2><table id="metrics-table"><thead><tr>{header}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table>{legend}{note}</section>"
    )


def _constant(value: Any) -> str:
    return f"{value:,.2f}" if isinstance(value, float) else repr(value)


# --------------------------------------------------------------------------- samples


def _field_span(label: str, value: Any, ok: bool, read: bool, tip: str) -> str:
    css = "ok" if ok else "bad"
    text = html.escape(str(value)) if read else "<i>unread</i>"
    return f'<span class="field {css}" title="{html.escape(tip)}"><b>{label}:</b> {text}</span>'


def _generated_cell(row: Mapping[str, Any]) -> str:
    parsed, correct = row["parsed"], row["correct"]
    price = parsed.get("price")
    spans = [
        _field_span(
            "Product",
            parsed.get("title"),
            correct["title_exact"],
            correct["title_read"],
            f"token F1 {correct['title_token_f1']:.2f}",
        ),
        _field_span(
            "Category",
            parsed.get("category"),
            correct["category_correct"],
            correct["category_read"],
            "",
        ),
        _field_span(
            "Full Price",
            f"{price:,.2f}" if price is not None else None,
            correct["price_within_10pct"],
            correct["price_read"],
            f"error {100 * correct['price_ape']:.1f} %",
        ),
    ]
    raw = html.escape(str(row.get("generated", "")))
    return f'<div class="fields">{"".join(spans)}</div><div class="raw">{raw}</div>'


def _reference_cell(ref: Mapping[str, Any]) -> str:
    return (
        f'<div class="fields"><span class="field"><b>Product:</b> {html.escape(str(ref["title"]))}</span>'
        f'<span class="field"><b>Category:</b> {html.escape(str(ref["category"]))}</span>'
        f'<span class="field"><b>Full Price:</b> {float(ref["price"]):,.2f}</span></div>'
    )


def _sample_row(index: int, row: Mapping[str, Any], base_row: Mapping[str, Any] | None) -> str:
    uri = thumbnail_data_uri(row["image"])
    name = html.escape(Path(str(row["image"])).name)
    photo = (
        f'<img src="{uri}" alt="{name}" loading="lazy">'
        if uri
        else '<span class="bad">image unreadable</span>'
    )
    correct = row["correct"]
    ape = correct["price_ape"] if correct["price_read"] else math.inf
    shown = f"{100 * ape:.1f}&#8239;%" if correct["price_read"] else "unread"
    cells = [
        f'<td class="num">{index}</td>',
        f'<td class="photo">{photo}<div class="id">{html.escape(str(row.get("id", "")))}</div></td>',
        f"<td>{_reference_cell(row['reference'])}</td>",
        f"<td>{_generated_cell(row)}</td>",
        f'<td class="num price-error">{shown}</td>',
    ]
    if base_row is not None:
        cells.append(f'<td class="basegen">{_generated_cell(base_row)}</td>')
    return f'<tr class="sample" data-index="{index}" data-price-ape="{ape!r}">{"".join(cells)}</tr>'


def _samples_section(data: ReportData) -> str:
    rows = data.predictions[: data.max_samples]
    base = data.base_predictions
    html_rows = [
        _sample_row(i, row, base[i - 1] if base is not None and i - 1 < len(base) else None)
        for i, row in enumerate(rows, start=1)
    ]
    head = (
        '<th scope="col">#</th><th scope="col">Photo</th><th scope="col">Reference</th>'
        '<th scope="col">Generated</th><th scope="col" id="sort-price" class="sortable" aria-sort="none" '
        'title="Click to sort by price error">Price error <span class="arrow">&#8693;</span></th>'
    )
    if base is not None:
        head += '<th scope="col">Base model generated</th>'
    more = len(data.predictions) - len(rows)
    note = f'<p class="note">{more} more rows are in predictions.jsonl.</p>' if more > 0 else ""
    legend = (
        '<p class="note">Green: the field is right (title: exact after normalisation; category: exact; '
        "price: within 10 %); red: wrong or unread. Unread prices sort last.</p>"
    )
    return (
        f'<section id="samples-section"><h2>Samples</h2>{legend}<table id="samples" data-sorted="">'
        f"<thead><tr>{head}</tr></thead><tbody>{''.join(html_rows)}</tbody></table>{note}</section>"
    )


# --------------------------------------------------------------------------- charts


def _log_ticks(lo: float, hi: float) -> list[float]:
    ticks = []
    for exp in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1):
        mults = (1, 2, 5) if math.log10(hi / lo) < 3 else (1,)
        ticks += [m * 10.0**exp for m in mults if lo <= m * 10.0**exp <= hi]
    return ticks


def _tick_label(value: float) -> str:
    return f"{value:,.0f}" if value >= 1 else f"{value:g}"


def _scatter_svg(points: Sequence[tuple[float, float, str]]) -> str:
    size, pad = 420, 56
    values = [v for p in points for v in p[:2]]
    lo, hi = min(values) / 1.25, max(values) * 1.25
    span = math.log10(hi) - math.log10(lo)

    def pos(v: float) -> float:
        return pad + (math.log10(v) - math.log10(lo)) / span * (size - 2 * pad)

    parts = [
        f'<svg id="price-scatter" viewBox="0 0 {size} {size}" width="{size}" height="{size}" role="img">'
    ]
    for t in _log_ticks(lo, hi):
        x, y = pos(t), size - pos(t)
        parts.append(f'<line class="grid" x1="{x:.1f}" y1="{pad}" x2="{x:.1f}" y2="{size - pad}"/>')
        parts.append(f'<line class="grid" x1="{pad}" y1="{y:.1f}" x2="{size - pad}" y2="{y:.1f}"/>')
        parts.append(
            f'<text class="tick" x="{x:.1f}" y="{size - pad + 14}" text-anchor="middle">{_tick_label(t)}</text>'
        )
        parts.append(
            f'<text class="tick" x="{pad - 4}" y="{y + 4:.1f}" text-anchor="end">{_tick_label(t)}</text>'
        )
    parts.append(f'<line class="diag" x1="{pad}" y1="{size - pad}" x2="{size - pad}" y2="{pad}"/>')
    for actual, predicted, label in points:
        close = abs(predicted - actual) <= 0.25 * actual
        parts.append(
            f'<circle class="pt {"ok" if close else "bad"}" cx="{pos(actual):.1f}" cy="{size - pos(predicted):.1f}" r="4">'
            f"<title>{html.escape(label)}: actual {actual:,.2f}, predicted {predicted:,.2f}</title></circle>"
        )
    parts.append(
        f'<text class="axis" x="{size / 2}" y="{size - 16}" text-anchor="middle">actual full price (log)</text>'
    )
    parts.append(
        f'<text class="axis" x="16" y="{size / 2}" text-anchor="middle" transform="rotate(-90 16 {size / 2})">'
        "predicted full price (log)</text></svg>"
    )
    return "".join(parts)


def _scatter_section(predictions: Sequence[Mapping[str, Any]]) -> str:
    points = [
        (float(r["reference"]["price"]), float(r["parsed"]["price"]), str(r.get("id", "")))
        for r in predictions
        if r["parsed"].get("price") is not None
    ]
    unread = len(predictions) - len(points)
    note = f"{len(points)} rows with a readable price; {unread} without (not plotted). "
    note += "Diagonal: exact; green points are within 25 %."
    chart = (
        _scatter_svg(points) if points else '<p class="bad">No generated price could be read.</p>'
    )
    return f'<section id="scatter"><h2>Predicted vs actual price</h2><p class="note">{note}</p>{chart}</section>'


def _confusion_labels(predictions: Sequence[Mapping[str, Any]]) -> tuple[list[str], bool]:
    counts = Counter(normalize_text(str(r["reference"]["category"])) for r in predictions)
    ordered = sorted(counts, key=lambda k: (-counts[k], k))
    return ordered[:MAX_CATEGORIES], len(ordered) > MAX_CATEGORIES


def _confusion_section(predictions: Sequence[Mapping[str, Any]]) -> str:
    labels, pooled = _confusion_labels(predictions)
    other, unread = "(other)", "(unread)"
    columns = [*labels, other, unread]
    matrix: Counter[tuple[str, str]] = Counter()
    for r in predictions:
        truth = normalize_text(str(r["reference"]["category"]))
        truth = truth if truth in labels else other
        pred = r["parsed"].get("category")
        pred = unread if pred is None else normalize_text(pred)
        matrix[(truth, pred if pred in labels or pred == unread else other)] += 1
    rows_labels = [*labels, other] if pooled else labels
    head = "".join(f'<th scope="col" class="cm-col">{html.escape(c)}</th>' for c in columns)
    body = []
    for truth in rows_labels:
        total = sum(matrix[(truth, c)] for c in columns) or 1
        cells = "".join(
            _confusion_cell(matrix[(truth, c)], total, truth == c and c != other) for c in columns
        )
        body.append(f'<tr><th scope="row">{html.escape(truth)}</th>{cells}</tr>')
    note = "Rows: reference category; columns: generated category (case-insensitive). "
    note += (
        f"Only the {MAX_CATEGORIES} most frequent categories are shown; the rest are pooled in (other)."
        if pooled
        else ""
    )
    return (
        f'<section id="confusion"><h2>Category confusion matrix</h2><p class="note">{note}</p>'
        f'<table id="confusion-matrix"><thead><tr><th>reference \\ generated</th>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table></section>"
    )


def _confusion_cell(count: int, total: int, diagonal: bool) -> str:
    share = count / total
    color = (
        f"rgba(30,140,60,{0.1 + 0.8 * share:.2f})"
        if diagonal
        else f"rgba(200,40,40,{0.8 * share:.2f})"
    )
    style = f' style="background:{color}"' if count else ""
    return f'<td class="cm-cell{" diag" if diagonal else ""}" data-count="{count}"{style}>{count or ""}</td>'


def _line_chart_svg(name: str, series: Mapping[str, Sequence[tuple[float, float]]]) -> str:
    """One chart of ``{label: [(step, value), ...]}`` on linear axes, a polyline and dots per series."""
    width, height, pad = 420, 220, 44
    x0, x1 = _padded_range([x for pts in series.values() for x, _ in pts], 0.0)
    y0, y1 = _padded_range([y for pts in series.values() for _, y in pts], 0.05)

    def xy(x: float, y: float) -> tuple[float, float]:
        return (
            pad + (x - x0) / (x1 - x0) * (width - 2 * pad),
            height - pad - (y - y0) / (y1 - y0) * (height - 2 * pad),
        )

    parts = [
        f'<svg class="curve" data-name="{html.escape(name)}" viewBox="0 0 {width} {height}" '
        f'width="{width}" height="{height}">',
        f'<rect class="frame" x="{pad}" y="{pad}" width="{width - 2 * pad}" height="{height - 2 * pad}"/>',
    ]
    for idx, (label, pts) in enumerate(series.items()):
        css, coords = f"s{idx % 4}", [xy(x, y) for x, y in pts]
        poly = " ".join(f"{cx:.1f},{cy:.1f}" for cx, cy in coords)
        parts.append(
            f'<polyline class="line {css}" points="{poly}"><title>{html.escape(label)}</title></polyline>'
        )
        parts += [
            f'<circle class="dot {css}" cx="{cx:.1f}" cy="{cy:.1f}" r="2"/>' for cx, cy in coords
        ]
        parts.append(
            f'<text class="legend {css}" x="{pad + 4 + 120 * idx}" y="{pad - 8}">{html.escape(label)}</text>'
        )
    parts += [
        f'<text class="tick" x="{pad - 4}" y="{pad + 4}" text-anchor="end">{y1:.3g}</text>',
        f'<text class="tick" x="{pad - 4}" y="{height - pad}" text-anchor="end">{y0:.3g}</text>',
        f'<text class="tick" x="{pad}" y="{height - pad + 14}">{x0:g}</text>',
        f'<text class="tick" x="{width - pad}" y="{height - pad + 14}" text-anchor="end">{x1:g}</text>',
        f'<text class="axis" x="{width / 2}" y="{height - 8}" text-anchor="middle">step</text></svg>',
    ]
    return "".join(parts)


def _padded_range(values: Sequence[float], margin: float) -> tuple[float, float]:
    """(low, high) around ``values`` with ``margin`` of the span added each side; never empty."""
    low, high = min(values), max(values)
    if high == low:
        half = abs(low) * 0.1 or 1.0
        return low - half, high + half
    pad = (high - low) * margin
    return low - pad, high + pad


def _curve_series(events: Sequence[Mapping[str, Any]]) -> dict[str, list[tuple[float, float]]]:
    series: dict[str, list[tuple[float, float]]] = {}
    for event in events:
        step = event.get("step")
        if not isinstance(step, (int, float)):
            continue
        for key, value in event.items():
            if (
                key in _SKIP_CURVES
                or isinstance(value, bool)
                or not isinstance(value, (int, float))
            ):
                continue
            if math.isfinite(value):
                series.setdefault(key, []).append((float(step), float(value)))
    return series


def _curves_section(events: Sequence[Mapping[str, Any]] | None) -> str:
    if not events:
        return ""
    series = _curve_series(events)
    charts = []
    losses = {k: series.pop(k) for k in ("loss", "eval_loss") if k in series}
    if losses:
        charts.append(_line_chart_svg("loss", losses))
    for key in sorted(k for k in series if k.startswith("eval_")):
        charts.append(_line_chart_svg(key, {key: series[key]}))
    if "learning_rate" in series:
        charts.append(_line_chart_svg("learning_rate", {"learning_rate": series["learning_rate"]}))
    if not charts:
        return ""
    return f'<section id="curves"><h2>Training curves</h2><div class="charts">{"".join(charts)}</div></section>'


def _definitions_section(metrics: Mapping[str, float]) -> str:
    items = "".join(
        f"<dt>{info.label} <code>{key}</code></dt><dd>{html.escape(info.definition)}</dd>"
        for key, info in METRICS.items()
        if key in metrics
    )
    return f'<section id="definitions"><h2>Metric definitions</h2><dl>{items}</dl></section>'


_CSS = """
body{font:14px/1.4 system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px;color:#1b1b1b;background:#fff}
h1{font-size:22px;margin:0 0 8px}h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #ddd;padding-bottom:4px}
dl.facts{display:grid;grid-template-columns:max-content 1fr;gap:2px 12px;margin:0}dl.facts dt{font-weight:600}
table{border-collapse:collapse;margin:6px 0}th,td{border:1px solid #d6d6d6;padding:4px 8px;vertical-align:top;text-align:left}
thead th{background:#f3f3f3}td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
.ok{color:#11652d}.bad{color:#a31515}td.ok{background:#e3f4e6}td.bad{background:#fbe4e4}
.field{display:block;padding:1px 4px;margin:1px 0;border-radius:3px}.field.ok{background:#dcf2e0}.field.bad{background:#f9dede}
.raw{color:#777;font-size:12px;margin-top:4px;max-width:420px;overflow-wrap:anywhere}
td.photo img{display:block;max-width:112px;max-height:112px}.id{font-size:11px;color:#777}
th.sortable{cursor:pointer;user-select:none}th.sortable:hover{background:#e6e6e6}
.note{color:#555;font-size:12px;margin:4px 0}
svg text{font-size:11px;fill:#333}svg .grid{stroke:#e4e4e4}svg .diag{stroke:#888;stroke-dasharray:4 3}
svg circle.pt{fill-opacity:.75}svg circle.pt.ok{fill:#1e8c3c}svg circle.pt.bad{fill:#c82828}
svg .frame{fill:none;stroke:#ccc}svg .line{fill:none;stroke-width:1.5}
.s0{stroke:#1f5fbf;fill:#1f5fbf}.s1{stroke:#d2691e;fill:#d2691e}.s2{stroke:#2e8b57;fill:#2e8b57}.s3{stroke:#8a2be2;fill:#8a2be2}
svg text.legend{stroke:none}.charts{display:flex;flex-wrap:wrap;gap:12px}
#confusion-matrix td.cm-cell{text-align:center;min-width:28px}#confusion-matrix th.cm-col{font-size:12px}
dl dt{font-weight:600;margin-top:6px}dl dd{margin-left:16px}
"""

_JS = """
(function(){
  var table=document.getElementById('samples');
  var th=document.getElementById('sort-price');
  if(!table||!th){return;}
  function key(row){var v=parseFloat(row.getAttribute('data-price-ape'));return isNaN(v)?Infinity:v;}
  function sortRows(dir){
    var body=table.tBodies[0];
    var rows=Array.prototype.slice.call(body.rows);
    rows.sort(function(a,b){
      var x=key(a),y=key(b);
      if(x===y){return parseInt(a.getAttribute('data-index'))-parseInt(b.getAttribute('data-index'));}
      if(x===Infinity){return 1;} if(y===Infinity){return -1;}
      return dir*(x-y);
    });
    rows.forEach(function(r){body.appendChild(r);});
    table.setAttribute('data-sorted',dir>0?'price-asc':'price-desc');
    th.setAttribute('aria-sort',dir>0?'ascending':'descending');
  }
  th.addEventListener('click',function(){sortRows(table.getAttribute('data-sorted')==='price-asc'?-1:1);});
  var m=/sort=price-(asc|desc)/.exec(window.location.hash);
  if(m){th.click(); if(m[1]==='desc'){th.click();}}
})();
"""
