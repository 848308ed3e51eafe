"""Field-by-field metrics of generated listings, as a merchandiser judges them, and their baselines.

Every metric is computed over **all** evaluated rows: a field that could not be
read from the generated text (see :func:`vlmtune.data.prompts.parse_listing`)
counts as wrong for that field, so a model cannot look good by writing fewer
parsable listings. Fields are judged independently: a listing whose price
failed to parse still gets credit for a correct title.

Definitions (``n`` rows; ``norm`` = Unicode NFKC, case-folded, runs of
whitespace collapsed to one space, stripped):

- ``parse_rate``: share of outputs from which every expected field was read.
- ``title_exact_match``: share with ``norm(pred) == norm(ref)``.
- ``title_token_f1``: mean token F1 (SQuAD-style, multiset overlap of the
  ``\\w+`` tokens of the normalised titles); 0 for an unread title.
- ``title_fuzzy_ratio``: mean ``rapidfuzz.fuzz.ratio`` of the normalised titles
  divided by 100 (normalised Indel similarity, 0..1); 0 for an unread title.
- ``category_accuracy``: share with ``norm(pred) == norm(ref)``.
- ``category_macro_f1``: per-category F1 averaged over the categories present
  in the references (an unread or invented category is a miss for the true one).
- ``price_mae``: mean ``|pred - ref|`` in the catalog's currency.
- ``price_mape``: mean ``|pred - ref| / ref``, as a fraction (0.25 = 25 %).
- ``price_median_ape``: median of the same absolute percentage errors.
- ``price_within_10pct`` / ``price_within_25pct``: share with APE <= 0.10 / 0.25.
- An unread price counts as a prediction of 0: absolute error = the reference
  price, APE = 1.0, outside both tolerance bands.
- ``title_parse_rate``, ``category_parse_rate``, ``price_parse_rate``: share of
  outputs from which that field was read.

Baselines (:func:`baseline_metrics`) predict one constant learnt from the
training split for every row: its mean price, its median price, its most
frequent category, its most frequent (normalised) title; each is scored with
the same code on the field(s) it predicts.
"""

from __future__ import annotations

import math
import re
import statistics
import unicodedata
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from rapidfuzz import fuzz

from vlmtune.data.prompts import ParsedListing

__all__ = [
    "FIELDS",
    "METRICS",
    "MetricInfo",
    "baseline_metrics",
    "compute_metrics",
    "normalize_text",
    "score_row",
    "token_f1",
]

FIELDS = ("title", "category", "price")
_TOKEN = re.compile(r"\w+")


@dataclass(frozen=True)
class MetricInfo:
    """Label, definition and direction of one metric (what the report prints beside it)."""

    label: str
    definition: str
    higher_is_better: bool
    percent: bool
    """Shown as a percentage (the value is a fraction)."""


METRICS: dict[str, MetricInfo] = {
    "parse_rate": MetricInfo(
        "Parse rate",
        "Share of outputs from which every expected field (title, category, price) was read.",
        True,
        True,
    ),
    "title_exact_match": MetricInfo(
        "Title exact match",
        "Share of rows whose title equals the reference after Unicode NFKC, case folding and whitespace collapsing.",
        True,
        True,
    ),
    "title_token_f1": MetricInfo(
        "Title token F1",
        "Mean F1 of the word tokens shared by generated and reference title (multiset overlap); 0 when unread.",
        True,
        True,
    ),
    "title_fuzzy_ratio": MetricInfo(
        "Title fuzzy ratio",
        "Mean rapidfuzz ratio (normalised Indel similarity of the normalised titles), 0..1; 0 when unread.",
        True,
        True,
    ),
    "category_accuracy": MetricInfo(
        "Category accuracy",
        "Share of rows whose category equals the reference (case-insensitive).",
        True,
        True,
    ),
    "category_macro_f1": MetricInfo(
        "Category macro-F1",
        "F1 per reference category, averaged with equal weight; an unread or invented category is a miss.",
        True,
        True,
    ),
    "price_mae": MetricInfo(
        "Price MAE",
        "Mean absolute error of the price, in the catalog's currency; an unread price counts as 0.",
        False,
        False,
    ),
    "price_mape": MetricInfo(
        "Price MAPE",
        "Mean absolute percentage error |pred - ref| / ref; an unread price counts as 100 % error.",
        False,
        True,
    ),
    "price_median_ape": MetricInfo(
        "Price median APE",
        "Median absolute percentage error; an unread price counts as 100 % error.",
        False,
        True,
    ),
    "price_within_10pct": MetricInfo(
        "Price within 10 %",
        "Share of rows whose price is within 10 % of the reference; unread prices are outside.",
        True,
        True,
    ),
    "price_within_25pct": MetricInfo(
        "Price within 25 %",
        "Share of rows whose price is within 25 % of the reference; unread prices are outside.",
        True,
        True,
    ),
    "title_parse_rate": MetricInfo(
        "Title read", "Share of outputs with a readable title.", True, True
    ),
    "category_parse_rate": MetricInfo(
        "Category read", "Share of outputs with a readable category.", True, True
    ),
    "price_parse_rate": MetricInfo(
        "Price read", "Share of outputs with a readable positive price.", True, True
    ),
    "n": MetricInfo("Rows", "Number of evaluated rows.", True, False),
}
"""Every key :func:`compute_metrics` returns, in report order."""


