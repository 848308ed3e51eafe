"""Tiny random Phi-3-V models for tests: same code path as the real model, seconds on a CPU.

The vision geometry is given through ``img_processor.vision_config`` (see ``Phi3VConfig``);
any ``crop_size`` whose ``crop_size / patch_size`` is even works. Weights are random, including
``glb_GN``/``sub_GN`` (which the official initialisation leaves at zero), so every parameter
influences the output.
"""

from __future__ import annotations

from typing import Any

import torch

from vlmtune.models.phi3v.configuration_phi3v import Phi3VConfig
from vlmtune.models.phi3v.modeling_phi3v import Phi3VForCausalLM

__all__ = ["build_tiny_phi3v", "tiny_phi3v_config"]


def tiny_phi3v_config(
    vocab_size: int = 32064,
    hidden_size: int = 32,
    num_hidden_layers: int = 2,
    num_attention_heads: int = 4,
    intermediate_size: int = 64,
    vision_hidden_size: int = 32,
    vision_layers: int = 2,
    vision_heads: int = 4,
    vision_intermediate_size: int = 64,
    crop_size: int = 56,
    patch_size: int = 14,
    pad_token_id: int = 32000,
    bos_token_id: int = 1,
    eos_token_id: int | list[int] = 32000,
    **overrides: Any,
) -> Phi3VConfig:
    """A small Phi-3-V config (LongRoPE with short/long factors, as the real model)."""
    head_dim = hidden_size // num_attention_heads
    grid_half = crop_size // patch_size // 2
    settings: dict[str, Any] = {
        "vocab_size": vocab_size,
        "hidden_size": hidden_size,
        "num_hidden_layers": num_hidden_layers,
        "num_attention_heads": num_attention_heads,
        "num_key_value_heads": num_attention_heads,
        "intermediate_size": intermediate_size,
        "max_position_embeddings": 131072,
        "original_max_position_embeddings": 4096,
        "rope_scaling": {
            "type": "su",
            "short_factor": [1.0 + 0.1 * i for i in range(head_dim // 2)],
            "long_factor": [2.0 + 1.5 * i for i in range(head_dim // 2)],
        },
        "pad_token_id": pad_token_id,
        "bos_token_id": bos_token_id,
        "eos_token_id": eos_token_id,
        "img_processor": {
            "name": "clip_vision_model",
            "model_name": "vlmtune/tiny-clip",
            "image_dim_out": vision_hidden_size,
            "num_img_tokens": grid_half * grid_half,
            "vision_config": {
                "hidden_size": vision_hidden_size,
                "intermediate_size": vision_intermediate_size,
                "num_hidden_layers": vision_layers,
                "num_attention_heads": vision_heads,
                "image_size": crop_size,
                "patch_size": patch_size,
                "hidden_act": "quick_gelu",
                "layer_norm_eps": 1e-5,
                "projection_dim": vision_hidden_size,
            },
        },
    }
    settings.update(overrides)
    return Phi3VConfig(**settings)


def build_tiny_phi3v(
    config: Phi3VConfig | None = None, seed: int = 0, **kw: Any
) -> Phi3VForCausalLM:
    """A ``Phi3VForCausalLM`` with seeded random weights (float32); ``kw`` go to
    ``tiny_phi3v_config`` when no config is given."""
    if config is None:
        config = tiny_phi3v_config(**kw)
    elif kw:
        raise TypeError(f"give either a config or config arguments, not both: {sorted(kw)}")
    generator_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = Phi3VForCausalLM(config)
        with torch.no_grad():
            for name, param in sorted(model.named_parameters()):
                if name.endswith("_GN"):
                    param.normal_(std=0.5)
                elif param.ndim == 1 and "norm" in name and name.endswith("weight"):
                    param.uniform_(0.5, 1.5)
                elif param.ndim == 1:
                    param.normal_(std=0.05)
                else:
                    param.normal_(std=0.08)
    finally:
        torch.random.set_rng_state(generator_state)
    return model.eval()
