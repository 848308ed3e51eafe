"""Silhouettes of the synthetic product types, as lists of drawing primitives in unit coordinates.

Each product type is drawn into a box of its own aspect ratio (width / height).
A primitive paints either the ``body`` (the textured surface that shows
material, pattern and colour), ``cut`` (removes body, e.g. the inside of a belt
loop) or a detail in a fixed colour (soles, lenses, buckles, buttons, handles).
Shapes are bold and fill most of their box so that a type is recognisable when
the whole photo is shrunk to about 112 pixels.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["ASPECT", "DETAIL_COLOURS", "Primitive", "shape_primitives"]


@dataclass(frozen=True)
class Primitive:
    """One drawing operation; coordinates are fractions of the box (x right, y down).

    ``kind``: ``poly`` (points), ``ellipse`` / ``rect`` / ``rrect`` (x0, y0, x1, y1),
    ``line`` (points), ``arc`` (x0, y0, x1, y1, start_deg, end_deg), ``ring``
    (ellipse outline). ``width`` is a fraction of the box's shorter side.
    """

    kind: str
    coords: tuple[float, ...]
    target: str = "body"
    width: float = 0.0
    radius: float = 0.0


DETAIL_COLOURS: dict[str, tuple[int, int, int]] = {
    "dark": (28, 24, 22),
    "light": (240, 236, 228),
    "metal": (201, 174, 112),
    "sole": (246, 244, 238),
    "lens": (30, 34, 42),
}

ASPECT: dict[str, float] = {
    "scarf": 0.5,
    "tote_bag": 0.95,
    "sneaker": 1.7,
    "trench_coat": 0.72,
    "cap": 1.6,
    "wallet": 1.45,
    "sunglasses": 2.3,
    "belt": 1.5,
    "polo_shirt": 1.05,
    "umbrella": 1.15,
    "backpack": 0.8,
}
"""Box width / height of each type."""

P = Primitive


def _scarf(material: str) -> list[Primitive]:
    if material == "silk":  # silk: no fringe, a longer panel with a rolled edge
        return [P("rect", (0.1, 0.0, 0.9, 0.97)), P("rect", (0.1, 0.94, 0.9, 0.97), "light")]
    fringe = [
        P("line", (x, 0.84, x, 0.99), width=0.05) for x in (0.14 + 0.08 * i for i in range(10))
    ]
    return [P("rect", (0.1, 0.0, 0.9, 0.86)), *fringe]


def _tote_bag(material: str) -> list[Primitive]:
    return [
        P("arc", (0.2, 0.04, 0.48, 0.62, 180, 360), "dark", width=0.05),
        P("arc", (0.52, 0.04, 0.8, 0.62, 180, 360), "dark", width=0.05),
        P("poly", (0.12, 0.32, 0.88, 0.32, 0.97, 0.98, 0.03, 0.98)),
    ]


def _sneaker(material: str) -> list[Primitive]:
    laces = [P("line", (0.36 + 0.05 * i, 0.47 - 0.07 * i, 0.43 + 0.05 * i, 0.53 - 0.07 * i), "light", 0.05)
             for i in range(4)]  # fmt: skip
    return [
        P(
            "poly",
            (
                0.04,
                0.8,
                0.06,
                0.6,
                0.3,
                0.5,
                0.45,
                0.3,
                0.52,
                0.12,
                0.8,
                0.06,
                0.94,
                0.12,
                0.96,
                0.8,
            ),
        ),
        P("ellipse", (0.6, 0.06, 0.84, 0.18), "dark"),
        *laces,
        P("rrect", (0.02, 0.76, 0.98, 0.95), "sole", radius=0.3),
    ]


def _trench_coat(material: str) -> list[Primitive]:
    buttons = [P("ellipse", (x - 0.03, y - 0.022, x + 0.03, y + 0.022), "dark")
               for x in (0.41, 0.59) for y in (0.22, 0.32, 0.58, 0.68)]  # fmt: skip
    body = (0.3, 0.02, 0.7, 0.02, 0.9, 0.12, 1.0, 0.7, 0.87, 0.72, 0.81, 0.32,
            0.86, 0.99, 0.14, 0.99, 0.19, 0.32, 0.13, 0.72, 0.0, 0.7, 0.1, 0.12)  # fmt: skip
    return [
        P("poly", body),
        P("line", (0.36, 0.02, 0.5, 0.3, 0.64, 0.02), "dark", width=0.04),
        P("rect", (0.18, 0.44, 0.82, 0.49), "dark"),
        P("rect", (0.46, 0.43, 0.54, 0.5), "metal"),
        *buttons,
    ]


def _cap(material: str) -> list[Primitive]:
    return [
        P("arc", (0.04, 0.08, 0.74, 1.84, 180, 360), width=-1),  # filled half-ellipse (pieslice)
        P("poly", (0.55, 0.8, 0.95, 0.84, 1.0, 0.97, 0.55, 0.99)),
        P("rect", (0.04, 0.86, 0.74, 0.97), "dark"),
        P("line", (0.39, 0.08, 0.2, 0.86), "dark", width=0.025),
        P("line", (0.39, 0.08, 0.58, 0.86), "dark", width=0.025),
        P("ellipse", (0.35, 0.03, 0.43, 0.12), "dark"),
    ]


def _wallet(material: str) -> list[Primitive]:
    return [
        P("rrect", (0.03, 0.1, 0.97, 0.9), radius=0.12),
        P("line", (0.5, 0.1, 0.5, 0.9), "dark", width=0.035),
        P("rect", (0.68, 0.42, 0.86, 0.58), "metal"),
    ]


def _sunglasses(material: str) -> list[Primitive]:
    t = 0.12 if material == "acetate" else 0.045  # frame thickness, fraction of the box height
    out: list[Primitive] = [P("rect", (0.0, 0.22, 0.08, 0.36)), P("rect", (0.92, 0.22, 1.0, 0.36))]
    for x0, x1 in ((0.04, 0.47), (0.53, 0.96)):
        out.append(P("ellipse", (x0, 0.12, x1, 0.96)))
        out.append(P("ellipse", (x0 + t * 0.45, 0.12 + t, x1 - t * 0.45, 0.96 - t), "lens"))
    out.append(P("line", (0.44, 0.36, 0.5, 0.3, 0.56, 0.36), width=t * 0.9))
    return out


def _belt(material: str) -> list[Primitive]:
    holes = [P("ellipse", (x - 0.018, 0.82, x + 0.018, 0.87), "dark") for x in (0.5, 0.58, 0.66)]
    return [
        P("rrect", (0.03, 0.08, 0.97, 0.92), radius=0.45),
        P("rrect", (0.17, 0.33, 0.83, 0.67), "cut", radius=0.4),
        P("rrect", (0.0, 0.3, 0.2, 0.7), "metal", radius=0.1),
        P("rrect", (0.05, 0.4, 0.15, 0.6), "cut", radius=0.1),
        *holes,
    ]


def _polo_shirt(material: str) -> list[Primitive]:
    body = (0.3, 0.04, 0.42, 0.07, 0.58, 0.07, 0.7, 0.04, 1.0, 0.2, 0.9, 0.42, 0.78, 0.36,
            0.78, 0.98, 0.22, 0.98, 0.22, 0.36, 0.1, 0.42, 0.0, 0.2)  # fmt: skip
    return [
        P("poly", body),
        P("poly", (0.34, 0.04, 0.5, 0.2, 0.66, 0.04, 0.62, 0.17, 0.5, 0.26, 0.38, 0.17), "light"),
        P("rect", (0.46, 0.2, 0.54, 0.4), "light"),
        P("ellipse", (0.48, 0.25, 0.52, 0.29), "dark"),
        P("ellipse", (0.48, 0.33, 0.52, 0.37), "dark"),
    ]


def _umbrella(material: str) -> list[Primitive]:
    scallops = [
        P("ellipse", (x - 0.085, 0.45, x + 0.085, 0.56), "cut")
        for x in (0.167 * i for i in range(1, 6))
    ]
    ribs = [P("line", (0.5, 0.04, 0.167 * i, 0.5), "dark", width=0.012) for i in range(0, 7)]
    return [
        P("arc", (0.0, 0.04, 1.0, 0.96, 180, 360), width=-1),
        *scallops,
        *ribs,
        P("line", (0.5, 0.0, 0.5, 0.86), "dark", width=0.03),
        P("arc", (0.5, 0.76, 0.7, 0.98, 0, 180), "dark", width=0.03),
    ]


def _backpack(material: str) -> list[Primitive]:
    return [
        P("arc", (0.36, 0.0, 0.64, 0.3, 180, 360), "dark", width=0.05),
        P("rrect", (0.1, 0.12, 0.9, 0.98), radius=0.25),
        P("arc", (0.12, 0.16, 0.88, 0.7, 180, 360), "dark", width=0.02),
        P("rrect", (0.22, 0.56, 0.78, 0.9), "dark", width=0.025, radius=0.15),
    ]


_SHAPES: dict[str, Callable[[str], list[Primitive]]] = {
    "scarf": _scarf,
    "tote_bag": _tote_bag,
    "sneaker": _sneaker,
    "trench_coat": _trench_coat,
    "cap": _cap,
    "wallet": _wallet,
    "sunglasses": _sunglasses,
    "belt": _belt,
    "polo_shirt": _polo_shirt,
    "umbrella": _umbrella,
    "backpack": _backpack,
}


def shape_primitives(type_key: str, material: str) -> list[Primitive]:
    """Primitives drawing product type ``type_key`` (in order); the material may change the shape."""
    try:
        return _SHAPES[type_key](material)
    except KeyError:
        raise ValueError(
            f"no silhouette for product type {type_key!r}; known: {sorted(_SHAPES)}"
        ) from None
