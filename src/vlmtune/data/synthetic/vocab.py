"""The synthetic catalog's vocabulary: product types, materials, patterns, colours, and the price function.

Everything a model can learn from the photo is decided here. A product is
``(type, material, pattern, colour)``; its title is ``{Pattern} {Material} {Type}``
(pattern left out when plain, colour never named), its ``category3_code`` is
fixed by the type, and its full price is

    full_price = price_point(BASE_PRICE[type] * MATERIAL_FACTOR[material] * PATTERN_FACTOR[pattern])

where ``price_point`` rounds to the nearest retail price point (below 1,000:
``..50`` and ``..90`` endings, e.g. 250, 290, 350, 390; from 1,000 on: ``..90``
endings, e.g. 1,090, 1,190, ...). Optional multiplicative noise (``exp(noise * z)``,
``z ~ N(0, 1)``) is applied before rounding, so the irreducible error is known.
Each type allows only the materials and patterns that make sense for it, which
keeps the number of distinct titles near 80; each material comes in four of the
ten colours (overlapping colourways, as in real catalogs).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

__all__ = [
    "COLOURS",
    "EUR_PER_USD",
    "MATERIAL_COLOURS",
    "MATERIALS",
    "PATTERNS",
    "PATTERN_FACTOR",
    "PRICE_POINTS",
    "PRODUCT_TYPES",
    "ProductType",
    "all_titles",
    "list_price",
    "price_point",
    "title_for",
]

EUR_PER_USD = 0.92
"""Fixed conversion rate used for the ``*_eur`` columns (documented, not a market rate)."""


@dataclass(frozen=True)
class ProductType:
    """One kind of product: its name in titles, its category codes and what it can be made of."""

    key: str
    name: str
    category2: str
    category3: str
    audiences: tuple[str, ...]
    materials: tuple[str, ...]
    patterns: tuple[str, ...]
    base_price: float


PRODUCT_TYPES: tuple[ProductType, ...] = (
    ProductType("scarf", "Scarf", "ACCESSORIES", "SCARVES", ("WOMAN", "MAN", "KIDS"),
                ("cashmere", "wool", "silk"), ("plain", "check", "stripe", "monogram"), 450),
    ProductType("tote_bag", "Tote Bag", "BAGS", "TOTE BAGS", ("WOMAN", "MAN"),
                ("leather", "nylon", "cotton"), ("plain", "check", "stripe", "monogram"), 1290),
    ProductType("sneaker", "Sneakers", "SHOES", "SNEAKERS", ("WOMAN", "MAN", "KIDS"),
                ("leather", "nylon", "cotton"), ("plain", "check", "stripe"), 590),
    ProductType("trench_coat", "Trench Coat", "CLOTHING", "TRENCH COATS", ("WOMAN", "MAN"),
                ("cotton", "wool", "cashmere"), ("plain", "check"), 1990),
    ProductType("cap", "Baseball Cap", "ACCESSORIES", "CAPS", ("WOMAN", "MAN", "KIDS"),
                ("cotton", "wool", "nylon"), ("plain", "check", "monogram"), 390),
    ProductType("wallet", "Wallet", "SMALL LEATHER GOODS", "WALLETS", ("WOMAN", "MAN"),
                ("leather", "cotton"), ("plain", "check", "monogram"), 450),
    ProductType("sunglasses", "Sunglasses", "ACCESSORIES", "SUNGLASSES", ("WOMAN", "MAN"),
                ("acetate", "metal"), ("plain",), 290),
    ProductType("belt", "Belt", "ACCESSORIES", "BELTS", ("WOMAN", "MAN"),
                ("leather", "cotton"), ("plain", "check", "monogram"), 490),
    ProductType("polo_shirt", "Polo Shirt", "CLOTHING", "POLO SHIRTS", ("WOMAN", "MAN", "KIDS"),
                ("cotton", "silk"), ("plain", "check", "stripe"), 450),
    ProductType("umbrella", "Umbrella", "ACCESSORIES", "UMBRELLAS", ("WOMAN", "MAN"),
                ("nylon", "cotton"), ("plain", "check", "stripe"), 290),
    ProductType("backpack", "Backpack", "BAGS", "BACKPACKS", ("WOMAN", "MAN", "KIDS"),
                ("leather", "nylon", "cotton"), ("plain", "check", "monogram"), 1490),
)  # fmt: skip

MATERIALS: dict[str, tuple[str, float]] = {
    # key: (word in the title, price factor)
    "cotton": ("Cotton", 1.0),
    "nylon": ("Nylon", 1.1),
    "wool": ("Wool", 1.25),
    "leather": ("Leather", 1.6),
    "silk": ("Silk", 1.5),
    "cashmere": ("Cashmere", 1.9),
    "acetate": ("Acetate", 1.0),
    "metal": ("Metal", 1.3),
}

PATTERNS: dict[str, str] = {
    "plain": "",
    "check": "Check",
    "stripe": "Striped",
    "monogram": "Monogram",
}
PATTERN_FACTOR: dict[str, float] = {"plain": 1.0, "check": 1.2, "stripe": 1.1, "monogram": 1.35}

COLOURS: dict[str, tuple[int, int, int]] = {
    "black": (32, 32, 34),
    "navy": (36, 48, 86),
    "camel": (184, 142, 94),
    "burgundy": (118, 32, 46),
    "olive": (96, 102, 56),
    "charcoal": (84, 86, 92),
    "forest": (34, 82, 56),
    "tan": (150, 100, 64),
    "red": (172, 38, 42),
    "sky": (104, 146, 190),
}
"""Body colours; drawn visibly but never named in the title."""

MATERIAL_COLOURS: dict[str, tuple[str, ...]] = {
    "cotton": ("camel", "sky", "navy", "olive"),
    "nylon": ("black", "forest", "red", "olive"),
    "leather": ("tan", "burgundy", "black", "camel"),
    "wool": ("charcoal", "navy", "forest", "burgundy"),
    "cashmere": ("camel", "charcoal", "sky", "burgundy"),
    "silk": ("red", "sky", "tan", "forest"),
    "acetate": ("black", "tan", "burgundy", "charcoal"),
    "metal": ("camel", "charcoal", "tan", "sky"),
}
"""The colourways each material comes in (as in real catalogs); they overlap, so colour never decides."""

PRICE_POINTS: tuple[int, ...] = tuple(
    sorted(
        [p for hundred in range(100, 1000, 100) for p in (hundred + 50, hundred + 90)]
        + list(range(1090, 10000, 100))
        + list(range(10490, 50000, 500))
    )
)
"""Retail price points: 150, 190, 250, 290, ..., 950, 990, 1090, 1190, ..., 9990, 10490, ..."""


def price_point(value: float) -> int:
    """Nearest retail price point to ``value`` (ties go to the lower point)."""
    i = bisect.bisect_left(PRICE_POINTS, value)
    if i == 0:
        return PRICE_POINTS[0]
    if i == len(PRICE_POINTS):
        return PRICE_POINTS[-1]
    lo, hi = PRICE_POINTS[i - 1], PRICE_POINTS[i]
    return lo if value - lo <= hi - value else hi


def list_price(
    product_type: ProductType, material: str, pattern: str, noise_factor: float = 1.0
) -> int:
    """Full price of a product: base x material factor x pattern factor (x noise), on a price point."""
    raw = product_type.base_price * MATERIALS[material][1] * PATTERN_FACTOR[pattern]
    return price_point(raw * noise_factor)


def title_for(product_type: ProductType, material: str, pattern: str) -> str:
    """``{Pattern} {Material} {Type}``, e.g. ``Check Cashmere Scarf``; plain products have no pattern word."""
    words = [PATTERNS[pattern], MATERIALS[material][0], product_type.name]
    return " ".join(w for w in words if w)


def all_titles() -> list[str]:
    """Every title the generator can write (the title vocabulary)."""
    return sorted(
        {title_for(t, m, p) for t in PRODUCT_TYPES for m in t.materials for p in t.patterns}
    )
