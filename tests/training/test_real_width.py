"""The real width in the suite: Phi-3-vision-128k-instruct's own configuration at reduced depth.

The hub's ``config.json`` and ``preprocessor_config.json`` (``../shared/golden/phi3v/hub``) with
the decoder cut to 1 layer and CLIP ViT-L/14-336 to 2 layers, everything else real: hidden
3072, 32 heads, MLP 8192, the 32,064-token vocabulary, LongRoPE, CLIP width 1024 at 336 px
(144 tokens a crop), the 4096 -> 3072 projector. Random weights. Image-token counts of real
photo sizes equal the official formula; one LoRA step (decoder and projector adapters) with
gradient checkpointing trains at ``num_crops`` 4 and 16 (757 and 2,509 image tokens); ``merge``
writes sharded safetensors that reload strictly with the adapted model's logits.

The model is 359M parameters (1.4 GB in float32), written and read twice. On 2 idle cores the
slow test takes about a minute; on a loaded machine several.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from accelerate import init_empty_weights
from PIL import Image

from vlmtune.models.phi3v import Phi3VConfig, Phi3VForCausalLM, Phi3VProcessor
from vlmtune.training.args import LoraArgs, TrainArgs
from vlmtune.training.build import apply_training_mode
from vlmtune.training.merge import MergeArgs, merge

REPO = Path(__file__).resolve().parents[2]
# real photo sizes (width, height): phone portrait and landscape, DSLR 3:2, 4:5 product shot,
# square, 16:9, a tall banner
PHOTOS = [(3024, 4032), (4032, 3024), (1500, 1000), (1080, 1350), (1200, 1200), (1920, 1080),
          (600, 1800)]  # fmt: skip
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


@pytest.fixture(scope="module")
def golden() -> Path:
    folder = Path(os.environ.get("VLMTUNE_GOLDEN_DIR") or REPO.parent / "shared/golden/phi3v")
    if not (folder / "hub" / "config.json").is_file():
        reason = "Phi-3-V hub files not found (VLMTUNE_GOLDEN_DIR or ../shared/golden/phi3v)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    return folder


@pytest.fixture(scope="module")
def base_dir(golden, tmp_path_factory) -> Path:
    """A folder with the hub's preprocessor config and the real tokenizer (model added later)."""
    folder = tmp_path_factory.mktemp("real-width") / "base"
    folder.mkdir()
    (folder / "preprocessor_config.json").symlink_to(golden / "hub" / "preprocessor_config.json")
    for name in TOKENIZER_FILES:
        (folder / name).symlink_to(golden / "checkpoint" / name)
    return folder


def real_config(golden: Path, decoder_layers: int = 1, clip_layers: int = 2) -> Phi3VConfig:
    config = Phi3VConfig.from_pretrained(golden / "hub")
    config._attn_implementation = "sdpa"  # the hub's says flash_attention_2 (CUDA only)
    config.num_hidden_layers = decoder_layers
    config.img_processor = {
        **config.img_processor,
        "vision_config": {"num_hidden_layers": clip_layers},
    }
    return config


def random_model(config: Phi3VConfig, seed: int = 0) -> Phi3VForCausalLM:
    """The model with random weights (normal, std 0.02; norms 1, biases 0), drawn in one pass
    into parameters built empty (transformers' per-module init takes half a minute here)."""
    with init_empty_weights(include_buffers=False):
        model = Phi3VForCausalLM(config)
    g = torch.Generator().manual_seed(seed)
    state = {}
    for name, param in model.state_dict().items():
        if not param.is_meta:  # buffers, built for real
            state[name] = param
        elif param.ndim == 1 and "bias" in name:
            state[name] = torch.zeros(param.shape)
        elif param.ndim == 1 and "norm" in name:
            state[name] = torch.ones(param.shape)
        else:
            state[name] = torch.randn(param.shape, generator=g) * 0.02
    model.load_state_dict(state, strict=True, assign=True)
    return model


