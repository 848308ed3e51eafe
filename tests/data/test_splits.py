"""Deterministic train/val/test splits: fractions, stability, strata, and how prepare applies them."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import pytest
from fault_server import FaultServer, status
from prepare_helpers import good_server, run, write_catalog

from vlmtune.data.prepare import PrepareError
from vlmtune.data.prepared import load_prepared
from vlmtune.data.splits import assign_splits, parse_split_fractions


def test_splits_follow_the_fractions_and_the_seed():
    ids = [f"id{i}" for i in range(10_000)]
    split = assign_splits(ids, (0.8, 0.1, 0.1), seed=0)
    # each id draws its own split: counts are binomial (sd 40 and 30 here), not exact
    assert abs(split.count("train") - 8000) < 200 and abs(split.count("val") - 1000) < 150
    assert abs(split.count("test") - 1000) < 150
    assert assign_splits(list(reversed(ids)), (0.8, 0.1, 0.1), seed=0) == list(reversed(split))
    assert assign_splits(ids, (0.8, 0.1, 0.1), seed=1) != split
    assert set(assign_splits(ids, (0.9, 0.1, 0.0))) == {"train", "val"}


def test_adding_products_never_moves_an_existing_one_to_another_split():
    ids = [f"p{i}" for i in range(1000)]
    before = dict(zip(ids, assign_splits(ids, (0.9, 0.05, 0.05), seed=4), strict=True))
    grown = ids[:500] + [f"new{i}" for i in range(50)] + ids[500:]
    after = dict(zip(grown, assign_splits(grown, (0.9, 0.05, 0.05), seed=4), strict=True))
    assert {pid: after[pid] for pid in ids} == before
    shrunk = ids[::3]
    again = assign_splits(shrunk, (0.9, 0.05, 0.05), seed=4)
    assert again == [before[pid] for pid in shrunk]


def test_a_split_is_the_documented_function_of_the_seed_and_id_alone():
    ids = [f"sku-{i}" for i in range(2000)]
    fractions = (0.7, 0.2, 0.1)
    expected = []
    for pid in ids:
        digest = hashlib.sha256(f"7\0{pid}".encode()).hexdigest()
        u = int(digest[:16], 16) / 2**64
        expected.append("train" if u < 0.7 else "val" if u < 0.7 + 0.2 else "test")
    assert assign_splits(ids, fractions, seed=7) == expected


def test_stratified_splits_are_proportional_per_stratum():
    ids = [f"id{i}" for i in range(140)]
    strata = ["A"] * 100 + ["B"] * 40
    split = assign_splits(ids, (0.5, 0.25, 0.25), strata=strata)
    for name, size in (("A", 100), ("B", 40)):
        got = [s for s, g in zip(split, strata, strict=True) if g == name]
        assert (got.count("train"), got.count("val"), got.count("test")) == (
            size // 2,
            size // 4,
            size // 4,
        )


def test_small_catalog_still_gets_val_and_test():
    split = assign_splits(["a", "b", "c", "d", "e"], parse_split_fractions("0.9,0.05,0.05"))
    assert sorted(set(split)) == ["test", "train", "val"]


def test_splits_are_the_same_in_another_process():
    ids = [f"product-{i}" for i in range(200)]
    code = ("import json,sys; from vlmtune.data.splits import assign_splits; "
            "print(json.dumps(assign_splits(json.loads(sys.argv[1]), (0.7, 0.2, 0.1), seed=3)))")  # fmt: skip
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run(
        [sys.executable, "-c", code, json.dumps(ids)],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    assert json.loads(out.stdout) == assign_splits(ids, (0.7, 0.2, 0.1), seed=3)


def test_prepare_split_does_not_depend_on_which_downloads_failed(tmp_path):
    with FaultServer() as server:
        rows = good_server(server, 30)
        rows[3] = (rows[3][0], server.add("/gone.jpg", status(404)))
        catalog = write_catalog(tmp_path / "c.csv", rows, categories=["A", "B", "C"] * 10)
        report = run(
            catalog, tmp_path / "out", split="0.6,0.2,0.2", stratify="category3_code", seed=5
        )
    frame = load_prepared(tmp_path / "out").frame
    expected = assign_splits(
        [pid for pid, _ in rows], (0.6, 0.2, 0.2), seed=5, strata=["A", "B", "C"] * 10
    )
    assert list(frame["split"]) == [
        s for s, (pid, _) in zip(expected, rows, strict=True) if pid != "p3"
    ]
    assert sum(report.splits.values()) == 29
    assert (
        json.loads((tmp_path / "out" / "vlmtune_dataset.json").read_text())["splits"]
        == report.splits
    )


def test_unknown_stratify_column_is_an_error(tmp_path):
    catalog = write_catalog(tmp_path / "c.csv", [("a", "x.jpg")])
    with pytest.raises(PrepareError, match="stratify column 'nope'"):
        run(catalog, tmp_path / "out", stratify="nope")
