"""The quick demo end to end: every stage runs, every artefact exists, the loss falls."""

from __future__ import annotations

import csv
import fnmatch
import json
from importlib import resources
from pathlib import Path

import pytest
import yaml

from vlmtune.cli.demo import SUMMARY_METRICS
from vlmtune.cli.main import main


@pytest.mark.slow
def test_quick_demo_produces_every_artefact_and_learns(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    out = tmp_path / "demo #1"  # YAML would read 'demo #1' as 'demo' and a comment
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "before training" in printed and "after training" in printed
    # the baselines are constants, not generated text: they have no parse rate
    (parse_row,) = [line for line in printed.splitlines() if "parse_rate" in line]
    assert [cell.strip() for cell in parse_row.strip("│ ").split("│")][-1] == "n/a"

    summary = json.loads((out / "summary.json").read_text())
    for part in ("before", "after", "baseline"):
        assert set(SUMMARY_METRICS) <= set(summary[part]), part
    assert summary["baseline"]["parse_rate"] is None
    # the trained model writes the listing format (measured: 0.0 before, 1.0 after 40 steps)
    assert summary["after"]["parse_rate"] >= 0.8 > summary["before"]["parse_rate"], summary
    assert summary["paths"]["run"] == str(out.resolve() / "run")
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

    # `make demo` twice: the same settings reuse every finished stage and nothing is redone
    weights = (out / "run" / "model" / "model.safetensors").read_bytes()
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    again = json.loads((out / "summary.json").read_text())
    assert again["reused_stages"] == ["prepare", "init-model", "train", "eval"]
    assert again["after"] == summary["after"] and again["seconds"] == summary["seconds"]
    assert (out / "run" / "model" / "model.safetensors").read_bytes() == weights
    assert "reused from the earlier run" in capsys.readouterr().out

    # a demo stopped during training: the rerun resumes from the last checkpoint (no advice the
    # demo does not accept) and redoes only what was not finished
    state = json.loads((out / "demo_stages.json").read_text())
    for stage in ("train", "eval"):
        del state["stages"][stage]
    (out / "demo_stages.json").write_text(json.dumps(state))
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    resumed = json.loads((out / "summary.json").read_text())
    assert resumed["reused_stages"] == ["prepare", "init-model"]
    assert resumed["train"]["global_step"] == summary["train"]["global_step"]


def test_a_demo_with_other_settings_goes_to_a_fresh_numbered_folder(tmp_path):
    from rich.console import Console

    from vlmtune.cli.demo import DemoArgs, _choose_folder, _settings

    out = tmp_path / "demo_out"
    console = Console(record=True)
    first = _settings(DemoArgs(out=out, quick=True))
    assert _choose_folder(out, first, console) == out  # new: used
    assert _choose_folder(out, first, console) == out  # same settings: reused
    other = _settings(DemoArgs(out=out, quick=True, seed=1))
    assert _choose_folder(out, other, console) == tmp_path / "demo_out-2"
    assert "this demo writes to" in console.export_text()
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("not a demo")
    assert _choose_folder(mine, first, console) == tmp_path / "mine-2"
    assert (mine / "notes.txt").read_text() == "not a demo"


def test_recipes_ship_as_package_data_and_the_clone_links_to_them():
    packaged = resources.files("vlmtune") / "configs"
    assert (packaged / "demo.yaml").is_file() and (packaged / "README.md").is_file()
    root = Path(__file__).resolve().parents[2]
    assert (root / "configs").resolve() == Path(str(packaged)).resolve()
    # every recipe is listed in the package data, so a wheel carries it too
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    patterns = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"
    ]["vlmtune"]
    for recipe in Path(str(packaged)).iterdir():
        name = f"configs/{recipe.name}"
        assert any(fnmatch.fnmatch(name, pattern) for pattern in patterns), name


@pytest.mark.slow
def test_demo_builds_and_trains_the_family_it_is_given(tmp_path, monkeypatch):
    from vlmtune.cli.demo import DemoArgs, run_demo
    from vlmtune.models.families import family_of_folder

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    out = tmp_path / "demo"
    steps = [
        "train.max_steps=12",
        "train.eval_steps=12",
        "train.save_steps=12",
        "train.logging_steps=2",
    ]
    args = DemoArgs(out=out, quick=True, n=60, family="qwen2_5_vl", train_overrides=steps)
    summary = run_demo(args, console=None)
    assert family_of_folder(out / "base_model").name == "qwen2_5_vl"
    assert family_of_folder(summary["paths"]["model"]).name == "qwen2_5_vl"
    assert summary["train"]["global_step"] == 12 and summary["test_rows"] > 0
    # the same recipe as every family: demo.yaml's learning rate, with the test's steps on top
    run_config = yaml.safe_load((out / "run" / "config.yaml").read_text())
    assert run_config["train"]["learning_rate"] == 1.0e-3
    assert run_config["train"]["mode"] == "full"
    losses = [
        json.loads(line)["loss"]
        for line in (out / "run" / "metrics.jsonl").read_text().splitlines()
        if '"loss"' in line
    ]
    assert losses[-1] < losses[0]
    with pytest.raises(
        ValueError, match="unknown model family 'llava'.*gemma3, phi3v, qwen2_5_vl, smolvlm"
    ):
        DemoArgs(out=out, family="llava")
