"""Metrics on hand-made predictions whose answers are worked out by hand, unparsable outputs included."""

from __future__ import annotations

import pytest

from vlmtune.data.prompts import ParsedListing, parse_listing
from vlmtune.evaluation.metrics import (
    METRICS,
    baseline_metrics,
    compute_metrics,
    normalize_text,
    score_row,
    token_f1,
)

REFS = [
    {"title": "Check Wool Scarf", "category": "scarves", "price": 100.0},
    {"title": "Leather Tote Bag", "category": "bags", "price": 200.0},
    {"title": "Trench Coat", "category": "coats", "price": 1000.0},
    {"title": "Cotton Polo Shirt", "category": "shirts", "price": 50.0},
]

OUTPUTS = [
    # exact title (case and spacing differ), right category, price 10 % off
    "Product:  check wool   SCARF, Category: Scarves, Full Price: 110",
    # title 2 of 3 tokens, wrong category, price 50 % off
    "Product: Leather Bag, Category: shoes, Full Price: 300<|end|>",
    # not a listing at all: every field unread
    "I see a coat on a hanger.",
    # title right, category right, price unreadable
    "Product: Cotton Polo Shirt, Category: shirts, Full Price: N.A.",
]


@pytest.fixture()
def parsed() -> list[ParsedListing]:
    return [parse_listing(text) for text in OUTPUTS]


def test_parse_rate_counts_only_complete_listings(parsed):
    metrics = compute_metrics(REFS, parsed)
    assert metrics["parse_rate"] == pytest.approx(2 / 4)
    assert metrics["title_parse_rate"] == pytest.approx(3 / 4)
    assert metrics["category_parse_rate"] == pytest.approx(3 / 4)
    assert metrics["price_parse_rate"] == pytest.approx(2 / 4)
    assert metrics["n"] == 4


def test_title_metrics_count_unread_titles_as_wrong(parsed):
    metrics = compute_metrics(REFS, parsed)
    assert metrics["title_exact_match"] == pytest.approx(2 / 4)
    # row 2: pred {leather, bag}, ref {leather, tote, bag}: P=1, R=2/3, F1=0.8
    assert metrics["title_token_f1"] == pytest.approx((1 + 0.8 + 0 + 1) / 4)
    # fuzz.ratio("leather bag", "leather tote bag") = 2*11/(11+16) = 0.8148...
    assert metrics["title_fuzzy_ratio"] == pytest.approx((1 + 22 / 27 + 0 + 1) / 4, abs=1e-4)


def test_category_accuracy_and_macro_f1(parsed):
    metrics = compute_metrics(REFS, parsed)
    assert metrics["category_accuracy"] == pytest.approx(2 / 4)
    # per reference class: scarves 1, bags 0 (missed), coats 0 (unread), shirts 1
    assert metrics["category_macro_f1"] == pytest.approx(0.5)


def test_price_metrics_count_unread_price_as_zero_prediction(parsed):
    metrics = compute_metrics(REFS, parsed)
    # abs errors: 10, 100, 1000 (unread: the reference), 50 (unread)
    assert metrics["price_mae"] == pytest.approx((10 + 100 + 1000 + 50) / 4)
    # APE: 0.1, 0.5, 1.0, 1.0
    assert metrics["price_mape"] == pytest.approx((0.1 + 0.5 + 1.0 + 1.0) / 4)
    assert metrics["price_median_ape"] == pytest.approx(0.75)
    assert metrics["price_within_10pct"] == pytest.approx(1 / 4)
    assert metrics["price_within_25pct"] == pytest.approx(1 / 4)


def test_every_documented_key_is_returned(parsed):
    metrics = compute_metrics(REFS, parsed)
    assert set(metrics) == set(METRICS)
    for key in ("parse_rate", "title_exact_match", "category_macro_f1", "price_median_ape", "n"):
        assert key in metrics


def test_perfect_predictions_score_perfectly():
    parsed = [
        ParsedListing(title=r["title"], category=r["category"], price=r["price"]) for r in REFS
    ]
    metrics = compute_metrics(REFS, parsed)
    assert metrics["parse_rate"] == 1.0
    for key in ("title_exact_match", "title_token_f1", "title_fuzzy_ratio", "category_accuracy"):
        assert metrics[key] == pytest.approx(1.0)
    assert metrics["category_macro_f1"] == pytest.approx(1.0)
    assert metrics["price_mae"] == 0.0 and metrics["price_mape"] == 0.0
    assert metrics["price_within_10pct"] == 1.0


def test_invented_category_is_a_miss_not_a_class():
    refs = [
        {"title": "a", "category": "x", "price": 1.0},
        {"title": "b", "category": "y", "price": 1.0},
    ]
    parsed = [
        ParsedListing(title="a", category="x", price=1.0),
        ParsedListing(title="b", category="z", price=1.0),
    ]
    metrics = compute_metrics(refs, parsed)
    assert metrics["category_accuracy"] == 0.5
    assert metrics["category_macro_f1"] == pytest.approx(0.5)  # x: 1.0, y: 0.0; z is not averaged


def test_fields_subset_leaves_other_metrics_out():
    parsed = [parse_listing("Full Price: 100", fields=("price",))]
    metrics = compute_metrics(REFS[:1], parsed, fields=("price",))
    assert metrics["parse_rate"] == 1.0 and metrics["price_mape"] == 0.0
    assert "title_exact_match" not in metrics and "category_accuracy" not in metrics


def test_score_row_tolerance_bands_and_normalisation():
    row = score_row(
        {"title": "Ｔrench  Coat", "category": "Coats", "price": 100.0},
        ParsedListing("trench coat", "COATS", 125.0),
    )
    assert row["title_exact"] and row["category_correct"]
    assert row["price_ape"] == pytest.approx(0.25)
    assert row["price_within_25pct"] and not row["price_within_10pct"]
    assert normalize_text("  Ｔrench\tCOAT ") == "trench coat"
    assert token_f1("", "") == 1.0 and token_f1("a", "") == 0.0


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="2 references but 1 parsed"):
        compute_metrics(REFS[:2], [ParsedListing()])
    with pytest.raises(ValueError, match="no rows"):
        compute_metrics([], [])
    with pytest.raises(ValueError, match="positive"):
        score_row({"title": "a", "category": "b", "price": 0}, ParsedListing())


def test_baselines_predict_training_constants():
    train = [
        {"title": "Trench Coat", "category": "coats", "price": 100.0},
        {"title": "trench coat", "category": "coats", "price": 200.0},
        {"title": "Scarf", "category": "scarves", "price": 600.0},
    ]
    evals = [
        {"title": "Trench Coat", "category": "coats", "price": 300.0},
        {"title": "Bag", "category": "bags", "price": 150.0},
    ]
    base = baseline_metrics(train, evals)
    assert set(base) == {"mean_price", "median_price", "majority_category", "most_common_title"}
    assert base["mean_price"]["prediction"] == pytest.approx(300.0)
    assert base["mean_price"]["price_mape"] == pytest.approx((0 + 1.0) / 2)
    assert base["mean_price"]["price_within_10pct"] == 0.5
    assert base["median_price"]["prediction"] == 200.0
    assert base["median_price"]["price_mae"] == pytest.approx((100 + 50) / 2)
    assert base["majority_category"]["prediction"] == "coats"
    assert base["majority_category"]["category_accuracy"] == 0.5
    assert base["most_common_title"]["prediction"] == "Trench Coat"
    assert base["most_common_title"]["title_exact_match"] == 0.5
    assert "price_mape" not in base["majority_category"] and "parse_rate" not in base["mean_price"]
    assert all(b["n"] == 2 for b in base.values())
