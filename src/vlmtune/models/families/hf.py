"""Helpers shared by the families that run on transformers' own classes (Qwen-VL, Gemma 3, ...).

Their checkpoints are transformers' ``save_pretrained`` folders, read back by the family's own
``from_pretrained``; their prompts come from the processor's chat template with the image as a
content part; vLLM serves them natively (no remote code).
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = [
    "load_pretrained",
    "model_type_of",
    "processor_class_of",
    "render_image_question",
    "save_pretrained_folder",
    "state_in_model_names",
    "vllm_serve_command",
]


def render_image_question(processor: Any, question: str) -> str:
    """The processor's chat template on one user turn (the image, then ``question``), up to
    where the assistant's answer starts."""
    content = [{"type": "image"}, {"type": "text", "text": question}]
    return processor.apply_chat_template(
        [{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True
    )


def model_type_of(folder: Path) -> str | None:
    """``config.json``'s ``model_type`` (None when the folder has no config, e.g. an adapter)."""
    path = Path(folder) / "config.json"
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8")).get("model_type")


def processor_class_of(folder: Path, by_model_type: dict[str, type], default: type) -> type:
    """The processor class of a checkpoint (by its model type) or of an adapter folder (the
    ``processor_class`` its ``processor_config.json`` names)."""
    model_type = model_type_of(folder)
    if model_type in by_model_type:
        return by_model_type[model_type]
    path = Path(folder) / "processor_config.json"
    name = (
        json.loads(path.read_text(encoding="utf-8")).get("processor_class")
        if path.is_file()
        else None
    )
    return {cls.__name__: cls for cls in by_model_type.values()}.get(name, default)


def load_pretrained(
    model_class: type, folder: Path, dtype: torch.dtype, attn_implementation: str
) -> nn.Module:
    """``model_class.from_pretrained`` of a local folder in ``dtype``, in eval mode."""
    model = model_class.from_pretrained(
        str(folder), dtype=dtype, attn_implementation=attn_implementation
    )
    return model.eval()


def state_in_model_names(model_class: type, folder: Path) -> dict[str, torch.Tensor]:
    """A checkpoint's weights under the live model's parameter names: transformers renames the
    hub's keys while it loads, so its own strict load is the key table."""
    return load_pretrained(model_class, folder, torch.float32, "sdpa").state_dict()


def save_pretrained_folder(
    model: nn.Module, processor: Any, folder: Path, max_shard_size: int | str
) -> Path:
    """``save_pretrained`` of model (safetensors, generation config) and processor into ``folder``."""
    folder = Path(folder)
    model.save_pretrained(folder, max_shard_size=max_shard_size)
    processor.save_pretrained(folder)
    return folder


def vllm_serve_command(folder: Path, max_model_len: int = 4096) -> str:
    """``vllm serve`` for a checkpoint of a family vLLM knows natively: one photo per request,
    a context a listing needs rather than the config's."""
    path = Path(folder).expanduser().resolve()
    return shlex.join(
        [
            "vllm", "serve", str(path), "--max-model-len", str(max_model_len),
            "--limit-mm-per-prompt", '{"image": 1}',
        ]
    )  # fmt: skip
