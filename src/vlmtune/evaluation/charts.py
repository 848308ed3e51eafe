"""The geometry of the report's charts: where every point, line and tick of an inline SVG goes.

Pure arithmetic, no markup: each function returns the coordinates and labels that
``templates/report.html`` draws. Two kinds of chart:

* :func:`scatter_chart`: predicted against actual price on log-log axes with the
  diagonal (a 10x error is as far from it at 50 as at 5,000);
* :func:`line_chart`: training curves (``{label: [(step, value), ...]}``) on linear
  axes, the y axis starting at 0 for the non-negative quantities we plot.

:func:`training_curves` turns a run's ``metrics.jsonl`` events into the series worth
a chart, and names those that never change instead of drawing them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "Curves",
    "LineChart",
    "ScatterChart",
    "line_chart",
    "scatter_chart",
    "training_curves",
]

SCATTER_SIZE, SCATTER_PAD = 420, 56
CHART_WIDTH, CHART_HEIGHT, CHART_PAD = 420, 220, 44
_CLOSE = 0.25
"""A scatter point is green when the predicted price is within 25 % of the actual one."""
_BOOKKEEPING = {"step", "epoch", "eval_runtime", "eval_samples_per_second", "eval_steps_per_second"}
"""Events' keys that are not measures of the model (never charted, never listed)."""


@dataclass
class ScatterChart:
    """A log-log scatter: ``ticks`` are ``(position, label)``, ``points`` are dicts for the template."""

    size: int
    pad: int
    ticks: list[tuple[float, str]]
    points: list[dict[str, Any]]


@dataclass
class LineChart:
    """One chart of one or more series; ``lines`` hold ``points`` (polyline text) and ``dots``."""

    name: str
    width: int
    height: int
    pad: int
    lines: list[dict[str, Any]]
    y_low: float
    y_high: float
    x_low: float
    x_high: float


@dataclass
class Curves:
    """The charts of a training log, and the series left out because they never change."""

    charts: list[LineChart] = field(default_factory=list)
    constant: dict[str, float] = field(default_factory=dict)
    """Series that hold one value throughout (``eval_skipped_images`` at 0 ...): named, not drawn."""


def scatter_chart(points: Sequence[tuple[float, float, str]]) -> ScatterChart:
    """``(actual, predicted, label)`` triples (prices > 0) placed on shared log axes."""
    size, pad = SCATTER_SIZE, SCATTER_PAD
    values = [v for p in points for v in p[:2]]
    lo, hi = min(values) / 1.25, max(values) * 1.25
    span = math.log10(hi) - math.log10(lo)

    def pos(v: float) -> float:
        return pad + (math.log10(v) - math.log10(lo)) / span * (size - 2 * pad)

    placed = [
        {
            "cx": pos(actual),
            "cy": size - pos(predicted),
            "ok": abs(predicted - actual) <= _CLOSE * actual,
            "title": f"{label}: actual {actual:,.2f}, predicted {predicted:,.2f}",
        }
        for actual, predicted, label in points
    ]
    ticks = [(pos(t), _tick_label(t)) for t in _log_ticks(lo, hi)]
    return ScatterChart(size=size, pad=pad, ticks=ticks, points=placed)


def line_chart(name: str, series: Mapping[str, Sequence[tuple[float, float]]]) -> LineChart:
    """One chart of ``{label: [(step, value), ...]}`` on linear axes, a polyline and dots per series."""
    width, height, pad = CHART_WIDTH, CHART_HEIGHT, CHART_PAD
    x0, x1 = _padded_range([x for pts in series.values() for x, _ in pts], 0.0)
    y0, y1 = _value_range([y for pts in series.values() for _, y in pts])

    def xy(x: float, y: float) -> tuple[float, float]:
        return (
            pad + (x - x0) / (x1 - x0) * (width - 2 * pad),
            height - pad - (y - y0) / (y1 - y0) * (height - 2 * pad),
        )

    lines = []
    for idx, (label, pts) in enumerate(series.items()):
        coords = [xy(x, y) for x, y in pts]
        lines.append(
            {
                "label": label,
                "css": f"s{idx % 4}",
                "points": " ".join(f"{cx:.1f},{cy:.1f}" for cx, cy in coords),
                "dots": coords,
                "legend_x": pad + 4 + 120 * idx,
            }
        )
    return LineChart(name, width, height, pad, lines, y_low=y0, y_high=y1, x_low=x0, x_high=x1)


def training_curves(events: Sequence[Mapping[str, Any]]) -> Curves:
    """Charts of a run's events: the losses together, each ``eval_*`` metric, the learning rate.

    A series that holds one value throughout (a single evaluation, ``eval_skipped_images``
    always 0) says nothing a chart would add: it is listed in ``constant`` instead.
    The loss chart is drawn when either loss changes, with both losses on it.
    """
    series = _series(events)
    curves = Curves()
    losses = {k: series[k] for k in ("loss", "eval_loss") if k in series}
    if any(_changes(points) for points in losses.values()):
        curves.charts.append(line_chart("loss", losses))
    else:
        curves.constant.update({k: points[0][1] for k, points in losses.items()})
    singles = sorted(k for k in series if k.startswith("eval_") and k != "eval_loss")
    for key in [*singles, *(["learning_rate"] if "learning_rate" in series else [])]:
        if _changes(series[key]):
            curves.charts.append(line_chart(key, {key: series[key]}))
        else:
            curves.constant[key] = series[key][0][1]
    return curves


# --------------------------------------------------------------------------- helpers


def _series(events: Sequence[Mapping[str, Any]]) -> dict[str, list[tuple[float, float]]]:
    series: dict[str, list[tuple[float, float]]] = {}
    for event in events:
        step = event.get("step")
        if isinstance(step, bool) or not isinstance(step, (int, float)):
            continue
        for key, value in event.items():
            if key in _BOOKKEEPING or isinstance(value, bool):
                continue
            if isinstance(value, (int, float)) and math.isfinite(value):
                series.setdefault(key, []).append((float(step), float(value)))
    return series


def _changes(points: Sequence[tuple[float, float]]) -> bool:
    return len({value for _, value in points}) > 1


def _value_range(values: Sequence[float]) -> tuple[float, float]:
    """The y axis of a training curve.

    Everything we plot (losses, rates, errors, the learning rate) is >= 0, and 0 is
    where a loss or an error would be perfect, so the axis starts at 0: the height of
    a curve is then proportional to its value and a fall from 0.52 to 0.50 looks as
    small as it is, where an axis fitted to the data would draw it as a collapse.
    A series that goes negative gets an axis fitted around its values instead.
    """
    low, high = min(values), max(values)
    if low < 0:
        return _padded_range(values, 0.05)
    return 0.0, high * 1.05 if high > 0 else 1.0


def _padded_range(values: Sequence[float], margin: float) -> tuple[float, float]:
    """(low, high) around ``values`` with ``margin`` of the span added each side; never empty."""
    low, high = min(values), max(values)
    if high == low:
        half = abs(low) * 0.1 or 1.0
        return low - half, high + half
    pad = (high - low) * margin
    return low - pad, high + pad


def _log_ticks(lo: float, hi: float) -> list[float]:
    ticks = []
    for exp in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1):
        mults = (1, 2, 5) if math.log10(hi / lo) < 3 else (1,)
        ticks += [m * 10.0**exp for m in mults if lo <= m * 10.0**exp <= hi]
    return ticks


def _tick_label(value: float) -> str:
    return f"{value:,.0f}" if value >= 1 else f"{value:g}"
