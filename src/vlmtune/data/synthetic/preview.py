"""``write_contact_sheet``: a grid of catalog photos with their title and price, for a person to look at."""

from __future__ import annotations

import csv
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from vlmtune.utils.io import atomic_path

__all__ = ["write_contact_sheet"]


def write_contact_sheet(
    folder: str | Path,
    target: str | Path,
    cols: int = 6,
    rows: int = 4,
    thumb_width: int = 180,
) -> Path:
    """PNG of the first ``cols x rows`` products of ``folder``/catalog.csv that have an image file.

    Each cell shows the photo (aspect kept), then the title, category and price.
    """
    folder, target = Path(folder), Path(target)
    cells = _first_with_images(folder, cols * rows)
    if not cells:
        raise FileNotFoundError(f"no product with an image file in {folder / 'catalog.csv'}")
    first = Image.open(folder / cells[0][0])
    thumb_h = round(thumb_width * first.height / first.width)
    text_h = 40
    sheet = Image.new(
        "RGB", (cols * (thumb_width + 8) + 8, rows * (thumb_h + text_h + 8) + 8), "white"
    )
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    for k, (rel, lines) in enumerate(cells):
        x = 8 + (k % cols) * (thumb_width + 8)
        y = 8 + (k // cols) * (thumb_h + text_h + 8)
        with Image.open(folder / rel) as img:
            sheet.paste(img.convert("RGB").resize((thumb_width, thumb_h), Image.BICUBIC), (x, y))
        for i, line in enumerate(lines):
            draw.text((x, y + thumb_h + 2 + 12 * i), line, fill=(20, 20, 20), font=font)
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(target) as tmp:
        sheet.save(tmp, format="PNG")
    return target


def _first_with_images(folder: Path, count: int) -> list[tuple[str, list[str]]]:
    out: list[tuple[str, list[str]]] = []
    with open(folder / "catalog.csv", newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            rel = f"images/{row['product_code']}.jpg"
            if not (folder / rel).is_file():
                continue
            price = f"${float(row['full_price']):,.0f}"
            out.append((rel, [row["title"], f"{row['category3_code']}  {price}"]))
            if len(out) == count:
                break
    return out
