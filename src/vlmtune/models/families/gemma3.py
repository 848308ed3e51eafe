"""Gemma 3 as a family, on transformers' ``Gemma3ForConditionalGeneration`` and ``Gemma3Processor``.

The model is a SigLIP vision tower (``model.vision_tower``), a projector that average-pools the
patch features to ``mm_tokens_per_image`` soft tokens and projects them
(``model.multi_modal_projector``, an RMS norm and a projection matrix, no Linear layer) and the
Gemma 3 decoder (``model.language_model``). The processor writes ``<start_of_image>``, then
``image_seq_length`` ``<image_soft_token>`` placeholders, then ``<end_of_image>``, and returns
``token_type_ids`` (1 on the soft tokens), which the model needs in training for the image's
bidirectional attention; vlmtune passes them on. Images go through the PIL image processor at one
fixed size (no pan-and-scan). The assistant's turn is ``<start_of_turn>model`` and ends with
``<end_of_turn>``.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import (
    Gemma3Config,
    Gemma3ForConditionalGeneration,
    Gemma3Processor,
    PreTrainedTokenizerFast,
)
from transformers.models.gemma3.image_processing_pil_gemma3 import Gemma3ImageProcessorPil

from vlmtune.models.families.base import TinySizes
from vlmtune.models.families.hf import (
    load_pretrained,
    processor_class_of,
    render_image_question,
    save_pretrained_folder,
    state_in_model_names,
    vllm_serve_command,
)
from vlmtune.models.families.tokenizer import train_byte_bpe

__all__ = [
    "GEMMA3",
    "GEMMA_CHAT_TEMPLATE",
    "GEMMA_SPECIAL_TOKENS",
    "Gemma3Family",
    "Gemma3ImageTextProcessor",
]

GEMMA_SPECIAL_TOKENS = [
    "<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>",
    "<start_of_image>", "<end_of_image>", "<image_soft_token>",
]  # fmt: skip
# Gemma 3's chat template (the assistant is "model"; a system turn is folded into the first user turn).
GEMMA_CHAT_TEMPLATE = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}"
    "{% if messages[0]['content'] is string %}{% set first_user_prefix = messages[0]['content'] + '\n\n' %}"
    "{% else %}{% set first_user_prefix = messages[0]['content'][0]['text'] + '\n\n' %}{% endif %}"
    "{% set loop_messages = messages[1:] %}{% else %}{% set first_user_prefix = '' %}"
    "{% set loop_messages = messages %}{% endif %}{% for message in loop_messages %}"
    "{% if message['role'] == 'assistant' %}{% set role = 'model' %}{% else %}"
    "{% set role = message['role'] %}{% endif %}<start_of_turn>{{ role }}\n"
    "{{ first_user_prefix if loop.first else '' }}{% if message['content'] is string %}"
    "{{ message['content'] | trim }}{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<start_of_image>{% elif item['type'] == 'text' %}"
    "{{ item['text'] | trim }}{% endif %}{% endfor %}{% endif %}<end_of_turn>\n{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)


class Gemma3ImageTextProcessor(Gemma3Processor):
    """transformers' ``Gemma3Processor`` with the
    :class:`~vlmtune.models.families.base.ChatProcessor` members."""

    end_token = "<end_of_turn>"
    image_input_keys = ("pixel_values",)
    token_input_keys = ("token_type_ids",)

    def render_prompt(self, question: str) -> str:
        return render_image_question(self, question)

    def image_token_mask(self, input_ids: torch.Tensor) -> torch.Tensor:
        return input_ids == self.tokenizer.image_token_id  # the soft tokens the image replaces

    def num_image_tokens(self, image: Any) -> int:
        del image  # one fixed size: every image gives image_seq_length soft tokens
        return int(self.image_seq_length)


class Gemma3Family:
    """Gemma 3: ``model.vision_tower`` (SigLIP), ``model.multi_modal_projector``, the decoder."""

    name = "gemma3"
    model_types = ("gemma3",)
    default_lora_targets = {
        "language_model": (
            "q_proj",
            "k_proj",
            "v_proj",
            "o_proj",
            "gate_proj",
            "up_proj",
            "down_proj",
        )
    }
    vision_modules = ("model.vision_tower",)
    special_tokens = tuple(GEMMA_SPECIAL_TOKENS)
    supports_packing = False

    def component_of(self, param_name: str) -> str:
        if "multi_modal_projector." in param_name:
            return "projector"
        if "vision_tower." in param_name:
            return "vision_tower"
        return "language_model"

    def load_model(
        self, folder: Path, dtype: torch.dtype, attn_implementation: str = "sdpa"
    ) -> nn.Module:
        return load_pretrained(Gemma3ForConditionalGeneration, folder, dtype, attn_implementation)

    def load_processor(self, folder: Path, num_crops: int | None = None) -> Any:
        del num_crops  # one fixed image size (the image processor's)
        by_type = {"gemma3": Gemma3ImageTextProcessor}
        return processor_class_of(folder, by_type, Gemma3ImageTextProcessor).from_pretrained(
            str(folder)
        )

    def checkpoint_state(self, folder: Path, model: nn.Module) -> dict[str, torch.Tensor]:
        return state_in_model_names(Gemma3ForConditionalGeneration, folder)

    def save(
        self,
        model: nn.Module,
        processor: Any,
        folder: Path,
        *,
        source: Path | None = None,
        max_shard_size: int | str = "5GB",
    ) -> Path:
        del source  # transformers' own classes: nothing to carry over
        return save_pretrained_folder(model, processor, folder, max_shard_size)

    def serve_command(self, folder: Path) -> str:
        return vllm_serve_command(folder)

    def missing_for_serving(self, folder: Path) -> list[str]:
        return []

    def build_tiny(
        self, texts: Iterable[str], sizes: TinySizes, seed: int
    ) -> tuple[nn.Module, Any]:
        tokenizer = _tokenizer(texts, sizes["vocab_size"])
        ids = {t: tokenizer.convert_tokens_to_ids(t) for t in GEMMA_SPECIAL_TOKENS}
        # the projector pools the patch grid 2x2: (crop / patch / 2)^2 soft tokens per image
        tokens = (sizes["crop_size"] // sizes["patch_size"] // 2) ** 2
        torch.manual_seed(seed)
        model = Gemma3ForConditionalGeneration(_tiny_config(sizes, len(tokenizer), ids, tokens))
        model.generation_config.eos_token_id = [ids["<end_of_turn>"], ids["<eos>"]]
        model.generation_config.pad_token_id = ids["<pad>"]
        side = sizes["crop_size"]
        image_processor = Gemma3ImageProcessorPil(
            size={"height": side, "width": side}, do_pan_and_scan=False
        )
        processor = Gemma3ImageTextProcessor(
            image_processor=image_processor,
            tokenizer=tokenizer,
            chat_template=GEMMA_CHAT_TEMPLATE,
            image_seq_length=tokens,
        )
        return model, processor


def _tokenizer(texts: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    tok = train_byte_bpe(texts, vocab_size, GEMMA_SPECIAL_TOKENS, unk_token="<unk>")
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        extra_special_tokens={
            "boi_token": "<start_of_image>",
            "eoi_token": "<end_of_image>",
            "image_token": "<image_soft_token>",
        },
        additional_special_tokens=["<start_of_turn>", "<end_of_turn>"],
        chat_template=GEMMA_CHAT_TEMPLATE,
        padding_side="right",
        clean_up_tokenization_spaces=False,
        model_max_length=4096,
    )


def _tiny_config(sizes: TinySizes, vocab: int, ids: dict[str, int], tokens: int) -> Gemma3Config:
    hidden, heads = sizes["hidden_size"], sizes["num_attention_heads"]
    text = {
        "vocab_size": (vocab + 63) // 64 * 64,
        "hidden_size": hidden,
        "intermediate_size": sizes["intermediate_size"],
        "num_hidden_layers": sizes["num_hidden_layers"],
        "num_attention_heads": heads,
        "num_key_value_heads": heads,
        "head_dim": hidden // heads,
        "query_pre_attn_scalar": hidden // heads,
        "sliding_window": 512,
        "bos_token_id": ids["<bos>"],
        "eos_token_id": [ids["<eos>"], ids["<end_of_turn>"]],
        "pad_token_id": ids["<pad>"],
    }
    vision = {
        "hidden_size": sizes["vision_hidden_size"],
        "intermediate_size": sizes["vision_intermediate_size"],
        "num_hidden_layers": sizes["vision_layers"],
        "num_attention_heads": sizes["vision_heads"],
        "image_size": sizes["crop_size"],
        "patch_size": sizes["patch_size"],
        "vision_use_head": False,
    }
    return Gemma3Config(
        text_config=text,
        vision_config=vision,
        mm_tokens_per_image=tokens,
        boi_token_index=ids["<start_of_image>"],
        eoi_token_index=ids["<end_of_image>"],
        image_token_index=ids["<image_soft_token>"],
    )


GEMMA3 = Gemma3Family()
"""The Gemma 3 family."""
