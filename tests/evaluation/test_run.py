"""run_eval checks every input and its output folder before any model is loaded, and owns its output.

Each refusal must be a ``UserError`` (one line, exit 2, no traceback) raised before a model is
loaded (a spy on the loader records every call), leaving every pre-existing byte in place.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from eval_fixtures import ROWS, EvalInputs, write_prepared_dataset

import vlmtune.evaluation.run as eval_run
from vlmtune.evaluation.args import EvalArgs
from vlmtune.evaluation.run import run_eval
from vlmtune.inference.args import GenerationArgs, InferenceArgs
from vlmtune.utils.errors import UserError
from vlmtune.utils.outputs import MARKER, read_marker

GEN = GenerationArgs(max_new_tokens=24, batch_size=2)


def _args(model: Path, data: Path, **kwargs) -> EvalArgs:
    device = kwargs.pop("device", "cpu")
    inference = InferenceArgs(model=model, device=device, generation=GEN)
    return EvalArgs(inference=inference, data=data, limit=kwargs.pop("limit", 2), **kwargs)


def _tree(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


@pytest.fixture()
def loads(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Every model load run_eval asks for (the real loader still runs)."""
    calls: list[object] = []
    real = eval_run.load_model_and_processor

    def spy(location, **kwargs):
        calls.append(location)
        return real(location, **kwargs)

    monkeypatch.setattr(eval_run, "load_model_and_processor", spy)
    return calls


def _refused(args: EvalArgs, watched: Path, loads: list[object], match: str) -> str:
    before = _tree(watched)
    with pytest.raises(UserError, match=match) as err:
        run_eval(args)
    assert loads == [], "a model was loaded before the mistake was found"
    assert _tree(watched) == before
    message = str(err.value)
    assert "\n" not in message
    return message


def test_out_naming_a_file_is_refused_before_any_model_loads(
    eval_inputs: EvalInputs, tmp_path: Path, loads: list[object]
):
    out = tmp_path / "results.json"
    out.write_text('{"mine": true}')
    args = _args(eval_inputs.listing_model, eval_inputs.data, out=out, overwrite=True)
    _refused(args, tmp_path, loads, r"results\.json' is a file; eval writes a folder there")


def test_a_base_model_typo_is_found_before_the_main_model_is_evaluated(
    eval_inputs: EvalInputs, tmp_path: Path, loads: list[object]
):
    typo = tmp_path / "bse-model"
    args = _args(eval_inputs.listing_model, eval_inputs.data, base_model=typo, out=tmp_path / "o")
    message = _refused(args, tmp_path, loads, "--base-model")
    assert "bse-model' does not exist" in message
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    "split,data_rows,match",
    [
        ("val", [r for r in ROWS if r[4] != "val"], "split 'val' is empty or unknown"),
        ("test", None, "is not a prepared dataset"),
    ],
)
def test_a_missing_split_or_dataset_is_found_before_any_model_loads(
    eval_inputs: EvalInputs, tmp_path: Path, loads: list[object], split, data_rows, match
):
    data = tmp_path / "data"
    if data_rows is not None:
        write_prepared_dataset(data, data_rows)
    args = _args(eval_inputs.listing_model, data, split=split, out=tmp_path / "o")
    _refused(args, tmp_path, loads, match)


def test_a_split_whose_images_are_all_gone_is_found_before_any_model_loads(
    eval_inputs: EvalInputs, tmp_path: Path, loads: list[object]
):
    data = tmp_path / "data"
    shutil.copytree(eval_inputs.data, data)
    for image in (data / "images").glob("T*.jpg"):
        image.unlink()
    args = _args(eval_inputs.listing_model, data, out=tmp_path / "o")
    _refused(args, tmp_path, loads, r"none of the 2 image\(s\) to evaluate .* exists")


@pytest.mark.parametrize("device", ["gpu0", "cuda:99"])
def test_a_device_this_machine_lacks_is_refused_before_any_model_loads(
    eval_inputs: EvalInputs, tmp_path: Path, loads: list[object], device: str
):
    args = _args(eval_inputs.listing_model, eval_inputs.data, device=device, out=tmp_path / "o")
    _refused(args, tmp_path, loads, f"--device '{device}'")


@pytest.mark.parametrize("target", ["model", "data", "parent"])
def test_an_input_is_never_an_output_even_with_overwrite(
    eval_inputs: EvalInputs, tmp_path: Path, loads: list[object], target: str
):
    model = tmp_path / "model"
    shutil.copytree(eval_inputs.listing_model, model)
    data = tmp_path / "data"
    shutil.copytree(eval_inputs.data, data)
    out = {"model": model, "data": data, "parent": tmp_path}[target]
    args = _args(model, data, out=out, overwrite=True)
    _refused(args, tmp_path, loads, "even with --overwrite")


def test_a_foreign_folder_needs_overwrite_and_is_then_replaced_whole(
    eval_inputs: EvalInputs, tmp_path: Path, loads: list[object]
):
    out = tmp_path / "notes"
    out.mkdir()
    (out / "todo.txt").write_text("my notes")
    args = _args(eval_inputs.listing_model, eval_inputs.data, out=out)
    _refused(args, tmp_path, loads, r"holds files that vlmtune eval did not write \(todo\.txt\)")

    result = run_eval(_args(eval_inputs.listing_model, eval_inputs.data, out=out, overwrite=True))
    assert result.out == out and len(loads) == 1
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [MARKER, "metrics.json", "predictions.jsonl", "report.html"]
    )
    assert read_marker(out)["verb"] == "eval"


def test_an_earlier_eval_is_replaced_and_another_models_eval_is_kept(
    eval_inputs: EvalInputs, tmp_path: Path, loads: list[object]
):
    out = tmp_path / "eval"
    run_eval(_args(eval_inputs.listing_model, eval_inputs.data, out=out, limit=1))
    first = json.loads((out / "metrics.json").read_text())
    assert first["model"]["n"] == 1
    run_eval(_args(eval_inputs.listing_model, eval_inputs.data, out=out, limit=2))
    assert json.loads((out / "metrics.json").read_text())["model"]["n"] == 2  # same identity
    loads.clear()

    other = _args(eval_inputs.checkpoint, eval_inputs.data, out=out)
    message = _refused(other, tmp_path, loads, "holds an earlier `vlmtune eval` output made from")
    assert "--overwrite" in message


def test_an_eval_folder_from_before_markers_is_recognised_as_eval_output(
    eval_inputs: EvalInputs, tmp_path: Path
):
    out = tmp_path / "eval-old"
    out.mkdir()
    for name in ("metrics.json", "predictions.jsonl", "report.html"):
        (out / name).write_text("old")
    run_eval(_args(eval_inputs.listing_model, eval_inputs.data, out=out, limit=1))
    assert json.loads((out / "metrics.json").read_text())["model"]["n"] == 1
    assert read_marker(out)["identity"]["split"] == "test"


def test_a_damaged_training_log_costs_the_curves_not_the_evaluation(
    eval_inputs: EvalInputs, tmp_path: Path
):
    run = tmp_path / "run"
    shutil.copytree(eval_inputs.listing_model, run / "model")
    (run / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0}\nnot json\n{"step": 2}\n')
    result = run_eval(_args(run, eval_inputs.data, limit=1))
    page = (result.out / "report.html").read_text()
    assert 'id="curves"' not in page and "line 2 is not valid JSON" in page
