"""What a model family tells vlmtune: the :class:`ModelFamily` interface and the processor contract.

A family module (``phi3v``, ``qwen2_5_vl``, ...) holds one :class:`ModelFamily` object that says,
for that family, how to load model and processor from a folder, how its parameters split into
vision tower / projector / language model (what ``frozen_vision`` freezes and where LoRA goes),
its default LoRA targets, how to save a checkpoint folder in the family's own layout, and how to
build a tiny random model offline. Its processor fulfils :class:`ChatProcessor`: the chat prompt
with the image rendered through the family's own chat template, the end-of-turn token, which ids
are image tokens, and which processor outputs the model takes. ``data`` and ``inference`` only
call these processor members (duck-typed), so they never import a family.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

__all__ = ["COMPONENTS", "ChatProcessor", "ModelFamily", "TinySizes"]

COMPONENTS = ("vision_tower", "projector", "language_model")
"""The parts of a vision-language model, as LoRA targets and freezing name them."""

TinySizes = Mapping[str, int]
"""Sizes of a tiny model (``hidden_size``, ``num_hidden_layers``, ``num_attention_heads``,
``intermediate_size``, ``vision_hidden_size``, ``vision_layers``, ``vision_heads``,
``vision_intermediate_size``, ``crop_size``, ``patch_size``, ``num_crops``, ``vocab_size``);
each family reads the ones that apply to it."""


class ChatProcessor(Protocol):
    """The members a family's processor adds to its Hugging Face processor interface."""

    end_token: str
    """The token that ends an assistant turn (trained on, and a stop token)."""
    image_input_keys: tuple[str, ...]
    """Processor outputs that describe the images and go to the model (concatenated over a batch)."""
    token_input_keys: tuple[str, ...]
    """Processor outputs with one entry per token besides ids and mask (padded with 0)."""
    answer_prefix: str
    """Optional (default ``""``): text the template writes between the prompt and the answer
    (SmolVLM's space after ``Assistant:``); trained on as part of the answer."""

    def render_prompt(self, question: str) -> str:
        """The chat prompt of one user turn (the image, then ``question``), up to where the
        assistant's answer starts, rendered by the family's own chat template."""
        ...

    def image_token_mask(self, input_ids: torch.Tensor) -> torch.Tensor:
        """``[..., T]`` bool: which ids are image tokens (placeholders the images replace)."""
        ...

    def num_image_tokens(self, image: Any) -> int:
        """Image tokens the processor gives ``image`` (raises ``ValueError`` for an image it refuses)."""
        ...


class ModelFamily(Protocol):
    """One vision-language model family; see the module docstring."""

    name: str
    """The name users give (``--family``)."""
    model_types: tuple[str, ...]
    """``config.json`` ``model_type`` values of the family."""
    default_lora_targets: Mapping[str, tuple[str, ...]]
    """Linear layers adapted per component by default (leaf names; ``all`` for every one)."""
    vision_modules: tuple[str, ...]
    """Module names (prefixes) of the vision tower, what ``frozen_vision`` freezes."""
    supports_packing: bool
    """Whether ``data.packing`` (several samples per row, position ids restarting per sample) fits
    the model: not for Qwen-VL's multimodal RoPE or families whose image attention reads token types."""
    special_tokens: tuple[str, ...]
    """The special tokens of the family's tokenizer (a tiny model's vocabulary has them all)."""

    def component_of(self, param_name: str) -> str:
        """``vision_tower``, ``projector`` or ``language_model`` for a parameter name
        (also with peft prefixes such as ``base_model.model.``)."""
        ...

    def load_model(
        self, folder: Path, dtype: torch.dtype, attn_implementation: str = "sdpa"
    ) -> nn.Module:
        """The model of checkpoint ``folder`` in ``dtype`` (CPU, eval mode)."""
        ...

    def load_processor(
        self, folder: Path, num_crops: int | None = None, max_image_pixels: int | None = None
    ) -> ChatProcessor:
        """The processor of checkpoint ``folder``, with the family's image-size knob set when given:
        ``num_crops`` (Phi-3-V's HD crops) or ``max_image_pixels`` (a pixel budget per image).
        A knob the family does not have raises ``ConfigError`` naming the one it has."""
        ...

    def checkpoint_state(self, folder: Path, model: nn.Module) -> dict[str, torch.Tensor]:
        """The weights of checkpoint ``folder`` under ``model``'s own parameter names."""
        ...

    def save(
        self,
        model: nn.Module,
        processor: Any,
        folder: Path,
        *,
        source: Path | None = None,
        max_shard_size: int | str = "5GB",
    ) -> Path:
        """Write ``model`` + ``processor`` as a checkpoint folder of the family's layout
        (``source``: the checkpoint it came from, for files carried over)."""
        ...

    def serve_command(self, folder: Path) -> str:
        """A ``vllm serve`` command line for the checkpoint ``folder``."""
        ...

    def missing_for_serving(self, folder: Path) -> list[str]:
        """Files the serving command needs that ``folder`` lacks."""
        ...

    def build_tiny(
        self, texts: Iterable[str], sizes: TinySizes, seed: int
    ) -> tuple[nn.Module, ChatProcessor]:
        """A small random model and its processor, with a BPE tokenizer trained on ``texts``
        that carries the family's special tokens and chat template; no network."""
        ...
