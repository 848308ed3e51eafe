"""predict: one listing per image file, unreadable inputs reported per file without stopping the others."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from eval_fixtures import EvalInputs
from PIL import Image

from vlmtune.evaluation.args import PredictArgs
from vlmtune.evaluation.predict import collect_images, read_image, run_predict
from vlmtune.inference.args import GenerationArgs, InferenceArgs


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
