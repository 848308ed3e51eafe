"""Packing is exact: packed rows give the unpacked loss and gradients, in every training mode.

Samples of very different lengths, one of them longer than Phi-3's
``original_max_position_embeddings`` (4,096: LongRoPE's long factors), and a row of short
samples that is itself longer than 4,096 tokens (each keeps the short factors). The reference is
each sample alone (batch size 1), the loss normalised by the labelled tokens of the whole batch,
as the Trainer does with ``num_items_in_batch``.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from safetensors.torch import load_file

from vlmtune.data.dataset import IGNORE_INDEX
from vlmtune.data.packing import PackingCollator, pack_lengths, pack_row
from vlmtune.models.phi3v import build_tiny_phi3v, tiny_phi3v_config
from vlmtune.training.args import DataArgs, LoraArgs, TrainArgs, TrainConfig
from vlmtune.training.build import apply_training_mode
from vlmtune.training.callbacks import read_metrics
from vlmtune.training.packing import rope_switch_length
from vlmtune.training.preflight import check_backends
from vlmtune.training.train import train
from vlmtune.utils.config import ConfigError

CROP = 56  # tiny crops: 4 tokens per crop, (h*w + 1) * 4 + 1 + (h + 1) * 2 per image
NUM_CROPS = 6


def _image_tokens(h: int, w: int) -> int:
    return (h * w + 1) * 4 + 1 + (h + 1) * 2


def _sample(length: int, grids: list[tuple[int, int]], answer: int, seed: int) -> dict:
    """A sample shaped like the dataset's: text, one placeholder run per image, answer labelled."""
    g = torch.Generator().manual_seed(seed)
    image_runs = [torch.full((_image_tokens(h, w),), -(k + 1)) for k, (h, w) in enumerate(grids)]
    text = length - answer - sum(r.numel() for r in image_runs)
    assert text >= 2 * len(grids) + 1
    pieces, cut = [], text // (len(grids) + 1)
    for run in image_runs:
        pieces += [torch.randint(3, 500, (cut,), generator=g), run]
    pieces.append(torch.randint(3, 500, (text - cut * len(grids) + answer,), generator=g))
    ids = torch.cat(pieces).long()
    labels = torch.full_like(ids, IGNORE_INDEX)
    labels[-answer:] = ids[-answer:]
    pixels = torch.randn(len(grids), NUM_CROPS + 1, 3, CROP, CROP, generator=g)
    sizes = torch.tensor([[h * CROP, w * CROP] for h, w in grids])
    return {"input_ids": ids, "labels": labels, "pixel_values": pixels, "image_sizes": sizes}


def _samples() -> list[dict]:
    return [
        _sample(4300, [(2, 3)], answer=900, seed=1),  # > 4096: long factors
        _sample(2500, [(1, 2)], answer=400, seed=2),
        _sample(1500, [(2, 2), (1, 1)], answer=200, seed=3),  # two images
        _sample(300, [(1, 1)], answer=40, seed=4),
        _sample(90, [(1, 2)], answer=12, seed=5),
        _sample(40, [(1, 1)], answer=5, seed=6),
    ]


def _model(mode: str, attn: str = "sdpa"):
    config = tiny_phi3v_config(vocab_size=512, pad_token_id=0, eos_token_id=2)
    config._attn_implementation = attn
    model = build_tiny_phi3v(config, seed=0)
    model.config.use_cache = False
    lora = LoraArgs(dropout=0.0, vision_tower=["q_proj", "fc1"], projector=["all"])
    model = apply_training_mode(model, TrainArgs(mode=mode), lora)
    with torch.no_grad():  # LoRA's B starts at zero, which would leave A without a gradient
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.05, generator=torch.Generator().manual_seed(len(name)))
    return model.train()


def _labelled(samples: list[dict]) -> int:
    return sum(int((s["labels"][1:] != IGNORE_INDEX).sum()) for s in samples)


def _grads(model) -> dict[str, torch.Tensor]:
    # the last CLIP layer is not used (features come from layer -2): it has no gradient
    out = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    unused = {n for n, p in model.named_parameters() if p.requires_grad and p.grad is None}
    assert all("encoder.layers.1." in n or "post_layernorm" in n for n in unused), unused
    model.zero_grad(set_to_none=True)
    return out


def _unpacked(model, samples: list[dict]) -> tuple[float, dict[str, torch.Tensor]]:
    items, total = _labelled(samples), 0.0
    for s in samples:
        loss = model(
            input_ids=s["input_ids"][None],
            labels=s["labels"][None],
            pixel_values=s["pixel_values"],
            image_sizes=s["image_sizes"],
            num_items_in_batch=items,
        ).loss
        loss.backward()
        total += loss.item()
    return total, _grads(model)


def _packed(model, samples: list[dict], rows: list[list[int]]):
    items, total = _labelled(samples), 0.0
    for row in rows:
        batch = pack_row([samples[i] for i in row])
        loss = model(**batch, num_items_in_batch=items).loss
        loss.backward()
        total += loss.item()
    return total, _grads(model)


def _assert_same(packed, unpacked) -> None:
    assert packed[0] == pytest.approx(unpacked[0], rel=1e-5)
    assert packed[1].keys() == unpacked[1].keys()
    for name, grad in unpacked[1].items():
        torch.testing.assert_close(packed[1][name], grad, rtol=1e-5, atol=1e-5, msg=name)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["lora", "full", "frozen_vision"])
def test_packed_loss_and_gradients_equal_unpacked(mode):
    model, samples = _model(mode), _samples()
    limit = rope_switch_length(model)
    assert limit == 4096
    rows = pack_lengths([len(s["input_ids"]) for s in samples], 4800, separate_above=limit)
    assert [sorted(r) for r in rows] == [[0], [1, 2, 3, 4, 5]]
    assert sum(len(samples[i]["input_ids"]) for i in rows[1]) > limit  # short samples, long row
    _assert_same(_packed(model, samples, rows), _unpacked(model, samples))


