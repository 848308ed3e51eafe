"""Nothing ``train`` is given destroys work: the run folder is claimed, and every input and a
resume are checked, before any model or data is loaded; a refusal changes no byte."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest

from vlmtune.training.train import train
from vlmtune.utils.config import ConfigError
from vlmtune.utils.errors import UserError
from vlmtune.utils.outputs import MARKER, OutputError, read_marker


def _snapshot(root: Path) -> dict[str, str]:
    """Every file under ``root`` (or ``root`` itself) by relative path -> sha256 of its bytes."""
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def test_an_out_that_is_a_file_or_a_foreign_folder_is_refused_before_any_work(
    tiny_inputs, tmp_path, count_models
):
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    with pytest.raises(OutputError, match=r"notes\.txt.* is a file"):
        train(tiny_inputs.config(notes))
    with pytest.raises(OutputError, match=r"notes\.txt' is a file, not a folder"):
        train(tiny_inputs.config(notes / "run"))
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "holiday.jpg").write_bytes(b"jpeg")
    with pytest.raises(OutputError, match=r"holiday\.jpg.*--overwrite"):
        train(tiny_inputs.config(foreign))
    assert count_models == [], "refused before the model was loaded"
    assert notes.read_text() == "mine" and sorted(p.name for p in foreign.iterdir()) == [
        "holiday.jpg"
    ]

    result = train(tiny_inputs.config(foreign, max_steps=1, overwrite=True))
    assert result.model_dir is not None and (foreign / "holiday.jpg").read_bytes() == b"jpeg"
    assert read_marker(foreign)["verb"] == "train"


@pytest.mark.parametrize("which", ["checkpoint", "data"])
def test_the_base_model_and_the_dataset_are_never_the_run_folder(tiny_inputs, which, count_models):
    target = getattr(tiny_inputs, which)
    before = _snapshot(target)
    label = "the base model" if which == "checkpoint" else "the dataset"
    for overwrite in (False, True):
        with pytest.raises(OutputError, match=f"is {label}.*even with --overwrite"):
            train(tiny_inputs.config(target, overwrite=overwrite))
    # the snapshot holds every file, the folder's own marker (init-model's, prepare's) included
    assert _snapshot(target) == before and count_models == []
    assert (read_marker(target) or {}).get("verb") != "train"


def _damaged_model(tiny_inputs, tmp_path: Path, damage: str) -> Path:
    folder = tmp_path / f"model-{damage}"
    shutil.copytree(tiny_inputs.checkpoint, folder)
    weights = folder / "model.safetensors"
    if damage == "no-weights":
        weights.unlink()
    elif damage == "truncated":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif damage == "adapter":
        (folder / "adapter_config.json").write_text("{}")
    elif damage == "no-config":
        (folder / "config.json").unlink()
    return folder


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("missing", r"model\.path \(--model\): .* does not exist"),
        (
            "no-weights",
            r"model\.path \(--model\): .* has no weights: model\.safetensors is missing",
        ),
        (
            "truncated",
            r"model\.path \(--model\): model\.safetensors in .* is truncated \(\d+ of \d+ bytes\); re-copy",
        ),
        ("adapter", r"is a LoRA adapter.*vlmtune merge"),
        (
            "no-config",
            r"model\.path \(--model\): .* is not a model folder: config\.json is missing",
        ),
    ],
)
def test_a_model_folder_that_cannot_be_trained_is_named_before_any_work(
    tiny_inputs, tmp_path, damage, message, count_models
):
    config = tiny_inputs.config(tmp_path / "run")
    config.model.path = (
        tmp_path / "nowhere"
        if damage == "missing"
        else _damaged_model(tiny_inputs, tmp_path, damage)
    )
    with pytest.raises(UserError, match=message):
        train(config)
    assert count_models == [] and not (tmp_path / "run").exists(), "nothing loaded, nothing written"


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ({"path": "nowhere"}, r"data\.path \(--data\): .* does not exist.*vlmtune prepare"),
        ({"path": "file"}, r"data\.path \(--data\): .* is a file"),
        ({"path": "empty"}, r"not a prepared dataset: dataset\.parquet is missing"),
        ({"train_split": "training"}, r"data\.train_split='training'.*has .*test, train, val"),
        ({"eval_split": "dev"}, r"data\.eval_split='dev'.*train\.eval_steps=null"),
    ],
)
def test_a_dataset_or_split_that_cannot_be_read_is_named_before_any_work(
    tiny_inputs, tmp_path, setting, message, count_models
):
    config = tiny_inputs.config(tmp_path / "run", eval_steps=2)
    (tmp_path / "file").write_text("x")
    (tmp_path / "empty").mkdir()
    for key, value in setting.items():
        setattr(config.data, key, tmp_path / value if key == "path" else value)
    with pytest.raises(ConfigError, match=message):
        train(config)
    assert count_models == [] and not (tmp_path / "run").exists()


def test_a_resume_that_changes_what_trains_is_refused_and_the_run_is_untouched(
    tiny_inputs, tmp_path, count_models
):
    run = tmp_path / "run"
    train(tiny_inputs.config(run, max_steps=2, save_steps=2))
    before = _snapshot(run)
    count_models.clear()
    changes = [
        ({"mode": "full"}, r"train\.mode: .* trained with lora, this command asks for full; .*--mode lora"),
        ({"lora": 8}, r"lora\.r: .* trained with 16, this command asks for 8; .*resume with lora\.r=16"),
        ({"model": "other"}, r"model\.path: .*resume with --model "),
    ]  # fmt: skip
    for change, message in changes:
        config = tiny_inputs.config(run, max_steps=4, save_steps=2, resume="auto")
        config.train.mode = change.get("mode", config.train.mode)
        config.lora.r = change.get("lora", config.lora.r)
        if "model" in change:
            config.model.path = shutil.copytree(tiny_inputs.checkpoint, tmp_path / "other")
        with pytest.raises(ConfigError, match=message):
            train(config)
    assert _snapshot(run) == before, "config.yaml and every other file stay byte-identical"
    assert count_models == []

    # a run written before markers existed is still recognised as a run, and resumes
    (run / MARKER).unlink()
    resumed = train(tiny_inputs.config(run, max_steps=4, save_steps=2, resume="auto"))
    assert resumed.summary["global_step"] == 4 and read_marker(run)["verb"] == "train"
