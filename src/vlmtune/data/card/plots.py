"""The geometry of the data card's plots: where every bar, box and tick of an inline SVG goes.

Pure arithmetic, no markup (``templates/data_card.html`` draws it, autoescaped):

* :func:`histogram`: counts of numbers in equal-width bins (title lengths, image sides,
  aspect ratios, image tokens per photo);
* :func:`box_plot`: one horizontal box per category (quartiles, whiskers at min and max)
  on a shared logarithmic price axis, so a 50 and a 2,000 category both read clearly.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["BoxPlot", "Histogram", "box_plot", "histogram"]

WIDTH, HEIGHT, PAD = 420, 180, 40
ROW = 22  # height of one category's box, pixels


@dataclass
class Histogram:
    """Bars (``x``, ``y``, ``w``, ``h``, ``count``, ``label``) and x-axis ticks (``x``, ``label``)."""

    name: str
    width: int
    height: int
    pad: int
    bars: list[dict[str, Any]]
    ticks: list[dict[str, Any]]
    peak: int


@dataclass
class BoxPlot:
    """One row per category (``y``, box ``x1``..``x3``, whiskers ``lo``/``hi``, ``label``) and ticks."""

    width: int
    height: int
    pad: int
    left: int
    rows: list[dict[str, Any]]
    ticks: list[dict[str, Any]]


def histogram(
    name: str, values: Sequence[float], bins: int = 20, integer: bool = True
) -> Histogram:
    """Equal-width bins over ``[min, max]`` of ``values``; integer data gets integer bin edges."""
    lo, hi = (min(values), max(values)) if values else (0.0, 1.0)
    if not integer and hi - lo < 0.1:  # near-constant ratios: a readable window around them
        lo, hi = (lo + hi) / 2 - 0.05, (lo + hi) / 2 + 0.05
    if hi <= lo:
        hi = lo + 1
    step = (hi - lo) / bins
    if integer:
        step = max(1.0, math.ceil(step))
        bins = max(1, math.ceil((hi - lo + 1) / step))
    counts = [0] * bins
    for v in values:
        counts[min(bins - 1, int((v - lo) // step))] += 1
    peak = max(counts) or 1
    inner_w, inner_h = WIDTH - 2 * PAD, HEIGHT - 2 * PAD
    bar_w = inner_w / bins
    fmt = _fmt(step)
    bars = [
        {"x": PAD + k * bar_w, "w": max(bar_w - 1, 1), "h": inner_h * c / peak,
         "y": PAD + inner_h * (1 - c / peak), "count": c,
         "label": f"{fmt(lo + k * step)}-{fmt(lo + (k + 1) * step)}: {c}"}
        for k, c in enumerate(counts)
    ]  # fmt: skip
    ticks = [
        {"x": PAD + k * bar_w, "label": fmt(lo + k * step)}
        for k in range(0, bins + 1, max(1, bins // 4))
    ]
    return Histogram(name, WIDTH, HEIGHT, PAD, bars, ticks, peak)


def box_plot(quartiles: Sequence[dict[str, Any]]) -> BoxPlot | None:
    """Boxes of ``{name, min, q1, median, q3, max}`` (prices > 0) on a shared log axis; None if empty."""
    rows = [q for q in quartiles if q["min"] > 0]
    if not rows:
        return None
    left = 140
    lo = math.log10(min(q["min"] for q in rows) / 1.2)
    hi = math.log10(max(q["max"] for q in rows) * 1.2)
    span = hi - lo or 1.0
    inner = WIDTH + 160 - left - PAD

    def x(v: float) -> float:
        return left + inner * (math.log10(v) - lo) / span

    out = []
    for k, q in enumerate(rows):
        y = PAD + k * ROW
        out.append({"y": y, "label": q["name"], "n": q["n"], "lo": x(q["min"]), "hi": x(q["max"]),
                    "x1": x(q["q1"]), "x2": x(q["median"]), "x3": x(q["q3"]),
                    "title": f"{q['name']}: n={q['n']}, median {q['median']:g}, "
                             f"{q['min']:g}-{q['max']:g}"})  # fmt: skip
    decades = range(math.floor(lo), math.ceil(hi) + 1)
    ticks = [
        {"x": x(m * 10**d), "label": f"{m * 10**d:g}"}
        for d in decades
        for m in (1, 2, 5)
        if lo <= math.log10(m * 10**d) <= hi
    ]
    height = 2 * PAD + ROW * len(rows)
    return BoxPlot(WIDTH + 160, height, PAD, left, out, ticks)


def _fmt(step: float):
    digits = 0 if step >= 1 else max(0, -math.floor(math.log10(step)) + 1)
    return lambda v: f"{v:.{digits}f}"
