"""The planted-duplicates catalog of the prepare and data-card tests.

One synthetic photo under four product ids (as is, re-encoded at JPEG 60, resized to half,
cropped by 1 % a side), one photo shared by two products with different prices, and
distinct synthetic products (seed 0, indices 10-39, plus any ``extra``) around them; two
more rows priced 0 and -5, which the catalog rejects (``catalog/bad price``). The
planted ids are chosen so that a split by id alone would spread each group over splits.
"""

from __future__ import annotations

import io
from pathlib import Path

import pandas as pd
from PIL import Image

from vlmtune.data.splits import assign_splits
from vlmtune.data.synthetic import render_jpeg, sample_product

SIZE = (224, 280)
SPLIT = "0.5,0.25,0.25"
FRACTIONS = (0.5, 0.25, 0.25)
LOOK = 4  # synthetic product whose photo is copied (its 1 % crop is 2 pHash bits away)
TWIN = 5  # synthetic product whose photo two listings share


def _straddling_ids(prefix: str, count: int) -> list[str]:
    """``count`` ids that a split by id alone would spread over more than one split."""
    for start in range(100):
        ids = [f"{prefix}{start}-{k}" for k in range(count)]
        if len(set(assign_splits(ids, FRACTIONS))) > 1:
            return ids
    raise AssertionError("no straddling ids")


LOOK_IDS = _straddling_ids("look", 4)
TWIN_IDS = _straddling_ids("twin", 2)


def _variants(data: bytes) -> list[bytes]:
    """The photo as is, re-encoded (JPEG 60), resized to half, cropped by 1 % a side."""
    image = Image.open(io.BytesIO(data)).convert("RGB")
    w, h = image.size
    dx, dy = round(w * 0.01), round(h * 0.01)
    changed = [
        image,
        image.resize((w // 2, h // 2), Image.Resampling.LANCZOS),
        image.crop((dx, dy, w - dx, h - dy)),
    ]
    out = [data]
    for k, img in enumerate(changed):
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=60 if k == 0 else 92)
        out.append(buf.getvalue())
    return out


def _row(pid: str, ref: str, index: int, price: float | None = None) -> dict:
    product = sample_product(0, index)
    return {
        "product_code": pid, "title": product.title, "category3_code": product.type_key,
        "full_price": price if price is not None else product.full_price, "imageurl": ref,
    }  # fmt: skip


def _write(folder: Path, rows: list[dict], photos: dict[str, bytes]) -> Path:
    (folder / "img").mkdir(parents=True, exist_ok=True)
    for name, data in photos.items():
        (folder / "img" / name).write_bytes(data)
    path = folder / "catalog.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def planted_catalog(folder: Path, extra: range = range(0)) -> Path:
    """The planted catalog (plus distinct products ``extra``); returns its path."""
    photos, rows = {}, []
    for pid, data in zip(LOOK_IDS, _variants(render_jpeg(sample_product(0, LOOK).render, SIZE)),
                         strict=True):  # fmt: skip
        photos[f"{pid}.jpg"] = data
        rows.append(_row(pid, f"img/{pid}.jpg", LOOK))
    photos["twin.jpg"] = render_jpeg(sample_product(0, TWIN).render, SIZE)
    rows += [
        _row(TWIN_IDS[0], "img/twin.jpg", TWIN, 450.0),
        _row(TWIN_IDS[1], "img/twin.jpg", TWIN, 590.0),
    ]
    for index in [*range(10, 40), *extra]:
        product = sample_product(0, index)
        photos[f"{product.product_code}.jpg"] = render_jpeg(product.render, SIZE)
        rows.append(_row(product.product_code, f"img/{product.product_code}.jpg", index))
    rows += [_row("free", "img/twin.jpg", TWIN, 0.0), _row("owed", "img/twin.jpg", TWIN, -5.0)]
    return _write(folder, rows, photos)
