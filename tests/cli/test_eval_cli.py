"""``vlmtune eval`` and ``vlmtune predict`` through the real command line entry point (in process)."""

from __future__ import annotations

import csv
import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest
from PIL import Image

from vlmtune.cli._command import split_items as split_inputs
from vlmtune.cli.main import main

_FIXTURES = Path(__file__).resolve().parents[1] / "evaluation" / "eval_fixtures.py"


def _eval_fixtures() -> ModuleType:
    """The evaluation tests' input builders (one module, shared rather than copied)."""
    if "eval_fixtures" in sys.modules:
        return sys.modules["eval_fixtures"]
    spec = importlib.util.spec_from_file_location("eval_fixtures", _FIXTURES)
    module = importlib.util.module_from_spec(spec)
    sys.modules["eval_fixtures"] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory):
    return _eval_fixtures().shared_eval_inputs(tmp_path_factory)


def test_eval_command_writes_results(inputs, tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    out = tmp_path / "out"
    code = main(
        [
            "eval",
            "--model",
            str(inputs.listing_model),
            "--data",
            str(inputs.data),
            "--limit",
            "3",
            "--batch-size",
            "2",
            "--out",
            str(out),
            "inference.generation.max_new_tokens=40",
        ]
    )
    assert code == 0
    doc = json.loads((out / "metrics.json").read_text())
    assert doc["model"]["parse_rate"] == 1.0 and doc["model"]["n"] == 3
    assert doc["config"]["inference"]["generation"]["batch_size"] == 2
    assert "mean_price" in doc["baselines"]
    assert (out / "report.html").is_file() and len(
        (out / "predictions.jsonl").read_text().splitlines()
    ) == 3
    assert "Parse rate" in capsys.readouterr().err


def test_eval_command_rejects_bad_values_before_work(inputs, capsys: pytest.CaptureFixture[str]):
    code = main(
        [
            "eval",
            "--model",
            str(inputs.listing_model),
            "--data",
            str(inputs.data),
            "inference.generation.batch_size=0",
        ]
    )
    assert code == 2
    assert "generation" in capsys.readouterr().err
    assert (
        main(
            [
                "eval",
                "--model",
                str(inputs.listing_model),
                "--split",
                "dev",
                "--data",
                str(inputs.data),
            ]
        )
        == 2
    )


def test_eval_command_names_a_missing_dataset(
    inputs, tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    code = main(
        [
            "eval",
            "--model",
            str(inputs.listing_model),
            "--data",
            str(tmp_path / "nope"),
            "--out",
            str(tmp_path / "o"),
        ]
    )
    assert code == 2
    assert "is not a prepared dataset" in capsys.readouterr().err


def test_predict_command_reports_unreadable_images(
    inputs, tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    good = tmp_path / "good.jpg"
    Image.new("RGB", (90, 110), (120, 40, 40)).save(good)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"nope")
    out = tmp_path / "listings.csv"
    argv = ["predict", "--model", str(inputs.listing_model), str(good), str(bad), "--out", str(out)]
    code = main([*argv, "inference.generation.max_new_tokens=40"])
    assert code == 1  # some image failed; the CSV still has every row
    err = capsys.readouterr().err
    assert "bad.png" in err and "1 listing(s), 1 failure(s)" in err
    with open(out, encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [Path(r["image"]).name for r in rows] == ["good.jpg", "bad.png"]
    assert (
        rows[0]["title"] == "Check Wool Scarf"
        and rows[0]["full_price"] == "450.00"
        and not rows[0]["error"]
    )
    assert rows[1]["error"] and not rows[1]["title"]


def test_predict_arguments_split_paths_from_overrides(tmp_path: Path):
    odd = tmp_path / "a=b.jpg"
    odd.write_bytes(b"")
    override = "inference.generation.batch_size=2"
    paths, overrides = split_inputs(["x.jpg", override, str(odd), "dir"])
    assert paths == ["x.jpg", str(odd), "dir"] and overrides == [override]


def test_eval_and_predict_refuse_a_wrong_out_in_one_line_before_any_work(
    inputs, tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    taken = tmp_path / "results.txt"
    taken.write_bytes(b"keep me")
    folder = tmp_path / "listings"
    folder.mkdir()
    (folder / "kept.csv").write_bytes(b"a,b\n")
    photo = tmp_path / "photo.jpg"
    Image.new("RGB", (90, 110), (120, 40, 40)).save(photo)
    model, data = str(inputs.listing_model), str(inputs.data)
    runs = [
        (["eval", "-m", model, "-d", data, "--out", str(taken)], "is a file"),
        (["predict", "-m", model, str(photo), "--out", str(folder)], "is a folder"),
        (["eval", "-m", model, "-d", data, "--base-model", str(tmp_path / "typo")], "typo"),
        (["predict", "-m", model, str(photo), "--device", "gpu0"], "'gpu0' is not a device"),
    ]
    for argv, cause in runs:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert cause in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert taken.read_bytes() == b"keep me" and (folder / "kept.csv").read_bytes() == b"a,b\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["listings", "photo.jpg", "results.txt"]
