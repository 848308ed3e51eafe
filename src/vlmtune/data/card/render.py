"""``data_card.html``: the data card of a prepared dataset, one self-contained page.

The page is rendered from the Jinja2 template ``templates/data_card.html`` (package data,
autoescaped: catalog text is untrusted). Plots are inline SVG (:mod:`.plots`), the
duplicate groups' thumbnails inline ``data:`` URIs (a few kilobytes each); the page loads
nothing from anywhere.
"""

from __future__ import annotations

import base64
import functools
import io
from pathlib import Path
from typing import Any

import jinja2
from PIL import Image

from vlmtune.data.card.plots import box_plot, histogram
from vlmtune.data.card.stats import CardSummary
from vlmtune.utils.io import atomic_write_text
from vlmtune.utils.logging import get_logger

__all__ = ["CARD", "render_card", "write_card"]

CARD = "data_card.html"
THUMB = 72  # thumbnail side, pixels
MEMBERS_SHOWN = 6
LOG = get_logger(__name__)


def write_card(root: str | Path, summary: CardSummary) -> Path:
    """Render ``summary`` into ``root/data_card.html`` atomically (thumbnails read from ``root``)."""
    return atomic_write_text(Path(root) / CARD, render_card(root, summary))


def render_card(root: str | Path, summary: CardSummary) -> str:
    """The whole HTML page as a string."""
    plots = {
        "titles": histogram("title length (characters)", summary.titles),
        "widths": histogram("image width (pixels)", summary.widths),
        "heights": histogram("image height (pixels)", summary.heights),
        "aspects": histogram("aspect ratio (width / height)", summary.aspects, integer=False),
    }
    if summary.tokens is not None:
        plots["tokens"] = histogram("image tokens per photo", summary.tokens)
    return (
        _environment()
        .get_template(CARD)
        .render(
            s=summary,
            plots=plots,
            prices=box_plot(summary.prices),
            groups=_groups_view(Path(root), summary.duplicates["largest"]),
            tokens=_tokens_view(summary),
        )
    )


def _groups_view(root: Path, largest: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        g | {"members": [m | {"thumb": _thumbnail(root / m["image"])}
                         for m in g["members"][:MEMBERS_SHOWN]],
             "more": max(0, g["size"] - MEMBERS_SHOWN)}
        for g in largest
    ]  # fmt: skip


def _tokens_view(summary: CardSummary) -> dict[str, Any] | None:
    if not summary.tokens:
        return None
    tokens = sorted(summary.tokens)
    return {
        "num_crops": summary.settings.get("num_crops"),
        "min": tokens[0],
        "median": tokens[len(tokens) // 2],
        "max": tokens[-1],
        "totals": summary.token_totals,
    }


def _thumbnail(path: Path) -> str | None:
    """``data:image/jpeg;base64,...`` of a small thumbnail, or None when unreadable."""
    try:
        with Image.open(path) as image:
            thumb = image.convert("RGB")
            thumb.thumbnail((THUMB, THUMB))
            buffer = io.BytesIO()
            thumb.save(buffer, format="JPEG", quality=75)
    except (OSError, ValueError) as err:
        LOG.warning("data card: no thumbnail for %s: %s", path, err)
        return None
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


@functools.cache
def _environment() -> jinja2.Environment:
    # autoescape whatever the name: titles, categories and ids come from the catalog
    return jinja2.Environment(
        loader=jinja2.PackageLoader("vlmtune.data.card", "templates"),
        autoescape=True,
        trim_blocks=True,
        lstrip_blocks=True,
        undefined=jinja2.StrictUndefined,
    )
