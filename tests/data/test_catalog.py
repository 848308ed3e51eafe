"""Catalog loading: every format, configurable columns, price parsing, rejects with reasons."""

from __future__ import annotations

import json
import socket

import pandas as pd
import pytest

from vlmtune.data.catalog import CatalogColumns, CatalogError, PriceError, load_catalog, parse_price

DBQ_HEADER = (
    "website_name,competence_date,country_code,currency_code,brand,category1_code,category2_code,"
    "category3_code,product_code,title,itemurl,imageurl,full_price,price,full_price_eur,price_eur,flg_discount"
)


def _row(code, title="Check Scarf", cat="SCARVES", img="http://127.0.0.1/x.jpg", price="590"):
    return f'BURBERRY US,2023-11-17,USA,USD,BURBERRY,WOMAN,ACCESSORIES,{cat},{code},{title},u,{img},"{price}",1,1,1,0'


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("1290", 1290.0),
        ("1,290", 1290.0),
        ("1,290.00", 1290.0),
        ("$1,290.00", 1290.0),
        ("590.0", 590.0),
        (1290, 1290.0),
        (590.5, 590.5),
        ("USD 1,290", 1290.0),
        ("1290 USD", 1290.0),
        (" 45.5 ", 45.5),
    ],
)
def test_parse_price_accepts(raw, expected):
    assert parse_price(raw) == expected


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("N.A.", "not a number"),
        ("", "empty"),
        ("-5", "negative"),
        (-5, "negative"),
        (float("nan"), "finite"),
        ("12,34", "not a number"),
        ("1.2.3", "not a number"),
        (None, "not a number"),
        ("0", "zero"),
    ],
)
def test_parse_price_rejects_with_reason(raw, reason):
    with pytest.raises(PriceError, match=reason):
        parse_price(raw)


def test_csv_rejects_are_reported_with_reasons(tmp_path):
    lines = [
        DBQ_HEADER,
        _row("A1"),
        _row("A2", price="1,290.00"),
        _row("A3", price="N.A."),
        _row("A4", img="N.A."),
        _row("A5", title=""),
        _row("A1", title="Other"),  # duplicate id across categories
        _row("A6", cat="围巾"),
        _row("A7", price="-10"),
    ]
    path = tmp_path / "catalog.csv"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    catalog = load_catalog(path)
    assert list(catalog.rows["product_code"]) == ["A1", "A2", "A6"]
    assert list(catalog.rows["full_price"]) == [590.0, 1290.0, 590.0]
    assert catalog.rows.loc[2, "category3_code"] == "围巾"
    reasons = dict(zip(catalog.rejects["id"], catalog.rejects["reason"], strict=True))
    assert reasons["A3"].startswith("bad price") and "N.A." in reasons["A3"]
    assert reasons["A4"].startswith("missing image")
    assert reasons["A5"].startswith("missing title")
    assert reasons["A7"].startswith("bad price") and "negative" in reasons["A7"]
    dup = catalog.rejects[catalog.rejects["source_row"] == 5]
    assert dup["reason"].item().startswith("duplicate id") and dup["id"].item() == "A1"
    images = dict(zip(catalog.rejects["id"], catalog.rejects["image"], strict=True))
    assert images["A3"] == "http://127.0.0.1/x.jpg" and images["A4"] == "N.A."
    summary = catalog.summary()
    assert summary["rows_read"] == 8 and summary["kept"] == 3 and summary["rejected"] == 5
    assert summary["rejected_by_reason"] == {
        "bad price": 2,
        "duplicate id": 1,
        "missing image": 1,
        "missing title": 1,
    }
    out = catalog.write_rejects(tmp_path / "rejects.csv")
    assert len(pd.read_csv(out)) == 5


def _frame():
    return pd.DataFrame(
        {
            "sku": ["s1", "s2", "s3"],
            "name": ["Tote", "Cap", "Belt"],
            "cat": ["BAGS", "HATS", "BELTS"],
            "p": [1290.0, float("nan"), 450.0],
            "img": ["a.jpg", "b.jpg", ""],
        }
    )


@pytest.mark.parametrize("fmt", ["parquet", "jsonl", "datasets"])
def test_other_formats_and_custom_columns(tmp_path, fmt):
    frame = _frame()
    if fmt == "parquet":
        source = tmp_path / "c.parquet"
        frame.to_parquet(source)
    elif fmt == "jsonl":
        source = tmp_path / "c.jsonl"
        source.write_text(
            "\n".join(json.dumps(r) for r in frame.to_dict("records")), encoding="utf-8"
        )
    else:
        import datasets

        source = tmp_path / "hf"
        datasets.Dataset.from_pandas(frame).save_to_disk(str(source))
    columns = CatalogColumns(id="sku", title="name", category="cat", price="p", image="img")
    catalog = load_catalog(source, columns)
    assert list(catalog.rows["sku"]) == ["s1"]
    assert catalog.rows["p"].tolist() == [1290.0]
    assert sorted(catalog.rejects["id"]) == ["s2", "s3"]


