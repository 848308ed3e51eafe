"""init-model: a small Phi-3-V saved in the official layout with a catalog-trained tokenizer."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image
from safetensors import safe_open

from vlmtune.data.prompts import PromptTemplate
from vlmtune.models.phi3v import Phi3VForCausalLM, Phi3VProcessor
from vlmtune.training.init_model import PHI3_SPECIAL_TOKENS, InitModelArgs, init_model


def test_checkpoint_has_the_official_layout(tiny_inputs):
    folder = tiny_inputs.checkpoint
    names = {p.name for p in folder.iterdir()}
    assert {
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "preprocessor_config.json",
    } <= names
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "phi3_v"
    assert config["rope_scaling"]["type"] in {"su", "longrope"}
    assert config["img_processor"]["vision_config"]["image_size"] == 56
    with safe_open(folder / "model.safetensors", "pt") as handle:
        keys = set(handle.keys())
    assert (
        "model.vision_embed_tokens.img_processor.vision_model.embeddings.patch_embedding.weight"
        in keys
    )
    assert "model.vision_embed_tokens.glb_GN" in keys and "lm_head.weight" in keys
    assert not any(k.startswith("model.vision_embed_tokens.wte") for k in keys)


def test_tokenizer_carries_phi3_tokens_and_round_trips_listings(tiny_inputs):
    processor = Phi3VProcessor.from_pretrained(tiny_inputs.checkpoint)
    tok = processor.tokenizer
    for token in PHI3_SPECIAL_TOKENS:
        assert tok.convert_tokens_to_ids(token) != tok.unk_token_id or token == "<unk>", token
    assert tok.bos_token == "<s>" and tok.eos_token == "<|endoftext|>"
    prompt = PromptTemplate().prompt(tok)
    assert prompt == "<|user|>\n<|image_1|>\nWhat is shown in this image?<|end|>\n<|assistant|>\n"
    listing = "Product: Check Cashmere Scarf, Category: SCARVES, Full Price: 1,290"
    ids = tok(listing + "<|end|>", add_special_tokens=False).input_ids
    assert ids[-1] == tok.convert_tokens_to_ids("<|end|>")
    assert len(ids) < len(listing) // 2, "the BPE trained on the catalog should compress listings"
    assert tok.decode(ids, skip_special_tokens=True) == listing
    assert tok("x").input_ids[0] == tok.bos_token_id


def test_model_loads_back_and_generation_config_stops_at_end(tiny_inputs):
    model = Phi3VForCausalLM.from_pretrained(tiny_inputs.checkpoint)
    tok = Phi3VProcessor.from_pretrained(tiny_inputs.checkpoint).tokenizer
    assert model.config.vocab_size % 64 == 0 and model.config.vocab_size >= len(tok)
    eos = model.generation_config.eos_token_id
    assert tok.convert_tokens_to_ids("<|end|>") in eos and tok.eos_token_id in eos


def test_same_seed_same_weights_other_seed_differs(tiny_inputs, tmp_path):
    def build(seed, name):
        return init_model(
            InitModelArgs(
                data=tiny_inputs.data,
                out=tmp_path / name,
                seed=seed,
                vocab_size=400,
                hidden_size=32,
                num_hidden_layers=1,
                num_attention_heads=4,
                intermediate_size=64,
                vision_hidden_size=32,
                vision_intermediate_size=64,
                crop_size=56,
            )
        )

    a, b, c = build(0, "a"), build(0, "b"), build(1, "c")
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()
    assert (a / "tokenizer.json").read_bytes() == (b / "tokenizer.json").read_bytes()
    wa = Phi3VForCausalLM.from_pretrained(a).lm_head.weight
    wc = Phi3VForCausalLM.from_pretrained(c).lm_head.weight
    assert not torch.equal(wa, wc)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"hidden_size": 30, "num_attention_heads": 4}, "not divisible"),
        ({"crop_size": 42}, "even whole number"),
        ({"vocab_size": 100}, "below the 256 byte symbols"),
    ],
)
def test_bad_sizes_are_refused(tmp_path, override, message):
    with pytest.raises(ValueError, match=message):
        InitModelArgs(data=tmp_path, out=tmp_path / "m", **override)


def test_patch_size_reaches_the_processor_and_the_model_agrees(tiny_inputs, tmp_path):
    folder = init_model(
        InitModelArgs(
            data=tiny_inputs.data,
            out=tmp_path / "p7",
            vocab_size=400,
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=4,
            intermediate_size=64,
            vision_hidden_size=32,
            vision_intermediate_size=64,
            crop_size=56,
            patch_size=7,  # 8x8 patches -> 4x4 = 16 tokens per crop (patch 14 would give 4)
        )
    )
    processor = Phi3VProcessor.from_pretrained(folder)
    assert processor.image_processor.tokens_per_crop == 16
    model = Phi3VForCausalLM.from_pretrained(folder).eval()
    image = next((tiny_inputs.data / "images").iterdir())
    batch = processor(text="<|user|>\n<|image_1|>\nlist<|end|>", images=[Image.open(image)])
    with torch.no_grad():
        logits = model(**{k: v for k, v in batch.items() if k != "num_img_tokens"}).logits
    assert logits.shape[:2] == batch["input_ids"].shape
