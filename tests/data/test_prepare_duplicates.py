"""Duplicate groups in ``prepare``: planted copies are grouped, never straddle splits, and conflicts are reported.

The catalog (:mod:`duplicate_catalog`): one synthetic photo under four product ids (as is,
re-encoded, resized, cropped), one photo shared by two products with different prices, and
distinct synthetic products around them.
"""

from __future__ import annotations

import json

import pandas as pd
import pytest
from duplicate_catalog import LOOK_IDS, SPLIT, TWIN_IDS, planted_catalog
from prepare_helpers import failures, run

from vlmtune.data.dedup_args import DedupArgs
from vlmtune.data.group_splits import straddling_groups
from vlmtune.data.prepared import load_prepared


def _groups(frame: pd.DataFrame) -> dict[str, set[str]]:
    """Id -> the ids of its duplicate group."""
    members = frame.groupby("duplicate_group")["product_code"].agg(set)
    return {
        pid: members[g]
        for pid, g in zip(frame["product_code"], frame["duplicate_group"], strict=True)
    }


def test_planted_duplicates_are_grouped_in_one_split_and_the_conflict_reported(tmp_path):
    out = tmp_path / "out"
    report = run(planted_catalog(tmp_path / "cat"), out, split=SPLIT)
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
    report = run(
        planted_catalog(tmp_path / "cat"), out, split=SPLIT, dedup=DedupArgs(on_conflict=policy)
    )
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
    catalog = planted_catalog(tmp_path / "cat")
    before = run(catalog, tmp_path / "a", split=SPLIT)
    old = load_prepared(tmp_path / "a").frame
    planted_catalog(tmp_path / "cat", extra=range(100, 200))  # the same catalog file, grown
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


def test_an_output_from_before_duplicate_groups_is_reused_and_grouped(tmp_path):
    catalog = planted_catalog(tmp_path / "cat")
    out = tmp_path / "out"
    run(catalog, out, split=SPLIT)
    manifest = pd.read_parquet(out / "dataset.parquet")
    old = [c for c in manifest.columns if c == "duplicate_group" or c.startswith("image_p")]
    old += ["image_colour"]
    manifest.drop(columns=old).to_parquet(out / "dataset.parquet", index=False)
    (out / "conflicts.csv").unlink()
    again = run(catalog, out, split=SPLIT)
    assert again.reused == again.kept == 36  # no image fetched again
    frame = load_prepared(out).frame
    assert frame.groupby("duplicate_group").size().max() == len(LOOK_IDS)
    assert again.conflict_groups == 1 and (out / "conflicts.csv").is_file()
