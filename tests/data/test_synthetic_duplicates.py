"""``synth --duplicate-frac``: planted copies that ``prepare`` groups with their sources, and nothing else."""

from __future__ import annotations

import json

from prepare_helpers import run

from vlmtune.data.group_splits import straddling_groups
from vlmtune.data.prepared import load_prepared
from vlmtune.data.synthetic import SynthArgs, generate_catalog
from vlmtune.data.synthetic.duplicates import CHANGES, plan_duplicates


def _synth(out, frac: float):
    args = SynthArgs(
        out=out, n=80, seed=0, image_size="224x280", broken_frac=0.05, duplicate_frac=frac,
        workers=1,
    )  # fmt: skip
    return generate_catalog(args)


def test_plan_picks_copies_of_sources_that_are_never_copies_or_broken():
    copies = plan_duplicates(seed=3, n=200, frac=0.2, excluded={0, 1, 2})
    assert len(copies) == 40
    assert not {c.source for c in copies.values()} & set(copies)
    assert not ({0, 1, 2} & (set(copies) | {c.source for c in copies.values()}))
    assert {c.change for c in copies.values()} == set(CHANGES)
    assert plan_duplicates(seed=3, n=200, frac=0.0, excluded=set()) == {}


def test_prepare_groups_every_planted_copy_with_its_source(tmp_path):
    catalog = _synth(tmp_path / "synth", frac=0.1)
    report = json.loads((tmp_path / "synth" / "synth_report.json").read_text())
    planted = report["duplicates"]
    assert planted["rows"] == 8 and planted["by_change"] == dict.fromkeys(CHANGES, 2)
    prepared = run(catalog, tmp_path / "data", split="0.5,0.25,0.25")
    frame = load_prepared(tmp_path / "data").frame
    group = dict(zip(frame["product_code"].astype(str), frame["duplicate_group"], strict=True))
    for copy, source, change in planted["copies"]:
        assert group[copy] == group[source], f"{change} copy {copy} not grouped with {source}"
    assert prepared.duplicate_groups == 8 and prepared.duplicate_rows == 16  # nothing else merged
    assert prepared.conflict_groups == 0  # a copy re-lists its source: same listing
    assert straddling_groups(frame["duplicate_group"].tolist(), frame["split"].tolist()) == []


def test_products_that_are_not_copies_keep_their_photos_and_listings(tmp_path):
    plain, dup = _synth(tmp_path / "plain", 0.0), _synth(tmp_path / "dup", 0.1)
    copies = {c for c, _, _ in json.loads((tmp_path / "dup" / "synth_report.json").read_text())[
        "duplicates"]["copies"]}  # fmt: skip
    rows_plain = plain.read_text().splitlines()
    rows_dup = dup.read_text().splitlines()
    different = [a.split(",")[8] for a, b in zip(rows_plain, rows_dup, strict=True) if a != b]
    assert set(different) == copies
    for path in (tmp_path / "plain" / "images").iterdir():
        if path.stem not in copies:
            assert (tmp_path / "dup" / "images" / path.name).read_bytes() == path.read_bytes()
