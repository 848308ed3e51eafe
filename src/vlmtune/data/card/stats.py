"""What a prepared dataset looks like, as numbers: the content of the data card and of ``vlmtune inspect``.

:func:`summarise` reads a manifest (and ``prepare_report.json`` when there is one) into
:class:`CardSummary`, plain JSON-able data:

- rows kept and dropped by reason, split sizes;
- duplicate groups (``duplicate_group``): how many, the largest few with their members;
- categories per split, **flagged** when training has fewer than ``rare_min`` examples of
  them, or when val/test hold a category training lacks (the model cannot have learnt it);
- price per category (quartiles), and **price outliers**: prices at most zero, or at least
  ``OUTLIER_RATIO`` times away from their category's median (either direction);
- title lengths (characters), image widths, heights and aspect ratios (width / height);
- image tokens per photo when a counter is given (the model's own processor counts them;
  the data layer cannot import the models, so the CLI hands the counter in:
  :func:`vlmtune.models.image_tokens.image_token_counter`), so the sequence-length cost of
  the photos is visible before training.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from vlmtune.data.catalog import CatalogColumns
from vlmtune.data.splits import SPLITS

__all__ = [
    "DUPLICATE_COLUMN",
    "OUTLIER_RATIO",
    "CardSummary",
    "ImageTokenCounter",
    "categories_missing_from_train",
    "summarise",
]

ImageTokenCounter = Callable[[int, int], int]
"""``(width, height) -> image tokens`` of one photo, from the model's processor."""
DUPLICATE_COLUMN = "duplicate_group"
OUTLIER_RATIO = 3.0
"""A price this many times above or below its category's median is an outlier."""
LARGEST_GROUPS = 6


