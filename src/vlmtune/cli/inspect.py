"""``vlmtune inspect``: print a prepared dataset's data card as tables (rows, splits, duplicates, categories, prices).

Reads DATA/dataset.parquet and DATA/prepare_report.json; writes nothing and opens
nothing (the same card as a page is DATA/data_card.html, written by prepare).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table

from vlmtune.utils.config import flag

if TYPE_CHECKING:
    from vlmtune.data.card import CardSummary

__all__ = ["CONFIG", "InspectArgs", "run", "summary_tables"]


@dataclass
class InspectArgs:
    """Which prepared dataset to summarise, and the card's settings."""

    data: Path = flag(argument=True, default=Path())
    """The prepared dataset folder (the --out of vlmtune prepare)."""
    num_crops: int = flag("--num-crops", default=16)
    """Crops per photo of the model's image processor, for the image-token counts (16 is the reference checkpoint's)."""
    rare_min: int = flag("--rare-min", default=5)
    """Flag categories with fewer training rows than this."""

    def __post_init__(self) -> None:
        if not str(self.data).strip() or Path(self.data) == Path():
            raise ValueError("data is required: a prepared dataset folder (vlmtune inspect DATA)")
        self.data = Path(self.data)
        if self.num_crops < 1:
            raise ValueError(f"num_crops must be >= 1, got {self.num_crops}")
        if self.rare_min < 0:
            raise ValueError(f"rare_min must be >= 0, got {self.rare_min}")


CONFIG = InspectArgs


def run(args: InspectArgs) -> None:
    from vlmtune.data.card import summarise
    from vlmtune.data.prepared import load_prepared
    from vlmtune.models.image_tokens import image_token_counter

    data = load_prepared(args.data)
    summary = summarise(
        args.data, data.frame, data.columns, args.rare_min,
        image_token_counter(args.num_crops), args.num_crops,
    )  # fmt: skip
    console = Console()
    for table in summary_tables(summary):
        console.print(table)


def summary_tables(summary: CardSummary) -> list[Table]:
    """The card as rich tables: overview, categories (flags), duplicate groups, price outliers."""
    return [
        _overview(summary),
        _categories(summary),
        _groups(summary),
        _outliers(summary),
    ]


def _overview(s: CardSummary) -> Table:
    table = Table(title="dataset", show_header=False)
    table.add_column("what")
    table.add_column("value", justify="right")
    table.add_row(
        "rows read / kept / dropped", f"{s.rows['read']} / {s.rows['kept']} / {s.rows['dropped']}"
    )
    for reason, count in sorted(s.rows["dropped_by_reason"].items(), key=lambda kv: -kv[1]):
        table.add_row(f"  dropped: {reason}", str(count))
    table.add_row("splits", ", ".join(f"{k} {v}" for k, v in s.splits.items()))
    dup = s.duplicates
    table.add_row("duplicate groups (rows)", f"{dup['groups']} ({dup['rows']})" if dup["recorded"]
                  else "not recorded (prepared before duplicate groups)")  # fmt: skip
    table.add_row("conflicting groups", str(dup["conflicts"]))
    table.add_row("flagged categories", str(len(s.flagged)))
    table.add_row("price outliers", str(len(s.outliers)))
    table.add_row("dropped for a zero, negative or unreadable price", str(s.rows["bad_price"]))
    if s.titles:
        table.add_row("title length (chars, min/median/max)", _spread(s.titles))
        table.add_row("image width (px)", _spread(s.widths))
        table.add_row("image height (px)", _spread(s.heights))
        table.add_row("aspect ratio (w/h)", _spread(s.aspects))
    if s.tokens:
        crops = s.settings["num_crops"]
        table.add_row(f"image tokens per photo (num_crops={crops})", _spread(s.tokens))
        table.add_row("image tokens of the train split", str(s.token_totals.get("train", 0)))
    return table


def _categories(s: CardSummary) -> Table:
    table = Table(
        title=f"categories per split (flagged: < {s.settings['rare_min']} train rows, or absent from train)"
    )
    table.add_column("category")
    for name in s.splits:
        table.add_column(name, justify="right")
    table.add_column("flags")
    for c in s.categories:
        counts = [str(c["counts"][name]) for name in s.splits]
        table.add_row(
            c["name"], *counts, "; ".join(c["flags"]), style="yellow" if c["flags"] else None
        )
    return table


def _groups(s: CardSummary) -> Table:
    table = Table(title="largest duplicate groups")
    for name in ("group", "rows", "split", "members"):
        table.add_column(name)
    for g in s.duplicates["largest"]:
        ids = ", ".join(m["id"] for m in g["members"][:6]) + (" ..." if g["size"] > 6 else "")
        table.add_row(str(g["group"]), str(g["size"]), ", ".join(g["splits"]), ids)
    return table


def _outliers(s: CardSummary) -> Table:
    table = Table(
        title=f"price outliers (<= 0, or {s.settings['outlier_ratio']:g}x from the category median)"
    )
    for name in ("id", "category", "price", "median", "why"):
        table.add_column(name)
    for o in s.outliers[:20]:
        table.add_row(o["id"], o["category"], f"{o['price']:g}", f"{o['median'] or 0:g}", o["why"])
    return table


def _spread(values: list[int] | list[float]) -> str:
    ordered = sorted(values)
    return f"{ordered[0]:g} / {ordered[len(ordered) // 2]:g} / {ordered[-1]:g}"
