"""``eval`` scores the whole split and, apart, the rows whose duplicate group lies wholly in that split."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest
from eval_fixtures import ROWS, EvalInputs, write_prepared_dataset

from vlmtune.evaluation.args import EvalArgs
from vlmtune.evaluation.run import run_eval
from vlmtune.inference.args import GenerationArgs, InferenceArgs


def _args(model: Path, data: Path, out: Path) -> EvalArgs:
    gen = GenerationArgs(max_new_tokens=32, batch_size=4)
    return EvalArgs(inference=InferenceArgs(model=model, generation=gen), data=data, out=out)


def test_eval_reports_metrics_on_rows_whose_group_is_unique_to_the_split(
    eval_inputs: EvalInputs, tmp_path: Path
):
    data = write_prepared_dataset(tmp_path / "data", ROWS)
    manifest = pd.read_parquet(data / "dataset.parquet")
    groups = {pid: k for k, pid in enumerate(manifest["product_code"])}
    groups["T1"] = groups["A1"]  # T1's photo is a copy of a training photo: its group straddles
    manifest["duplicate_group"] = manifest["product_code"].map(groups)
    manifest.to_parquet(data / "dataset.parquet", index=False)
    out = tmp_path / "eval"
    run_eval(_args(eval_inputs.listing_model, data, out))
    doc = json.loads((out / "metrics.json").read_text())
    unique = doc["unique_groups"]
    assert unique["recorded"] and unique["rows"] == 3 and unique["other_rows"] == 1
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == ["T1", "T2", "T3", "T4"]
    # the listing model answers "Check Wool Scarf, scarves, 450": the category of T1 and T2
    assert rows[0]["correct"]["category_correct"] and doc["model"]["category_accuracy"] == 0.5
    apart = [r for r in rows if r["id"] != "T1"]
    assert unique["metrics"]["n"] == 3
    assert unique["metrics"]["category_accuracy"] == pytest.approx(1 / 3)
    assert unique["metrics"]["title_exact_match"] == pytest.approx(
        sum(r["correct"]["title_exact"] for r in apart) / 3
    )
    page = (out / "report.html").read_text()
    assert "groups unique to the split (3 rows)" in page
    cell = re.search(r'<td class="num unique" data-key="category_accuracy">([^<]*)</td>', page)
    assert cell is not None and cell.group(1).strip() == "33.3\u202f%"


def test_eval_of_a_dataset_without_groups_says_so(eval_inputs: EvalInputs, tmp_path: Path):
    out = tmp_path / "eval"
    run_eval(_args(eval_inputs.listing_model, eval_inputs.data, out))
    doc = json.loads((out / "metrics.json").read_text())
    assert doc["unique_groups"]["recorded"] is False and doc["model"]["n"] == 4
    assert "records no duplicate groups" in (out / "report.html").read_text()
