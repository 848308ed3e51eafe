"""The families that run on transformers' own classes (Qwen-VL, SmolVLM, Gemma 3, ...).

Their checkpoints are transformers' ``save_pretrained`` folders, read back by the family's own
``from_pretrained``; their prompts come from the processor's chat template with the image as a
content part; vLLM serves them natively (no remote code). So such a family is a table, one
:class:`TransformersFamily`: its model and processor classes per ``model_type``, where its
projector and vision tower sit in the parameter names, its special tokens, and the function that
builds its tiny model. Only that function and the processor's few
:class:`~vlmtune.models.families.base.ChatProcessor` members differ from family to family.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vlmtune.models.families.base import TinySizes
from vlmtune.utils.config import ConfigError

__all__ = [
    "DECODER_LINEARS",
    "TINY_INIT_STD",
    "TransformersFamily",
    "one_view_side",
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


def one_view_side(sizes: TinySizes) -> int:
    """Image side of a tiny model that sees a photo once, at one size: about the pixels the tiny
    Phi-3-V gets from its crop and global view (2 x ``crop_size``^2), in whole 2x2 patch groups
    (168 px at the demo's 112 px crops, 84 px at the tests' 56)."""
    group = 2 * sizes["patch_size"]
    return max(group, round(sizes["crop_size"] * 2**0.5 / group) * group)


TINY_INIT_STD = 0.08
"""Weight scale (``initializer_range``) of every family's tiny random model: that of the tiny
Phi-3-V (``phi3v.testing``), so that families compared on the demo start alike. At transformers'
0.02 the tiny Qwen2.5-VL learned the demo about twice as slowly (eval loss 0.27 against 0.09 after
600 steps, seed 1). Real checkpoints are trained weights; this touches only ``init-model --tiny``."""

DECODER_LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
"""The attention and MLP projections of a Llama-style decoder layer: the default LoRA targets."""

BuildTiny = Callable[[Iterable[str], TinySizes, int], tuple[nn.Module, Any]]


@dataclass(frozen=True)
class TransformersFamily:
    """A :class:`~vlmtune.models.families.base.ModelFamily` on transformers' own classes."""

    name: str
    """The name users give (``--family``)."""
    classes: Mapping[str, tuple[type, type]]
    """``model_type`` -> (model class, processor class); the first entry is the family's main one."""
    projector: str
    """Parameter-name fragment of the projector (``"visual.merger."``); tested before ``vision_tower``."""
    vision_tower: str
    """Parameter-name fragment of the vision tower (``"visual."``)."""
    vision_modules: tuple[str, ...]
    """Module names (prefixes) of the vision tower, what ``frozen_vision`` freezes."""
    special_tokens: tuple[str, ...]
    """The special tokens of the family's tokenizer."""
    tiny: BuildTiny
    """Builds the tiny random model and processor (see ``ModelFamily.build_tiny``)."""
    bound_pixels: Callable[[Any, int], None] | None = None
    """Sets the processor's image size to at most N pixels (``model.max_image_pixels``); None for
    a family that resizes every image to one fixed size."""
    default_lora_targets: Mapping[str, tuple[str, ...]] = field(
        default_factory=lambda: {"language_model": DECODER_LINEARS}
    )
    """Linear layers adapted per component by default."""
    supports_packing: bool = False
    """Multimodal RoPE and token-type attention do not restart per packed sample."""

    @property
    def model_types(self) -> tuple[str, ...]:
        return tuple(self.classes)

    def component_of(self, param_name: str) -> str:
        if self.projector in param_name:
            return "projector"
        if self.vision_tower in param_name:
            return "vision_tower"
        return "language_model"

    def load_model(
        self, folder: Path, dtype: torch.dtype, attn_implementation: str = "sdpa"
    ) -> nn.Module:
        return load_pretrained(self._model_class(folder), folder, dtype, attn_implementation)

    def load_processor(
        self, folder: Path, num_crops: int | None = None, max_image_pixels: int | None = None
    ) -> Any:
        del num_crops  # Phi-3-V's knob (shared recipes set it); these families size by pixels
        if max_image_pixels is not None and self.bound_pixels is None:
            raise ConfigError(
                f"model.max_image_pixels={max_image_pixels}: {self.name} resizes every image to "
                "the one size of its image processor; unset it"
            )
        by_type = {model_type: classes[1] for model_type, classes in self.classes.items()}
        default = next(iter(self.classes.values()))[1]
        processor = processor_class_of(folder, by_type, default).from_pretrained(str(folder))
        if max_image_pixels is not None and self.bound_pixels is not None:
            self.bound_pixels(processor, max_image_pixels)
        return processor

    def checkpoint_state(self, folder: Path, model: nn.Module) -> dict[str, torch.Tensor]:
        return state_in_model_names(self._model_class(folder), folder)

    def save(
        self,
        model: nn.Module,
        processor: Any,
        folder: Path,
        *,
        source: Path | None = None,
        max_shard_size: int | str = "5GB",
    ) -> Path:
        del source  # transformers' own classes: no remote code to carry over
        return save_pretrained_folder(model, processor, folder, max_shard_size)

    def serve_command(self, folder: Path) -> str:
        return vllm_serve_command(folder)

    def missing_for_serving(self, folder: Path) -> list[str]:
        return []  # vLLM knows these architectures natively

    def build_tiny(
        self, texts: Iterable[str], sizes: TinySizes, seed: int
    ) -> tuple[nn.Module, Any]:
        return self.tiny(texts, sizes, seed)

    def _model_class(self, folder: Path) -> type:
        model_type = model_type_of(folder)
        return self.classes.get(model_type, next(iter(self.classes.values())))[0]
