"""Duplicate groups in ``prepare``: planted copies are grouped, never straddle splits, and conflicts are reported.

The catalog: one synthetic photo under four product ids (as is, re-encoded at JPEG 60,
resized to half, cropped by 1 % a side), one photo shared by two products with different
prices, and distinct synthetic products around them.
"""

from __future__ import annotations

import io
import json

import pandas as pd
import pytest
from PIL import Image
from prepare_helpers import failures, run

from vlmtune.data.dedup_args import DedupArgs
from vlmtune.data.group_splits import straddling_groups
from vlmtune.data.prepared import load_prepared
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


def _write(folder, rows: list[dict], photos: dict[str, bytes]):
    (folder / "img").mkdir(parents=True, exist_ok=True)
    for name, data in photos.items():
        (folder / "img" / name).write_bytes(data)
    path = folder / "catalog.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def _catalog(folder, extra: range = range(0)):
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
    return _write(folder, rows, photos)


def _groups(frame: pd.DataFrame) -> dict[str, set[str]]:
    """Id -> the ids of its duplicate group."""
    members = frame.groupby("duplicate_group")["product_code"].agg(set)
    return {
        pid: members[g]
        for pid, g in zip(frame["product_code"], frame["duplicate_group"], strict=True)
    }


def test_planted_duplicates_are_grouped_in_one_split_and_the_conflict_reported(tmp_path):
    out = tmp_path / "out"
    report = run(_catalog(tmp_path / "cat"), out, split=SPLIT)
    frame = load_prepared(out).frame
    groups = _groups(frame)
    assert groups[LOOK_IDS[0]] == set(LOOK_IDS) and groups[TWIN_IDS[0]] == set(TWIN_IDS)
    others = [pid for pid in frame["product_code"] if pid not in LOOK_IDS + TWIN_IDS]
    assert all(groups[pid] == {pid} for pid in others)  # distinct products never merge
    assert straddling_groups(frame["duplicate_group"].tolist(), frame["split"].tolist()) == []
    assert report.duplicate_groups == 2 and report.duplicate_rows == 6
    # the conflict: both rows, with their prices, in conflicts.csv and the report
    conflicts = pd.read_csv(out / "conflicts.csv", dtype={"product_code": str})
    assert sorted(conflicts["product_code"]) == sorted(TWIN_IDS)
    assert sorted(conflicts["full_price"]) == [450.0, 590.0]
    assert set(conflicts["differs"]) == {"full_price"} and conflicts["kept"].all()
    saved = json.loads((out / "prepare_report.json").read_text())
    assert saved["conflict_groups"] == 1 and saved["on_conflict"] == "keep"
    (entry,) = saved["conflicts"]
    assert entry["differs"] == ["full_price"]
    assert sorted(r["full_price"] for r in entry["rows"]) == [450.0, 590.0]
    assert len(frame) == report.kept == 36


@pytest.mark.parametrize(("policy", "kept_twins"), [("drop-group", 0), ("first", 1)])
def test_on_conflict_drops_rows_into_failures(tmp_path, policy, kept_twins):
    out = tmp_path / "out"
    report = run(_catalog(tmp_path / "cat"), out, split=SPLIT, dedup=DedupArgs(on_conflict=policy))
    frame = load_prepared(out).frame
    kept = [pid for pid in TWIN_IDS if pid in set(frame["product_code"])]
    assert kept == TWIN_IDS[:kept_twins]
    dropped = {pid: why for pid, why in failures(out).items() if why[0] == "conflict"}
    assert set(dropped) == set(TWIN_IDS[kept_twins:])
    assert report.conflict_rows_dropped == 2 - kept_twins
    assert report.kept + report.dropped == report.rows_read
    conflicts = pd.read_csv(out / "conflicts.csv", dtype={"product_code": str})
    assert len(conflicts) == 2  # both rows are listed, whatever training sees


def test_adding_100_products_moves_no_existing_group(tmp_path):
    catalog = _catalog(tmp_path / "cat")
    before = run(catalog, tmp_path / "a", split=SPLIT)
    old = load_prepared(tmp_path / "a").frame
    _catalog(tmp_path / "cat", extra=range(100, 200))  # the same catalog file, grown
    after = run(catalog, tmp_path / "b", split=SPLIT)  # split afresh, from the ids alone
    new = load_prepared(tmp_path / "b").frame
    split_of = dict(zip(new["product_code"], new["split"], strict=True))
    assert all(split_of[pid] == s for pid, s in zip(old["product_code"], old["split"], strict=True))
    kept_before = set(old["product_code"])
    assert _groups(old) == {pid: g for pid, g in _groups(new).items() if pid in kept_before}
    # the 100 new, distinct synthetic products merge with nothing
    assert after.kept == 136 and after.duplicate_groups == before.duplicate_groups == 2
    # growing the first folder in place (earlier splits and fingerprints reused) agrees
    regrown = run(catalog, tmp_path / "a", split=SPLIT)
    again = load_prepared(tmp_path / "a").frame
    assert dict(zip(again["product_code"], again["split"], strict=True)) == split_of
    assert regrown.reused == 36 and regrown.kept == 136
