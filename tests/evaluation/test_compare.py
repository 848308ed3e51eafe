"""``vlmtune compare``: real eval runs of the tiny models side by side, and every refusal.

The two runs are real ``run_eval`` outputs on the same rows: the listing model (trained to
answer every photo with one listing) and the untrained checkpoint (which writes no
parsable listing), so the best of each metric is known from their own metrics.json.
"""

from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path

import pytest
from eval_fixtures import EvalInputs

from browser import chromium, run_chromium
from tiny_model import tiny_sizes
from vlmtune.cli.main import main
from vlmtune.evaluation.args import EvalArgs
from vlmtune.evaluation.compare import CompareArgs, run_compare
from vlmtune.evaluation.metrics import METRICS
from vlmtune.evaluation.run import run_eval
from vlmtune.inference.args import GenerationArgs, InferenceArgs
from vlmtune.models.families import FAMILIES
from vlmtune.training.init_model import InitModelArgs, init_model
from vlmtune.utils.errors import UserError

GEN = GenerationArgs(max_new_tokens=24, batch_size=4)


def _eval(model: Path, data: Path, out: Path, limit: int = 4) -> Path:
    inference = InferenceArgs(model=model, device="cpu", generation=GEN)
    run_eval(EvalArgs(inference=inference, data=data, limit=limit, out=out))
    return out


