"""Training examples and batches: what is trained on, dynamic padding, skipped samples."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from PIL import Image

from tiny_model import tiny_sizes
from vlmtune.data.collator import VisionSFTCollator
from vlmtune.data.dataset import (
    IGNORE_INDEX,
    BadImagesError,
    VisionSFTDataset,
    drop_bad_images,
)
from vlmtune.data.prepare import PrepareArgs, prepare_dataset
from vlmtune.data.prepared import load_prepared
from vlmtune.data.prompts import END_TOKEN, PromptArgs, PromptTemplate, record_from_row
from vlmtune.data.synthetic.generate import SynthArgs, generate_catalog
from vlmtune.models.phi3v import Phi3VProcessor
from vlmtune.training.init_model import InitModelArgs, init_model


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("dataset")
    csv = generate_catalog(
        SynthArgs(
            out=root / "synth", n=12, seed=1, image_size="112x140", broken_frac=0.0, workers=1
        )
    )
    data = root / "data"
    prepare_dataset(
        PrepareArgs(source=str(csv), out=data, split="1.0,0.0,0.0", progress=False, concurrency=2)
    )
    ckpt = init_model(
        InitModelArgs(data=data, out=root / "ckpt", **tiny_sizes(num_hidden_layers=1, num_crops=4))
    )
    return data, Phi3VProcessor.from_pretrained(ckpt)


def _dataset(
    data: Path, processor, max_length: int = 4096, style: str = "chat"
) -> VisionSFTDataset:
    template = PromptTemplate(PromptArgs(style=style))
    return VisionSFTDataset(load_prepared(data, "train"), processor, template, max_length)


@pytest.mark.parametrize("style", ["chat", "seed"])
def test_only_the_answer_and_its_end_token_are_labelled(inputs, style):
    data, processor = inputs
    ds = _dataset(data, processor, style=style)
    ex = ds[0]
    ids, labels = ex["input_ids"], ex["labels"]
    assert ids.shape == labels.shape and ids.dtype == labels.dtype == torch.long
    record = record_from_row(ds.frame.iloc[0], ds.columns)
    answer = PromptTemplate(PromptArgs(style=style)).answer(record) + END_TOKEN
    answer_ids = processor.tokenizer(answer, add_special_tokens=False)["input_ids"]
    n = len(answer_ids)
    assert labels[-n:].tolist() == answer_ids == ids[-n:].tolist()
    assert (labels[:-n] == IGNORE_INDEX).all(), "prompt and image placeholders are not trained on"
    assert processor.tokenizer.decode(labels[-n:].tolist()).endswith(END_TOKEN)
    assert int((ids < 0).sum()) == processor.num_image_tokens(Image.open(ex["image_path"]))
    assert not ((labels < 0) & (labels != IGNORE_INDEX)).any(), (
        "no placeholder id reaches the labels"
    )
    assert ex["pixel_values"].shape[0] == 1 and ex["image_sizes"].shape == (1, 2)
    # the prompt part is exactly what the processor gives for the prompt alone (what generation sees)
    prompt = processor(
        text=[ds.template.prompt(processor.tokenizer)], images=[[Image.open(ex["image_path"])]]
    )
    assert ids[:-n].tolist() == prompt["input_ids"][0].tolist()


def test_collator_pads_to_the_longest_with_pad_id_and_ignore_index(inputs):
    data, processor = inputs
    ds = _dataset(data, processor)
    examples = [ds[i] for i in range(3)]
    examples[1] = {
        **examples[1],
        "input_ids": examples[1]["input_ids"][:-3],
        "labels": examples[1]["labels"][:-3],
    }
    pad = processor.tokenizer.pad_token_id
    batch = VisionSFTCollator(pad)(examples)
    longest = max(len(e["input_ids"]) for e in examples)
    assert (
        batch["input_ids"].shape
        == batch["labels"].shape
        == batch["attention_mask"].shape
        == (3, longest)
    )
    for row, ex in enumerate(examples):
        n = len(ex["input_ids"])
        assert batch["input_ids"][row, :n].tolist() == ex["input_ids"].tolist()
        assert batch["attention_mask"][row, :n].all() and not batch["attention_mask"][row, n:].any()
        assert (batch["input_ids"][row, n:] == pad).all() and (
            batch["labels"][row, n:] == IGNORE_INDEX
        ).all()
    assert batch["pixel_values"].shape[0] == 3 and batch["image_sizes"].shape == (3, 2)
    assert batch["sample_ids"] == [e["sample_id"] for e in examples] and batch["skipped"] == []
    left = VisionSFTCollator(pad, padding_side="left")(examples)
    assert (left["input_ids"][1, : longest - len(examples[1]["input_ids"])] == pad).all()
    assert left["input_ids"][1, -1] == examples[1]["input_ids"][-1]


def test_lengths_are_exact_without_decoding_images(inputs, tmp_path):
    data, processor = inputs
    ds = _dataset(data, processor)
    wide = tmp_path / "wide.png"
    Image.new("RGB", (300, 90), "red").save(wide)  # another aspect ratio: another image-token count
    frame = ds.frame.copy()
    frame.loc[1, ["local_image_path", "image_width", "image_height"]] = [str(wide), 300, 90]
    ds.frame = frame
    counts = ds.token_counts()
    for i in range(3):
        ex = ds[i]
        assert counts["length"][i] == len(ex["input_ids"])
        assert counts["image_tokens"][i] == int((ex["input_ids"] < 0).sum())
        assert counts["label_tokens"][i] == int((ex["labels"] != IGNORE_INDEX).sum())
    assert counts["image_tokens"][1] != counts["image_tokens"][0]


def test_over_long_and_unreadable_samples_are_skipped_not_truncated(inputs, tmp_path):
    data, processor = inputs
    ds = _dataset(data, processor)
    short = _dataset(data, processor, max_length=len(ds[0]["input_ids"]) - 1)
    skipped = short[0]["skipped"]
    assert skipped.reason == "too_long" and "max_length" in skipped.detail
    broken = tmp_path / "broken.jpg"
    good = ds.image_path(1).read_bytes()
    broken.write_bytes(good[: len(good) // 3])  # header intact, pixels truncated
    frame = ds.frame.copy()
    frame.loc[1, "local_image_path"] = str(broken)
    frame.loc[2, "local_image_path"] = str(tmp_path / "missing.jpg")
    ds.frame = frame
    batch = VisionSFTCollator(processor.tokenizer.pad_token_id)([ds[i] for i in range(4)])
    assert batch["input_ids"].shape[0] == 2 and len(batch["sample_ids"]) == 2
    assert sorted(s.reason for s in batch["skipped"]) == ["bad_image", "bad_image"]
    assert {s.sample_id for s in batch["skipped"]} == {ds.sample_id(1), ds.sample_id(2)}
    empty = VisionSFTCollator(0)([ds[2]])
    assert empty["input_ids"].numel() == 0 and len(empty["skipped"]) == 1


def test_bad_images_above_the_allowed_fraction_stop_with_the_list(inputs, tmp_path):
    data, processor = inputs
    ds = _dataset(data, processor)
    frame = ds.frame.copy()
    frame.loc[3, "local_image_path"] = str(tmp_path / "gone.jpg")
    (tmp_path / "garbage.jpg").write_bytes(b"not an image at all")
    frame.loc[5, "local_image_path"] = str(tmp_path / "garbage.jpg")
    ds.frame = frame
    with pytest.raises(
        BadImagesError,
        match=r"(?s)2 of 12 training images.*gone\.jpg: missing.*garbage\.jpg: unreadable",
    ):
        drop_bad_images(ds, max_fraction=0.1)
    kept, skipped = drop_bad_images(ds, max_fraction=0.2)
    assert len(kept) == 10 and [s.sample_id for s in skipped] == [ds.sample_id(3), ds.sample_id(5)]
    assert ds.sample_id(3) not in {kept.sample_id(i) for i in range(len(kept))}


def test_collator_rejects_a_missing_pad_id():
    with pytest.raises(ValueError, match="pad_token_id"):
        VisionSFTCollator(None)  # type: ignore[arg-type]


@pytest.mark.parametrize("style", ["chat", "seed"])
def test_with_the_real_phi3_tokenizer_a_sample_is_the_whole_conversation_tokenized(inputs, style):
    """SentencePiece writes ``Product`` after ``<|assistant|>`` but ``▁Product`` alone: the
    answer's ids must be the in-context ones, as the official processor gives them."""
    golden = Path(
        os.environ.get("VLMTUNE_GOLDEN_DIR") or Path(__file__).parents[3] / "shared/golden/phi3v"
    )
    if not (golden / "checkpoint" / "tokenizer.json").is_file():
        pytest.skip(f"the real Phi-3-V tokenizer is not at {golden}/checkpoint (golden vectors)")
    data, _ = inputs
    processor = Phi3VProcessor.from_pretrained(golden / "checkpoint", num_crops=1)
    ds = _dataset(data, processor, style=style)
    ex = ds[0]
    prompt, answer = ds.template.conversation(
        record_from_row(ds.frame.iloc[0], ds.columns), processor.tokenizer
    )
    with Image.open(ds.image_path(0)) as image:
        whole = processor(
            text=[prompt + answer], images=[[image.convert("RGB")]], return_tensors="pt"
        )
    assert torch.equal(ex["input_ids"], whole["input_ids"][0])
    target = ex["labels"][ex["labels"] != IGNORE_INDEX].tolist()
    assert processor.tokenizer.convert_ids_to_tokens(target[:1]) == ["Product"]
    assert target[-1] == processor.tokenizer.convert_tokens_to_ids(END_TOKEN) == 32007
    assert processor.tokenizer.decode(target[:-1]) == answer.removesuffix(END_TOKEN)
    assert ds.token_counts()["label_tokens"][0] == len(target)