def test_missing_column_and_unknown_format_name_the_problem(tmp_path):
    path = tmp_path / "c.csv"
    path.write_text("title,price\nx,1\n", encoding="utf-8")
    with pytest.raises(CatalogError, match=r"lacks the column\(s\) id='product_code'"):
        load_catalog(path)
    odd = tmp_path / "c.xlsx"
    odd.write_text("x")
    with pytest.raises(CatalogError, match="unknown format '.xlsx'"):
        load_catalog(odd)
    with pytest.raises(CatalogError, match="does not exist"):
        load_catalog(tmp_path / "absent.csv")


def test_hub_name_fails_fast_when_offline(tmp_path, monkeypatch):
    monkeypatch.setattr("datasets.config.HF_DATASETS_CACHE", str(tmp_path))  # an empty cache
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CatalogError, match="hub is offline.*local CSV"):
        load_catalog("DBQ/Burberry.Product.prices.United.States")


def test_hub_name_offline_is_read_from_the_local_datasets_cache(tmp_path, monkeypatch):
    from datasets.packaged_modules.parquet.parquet import Parquet

    source = tmp_path / "c.parquet"
    _frame().to_parquet(source)
    cache = tmp_path / "cache"
    builder = Parquet(cache_dir=str(cache), dataset_name="catalog", config_id="default",
                      hash="0123abcd", data_files={"train": str(source)})  # fmt: skip
    builder.download_and_prepare()
    # the layout load_dataset leaves for a hub dataset: <owner>___<name>/<config>/<version>/<commit>
    (cache / "catalog").rename(cache / "owner___catalog")
    monkeypatch.setattr("datasets.config.HF_DATASETS_CACHE", str(cache))
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    columns = CatalogColumns(id="sku", title="name", category="cat", price="p", image="img")
    catalog = load_catalog("owner/catalog", columns)
    assert list(catalog.rows["sku"]) == ["s1"] and sorted(catalog.rejects["id"]) == ["s2", "s3"]


def test_hub_name_fails_fast_when_the_hub_cannot_be_reached(monkeypatch):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed once the socket is: connections are refused
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    # fast = the refused probe decides; datasets' hub loader (which retries for tens of
    # seconds against a dead endpoint) is never entered
    entered = []
    monkeypatch.setattr("datasets.load_dataset", lambda *a, **k: entered.append(a))
    with pytest.raises(CatalogError, match=rf"hub cannot be reached at .*:{port}.*local CSV"):
        load_catalog("DBQ/Burberry.Product.prices.United.States")
    assert entered == []


def test_a_bad_jsonl_line_is_named_by_its_line_number(tmp_path):
    good = json.dumps({"product_code": "a", "title": "T", "category3_code": "C",
                       "full_price": 1, "imageurl": "a.jpg"})  # fmt: skip
    path = tmp_path / "c.jsonl"
    path.write_text(f'{good}\n\n{good}\n{{"product_code": "b", "title":\n{good}\n')
    with pytest.raises(CatalogError, match=r"c\.jsonl': line 4 is not valid JSON") as err:
        load_catalog(path)
    assert "position" not in str(err.value) and "fix or remove that line" in str(err.value)
    path.write_text(f"{good}\n[1, 2]\n")
    with pytest.raises(CatalogError, match="line 2 is not a JSON object"):
        load_catalog(path)


@pytest.mark.parametrize("suffix", [".csv", ".parquet", ".jsonl"])
def test_a_catalog_without_rows_is_an_error_naming_the_file(tmp_path, suffix):
    path = tmp_path / f"empty{suffix}"
    if suffix == ".csv":
        path.write_text(DBQ_HEADER + "\n")
    elif suffix == ".parquet":
        pd.DataFrame({c: pd.Series([], dtype=str) for c in DBQ_HEADER.split(",")}).to_parquet(path)
    else:
        path.write_text("\n")
    with pytest.raises(CatalogError, match=rf"'{path}' has no rows"):
        load_catalog(path)


def test_catalog_errors_are_user_errors():
    from vlmtune.data.prepared import PreparedDatasetError
    from vlmtune.utils.errors import UserError

    assert issubclass(CatalogError, UserError) and issubclass(PreparedDatasetError, UserError)
    assert issubclass(CatalogError, ValueError)  # callers catching ValueError keep working
