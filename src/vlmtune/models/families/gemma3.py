"""Gemma 3 as a family, on transformers' ``Gemma3ForConditionalGeneration`` and ``Gemma3Processor``.

The model is a SigLIP vision tower (``model.vision_tower``), a projector that average-pools the
patch features to ``mm_tokens_per_image`` soft tokens and projects them
(``model.multi_modal_projector``, an RMS norm and a projection matrix, no Linear layer) and the
Gemma 3 decoder (``model.language_model``). The processor writes ``<start_of_image>``, then
``image_seq_length`` ``<image_soft_token>`` placeholders, then ``<end_of_image>``, and returns
``token_type_ids`` (1 on the soft tokens), which the model needs in training for the image's
bidirectional attention; vlmtune passes them on. Images go through the PIL image processor at one
fixed size (896 px, 256 soft tokens in the real checkpoints; no pan-and-scan), so
``model.max_image_pixels`` does not apply. The assistant's turn is ``<start_of_turn>model`` and
ends with ``<end_of_turn>``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn
from transformers import (
    Gemma3Config,
    Gemma3ForConditionalGeneration,
    Gemma3Processor,
)
from transformers.models.gemma3.image_processing_pil_gemma3 import Gemma3ImageProcessorPil

from vlmtune.models.families.base import TinySizes
from vlmtune.models.families.hf import (
    TINY_INIT_STD,
    TransformersFamily,
    one_view_side,
    render_image_question,
)
from vlmtune.models.families.tokenizer import chat_tokenizer

__all__ = ["FAMILY", "GEMMA_CHAT_TEMPLATE", "GEMMA_SPECIAL_TOKENS", "Gemma3ImageTextProcessor"]

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


def _build_tiny(texts: Iterable[str], sizes: TinySizes, seed: int) -> tuple[nn.Module, Any]:
    tokenizer = chat_tokenizer(
        texts,
        sizes["vocab_size"],
        GEMMA_SPECIAL_TOKENS,
        GEMMA_CHAT_TEMPLATE,
        unk_token="<unk>",
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        extra_special_tokens={
            "boi_token": "<start_of_image>",
            "eoi_token": "<end_of_image>",
            "image_token": "<image_soft_token>",
        },
        additional_special_tokens=["<start_of_turn>", "<end_of_turn>"],
    )
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in GEMMA_SPECIAL_TOKENS}
    side = one_view_side(sizes)  # Gemma sees every photo once, at this one size
    # the projector pools the patch grid 2x2: (side / patch / 2)^2 soft tokens per image
    tokens = (side // sizes["patch_size"] // 2) ** 2
    torch.manual_seed(seed)
    config = _tiny_config(sizes, len(tokenizer), ids, side, tokens)
    model = Gemma3ForConditionalGeneration(config)
    model.generation_config.eos_token_id = [ids["<end_of_turn>"], ids["<eos>"]]
    model.generation_config.pad_token_id = ids["<pad>"]
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


def _tiny_config(
    sizes: TinySizes, vocab: int, ids: dict[str, int], side: int, tokens: int
) -> Gemma3Config:
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
        "initializer_range": TINY_INIT_STD,
    }
    vision = {
        "hidden_size": sizes["vision_hidden_size"],
        "intermediate_size": sizes["vision_intermediate_size"],
        "num_hidden_layers": sizes["vision_layers"],
        "num_attention_heads": sizes["vision_heads"],
        "image_size": side,
        "patch_size": sizes["patch_size"],
        "vision_use_head": False,
    }  # SigLIP draws its own weights (Xavier), whatever the initializer_range
    return Gemma3Config(
        text_config=text,
        vision_config=vision,
        mm_tokens_per_image=tokens,
        boi_token_index=ids["<start_of_image>"],
        eoi_token_index=ids["<end_of_image>"],
        image_token_index=ids["<image_soft_token>"],
    )


FAMILY = TransformersFamily(
    name="gemma3",
    classes={"gemma3": (Gemma3ForConditionalGeneration, Gemma3ImageTextProcessor)},
    projector="multi_modal_projector.",  # average pool + RMS norm + projection matrix
    vision_tower="vision_tower.",  # SigLIP
    vision_modules=("model.vision_tower",),
    special_tokens=tuple(GEMMA_SPECIAL_TOKENS),
    tiny=_build_tiny,
)
"""The Gemma 3 family."""
