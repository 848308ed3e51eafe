"""Phi-3-V weights: the official checkpoint key table, strict conversion both ways, safetensors I/O.

The key names are those of Microsoft's official Phi-3-V hub checkpoints (written by its remote
code ``modeling_phi3_v.py`` under transformers 4.x). vlmtune's module tree reproduces them, so the
table maps each official name onto the same native name; it still lists every expected key
explicitly (from the config), so a load fails by name on anything missing or unexpected.

The one special key: ``model.vision_embed_tokens.wte.weight``. The official image embedding holds
the decoder's token embedding as ``wte``; some checkpoints store it twice. It is accepted on load
only when equal to ``model.embed_tokens.weight`` and never written.

Only safetensors are read and written (no pickle).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import torch
from huggingface_hub import split_torch_state_dict_into_shards
from safetensors.torch import load_file, save_file

from vlmtune.models.phi3v.configuration_phi3v import Phi3VConfig
from vlmtune.utils.io import atomic_path, atomic_write_json

__all__ = [
    "WTE_KEY",
    "load_official_state_dict",
    "native_to_official",
    "official_key_table",
    "official_to_native",
    "save_official_checkpoint",
]

WTE_KEY = "model.vision_embed_tokens.wte.weight"
_EMBED_KEY = "model.embed_tokens.weight"
_CLIP = "model.vision_embed_tokens.img_processor.vision_model."

_DECODER_LAYER = [
    "input_layernorm.weight",
    "post_attention_layernorm.weight",
    "self_attn.qkv_proj.weight",
    "self_attn.o_proj.weight",
    "mlp.gate_up_proj.weight",
    "mlp.down_proj.weight",
]
_CLIP_LAYER = [
    f"{part}.{kind}"
    for part in (
        "layer_norm1",
        "layer_norm2",
        "mlp.fc1",
        "mlp.fc2",
        "self_attn.q_proj",
        "self_attn.k_proj",
        "self_attn.v_proj",
        "self_attn.out_proj",
    )
    for kind in ("weight", "bias")
]
_CLIP_TOP = [
    "embeddings.class_embedding",
    "embeddings.patch_embedding.weight",
    "embeddings.position_embedding.weight",
    "pre_layrnorm.weight",
    "pre_layrnorm.bias",
    "post_layernorm.weight",
    "post_layernorm.bias",
]
_TOP = [
    "model.embed_tokens.weight",
    "model.norm.weight",
    "lm_head.weight",
    "model.vision_embed_tokens.glb_GN",
    "model.vision_embed_tokens.sub_GN",
    "model.vision_embed_tokens.img_projection.0.weight",
    "model.vision_embed_tokens.img_projection.0.bias",
    "model.vision_embed_tokens.img_projection.2.weight",
    "model.vision_embed_tokens.img_projection.2.bias",
]


def official_key_table(config: Phi3VConfig) -> dict[str, str]:
    """Every official checkpoint key (except ``wte``) -> the native ``state_dict`` key."""
    keys = list(_TOP)
    keys += [
        f"model.layers.{i}.{name}"
        for i in range(config.num_hidden_layers)
        for name in _DECODER_LAYER
    ]
    keys += [_CLIP + name for name in _CLIP_TOP]
    vision_layers = int(config.vision_config.num_hidden_layers)
    keys += [
        f"{_CLIP}encoder.layers.{i}.{name}" for i in range(vision_layers) for name in _CLIP_LAYER
    ]
    return {key: key for key in keys}


def official_to_native(
    state: Mapping[str, torch.Tensor], config: Phi3VConfig
) -> dict[str, torch.Tensor]:
    """Official checkpoint tensors -> native ``state_dict``; fails naming missing/unexpected keys."""
    state = dict(state)
    wte = state.pop(WTE_KEY, None)
    if wte is not None and _EMBED_KEY in state and not torch.equal(wte, state[_EMBED_KEY]):
        raise ValueError(
            f"{WTE_KEY} differs from {_EMBED_KEY}; the official model uses one shared table"
        )
    if wte is not None and _EMBED_KEY not in state:
        state[_EMBED_KEY] = wte
    table = official_key_table(config)
    _check_keys(set(state), set(table), "official checkpoint")
    return {table[key]: value for key, value in state.items()}


def native_to_official(
    state: Mapping[str, torch.Tensor], config: Phi3VConfig
) -> dict[str, torch.Tensor]:
    """Native ``state_dict`` -> official key names (no ``wte``); fails naming missing/unexpected keys."""
    table = official_key_table(config)
    back = {native: official for official, native in table.items()}
    state = {k: v for k, v in state.items() if k != WTE_KEY}
    _check_keys(set(state), set(back), "model state_dict")
    return {back[key]: value for key, value in state.items()}


def _check_keys(found: set[str], expected: set[str], what: str) -> None:
    missing, unexpected = sorted(expected - found), sorted(found - expected)
    if missing or unexpected:
        raise ValueError(
            f"{what} does not match the Phi-3-V key table: missing keys {missing[:20]}"
            f"{' ...' if len(missing) > 20 else ''}; unexpected keys {unexpected[:20]}"
            f"{' ...' if len(unexpected) > 20 else ''}"
        )


def load_official_state_dict(folder: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of ``model.safetensors`` or of the shards listed in
    ``model.safetensors.index.json`` (CPU, stored dtype)."""
    folder = Path(folder)
    single, index = folder / "model.safetensors", folder / "model.safetensors.index.json"
    if single.is_file():
        return load_file(single)
    if index.is_file():
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        state: dict[str, torch.Tensor] = {}
        for shard in sorted(set(weight_map.values())):
            shard_path = (folder / shard).resolve()
            if shard_path.parent != folder.resolve():
                raise ValueError(f"shard name {shard!r} in {index} leaves the checkpoint folder")
            state.update(load_file(shard_path))
        return state
    if any(folder.glob("*.bin")) or any(folder.glob("*.pt")):
        raise ValueError(
            f"{folder} holds only pickle weights (.bin/.pt); vlmtune reads safetensors only"
        )
    raise FileNotFoundError(f"no model.safetensors or model.safetensors.index.json in {folder}")


def save_official_checkpoint(
    state: Mapping[str, torch.Tensor],
    config: Phi3VConfig,
    folder: str | Path,
    max_shard_size: int | str = "5GB",
) -> list[Path]:
    """Write ``state`` (native keys) as official safetensors (sharded above ``max_shard_size``).
    Returns the written weight files."""
    folder = Path(folder)
    official = native_to_official(state, config)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in official.items()}
    split = split_torch_state_dict_into_shards(
        tensors, filename_pattern="model{suffix}.safetensors", max_shard_size=max_shard_size
    )
    for stale in list(folder.glob("model*.safetensors")) + list(
        folder.glob("model.safetensors.index.json")
    ):
        stale.unlink()
    written = []
    for filename, names in split.filename_to_tensors.items():
        with atomic_path(folder / filename) as tmp:
            save_file({name: tensors[name] for name in names}, str(tmp), metadata={"format": "pt"})
        written.append(folder / filename)
    if split.is_sharded:
        index = {
            "metadata": {"total_size": sum(t.numel() * t.element_size() for t in tensors.values())},
            "weight_map": split.tensor_to_filename,
        }
        atomic_write_json(folder / "model.safetensors.index.json", index)
    return written
