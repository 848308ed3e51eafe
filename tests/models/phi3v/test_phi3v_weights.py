"""Weights: official key table, strict loading by name, save -> load round trip, shards, LoRA."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from vlmtune.models.phi3v import (
    Phi3VForCausalLM,
    build_tiny_phi3v,
    lora_target_modules,
    official_key_table,
)
from vlmtune.models.phi3v.convert_phi3v_weights import WTE_KEY


@pytest.fixture()
def saved(tmp_path, tiny_model):
    tiny_model.save_pretrained(tmp_path)
    return tmp_path


def test_state_dict_keys_are_the_official_keys(tiny_model):
    table = official_key_table(tiny_model.config)
    assert set(tiny_model.state_dict()) == set(table)
    assert (
        "model.vision_embed_tokens.img_processor.vision_model.encoder.layers.1.mlp.fc2.bias"
        in table
    )
    assert "model.vision_embed_tokens.img_projection.2.weight" in table


def test_state_dict_round_trips_exactly(tiny_model):
    other = build_tiny_phi3v(vocab_size=128, pad_token_id=0, eos_token_id=2, seed=1)
    other.load_state_dict(tiny_model.state_dict(), strict=True)
    for (name, a), (_, b) in zip(
        tiny_model.state_dict().items(), other.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name


def test_save_load_round_trip_is_exact(saved, tiny_model, tiny_batch):
    files = sorted(p.name for p in saved.iterdir())
    assert files == ["config.json", "generation_config.json", "model.safetensors"]
    on_disk = load_file(saved / "model.safetensors")
    assert set(on_disk) == set(official_key_table(tiny_model.config)) and WTE_KEY not in on_disk
    config = json.loads((saved / "config.json").read_text())
    assert config["model_type"] == "phi3_v" and config["rope_scaling"]["type"] == "su"
    assert set(config["rope_scaling"]) == {"type", "short_factor", "long_factor"}
    assert config["img_processor"]["vision_config"]["image_size"] == 56
    loaded = Phi3VForCausalLM.from_pretrained(saved)
    for name, value in tiny_model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value), name
    ids = torch.tensor([tiny_batch["rows"][0]])
    kw = {
        "pixel_values": tiny_batch["pixel_values"][:1],
        "image_sizes": tiny_batch["image_sizes"][:1],
    }
    with torch.no_grad():
        torch.testing.assert_close(
            loaded(input_ids=ids, **kw).logits,
            tiny_model(input_ids=ids, **kw).logits,
            atol=0,
            rtol=0,
        )


def test_trainer_style_non_strict_reload_matches_every_key(saved, tiny_model):
    fresh = build_tiny_phi3v(vocab_size=128, pad_token_id=0, eos_token_id=2, seed=3)
    result = fresh.load_state_dict(load_file(saved / "model.safetensors"), strict=False)
    assert not result.missing_keys and not result.unexpected_keys
    assert torch.equal(fresh.lm_head.weight, tiny_model.lm_head.weight)


def test_sharded_save_loads(tmp_path, tiny_model):
    tiny_model.save_pretrained(tmp_path, max_shard_size="200KB")
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert (
        len(set(index["weight_map"].values())) > 1 and not (tmp_path / "model.safetensors").exists()
    )
    loaded = Phi3VForCausalLM.from_pretrained(tmp_path)
    assert torch.equal(loaded.model.embed_tokens.weight, tiny_model.model.embed_tokens.weight)


def test_missing_key_fails_by_name(saved):
    state = load_file(saved / "model.safetensors")
    del state["model.layers.1.mlp.down_proj.weight"]
    save_file(state, saved / "model.safetensors")
    with pytest.raises(
        ValueError, match=r"missing keys \['model\.layers\.1\.mlp\.down_proj\.weight'\]"
    ):
        Phi3VForCausalLM.from_pretrained(saved)


def test_unexpected_key_fails_by_name(saved):
    state = load_file(saved / "model.safetensors")
    state["model.layers.9.extra.weight"] = torch.zeros(2)
    save_file(state, saved / "model.safetensors")
    with pytest.raises(ValueError, match=r"unexpected keys \['model\.layers\.9\.extra\.weight'\]"):
        Phi3VForCausalLM.from_pretrained(saved)


def test_wte_duplicate_is_accepted_only_when_equal(saved, tiny_model):
    state = load_file(saved / "model.safetensors")
    state[WTE_KEY] = state["model.embed_tokens.weight"].clone()
    save_file(state, saved / "model.safetensors")
    assert torch.equal(
        Phi3VForCausalLM.from_pretrained(saved).model.embed_tokens.weight,
        tiny_model.model.embed_tokens.weight,
    )
    state[WTE_KEY] = state[WTE_KEY] + 1
    save_file(state, saved / "model.safetensors")
    with pytest.raises(ValueError, match="differs"):
        Phi3VForCausalLM.from_pretrained(saved)


def test_bf16_checkpoint_and_dtypes(saved):
    state = {k: v.to(torch.bfloat16) for k, v in load_file(saved / "model.safetensors").items()}
    save_file(state, saved / "model.safetensors")
    as_fp32 = Phi3VForCausalLM.from_pretrained(saved, torch_dtype=torch.float32)
    assert as_fp32.lm_head.weight.dtype == torch.float32
    assert torch.equal(as_fp32.lm_head.weight, state["lm_head.weight"].float())
    as_bf16 = Phi3VForCausalLM.from_pretrained(saved, dtype="bfloat16", attn_implementation="eager")
    assert (
        as_bf16.lm_head.weight.dtype == torch.bfloat16
        and as_bf16.config._attn_implementation == "eager"
    )


def test_no_pickle(tmp_path, tiny_model):
    with pytest.raises(ValueError, match="safetensors"):
        tiny_model.save_pretrained(tmp_path, safe_serialization=False)
    (tmp_path / "pytorch_model.bin").write_bytes(b"not loaded")
    tiny_model.config.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="pickle"):
        Phi3VForCausalLM.from_pretrained(tmp_path)


def test_lora_attaches_to_text_vision_and_projector(tiny_batch):
    peft = pytest.importorskip("peft")
    model = build_tiny_phi3v(vocab_size=128, pad_token_id=0, eos_token_id=2)
    config = peft.LoraConfig(
        r=4, lora_alpha=8, target_modules=lora_target_modules(), init_lora_weights=False
    )
    wrapped = peft.get_peft_model(model, config)
    from peft.tuners.lora import LoraLayer

    adapted = [name for name, module in wrapped.named_modules() if isinstance(module, LoraLayer)]
    text = [n for n in adapted if ".model.layers." in n]
    vision = [n for n in adapted if ".img_processor." in n]
    for target in ("self_attn.qkv_proj", "self_attn.o_proj", "mlp.gate_up_proj", "mlp.down_proj"):
        assert sum(n.endswith(target) for n in text) == 2, target
    for target in ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"):
        assert sum(n.endswith(target) for n in vision) == 2, target
    assert sum(n.endswith(("img_projection.0", "img_projection.2")) for n in adapted) == 2
    assert len(adapted) == len(text) + len(vision) + 2
    # training through activation checkpointing reaches the vision LoRA weights
    wrapped.train()
    base = wrapped.base_model.model
    if hasattr(base, "activation_checkpointing_enable"):  # transformers 5.2x name
        base.activation_checkpointing_enable(
            activation_checkpointing_kwargs={"use_reentrant": True}
        )
    else:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
    wrapped.enable_input_require_grads()
    ids = torch.tensor([tiny_batch["rows"][0]])
    out = wrapped(
        input_ids=ids,
        pixel_values=tiny_batch["pixel_values"][:1],
        image_sizes=tiny_batch["image_sizes"][:1],
        labels=ids.masked_fill(ids < 0, -100),
    )
    out.loss.backward()
    grads = {n: p.grad for n, p in wrapped.named_parameters() if "lora_B" in n}
    first_vision = [n for n in grads if "img_processor" in n and "layers.0.self_attn.q_proj" in n]
    assert first_vision and all(
        grads[n] is not None and grads[n].abs().sum() > 0 for n in first_vision
    )
    assert all(
        grads[n] is not None for n in grads if "img_projection" in n or ".model.layers.0." in n
    )


def test_golden_checkpoint_saves_back_with_the_official_keys(tmp_path, golden):
    model = Phi3VForCausalLM.from_pretrained(golden / "checkpoint")
    model.save_pretrained(tmp_path)
    official = load_file(golden / "checkpoint" / "model.safetensors")
    saved = load_file(tmp_path / "model.safetensors")
    assert set(saved) == set(official)
    for key, value in official.items():
        assert torch.equal(saved[key], value.float()), key
    config = json.loads((tmp_path / "config.json").read_text())
    original = json.loads((golden / "checkpoint" / "config.json").read_text())
    assert (
        config["img_processor"] == original["img_processor"]
        and config["embd_layer"] == original["embd_layer"]
    )


def test_from_pretrained_uses_sdpa_in_both_towers_unless_told(saved):
    default = Phi3VForCausalLM.from_pretrained(saved)
    eager = Phi3VForCausalLM.from_pretrained(saved, attn_implementation="eager")
    for model, impl in ((default, "sdpa"), (eager, "eager")):
        assert model.model.config._attn_implementation == impl, "decoder"
        assert model.vision_tower.config._attn_implementation == impl, "CLIP tower"
