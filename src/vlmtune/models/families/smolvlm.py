"""SmolVLM (the Idefics3 architecture) as a family, on transformers' ``Idefics3ForConditionalGeneration``
and ``Idefics3Processor``.

SmolVLM-256M/500M/2.2B-Instruct are ``idefics3`` checkpoints: a SigLIP vision tower
(``model.vision_model``), a connector that shuffles pixels by ``scale_factor`` and projects them
(``model.connector``) and a Llama-style decoder (``model.text_model``). The processor wraps each
image in ``<fake_token_around_image><global-img>`` + ``image_seq_len`` ``<image>`` tokens (per tile
when it splits large images) and returns ``pixel_values`` and ``pixel_attention_mask``. The chat
template ends the prompt with ``Assistant:`` and writes the answer after a space, so the answer
is trained on with that space (``answer_prefix``), up to ``<end_of_utterance>``. SmolVLM2
(``smolvlm``, with a video processor that needs torchvision) is not covered.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from PIL import Image
from torch import nn
from transformers import (
    Idefics3Config,
    Idefics3ForConditionalGeneration,
    Idefics3Processor,
)
from transformers.image_utils import SizeDict
from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil

from vlmtune.models.families.base import TinySizes
from vlmtune.models.families.hf import TINY_INIT_STD, TransformersFamily, render_image_question
from vlmtune.models.families.tokenizer import chat_tokenizer

__all__ = [
    "FAMILY",
    "SMOLVLM_CHAT_TEMPLATE",
    "SMOLVLM_SPECIAL_TOKENS",
    "SmolVLMImageTextProcessor",
    "bound_pixels",
]

SMOLVLM_SPECIAL_TOKENS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<end_of_utterance>",
    "<fake_token_around_image>", "<image>", "<global-img>",
    *(f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)),
]  # fmt: skip
# SmolVLM-Instruct's chat template.
SMOLVLM_CHAT_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{message['role'] | capitalize}}"
    "{% if message['content'][0]['type'] == 'image' %}{{':'}}{% else %}{{': '}}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{line['text']}}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}<end_of_utterance>\n"
    "{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)


class SmolVLMImageTextProcessor(Idefics3Processor):
    """transformers' ``Idefics3Processor`` with the
    :class:`~vlmtune.models.families.base.ChatProcessor` members."""

    end_token = "<end_of_utterance>"
    answer_prefix = " "
    """The template writes ``Assistant: {answer}``: the space belongs to the answer's tokens."""
    image_input_keys = ("pixel_values", "pixel_attention_mask")
    token_input_keys: tuple[str, ...] = ()

    def render_prompt(self, question: str) -> str:
        return render_image_question(self, question)

    def image_token_mask(self, input_ids: torch.Tensor) -> torch.Tensor:
        return input_ids == self.image_token_id

    def num_image_tokens(self, image: Any) -> int:
        """Counted on a blank image of the same size (tiles depend on the size when splitting)."""
        blank = Image.new("RGB", (max(image.width, 1), max(image.height, 1)))
        ids = self(text=[self.image_token], images=[[blank]], return_tensors="pt")["input_ids"]
        return int(self.image_token_mask(ids).sum())


def bound_pixels(processor: Any, max_pixels: int) -> None:
    """SmolVLM's image size knob, ``size.longest_edge`` (N x the tile side, 384 in the real
    checkpoints): the longest edge in whole tiles whose square fits ``max_pixels``, one tile at
    least. Larger images are resized to it and cut into tiles plus a global view."""
    image_processor = processor.image_processor
    tile = image_processor.max_image_size["longest_edge"]
    tiles = max(1, math.isqrt(max_pixels) // tile)
    image_processor.size = SizeDict(longest_edge=tiles * tile)


def _build_tiny(texts: Iterable[str], sizes: TinySizes, seed: int) -> tuple[nn.Module, Any]:
    tokenizer = chat_tokenizer(
        texts,
        sizes["vocab_size"],
        SMOLVLM_SPECIAL_TOKENS,
        SMOLVLM_CHAT_TEMPLATE,
        bos_token="<|im_start|>",
        eos_token="<end_of_utterance>",
        pad_token="<|endoftext|>",
        additional_special_tokens=SMOLVLM_SPECIAL_TOKENS[3:],
    )
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SMOLVLM_SPECIAL_TOKENS}
    side = sizes["crop_size"]
    # the connector's pixel shuffle merges 2x2 patches: (crop / patch / 2)^2 tokens per tile
    tokens = (side // sizes["patch_size"] // 2) ** 2
    torch.manual_seed(seed)
    model = Idefics3ForConditionalGeneration(_tiny_config(sizes, len(tokenizer), ids))
    model.generation_config.eos_token_id = [ids["<end_of_utterance>"], ids["<|endoftext|>"]]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    # as the real checkpoints: an image whose longest edge (``size``) is over one tile is cut
    # into tiles plus a global view; at one tile, as here, it is the global view alone
    image_processor = Idefics3ImageProcessorPil(
        do_image_splitting=True,
        size={"longest_edge": side},
        max_image_size={"longest_edge": side},
    )
    processor = SmolVLMImageTextProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        chat_template=SMOLVLM_CHAT_TEMPLATE,
        image_seq_len=tokens,
    )
    return model, processor


def _tiny_config(sizes: TinySizes, vocab: int, ids: dict[str, int]) -> Idefics3Config:
    text = {
        "model_type": "llama",
        "vocab_size": (vocab + 63) // 64 * 64,
        "hidden_size": sizes["hidden_size"],
        "intermediate_size": sizes["intermediate_size"],
        "num_hidden_layers": sizes["num_hidden_layers"],
        "num_attention_heads": sizes["num_attention_heads"],
        "num_key_value_heads": sizes["num_attention_heads"],
        "bos_token_id": ids["<|im_start|>"],
        "eos_token_id": ids["<end_of_utterance>"],
        "pad_token_id": ids["<|endoftext|>"],
        "initializer_range": TINY_INIT_STD,
    }
    vision = {
        "hidden_size": sizes["vision_hidden_size"],
        "intermediate_size": sizes["vision_intermediate_size"],
        "num_hidden_layers": sizes["vision_layers"],
        "num_attention_heads": sizes["vision_heads"],
        "image_size": sizes["crop_size"],
        "patch_size": sizes["patch_size"],
        "initializer_range": TINY_INIT_STD,
    }
    return Idefics3Config(
        text_config=text,
        vision_config=vision,
        scale_factor=2,
        image_token_id=ids["<image>"],
        pad_token_id=ids["<|endoftext|>"],
    )


FAMILY = TransformersFamily(
    name="smolvlm",
    classes={"idefics3": (Idefics3ForConditionalGeneration, SmolVLMImageTextProcessor)},
    projector="connector.",  # pixel shuffle + projection
    vision_tower="vision_model.",  # SigLIP
    vision_modules=("model.vision_model",),
    special_tokens=tuple(SMOLVLM_SPECIAL_TOKENS),
    tiny=_build_tiny,
    bound_pixels=bound_pixels,
)
"""The SmolVLM family (Idefics3 checkpoints)."""