@dataclass
class CardSummary:
    """Everything the data card shows (see the module docstring); :meth:`to_dict` is JSON-able."""

    rows: dict[str, Any]
    """``read``, ``kept``, ``dropped``, ``dropped_by_reason`` (``"<stage>/<kind>"`` -> rows) and
    ``bad_price`` (rows dropped when the catalog was read because their price was not a positive
    number: zero, negative or unreadable prices never reach the dataset)."""
    splits: dict[str, int]
    duplicates: dict[str, Any]
    """``groups`` (of 2+ rows), ``rows`` in them, ``conflicts``, ``largest`` (group, size, splits, members)."""
    categories: list[dict[str, Any]]
    """Per category: ``name``, ``counts`` per split, ``flags`` (``rare``, ``absent from train``)."""
    prices: list[dict[str, Any]]
    """Per category: ``name``, ``n``, ``min``, ``q1``, ``median``, ``q3``, ``max``."""
    outliers: list[dict[str, Any]]
    """Rows whose price is an outlier: ``id``, ``category``, ``price``, ``median``, ``why``, ``split``."""
    titles: list[int]
    """Title length in characters, per row."""
    widths: list[int]
    heights: list[int]
    aspects: list[float]
    tokens: list[int] | None = None
    """Image tokens per photo (None when no counter was given)."""
    token_totals: dict[str, int] = field(default_factory=dict)
    """Image tokens of all photos of each split (one epoch's image share of the sequence budget)."""
    settings: dict[str, Any] = field(default_factory=dict)
    """``rare_min``, ``num_crops``, ``outlier_ratio``."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def flagged(self) -> list[dict[str, Any]]:
        """The categories with at least one flag."""
        return [c for c in self.categories if c["flags"]]


def summarise(
    root: str | Path,
    frame: pd.DataFrame,
    columns: CatalogColumns,
    rare_min: int = 5,
    image_tokens: ImageTokenCounter | None = None,
    num_crops: int | None = None,
) -> CardSummary:
    """The summary of the prepared dataset in ``root`` whose manifest is ``frame``."""
    report = _read_report(Path(root))
    prices = pd.to_numeric(frame[columns.price], errors="coerce")
    cats = frame[columns.category].astype(str)
    widths = frame["image_width"].astype(int).tolist()
    heights = frame["image_height"].astype(int).tolist()
    tokens = None
    if image_tokens is not None:
        sizes = sorted(set(zip(widths, heights, strict=True)))
        per_size = {size: int(image_tokens(*size)) for size in sizes}
        tokens = [per_size[size] for size in zip(widths, heights, strict=True)]
    totals = {}
    if tokens is not None:
        totals = {name: int(sum(t for t, s in zip(tokens, frame["split"], strict=True) if s == name))
                  for name in SPLITS}  # fmt: skip
    return CardSummary(
        rows=_rows(report, len(frame)),
        splits={name: int((frame["split"] == name).sum()) for name in SPLITS},
        duplicates=_duplicates(frame, columns, report),
        categories=_categories(cats, frame["split"], rare_min),
        prices=_price_quartiles(cats, prices),
        outliers=_outliers(frame[columns.id].astype(str), cats, prices, frame["split"]),
        titles=frame[columns.title].astype(str).str.len().tolist(),
        widths=widths,
        heights=heights,
        aspects=[round(w / h, 4) for w, h in zip(widths, heights, strict=True)],
        tokens=tokens,
        token_totals=totals,
        settings={"rare_min": rare_min, "num_crops": num_crops, "outlier_ratio": OUTLIER_RATIO},
    )


def categories_missing_from_train(
    frame: pd.DataFrame, category: str, train_split: str = "train"
) -> dict[str, list[str]]:
    """Split -> its categories that no row of ``train_split`` has (only splits with some)."""
    cats = frame[category].astype(str)
    train = set(cats[frame["split"] == train_split])
    out = {}
    for name in [s for s in SPLITS if s != train_split]:
        missing = sorted(set(cats[frame["split"] == name]) - train)
        if missing:
            out[name] = missing
    return out


# --------------------------------------------------------------------------- parts


def _read_report(root: Path) -> dict[str, Any]:
    try:
        report = json.loads((root / "prepare_report.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return report if isinstance(report, dict) else {}


def _rows(report: dict[str, Any], kept: int) -> dict[str, Any]:
    return {
        "read": int(report.get("rows_read", kept)),
        "kept": kept,
        "dropped": int(report.get("dropped", 0)),
        "dropped_by_reason": dict(report.get("dropped_by_reason", {})),
        "bad_price": int(report.get("dropped_by_reason", {}).get("catalog/bad price", 0)),
    }


def _duplicates(frame: pd.DataFrame, columns: CatalogColumns, report: dict) -> dict[str, Any]:
    """Groups of two or more kept rows, and the largest few with their members."""
    if DUPLICATE_COLUMN not in frame.columns:
        return {"groups": 0, "rows": 0, "conflicts": 0, "largest": [], "recorded": False}
    sizes = frame[DUPLICATE_COLUMN].value_counts()
    multi = sizes[sizes > 1]
    order = sorted(multi.index, key=lambda g: (-int(multi[g]), int(g)))[:LARGEST_GROUPS]
    largest = []
    for group in order:
        rows = frame[frame[DUPLICATE_COLUMN] == group]
        members = [
            {"id": str(r[columns.id]), "title": str(r[columns.title]),
             "price": r[columns.price], "split": r["split"], "image": r["local_image_path"]}
            for r in rows.to_dict("records")
        ]  # fmt: skip
        largest.append({"group": int(group), "size": len(rows),
                        "splits": sorted(set(rows["split"])), "members": members})  # fmt: skip
    return {
        "groups": len(multi),
        "rows": int(multi.sum()),
        "conflicts": int(report.get("conflict_groups", 0)),
        "largest": largest,
        "recorded": True,
    }


def _categories(cats: pd.Series, splits: pd.Series, rare_min: int) -> list[dict[str, Any]]:
    table = pd.crosstab(cats, splits)
    out = []
    for name in sorted(table.index):
        counts = {s: int(table.at[name, s]) if s in table.columns else 0 for s in SPLITS}
        flags = []
        if counts["train"] == 0 and (counts["val"] or counts["test"]):
            flags.append("absent from train")
        elif counts["train"] < rare_min:
            flags.append(f"rare: {counts['train']} train rows (< {rare_min})")
        out.append({"name": name, "counts": counts, "flags": flags})
    return out


def _price_quartiles(cats: pd.Series, prices: pd.Series) -> list[dict[str, Any]]:
    out = []
    for name, values in prices.groupby(cats):
        values = values.dropna()
        if values.empty:
            continue
        q = np.quantile(values, [0, 0.25, 0.5, 0.75, 1])
        out.append({"name": str(name), "n": len(values),
                    **dict(zip(("min", "q1", "median", "q3", "max"), map(float, q), strict=True))})  # fmt: skip
    return sorted(out, key=lambda c: c["name"])


def _outliers(
    ids: pd.Series, cats: pd.Series, prices: pd.Series, splits: pd.Series
) -> list[dict[str, Any]]:
    medians = prices[prices > 0].groupby(cats).median()
    out = []
    for pid, cat, price, split in zip(ids, cats, prices, splits, strict=True):
        median = medians.get(cat, math.nan)
        if math.isnan(price):
            continue
        if price <= 0:
            why = "zero or negative"
        elif not math.isnan(median) and max(price / median, median / price) >= OUTLIER_RATIO:
            why = f"{price / median:.2g}x the category median"
        else:
            continue
        out.append({"id": pid, "category": cat, "price": float(price),
                    "median": None if math.isnan(median) else float(median), "why": why,
                    "split": split})  # fmt: skip
    return out