def _official_tokens(image_size: torch.Tensor) -> int:
    h, w = (int(x) // 336 for x in image_size)
    return (h * w + 1) * 144 + 1 + (h + 1) * 12


def _prompt(processor: Phi3VProcessor) -> str:
    return "<|user|>\n<|image_1|>\nWhat is shown in this image?<|end|>\n<|assistant|>\n"


@pytest.mark.parametrize("num_crops", [4, 16])
def test_real_photo_sizes_get_the_official_image_token_counts(base_dir, num_crops):
    processor = Phi3VProcessor.from_pretrained(base_dir, num_crops=num_crops)
    assert processor.image_processor.crop_size == 336
    seen = set()
    for width, height in PHOTOS:
        inputs = processor(
            text=[_prompt(processor)], images=[[Image.new("RGB", (width, height))]],
            return_tensors="pt",
        )  # fmt: skip
        size = inputs["image_sizes"][0]
        h, w = (int(x) // 336 for x in size)
        assert h * w <= num_crops and inputs["pixel_values"].shape[1] == num_crops + 1
        count = int((inputs["input_ids"] < 0).sum())
        assert (
            count
            == _official_tokens(size)
            == processor.image_processor.num_tokens_for_size(width, height)
        ), (width, height)
        seen.add(count)
    assert len(seen) >= 2  # the sizes span several crop grids


@pytest.mark.slow
def test_real_width_lora_step_merge_and_strict_reload(golden, base_dir, tmp_path):
    config = real_config(golden)
    assert (config.hidden_size, config.vocab_size, config.intermediate_size) == (3072, 32064, 8192)
    vision = config.vision_config
    assert (vision.hidden_size, vision.image_size, vision.patch_size) == (1024, 336, 14)
    assert config.rope_parameters["rope_type"] == "longrope" and config.tokens_per_crop == 144
    base = random_model(config)
    base.save_pretrained(base_dir)
    base.config._name_or_path = str(base_dir)  # the adapter's base_model_name_or_path
    base.config.use_cache = False
    lora = LoraArgs(r=4, alpha=8, dropout=0.0, projector=["all"])
    model = apply_training_mode(base, TrainArgs(mode="lora"), lora)
    model.activation_checkpointing_enable({"use_reentrant": False})
    model.train()
    trained = {n: p for n, p in model.named_parameters() if p.requires_grad}
    optimizer = torch.optim.AdamW(trained.values(), lr=1e-2)
    photo = Image.new("RGB", (1080, 1350), (200, 120, 40))
    for num_crops, tokens in ((4, 757), (16, 2509)):
        processor = Phi3VProcessor.from_pretrained(base_dir, num_crops=num_crops)
        batch = processor(text=[_prompt(processor) + "Product: scarf<|end|>"], images=[[photo]],
                          return_tensors="pt")  # fmt: skip
        assert int((batch["input_ids"] < 0).sum()) == tokens
        labels = batch["input_ids"].clone()
        labels[:, :-6] = -100
        before = {n: p.detach().clone() for n, p in trained.items()}
        loss = model(**batch, labels=labels).loss
        loss.backward()
        assert torch.isfinite(loss)
        # B starts at zero, so A gets no gradient in the first step
        grads = {n: p.grad for n, p in trained.items() if "lora_B" in n}
        assert all(g is not None and g.abs().sum() > 0 for g in grads.values())
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        moved = {n for n, p in trained.items() if not torch.equal(before[n], p)}
        assert {n for n in trained if "lora_B" in n} <= moved
    assert any("img_projection" in n for n in trained) and any("qkv_proj" in n for n in trained)

    adapter = tmp_path / "adapter"
    model.save_pretrained(adapter)
    Phi3VProcessor.from_pretrained(base_dir).save_pretrained(adapter)
    merged = merge(MergeArgs(run=adapter, out=tmp_path / "merged", max_shard_size="500MB")).path
    index = json.loads((merged / "model.safetensors.index.json").read_text())
    shards = set(index["weight_map"].values())
    assert len(shards) >= 3 and all((merged / s).stat().st_size <= 500e6 for s in shards)
    reloaded = Phi3VForCausalLM.from_pretrained(merged)  # strict, through the key table
    model.eval()
    processor = Phi3VProcessor.from_pretrained(base_dir, num_crops=1)  # 313 image tokens
    batch = processor(text=[_prompt(processor)], images=[[photo]], return_tensors="pt")
    with torch.no_grad():
        expected = model(**batch).logits
        got = reloaded(**batch).logits
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
