"""The data card of a prepared dataset: what the data looks like before GPU hours are spent on it.

:func:`summarise` (:mod:`.stats`) computes it; :func:`write_card` (:mod:`.render`) writes
``data_card.html`` (inline SVG plots, inline thumbnails, no external asset); ``vlmtune
inspect`` prints the same summary as tables.
"""

from vlmtune.data.card.render import CARD, render_card, write_card
from vlmtune.data.card.stats import (
    OUTLIER_RATIO,
    CardSummary,
    ImageTokenCounter,
    categories_missing_from_train,
    summarise,
)

__all__ = [
    "CARD",
    "OUTLIER_RATIO",
    "CardSummary",
    "ImageTokenCounter",
    "categories_missing_from_train",
    "render_card",
    "summarise",
    "write_card",
]
