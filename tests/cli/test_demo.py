"""The quick demo end to end: every stage runs, every artefact exists, the training loss falls."""

from __future__ import annotations

import csv
import json

import pytest

from vlmtune.cli.demo import SUMMARY_METRICS
from vlmtune.cli.main import main


@pytest.mark.slow
def test_quick_demo_produces_every_artefact_and_learns(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "before training" in printed and "after training" in printed

    summary = json.loads((out / "summary.json").read_text())
    for part in ("before", "after", "baseline"):
        assert set(SUMMARY_METRICS) <= set(summary[part]), part
    assert set(summary["seconds"]) >= {"synth", "prepare", "init-model", "train", "eval", "total"}
    for key in ("report", "run", "model"):
        assert (out / summary["paths"][key]).exists() or (
            tmp_path / summary["paths"][key]
        ).exists(), key

    # prepare went over HTTP and reported the broken rows of the catalog
    with open(out / "data" / "failures.csv", newline="", encoding="utf-8") as handle:
        failures = list(csv.DictReader(handle))
    assert failures and summary["prepare"]["dropped"] == len(failures)
    assert any(row["url"].startswith("http://127.0.0.1:") for row in failures)

    # training: loss falls, W&B ran offline, metrics.jsonl written
    losses = [
        json.loads(line)["loss"]
        for line in (out / "run" / "metrics.jsonl").read_text().splitlines()
        if '"loss"' in line
    ]
    assert len(losses) >= 2 and losses[-1] < losses[0]
    assert list((out / "run").rglob("offline-run-*")), "W&B should have logged offline"

    # eval and predict accept the trained model folder
    html = (out / "eval" / "report.html").read_text(encoding="utf-8")
    assert "<table" in html and "<svg" in html
    image = next((out / "data" / "images").iterdir())
    assert (
        main(
            [
                "predict",
                "--model",
                summary["paths"]["model"],
                str(image),
                "--out",
                str(tmp_path / "p.csv"),
            ]
        )
        == 0
    )
    with open(tmp_path / "p.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 1 and {"image", "title", "category3_code", "full_price", "raw_text"} <= set(
        rows[0]
    )