@pytest.mark.slow
def test_a_long_sample_packed_with_short_ones_would_change_their_rope_factors():
    """The control: the separation above 4,096 tokens is what keeps the short factors."""
    model, samples = _model("full"), _samples()
    pair = [samples[0], samples[3]]  # 4,300 and 300 tokens
    short = pair[1]
    with torch.no_grad():
        alone = model(**pack_row([short])).logits[0]
        mixed = model(**pack_row(pair)).logits[0, -len(short["input_ids"]) :]
        unpacked = model(
            input_ids=short["input_ids"][None],
            pixel_values=short["pixel_values"],
            image_sizes=short["image_sizes"],
        ).logits[0]
    torch.testing.assert_close(alone, unpacked, rtol=1e-5, atol=1e-5)
    assert (mixed - unpacked).abs().max() > 1e-3  # long factors: not the sample's own logits
    _assert_same(_packed(model, pair, [[0], [1]]), _unpacked(model, pair))


@pytest.mark.parametrize("use_cache", [False, True])
def test_packed_eager_attention_equals_unpacked(use_cache):
    """Eager attention takes the same block-diagonal mask (short samples: eager's T x T weights);
    a config asking for a KV cache (which would turn transformers' packed mask off) changes nothing."""
    model, samples = _model("full", attn="eager"), _samples()[3:]
    model.config.use_cache = use_cache
    rows = pack_lengths([len(s["input_ids"]) for s in samples], 1000)
    assert rows == [[0, 1, 2]]
    _assert_same(_packed(model, samples, rows), _unpacked(model, samples))


def test_a_packed_row_restarts_positions_masks_first_labels_and_renumbers_images():
    samples = _samples()[2:5]
    row = pack_row(samples)
    lengths = [len(s["input_ids"]) for s in samples]
    starts = [0, lengths[0], lengths[0] + lengths[1]]
    assert row["input_ids"].shape == (1, sum(lengths))
    assert row["position_ids"][0, starts].tolist() == [0, 0, 0]
    assert row["position_ids"][0, starts[1] - 1].item() == lengths[0] - 1
    assert (row["labels"][0, starts] == IGNORE_INDEX).all()
    ids, labels = row["input_ids"][0], row["labels"][0]
    assert (labels[ids < 0] == IGNORE_INDEX).all()
    runs = [int(v) for v in torch.unique_consecutive(ids[ids < 0])]
    assert runs == [-1, -2, -3, -4]  # sample 0 has two images, then one each
    assert row["pixel_values"].shape[0] == row["image_sizes"].shape[0] == 4
    assert "attention_mask" not in row


def test_the_collator_pads_evaluation_batches_and_drops_skipped_samples_from_a_row():
    samples = _samples()[3:]
    for i, s in enumerate(samples):
        s.update(sample_id=f"s{i}", image_path=f"{i}.png")
    collate = PackingCollator(pad_token_id=0)
    padded = collate(samples)
    assert padded["input_ids"].shape == (3, 300) and "attention_mask" in padded
    skipped = {"skipped": object()}
    packed = collate([{"pack": [samples[0], skipped, samples[2]]}])
    assert packed["input_ids"].shape == (1, 340) and packed["sample_ids"] == ["s0", "s2"]
    assert packed["skipped"] == [skipped["skipped"]]


def _packed_config(tiny_inputs, out, **train):
    config = tiny_inputs.config(out, per_device_batch_size=1, **train)
    config.data = dataclasses.replace(
        config.data, max_length=256, packing=True, pack_max_tokens=420
    )
    return config


def _losses(run) -> dict[int, float]:
    return {e["step"]: e["loss"] for e in read_metrics(run / "metrics.jsonl") if "loss" in e}


def test_a_packed_run_trains_and_resumes_exactly(tiny_inputs, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    result = train(_packed_config(tiny_inputs, one, max_steps=4, save_steps=2))
    packing = result.summary["packing"]
    assert packing["samples_per_row"] > 1 and packing["pad_fraction"] < 0.25
    train(_packed_config(tiny_inputs, two, max_steps=2, save_steps=2))
    train(_packed_config(tiny_inputs, two, max_steps=4, save_steps=2, resume="auto"))
    assert sorted(_losses(two)) == [1, 2, 3, 4]
    for step, loss in _losses(one).items():
        assert _losses(two)[step] == pytest.approx(loss, abs=1e-6), step
    a = load_file(str(one / "model" / "adapter_model.safetensors"))
    b = load_file(str(two / "model" / "adapter_model.safetensors"))
    for key in a:
        torch.testing.assert_close(b[key], a[key], atol=1e-6, rtol=0, msg=key)


def test_packing_settings_are_checked_before_a_run(tiny_inputs, tmp_path):
    with pytest.raises(ValueError, match="per_device_batch_size=1"):
        config = tiny_inputs.config(tmp_path, per_device_batch_size=4)
        TrainConfig(model=config.model, data=DataArgs(packing=True), train=config.train)
    with pytest.raises(ValueError, match="pack_max_tokens"):
        DataArgs(packing=True, max_length=4096, pack_max_tokens=2048)
    if not torch.cuda.is_available():  # the flash kernel (varlen for packed rows) needs CUDA
        config = tiny_inputs.config(tmp_path, per_device_batch_size=1)
        config.model.attn_implementation = "flash_attention_2"
        with pytest.raises(ConfigError, match="flash-attn package and a CUDA GPU"):
            check_backends(config)