@pytest.fixture(scope="module")
def two_evals(
    eval_inputs: EvalInputs, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("compare")
    listing = _eval(eval_inputs.listing_model, eval_inputs.data, root / "eval-listing")
    untrained = _eval(eval_inputs.checkpoint, eval_inputs.data, root / "eval-untrained")
    return listing, untrained


def _model_metrics(folder: Path) -> dict[str, float]:
    return json.loads((folder / "metrics.json").read_text())["model"]


def test_the_table_holds_each_runs_metrics_and_marks_the_best(two_evals, tmp_path):
    listing, untrained = two_evals
    out = run_compare(CompareArgs(evals=[listing, untrained], out=tmp_path / "cmp"))
    document = json.loads((out / "compare.json").read_text())
    assert document["rows"] == 4
    a, b = _model_metrics(listing), _model_metrics(untrained)
    runs = document["runs"]
    assert [Path(r["eval"]) for r in runs] == [listing.resolve(), untrained.resolve()]
    for key, value in runs[0]["metrics"].items():
        assert value == pytest.approx(a[key]) and runs[1]["metrics"][key] == pytest.approx(b[key])
    # the best of each metric, worked out here from the two metrics.json files
    for i, (mine, other) in enumerate(((a, b), (b, a))):
        expected = {
            k
            for k in runs[i]["metrics"]
            if mine[k] != other[k] and (mine[k] > other[k]) == METRICS[k].higher_is_better
        }
        assert set(runs[i]["best"]) == expected
    assert "parse_rate" in runs[0]["best"]  # the listing model parses, the untrained one does not
    with (out / "compare.csv").open() as handle:
        table = list(csv.reader(handle))
    assert table[0] == ["metric", runs[0]["label"], runs[1]["label"]]
    parse = next(row for row in table if row[0] == "parse_rate")
    assert float(parse[1]) == a["parse_rate"] and float(parse[2]) == b["parse_rate"]


def test_runs_on_different_rows_are_refused_naming_the_rows(eval_inputs, two_evals, tmp_path):
    listing, _ = two_evals
    fewer = _eval(eval_inputs.listing_model, eval_inputs.data, tmp_path / "eval-3", limit=3)
    ids = [json.loads(line)["id"] for line in (listing / "predictions.jsonl").open()]
    with pytest.raises(UserError, match=rf"lacks 1 row\(s\) \({ids[3]}\)"):
        run_compare(CompareArgs(evals=[listing, fewer], out=tmp_path / "cmp"))
    assert not (tmp_path / "cmp").exists()  # refused before anything is written


def test_runs_that_disagree_on_a_reference_are_refused(two_evals, tmp_path):
    listing, _ = two_evals
    other = shutil.copytree(listing, tmp_path / "other-data")
    rows = [json.loads(line) for line in (other / "predictions.jsonl").open()]
    rows[1]["reference"]["price"] += 1.0
    (other / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(UserError, match=rf"reference listing of 1 row\(s\) \({rows[1]['id']}\)"):
        run_compare(CompareArgs(evals=[listing, other], out=tmp_path / "cmp"))


def test_the_training_cost_comes_from_the_run_of_the_model(two_evals, tmp_path):
    listing, untrained = two_evals
    run = tmp_path / "runs" / "lora"
    (run / "model").mkdir(parents=True)
    summary = {
        "train_runtime_s": 99.5,
        "parameters": {"trainable": 1234},
        "image_tokens": {"mean": 757.0},
    }
    (run / "train_summary.json").write_text(json.dumps(summary))
    trained = shutil.copytree(listing, tmp_path / "eval-trained")
    document = json.loads((trained / "metrics.json").read_text())
    document["config"]["inference"]["model"] = str(run / "model")
    (trained / "metrics.json").write_text(json.dumps(document))
    out = run_compare(CompareArgs(evals=[trained, untrained], out=tmp_path / "cmp"))
    runs = json.loads((out / "compare.json").read_text())["runs"]
    assert runs[0]["label"] == "lora/model"  # a generic folder name gets its run's name
    assert (
        runs[0]["cost"]["train_runtime_s"] == 99.5
        and runs[0]["cost"]["trainable_parameters"] == 1234
    )
    assert runs[1]["cost"] == {}
    page = (out / "compare.html").read_text()
    assert re.search(
        r"Trainable parameters</th><td class=\"num\">1,234</td><td class=\"num\">\u2014", page
    )


def test_the_cli_owns_its_output_and_refuses_its_inputs(two_evals, tmp_path, capsys):
    listing, untrained = two_evals
    args = ["compare", str(listing), str(untrained)]
    assert main([*args, "--out", str(tmp_path / "cmp")]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "cmp" / "compare.html")
    assert main([*args, "--out", str(tmp_path / "cmp")]) == 0  # its own output: replaced
    before = sorted(p.name for p in listing.iterdir())
    assert main([*args, "--out", str(listing)]) == 2  # an input as the output
    assert "Traceback" not in capsys.readouterr().err
    assert sorted(p.name for p in listing.iterdir()) == before
    assert main(["compare", str(listing), "--out", str(tmp_path / "one")]) == 2
    assert "two or more" in capsys.readouterr().err
    assert main(["compare", str(listing), str(tmp_path), "--out", str(tmp_path / "x")]) == 2
    assert "not a `vlmtune eval` output" in capsys.readouterr().err


@pytest.mark.slow
def test_the_page_renders_in_headless_chromium(two_evals, tmp_path):
    exe = chromium()
    if exe is None:
        pytest.skip("chromium is not installed (`make browser`): browser test not run")
    listing, untrained = two_evals
    out = run_compare(CompareArgs(evals=[listing, untrained], out=tmp_path / "cmp"))
    dom = run_chromium(exe, tmp_path / "profile", "--dump-dom", (out / "compare.html").as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    html = dom.stdout
    assert len(re.findall(r'<tr class="sample"', html)) == 4
    assert len(re.findall(r'<td class="listing">', html)) == 8  # each row, each model
    assert len(re.findall(r"<img src=\"data:image/jpeg;base64,", html)) == 4
    best = json.loads((out / "compare.json").read_text())["runs"][0]["best"]
    parse_row = re.search(r'<tr data-key="parse_rate">(.*?)</tr>', html, re.S).group(1)
    assert "parse_rate" in best and re.search(r'<td class="num best"><strong>', parse_row)


def test_four_families_side_by_side(eval_inputs, tmp_path):
    """A tiny model of every family, evaluated on the same rows: one column each, headed by
    its family, and every listing of every row on the page (rendered in Chromium)."""
    evals = []
    for name in FAMILIES:
        model = tmp_path / name / "base"
        init_model(InitModelArgs(data=eval_inputs.data, out=model, family=name, **tiny_sizes()))
        evals.append(_eval(model, eval_inputs.data, tmp_path / name / "eval", limit=3))
    out = run_compare(CompareArgs(evals=evals, out=tmp_path / "cmp"))
    document = json.loads((out / "compare.json").read_text())
    assert document["rows"] == 3
    assert [run["family"] for run in document["runs"]] == list(FAMILIES)
    assert len({run["label"] for run in document["runs"]}) == len(FAMILIES)
    html = (out / "compare.html").read_text()
    exe = chromium()
    if exe is not None:
        dom = run_chromium(exe, tmp_path / "profile", "--dump-dom", (out / "compare.html").as_uri())
        assert dom.returncode == 0, dom.stderr[-2000:]
        html = dom.stdout
    assert len(re.findall(r'<td class="listing">', html)) == 3 * len(FAMILIES)
    headers = re.findall(
        r'<th scope="col" class="model">.*?<span class="family">(\w+)</span>', html
    )
    assert headers == list(FAMILIES)
