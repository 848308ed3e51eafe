"""Phi-3-V / Phi-3.5-V as a family: vlmtune's native implementation (:mod:`vlmtune.models.phi3v`).

Checkpoints are the official layout (official key names, the hub's tokenizer files, remote code
carried over so other runtimes such as vLLM load a fine-tuned model); the tiny model's tokenizer
carries Phi-3's special and chat tokens and chat template.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, processors
from torch import nn
from transformers import PreTrainedTokenizerFast

from vlmtune.models.families.base import TinySizes
from vlmtune.models.families.tokenizer import chat_tokenizer
from vlmtune.models.phi3v import (
    Phi3VForCausalLM,
    Phi3VImageProcessor,
    Phi3VProcessor,
    build_tiny_phi3v,
    load_official_state_dict,
    missing_remote_code,
    official_to_native,
    save_model_folder,
    tiny_phi3v_config,
    vllm_serve_command,
)
from vlmtune.utils.config import ConfigError

__all__ = ["FAMILY", "PHI3_CHAT_TEMPLATE", "PHI3_SPECIAL_TOKENS", "Phi3VFamily", "train_tokenizer"]

# Phi-3's special and chat tokens; <unk>, <s>, </s> take ids 0, 1, 2 as in the real vocabulary.
PHI3_SPECIAL_TOKENS = [
    "<unk>", "<s>", "</s>", "<|endoftext|>", "<|assistant|>", "<|end|>", "<|system|>", "<|user|>",
]  # fmt: skip
PHI3_CHAT_TEMPLATE = (
    "{% for message in messages %}{{'<|' + message['role'] + '|>' + '\n' + message['content'] + '<|end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt and messages[-1]['role'] != 'assistant' %}"
    "{{- '<|assistant|>\n' -}}{% endif %}"
)


def train_tokenizer(
    texts: Iterable[str], vocab_size: int = 1024, seed: int = 0
) -> PreTrainedTokenizerFast:
    """Byte-level BPE trained on ``texts`` with Phi-3's special tokens, BOS added like Phi-3's tokenizer."""
    del seed  # the BPE trainer is deterministic for a given corpus order
    return chat_tokenizer(
        texts,
        vocab_size,
        PHI3_SPECIAL_TOKENS,
        PHI3_CHAT_TEMPLATE,
        unk_token="<unk>",
        post_processor=_bos_template,
        bos_token="<s>",
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=["<|system|>", "<|end|>", "<|user|>", "<|assistant|>"],
    )


def _bos_template(tok: Tokenizer) -> processors.TemplateProcessing:
    bos = tok.token_to_id("<s>")
    return processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)]
    )


class Phi3VFamily:
    """Phi-3-V: the decoder is ``model.*``, the CLIP tower ``model.vision_embed_tokens.img_processor``,
    the projector the rest of ``model.vision_embed_tokens`` (HD separators and MLP)."""

    name = "phi3v"
    model_types = ("phi3_v",)
    default_lora_targets = {"language_model": ("qkv_proj", "o_proj", "gate_up_proj", "down_proj")}
    vision_modules = ("model.vision_embed_tokens.img_processor",)
    special_tokens = tuple(PHI3_SPECIAL_TOKENS)
    supports_packing = True

    def component_of(self, param_name: str) -> str:
        return Phi3VForCausalLM.component_of(param_name)

    def load_model(
        self, folder: Path, dtype: torch.dtype, attn_implementation: str = "sdpa"
    ) -> nn.Module:
        return Phi3VForCausalLM.from_pretrained(
            str(folder), torch_dtype=dtype, attn_implementation=attn_implementation
        )

    def load_processor(
        self, folder: Path, num_crops: int | None = None, max_image_pixels: int | None = None
    ) -> Phi3VProcessor:
        if max_image_pixels is not None:
            raise ConfigError(
                f"model.max_image_pixels={max_image_pixels}: Phi-3-V's image size is "
                "model.num_crops (the most 336x336 crops of its HD transform); unset it"
            )
        return Phi3VProcessor.from_pretrained(str(folder), num_crops=num_crops)

    def checkpoint_state(self, folder: Path, model: nn.Module) -> dict[str, torch.Tensor]:
        return official_to_native(load_official_state_dict(folder), model.config)

    def save(
        self,
        model: nn.Module,
        processor: Any,
        folder: Path,
        *,
        source: Path | None = None,
        max_shard_size: int | str = "5GB",
    ) -> Path:
        return save_model_folder(
            model, processor, folder, remote_code_from=source, max_shard_size=max_shard_size
        )

    def serve_command(self, folder: Path) -> str:
        return vllm_serve_command(folder)

    def missing_for_serving(self, folder: Path) -> list[str]:
        return missing_remote_code(folder)

    def build_tiny(
        self, texts: Iterable[str], sizes: TinySizes, seed: int
    ) -> tuple[nn.Module, Phi3VProcessor]:
        tokenizer = train_tokenizer(texts, sizes["vocab_size"], seed)
        ids = {t: tokenizer.convert_tokens_to_ids(t) for t in ("<s>", "<|endoftext|>", "<|end|>")}
        config = tiny_phi3v_config(
            vocab_size=_round_up(len(tokenizer), 64),
            **{key: sizes[key] for key in _CONFIG_SIZES},
            bos_token_id=ids["<s>"],
            eos_token_id=ids["<|endoftext|>"],
            pad_token_id=ids["<|endoftext|>"],
        )
        model = build_tiny_phi3v(config, seed=seed)
        model.generation_config.eos_token_id = [ids["<|end|>"], ids["<|endoftext|>"]]
        model.generation_config.pad_token_id = ids["<|endoftext|>"]
        image_processor = Phi3VImageProcessor(
            num_crops=sizes["num_crops"],
            crop_size=sizes["crop_size"],
            patch_size=sizes["patch_size"],
        )
        return model, Phi3VProcessor(image_processor=image_processor, tokenizer=tokenizer)


_CONFIG_SIZES = (
    "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
    "vision_hidden_size", "vision_layers", "vision_heads", "vision_intermediate_size",
    "crop_size", "patch_size",
)  # fmt: skip


def _round_up(value: int, multiple: int) -> int:
    return (value + multiple - 1) // multiple * multiple


FAMILY = Phi3VFamily()
"""The Phi-3-V family."""
