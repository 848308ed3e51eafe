"""Samples that break at training time are skipped and counted; too many stop the run; length grouping."""

from __future__ import annotations

import shutil

import pytest
from transformers.trainer_pt_utils import LengthGroupedSampler

from vlmtune.data.dataset import BadImagesError
from vlmtune.data.prepared import load_prepared
from vlmtune.data.prompts import PromptTemplate
from vlmtune.evaluation.evaluate import make_generation_eval
from vlmtune.inference.args import GenerationArgs
from vlmtune.training.callbacks import read_metrics
from vlmtune.training.train import _setup, train


def _truncated_copy(tiny_inputs, tmp_path, split: str):
    """A copy of the dataset where the first image of ``split`` keeps its header but loses its
    pixels: (folder, that split, the truncated file)."""
    data = tmp_path / "data"
    shutil.copytree(tiny_inputs.data, data)
    prepared = load_prepared(data, split)
    victim = prepared.image_paths()[0]
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    return data, prepared, victim


@pytest.fixture()
def truncated_data(tiny_inputs, tmp_path):
    """A copy of the dataset where one training image is truncated: (folder, its id, the file)."""
    data, prepared, victim = _truncated_copy(tiny_inputs, tmp_path, "train")
    return data, str(prepared.frame.iloc[0][prepared.columns.id]), victim


def test_an_unreadable_image_is_skipped_and_counted(tiny_inputs, truncated_data, tmp_path):
    data, victim_id, _ = truncated_data
    config = tiny_inputs.config(
        tmp_path / "run", max_steps=9, save_steps=100
    )  # 9 x 4 > 28 rows: sees them all
    config.data.path = data
    config.data.max_bad_image_fraction = 0.1
    result = train(config)
    assert result.summary["skipped_during_training"] == {"bad_image": 1}
    assert result.summary["left_out_before_training"] == {}, (
        "the header was fine: found only when decoded"
    )
    [listed] = result.summary["skipped_samples"]
    assert listed["sample_id"] == victim_id and listed["reason"] == "bad_image"


def test_too_many_unreadable_images_stop_the_run_listing_them(
    tiny_inputs, truncated_data, tmp_path
):
    data, _, victim = truncated_data
    config = tiny_inputs.config(tmp_path / "run", max_steps=9, save_steps=100)
    config.data.path = data
    config.data.max_bad_image_fraction = 0.0
    with pytest.raises(BadImagesError, match=str(victim.name)):
        train(config)


def test_group_by_length_uses_the_datasets_exact_lengths(tiny_inputs, tmp_path):
    config = tiny_inputs.config(tmp_path / "run", eval_steps=2)
    config.data.group_by_length = True
    trainer, _ = _setup(config, tmp_path / "run", None)
    sampler = trainer._get_train_sampler()
    assert isinstance(sampler, LengthGroupedSampler)
    assert sampler.lengths == trainer.train_dataset.lengths() and len(set(sampler.lengths)) > 1
    assert isinstance(trainer._get_eval_sampler(trainer.eval_dataset), LengthGroupedSampler)


def test_an_unreadable_validation_image_does_not_stop_training(tiny_inputs, tmp_path):
    data, val, _ = _truncated_copy(tiny_inputs, tmp_path, "val")
    config = tiny_inputs.config(tmp_path / "run", max_steps=2, eval_steps=2, save_steps=2)
    config.data.path = data
    generation = make_generation_eval(
        val, PromptTemplate(), GenerationArgs(max_new_tokens=4, batch_size=4), limit=4
    )
    result = train(config, generation)
    assert result.model_dir is not None and (tmp_path / "run" / "checkpoint-2").is_dir()
    [evaluation] = [e for e in read_metrics(tmp_path / "run" / "metrics.jsonl") if "eval_n" in e]
    assert evaluation["eval_skipped_images"] == 1 and evaluation["eval_n"] == 3


def test_bad_images_before_and_during_training_count_against_one_limit(
    tiny_inputs, truncated_data, tmp_path
):
    data, _, victim = truncated_data
    missing = next(p for p in load_prepared(data, "train").image_paths() if p != victim)
    missing.unlink()  # left out before training; the truncated one is found while training
    rows = len(load_prepared(data, "train"))
    config = tiny_inputs.config(tmp_path / "run", max_steps=9, save_steps=100)
    config.data.path = data
    config.data.max_bad_image_fraction = 1.5 / rows  # one bad image passes, two do not
    with pytest.raises(BadImagesError, match=rf"2 of {rows} training images") as stopped:
        train(config)
    assert missing.name in str(stopped.value) and victim.name in str(stopped.value)
