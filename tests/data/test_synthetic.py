"""Synthetic catalog: schema, determinism, consistency, visible attributes, broken rows, HTTP serving."""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import http.client
import io
import json
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vlmtune.data.catalog import CatalogColumns, load_catalog
from vlmtune.data.synthetic import (
    DBQ_COLUMNS,
    ServeError,
    SynthArgs,
    generate_catalog,
    render_product,
    sample_product,
    serve_directory,
    write_contact_sheet,
)
from vlmtune.data.synthetic.vocab import (
    COLOURS,
    EUR_PER_USD,
    MATERIAL_COLOURS,
    PRICE_POINTS,
    PRODUCT_TYPES,
    all_titles,
    list_price,
    price_point,
    title_for,
)

SMALL = "112x140"
TYPES = {t.category3: t for t in PRODUCT_TYPES}


def _rows(csv_path: Path) -> list[dict[str, str]]:
    with open(csv_path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _digest(folder: Path) -> dict[str, str]:
    files = [folder / "catalog.csv", *sorted((folder / "images").glob("*.jpg"))]
    return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in files}


@pytest.fixture(scope="module")
def catalog(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    return generate_catalog(SynthArgs(out=out, n=120, seed=3, image_size=SMALL, broken_frac=0.05))


def test_schema_has_all_dbq_columns_in_order(catalog: Path) -> None:
    with open(catalog, newline="", encoding="utf-8") as fh:
        header = next(csv.reader(fh))
    assert header == list(DBQ_COLUMNS)
    assert len(header) == 17
    rows = _rows(catalog)
    assert len(rows) == 120
    assert all(all(row[c] != "" for c in DBQ_COLUMNS) for row in rows), "every cell is filled"


def test_catalog_loads_with_the_project_loader(catalog: Path) -> None:
    loaded = load_catalog(catalog, CatalogColumns())
    rows = _rows(catalog)
    n_na = sum(r["imageurl"] == "N.A." for r in rows)
    assert n_na > 0
    assert len(loaded.rows) == 120 - n_na
    assert set(loaded.rejects["reason"].str.startswith("missing image")) == {True}


def test_categories_prices_and_currencies_are_consistent(catalog: Path) -> None:
    rows = _rows(catalog)
    assert len({r["product_code"] for r in rows}) == len(rows), "product codes are unique"
    for r in rows:
        ptype = TYPES[r["category3_code"]]
        assert r["category2_code"] == ptype.category2
        assert r["category1_code"] in ptype.audiences
        assert r["title"].endswith(ptype.name)
        assert r["currency_code"] == "USD" and r["country_code"] == "USA"
        full, price = float(r["full_price"]), float(r["price"])
        assert full in PRICE_POINTS and price in PRICE_POINTS
        assert price <= full
        assert r["flg_discount"] == str(int(price < full))
        assert float(r["full_price_eur"]) == round(full * EUR_PER_USD, 2)
        assert float(r["price_eur"]) == round(price * EUR_PER_USD, 2)
        assert r["itemurl"].startswith("https://") and r["product_code"] in r["itemurl"]
    assert {r["flg_discount"] for r in rows} == {"0", "1"}


def test_title_and_price_are_functions_of_the_visible_attributes() -> None:
    for i in range(200):
        p = sample_product(5, i)
        ptype = next(t for t in PRODUCT_TYPES if t.key == p.type_key)
        assert p.material in ptype.materials and p.pattern in ptype.patterns
        assert p.title == title_for(ptype, p.material, p.pattern)
        assert p.full_price == list_price(ptype, p.material, p.pattern)
        assert p.colour in MATERIAL_COLOURS[p.material]
    assert len({sample_product(5, i).colour for i in range(200)}) == len(COLOURS), "colours vary"
    scarf = next(t for t in PRODUCT_TYPES if t.key == "scarf")
    assert title_for(scarf, "cashmere", "check") == "Check Cashmere Scarf"
    assert title_for(scarf, "wool", "plain") == "Wool Scarf"
    assert list_price(scarf, "cashmere", "check") == price_point(450 * 1.9 * 1.2) == 990


def test_vocabulary_size_and_price_points() -> None:
    assert len(PRODUCT_TYPES) >= 10
    assert len({t.category3 for t in PRODUCT_TYPES}) == len(PRODUCT_TYPES)
    assert 60 <= len(all_titles()) <= 120
    assert all(p % 100 in (50, 90) for p in PRICE_POINTS)
    assert price_point(1000) == 990 and price_point(1300) == 1290 and price_point(10) == 150


def test_same_seed_gives_identical_bytes_regardless_of_workers(tmp_path: Path) -> None:
    one = generate_catalog(
        SynthArgs(out=tmp_path / "a", n=70, seed=11, image_size=SMALL, workers=1)
    )
    two = generate_catalog(
        SynthArgs(out=tmp_path / "b", n=70, seed=11, image_size=SMALL, workers=2)
    )
    assert _digest(one.parent) == _digest(two.parent)
    assert len(list((tmp_path / "a" / "images").glob("*.jpg"))) >= 68
    other = generate_catalog(
        SynthArgs(out=tmp_path / "c", n=70, seed=12, image_size=SMALL, workers=1)
    )
    assert other.read_bytes() != one.read_bytes()


def test_images_are_jpegs_of_the_requested_size(catalog: Path) -> None:
    images = sorted((catalog.parent / "images").glob("*.jpg"))
    assert images
    with Image.open(images[0]) as img:
        assert img.format == "JPEG" and img.size == (112, 140)
    portrait = render_product(sample_product(0, 1).render, (448, 560))
    assert portrait.size == (448, 560)


@pytest.mark.parametrize(
    ("field", "value"),
    [("type_key", "umbrella"), ("material", "nylon"), ("pattern", "check"), ("colour", "red")],
)
def test_each_visual_attribute_changes_the_pixels(field: str, value: str) -> None:
    base = dataclasses.replace(
        sample_product(0, 0).render,
        type_key="tote_bag",
        material="leather",
        pattern="plain",
        colour="navy",
    )
    changed = dataclasses.replace(base, **{field: value})

    def small(params) -> np.ndarray:  # as the tiny model sees it: whole photo at about 112 px
        img = render_product(params, (448, 560)).resize((90, 112), Image.BICUBIC)
        return np.asarray(img, dtype=np.float32)

    diff = np.abs(small(base) - small(changed)).mean()
    assert diff > 4.0, (
        f"changing {field} to {value} barely changes the 112 px view (mean diff {diff:.2f})"
    )
    assert np.array_equal(small(base), small(base)), "rendering is deterministic"


def test_every_material_and_pattern_is_distinct_for_each_type() -> None:
    for ptype in PRODUCT_TYPES:
        views = {}
        for material in ptype.materials:
            for pattern in ptype.patterns:
                params = dataclasses.replace(
                    sample_product(0, 0).render,
                    type_key=ptype.key,
                    material=material,
                    pattern=pattern,
                    colour="camel",
                )
                img = render_product(params, (224, 280)).resize((90, 112), Image.BICUBIC)
                views[(material, pattern)] = np.asarray(img, dtype=np.float32)
        keys = list(views)
        for i, a in enumerate(keys):
            for b in keys[i + 1 :]:
                diff = np.abs(views[a] - views[b]).mean()
                assert diff > 1.5, f"{ptype.key}: {a} and {b} look the same at 112 px ({diff:.2f})"


def test_broken_fraction_gives_both_kinds(tmp_path: Path) -> None:
    base_url = "http://127.0.0.1:9/"
    csv_path = generate_catalog(
        SynthArgs(out=tmp_path, n=200, seed=1, image_size=SMALL, broken_frac=0.1, base_url=base_url)
    )
    rows = _rows(csv_path)
    na = [r for r in rows if r["imageurl"] == "N.A."]
    linked = [r for r in rows if r["imageurl"] != "N.A."]
    missing = [r for r in linked if not (tmp_path / r["imageurl"].removeprefix(base_url)).is_file()]
    assert len(na) == 10 and len(missing) == 10
    assert all(r["imageurl"].startswith(base_url + "images/") for r in linked)
    assert len(list((tmp_path / "images").glob("*.jpg"))) == 180
    report = json.loads((tmp_path / "synth_report.json").read_text())
    assert report["broken"] == {"na": 10, "missing": 10}
    assert report["images_written"] == 180


def test_no_broken_rows_when_fraction_is_zero(tmp_path: Path) -> None:
    rows = _rows(generate_catalog(SynthArgs(out=tmp_path, n=40, image_size=SMALL, broken_frac=0.0)))
    assert all((tmp_path / r["imageurl"]).is_file() for r in rows)


def test_price_noise_is_multiplicative_and_reported(tmp_path: Path) -> None:
    csv_path = generate_catalog(
        SynthArgs(out=tmp_path, n=60, seed=2, image_size=SMALL, price_noise=0.2, broken_frac=0.0)
    )
    rows = _rows(csv_path)
    clean = [sample_product(2, i).full_price for i in range(60)]
    noisy = [float(r["full_price"]) for r in rows]
    assert all(p in PRICE_POINTS for p in noisy)
    assert sum(a != b for a, b in zip(clean, noisy, strict=True)) > 30
    assert json.loads((tmp_path / "synth_report.json").read_text())["price_noise_mape"] > 0.05


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"image_size": "big"}, "image_size"),
        ({"image_size": "10x10"}, "image_size"),
        ({"n": 0}, "n must be"),
        ({"broken_frac": 1.5}, "broken_frac"),
        ({"price_noise": -0.1}, "price_noise"),
        ({"base_url": "ftp://host/"}, "base_url"),
        ({"workers": -1}, "workers"),
    ],
)
def test_bad_arguments_are_named(tmp_path: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SynthArgs(out=tmp_path, **kwargs)


def test_serve_directory_serves_files_404s_and_no_escape(catalog: Path) -> None:
    folder = catalog.parent
    image = sorted((folder / "images").glob("*.jpg"))[0]
    with serve_directory(folder / "images") as server:
        assert server.url.startswith("http://127.0.0.1:") and server.url.endswith("/")
        with urllib.request.urlopen(server.url + image.name, timeout=5) as resp:
            assert resp.status == 200 and resp.read() == image.read_bytes()
        for path in ("nothing.jpg", "", "../catalog.csv", "%2e%2e/catalog.csv", "..%2fcatalog.csv"):
            conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
            conn.request("GET", "/" + path)
            resp = conn.getresponse()
            body = resp.read()
            conn.close()
            assert resp.status == 404, f"/{path} gave {resp.status}"
            assert b"website_name" not in body
        port = server.port
    with pytest.raises((urllib.error.URLError, ConnectionError, OSError)):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/{image.name}", timeout=2)


def test_serve_directory_refuses_a_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(ServeError, match="not a folder"), serve_directory(tmp_path / "nope"):
        pass


def test_contact_sheet_is_written(catalog: Path, tmp_path: Path) -> None:
    target = write_contact_sheet(catalog.parent, tmp_path / "sheet.png", cols=4, rows=2)
    with Image.open(target) as sheet:
        assert sheet.format == "PNG"
        assert sheet.width > 4 * 100 and sheet.height > 2 * 100
        pixels = np.asarray(sheet.convert("L"))
    assert pixels.std() > 10, "the sheet shows photos, not a blank page"


def test_preview_argument_writes_the_sheet(tmp_path: Path) -> None:
    generate_catalog(
        SynthArgs(out=tmp_path / "c", n=30, image_size=SMALL, preview=tmp_path / "p.png")
    )
    assert Image.open(io.BytesIO((tmp_path / "p.png").read_bytes())).format == "PNG"


def test_contact_sheet_is_a_6x4_grid_of_the_first_photos_with_their_text(tmp_path: Path) -> None:
    folder = tmp_path / "c"
    generate_catalog(SynthArgs(out=folder, n=30, image_size=SMALL, broken_frac=0.0, workers=1))
    sheet = np.asarray(Image.open(write_contact_sheet(folder, tmp_path / "sheet.png")))
    thumb_w, thumb_h, text_h, gap = 180, 225, 40, 8  # 112x140 photos keep their aspect
    assert sheet.shape == (4 * (thumb_h + text_h + gap) + gap, 6 * (thumb_w + gap) + gap, 3)
    with open(folder / "catalog.csv", newline="", encoding="utf-8") as handle:
        products = [row["product_code"] for row in csv.DictReader(handle)][:24]
    for k, product in enumerate(products):
        x, y = gap + (k % 6) * (thumb_w + gap), gap + (k // 6) * (thumb_h + text_h + gap)
        with Image.open(folder / "images" / f"{product}.jpg") as photo:
            expected = np.asarray(photo.convert("RGB").resize((thumb_w, thumb_h), Image.BICUBIC))
        assert np.array_equal(sheet[y : y + thumb_h, x : x + thumb_w], expected), product
        text = sheet[y + thumb_h : y + thumb_h + text_h, x : x + thumb_w]
        assert (text < 100).any(axis=-1).sum() > 50, f"{product}: title and price are drawn"
