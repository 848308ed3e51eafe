"""predict: one listing per image file, unreadable inputs reported per file without stopping the others."""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import pytest
from eval_fixtures import EvalInputs
from PIL import Image

import vlmtune.evaluation.predict as predict_module
from vlmtune.evaluation.args import PredictArgs
from vlmtune.evaluation.predict import collect_images, is_predictions_csv, read_image, run_predict
from vlmtune.inference.args import GenerationArgs, InferenceArgs
from vlmtune.utils.errors import UserError


def _inputs(tmp_path: Path) -> list[Path]:
    folder = tmp_path / "photos"
    (folder / "nested").mkdir(parents=True)
    Image.new("RGB", (80, 120), (200, 30, 30)).save(folder / "b.png")
    Image.new("RGB", (120, 80), (30, 200, 30)).save(folder / "nested" / "a.jpg")
    (folder / "notes.txt").write_text("not an image, not a suffix we read")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    Image.new("RGB", (3000, 1)).save(
        folder / "strip.png"
    )  # decodes, but too elongated for the HD transform
    single = tmp_path / "single.webp"
    Image.new("RGB", (100, 100), (30, 30, 200)).save(single)
    return [folder, single, tmp_path / "missing.jpg"]


def test_predict_writes_a_row_per_image_and_reports_failures(
    eval_inputs: EvalInputs, tmp_path: Path
):
    out = tmp_path / "predictions.csv"
    args = PredictArgs(
        inference=InferenceArgs(
            model=eval_inputs.listing_model,
            generation=GenerationArgs(max_new_tokens=40, batch_size=2),
        ),
        inputs=_inputs(tmp_path),
        out=out,
    )
    result = run_predict(args)
    with open(out, encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["image", "title", "category3_code", "full_price", "raw_text", "error"]
    names = [Path(r["image"]).name for r in rows]
    assert names == ["b.png", "broken.jpg", "a.jpg", "strip.png", "single.webp", "missing.jpg"]
    good = [r for r in rows if not r["error"]]
    assert len(good) == 3
    for row in good:
        assert (row["title"], row["category3_code"], row["full_price"]) == (
            "Check Wool Scarf",
            "scarves",
            "450.00",
        )
        assert row["raw_text"].startswith("Product: Check Wool Scarf")
    errors = {Path(r["image"]).name: r["error"] for r in rows if r["error"]}
    assert (
        "not a readable image" in errors["broken.jpg"] and "no such file" in errors["missing.jpg"]
    )
    assert "cannot be processed" in errors["strip.png"]
    assert len(result.failures) == 3


def test_collect_images_expands_folders_and_names_empty_ones(tmp_path: Path):
    empty = tmp_path / "empty"
    empty.mkdir()
    files, problems = collect_images(_inputs(tmp_path) + [empty])
    assert [p.name for p in files] == ["b.png", "broken.jpg", "a.jpg", "strip.png", "single.webp"]
    assert [(p.name, r.split(" ")[0]) for p, r in problems] == [
        ("missing.jpg", "no"),
        ("empty", "folder"),
    ]


def test_read_image_names_the_file(tmp_path: Path):
    bad = tmp_path / "x.png"
    bad.write_bytes(b"png? no")
    with pytest.raises(ValueError, match="x.png"):
        read_image(bad)


def test_predict_args_need_model_and_inputs():
    with pytest.raises(ValueError, match="model"):
        PredictArgs(inputs=[Path("a.jpg")])
    with pytest.raises(ValueError, match="inputs"):
        PredictArgs(inference=InferenceArgs(model=Path("m")))


# --------------------------------------------------------------------------- output and checks


def _predict_args(model: Path, inputs: list[Path], out: Path, **kwargs) -> PredictArgs:
    inference = InferenceArgs(
        model=model,
        device=kwargs.pop("device", "cpu"),
        generation=GenerationArgs(max_new_tokens=40),
    )
    return PredictArgs(inference=inference, inputs=inputs, out=out, **kwargs)


def _tree(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


@pytest.fixture()
def loads(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Every model load run_predict asks for (the real loader still runs)."""
    calls: list[object] = []
    real = predict_module.load_model_and_processor

    def spy(location, **kwargs):
        calls.append(location)
        return real(location, **kwargs)

    monkeypatch.setattr(predict_module, "load_model_and_processor", spy)
    return calls


@pytest.fixture()
def photo(tmp_path: Path) -> Path:
    path = tmp_path / "photo.jpg"
    Image.new("RGB", (90, 110), (120, 40, 40)).save(path)
    return path


def _refused(args: PredictArgs, watched: Path, loads: list[object], match: str) -> None:
    before = _tree(watched)
    with pytest.raises(UserError, match=match) as err:
        run_predict(args)
    assert loads == [] and _tree(watched) == before and "\n" not in str(err.value)


@pytest.mark.parametrize(
    "out,overwrite,match",
    [
        ("folder", True, r"is a folder; predict writes a file there"),
        ("photo.jpg", True, r"is input 1 of 1 .* even with --overwrite"),
        ("notes.csv", False, r"already exists and is not a `vlmtune predict` output"),
    ],
)
def test_a_bad_out_is_refused_before_any_model_loads(
    eval_inputs: EvalInputs, tmp_path: Path, photo: Path, loads, out, overwrite, match
):
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "kept.txt").write_text("mine")
    (tmp_path / "notes.csv").write_text("when,what\nmonday,call\n")
    args = _predict_args(eval_inputs.listing_model, [photo], tmp_path / out, overwrite=overwrite)
    _refused(args, tmp_path, loads, match)


@pytest.mark.parametrize(
    "model,device,match",
    [("typo", "cpu", "--model .*typo' does not exist"), ("ok", "gpu0", "--device 'gpu0'")],
)
def test_a_bad_model_or_device_is_refused_before_any_model_loads(
    eval_inputs: EvalInputs, tmp_path: Path, photo: Path, loads, model, device, match
):
    path = eval_inputs.listing_model if model == "ok" else tmp_path / model
    args = _predict_args(path, [photo], tmp_path / "out.csv", device=device)
    _refused(args, tmp_path, loads, match)


def test_an_earlier_predictions_csv_is_replaced_and_a_foreign_one_only_with_overwrite(
    eval_inputs: EvalInputs, tmp_path: Path, photo: Path
):
    out = tmp_path / "listings.csv"
    run_predict(_predict_args(eval_inputs.listing_model, [photo], out))
    assert is_predictions_csv(out)
    run_predict(_predict_args(eval_inputs.listing_model, [photo, tmp_path / "gone.jpg"], out))
    with open(out, encoding="utf-8", newline="") as handle:
        assert [Path(r["image"]).name for r in csv.DictReader(handle)] == ["photo.jpg", "gone.jpg"]

    foreign = tmp_path / "catalog.csv"
    foreign.write_text("title,price\nScarf,450\n")
    assert not is_predictions_csv(foreign)
    run_predict(_predict_args(eval_inputs.listing_model, [photo], foreign, overwrite=True))
    assert is_predictions_csv(foreign)


def test_the_log_counts_listings_not_attempts(
    eval_inputs: EvalInputs, tmp_path: Path, photo: Path, caplog: pytest.LogCaptureFixture
):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    caplog.set_level(logging.INFO, logger="vlmtune")
    run_predict(_predict_args(eval_inputs.listing_model, [broken], tmp_path / "one.csv"))
    assert "predicted 0/1 image(s), 1 failed" in caplog.text and "1/1" not in caplog.text
    caplog.clear()
    inputs = [photo, broken, tmp_path / "missing.jpg"]
    result = run_predict(_predict_args(eval_inputs.listing_model, inputs, tmp_path / "two.csv"))
    assert "predicted 1/2 image(s), 1 failed" in caplog.text  # the images predict could open
    assert "predicted 1/3 image(s), 2 failed" in caplog.text  # every input, the missing one too
    assert len(result.rows) == 3 and len(result.failures) == 2