def normalize_text(text: str) -> str:
    """NFKC, case-folded, whitespace collapsed and stripped: the form titles and categories are compared in."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def token_f1(prediction: str, reference: str) -> float:
    """F1 of the multiset of ``\\w+`` tokens of the two normalised strings (1.0 when both have none)."""
    pred = _TOKEN.findall(normalize_text(prediction))
    ref = _TOKEN.findall(normalize_text(reference))
    if not pred or not ref:
        return float(pred == ref)
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def score_row(reference: Mapping[str, Any], parsed: ParsedListing) -> dict[str, Any]:
    """Per-field correctness of one generated listing against its reference record.

    ``reference`` holds ``title``, ``category``, ``price`` (a positive number).
    Returns ``title_exact`` (bool), ``title_token_f1``, ``title_fuzzy_ratio``,
    ``category_correct`` (bool), ``price_abs_error``, ``price_ape``,
    ``price_within_10pct``, ``price_within_25pct`` (unread fields scored as
    described in the module docstring) and ``*_read`` flags.
    """
    ref_price = float(reference["price"])
    if not math.isfinite(ref_price) or ref_price <= 0:
        raise ValueError(f"reference price must be a positive number, got {reference['price']!r}")
    title_read, category_read = parsed.title is not None, parsed.category is not None
    price_read = parsed.price is not None
    ref_title, ref_cat = str(reference["title"]), str(reference["category"])
    abs_error = abs(float(parsed.price) - ref_price) if price_read else ref_price
    ape = abs_error / ref_price
    return {
        "title_read": title_read,
        "title_exact": title_read and normalize_text(parsed.title) == normalize_text(ref_title),
        "title_token_f1": token_f1(parsed.title, ref_title) if title_read else 0.0,
        "title_fuzzy_ratio": _fuzzy(parsed.title, ref_title) if title_read else 0.0,
        "category_read": category_read,
        "category_correct": category_read
        and normalize_text(parsed.category) == normalize_text(ref_cat),
        "price_read": price_read,
        "price_abs_error": abs_error,
        "price_ape": ape,
        "price_within_10pct": price_read and ape <= 0.10 + 1e-12,
        "price_within_25pct": price_read and ape <= 0.25 + 1e-12,
    }


def compute_metrics(
    references: Sequence[Mapping[str, Any]],
    parsed: Sequence[ParsedListing],
    fields: Sequence[str] = FIELDS,
) -> dict[str, float]:
    """Aggregate metrics (keys of :data:`METRICS`) of ``parsed`` against ``references``, row by row.

    ``fields`` are the fields the prompt asks for; metrics of the other fields
    are left out. Raises ``ValueError`` when the lists differ in length or are empty.
    """
    if len(references) != len(parsed):
        raise ValueError(f"{len(references)} references but {len(parsed)} parsed outputs")
    if not references:
        raise ValueError("no rows to score")
    unknown = [f for f in fields if f not in FIELDS]
    if unknown:
        raise ValueError(f"unknown field {unknown[0]!r}; choose from {', '.join(FIELDS)}")
    rows = [score_row(ref, p) for ref, p in zip(references, parsed, strict=True)]
    metrics: dict[str, float] = {
        "parse_rate": _mean(all(p.errors.get(f) is None for f in fields) for p in parsed)
    }
    if "title" in fields:
        metrics.update(_title_metrics(rows))
    if "category" in fields:
        metrics.update(_category_metrics(rows, references, parsed))
    if "price" in fields:
        metrics.update(_price_metrics(rows))
    for name in fields:
        metrics[f"{name}_parse_rate"] = _mean(r[f"{name}_read"] for r in rows)
    metrics["n"] = float(len(rows))
    return metrics


def baseline_metrics(
    train_refs: Sequence[Mapping[str, Any]], eval_refs: Sequence[Mapping[str, Any]]
) -> dict[str, dict[str, Any]]:
    """Metrics of constant predictions learnt from ``train_refs``, scored on ``eval_refs``.

    Returns ``{"mean_price": ..., "median_price": ..., "majority_category": ...,
    "most_common_title": ...}``; each maps the metric keys of the field it
    predicts (plus ``n``) to their values, and ``prediction`` to the constant.
    """
    if not train_refs:
        raise ValueError("baselines need at least one training row")
    prices = [float(r["price"]) for r in train_refs]
    constants = {
        "mean_price": ("price", statistics.fmean(prices)),
        "median_price": ("price", statistics.median(prices)),
        "majority_category": ("category", _most_common(str(r["category"]) for r in train_refs)),
        "most_common_title": ("title", _most_common(str(r["title"]) for r in train_refs)),
    }
    out: dict[str, dict[str, Any]] = {}
    for name, (fld, value) in constants.items():
        parsed = [ParsedListing(**{fld: value}) for _ in eval_refs]
        scores = compute_metrics(eval_refs, parsed, fields=(fld,))
        out[name] = {
            k: v for k, v in scores.items() if k.startswith(fld) and not k.endswith("_parse_rate")
        }
        out[name]["n"] = scores["n"]
        out[name]["prediction"] = value
    return out


# --------------------------------------------------------------------------- helpers


def _title_metrics(rows: list[dict[str, Any]]) -> dict[str, float]:
    return {
        "title_exact_match": _mean(r["title_exact"] for r in rows),
        "title_token_f1": _mean(r["title_token_f1"] for r in rows),
        "title_fuzzy_ratio": _mean(r["title_fuzzy_ratio"] for r in rows),
    }


def _category_metrics(
    rows: list[dict[str, Any]],
    references: Sequence[Mapping[str, Any]],
    parsed: Sequence[ParsedListing],
) -> dict[str, float]:
    truth = [normalize_text(str(r["category"])) for r in references]
    pred = [normalize_text(p.category) if p.category is not None else None for p in parsed]
    f1s = []
    for label in sorted(set(truth)):
        tp = sum(t == label and p == label for t, p in zip(truth, pred, strict=True))
        fp = sum(t != label and p == label for t, p in zip(truth, pred, strict=True))
        fn = sum(t == label and p != label for t, p in zip(truth, pred, strict=True))
        f1s.append(2 * tp / (2 * tp + fp + fn))
    return {
        "category_accuracy": _mean(r["category_correct"] for r in rows),
        "category_macro_f1": _mean(f1s),
    }


def _price_metrics(rows: list[dict[str, Any]]) -> dict[str, float]:
    apes = [r["price_ape"] for r in rows]
    return {
        "price_mae": _mean(r["price_abs_error"] for r in rows),
        "price_mape": _mean(apes),
        "price_median_ape": float(statistics.median(apes)),
        "price_within_10pct": _mean(r["price_within_10pct"] for r in rows),
        "price_within_25pct": _mean(r["price_within_25pct"] for r in rows),
    }


def _fuzzy(prediction: str, reference: str) -> float:
    return fuzz.ratio(normalize_text(prediction), normalize_text(reference)) / 100.0


def _most_common(values: Any) -> str:
    """Most frequent value by normalised form; ties go to the normalised form that sorts first."""
    counts: Counter[str] = Counter()
    first: dict[str, str] = {}
    for value in values:
        key = normalize_text(value)
        counts[key] += 1
        first.setdefault(key, value)
    best = min(counts, key=lambda k: (-counts[k], k))
    return first[best]


def _mean(values: Any) -> float:
    items = [float(v) for v in values]
    return sum(items) / len(items) if items else 0.0
