"""Qwen2.5-VL (and Qwen2-VL) as a family, on transformers' own classes.

The model is ``Qwen2_5_VLForConditionalGeneration`` (``Qwen2VLForConditionalGeneration`` for a
``qwen2_vl`` checkpoint): a ViT with windowed attention (``model.visual``), a 2x2 patch merger
(``model.visual.merger``, the projector) and the Qwen2 decoder (``model.language_model``). Its
multimodal RoPE positions are computed by the model from ``image_grid_thw`` and the per-token
``mm_token_type_ids`` the processor returns; vlmtune passes every processor output and never
its own position ids. The processor is transformers' with images and text only: the stock one
also builds a video processor, which imports torchvision (not a vlmtune dependency). Images go
through the PIL image processor; their size is bounded by ``max_pixels`` (``size.longest_edge``
of the processor config), which ``model.max_image_pixels`` sets; ``num_crops`` has no meaning here.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn
from transformers import (
    PreTrainedTokenizerFast,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLProcessor,
    Qwen2VLForConditionalGeneration,
    Qwen2VLProcessor,
)
from transformers.image_utils import SizeDict
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from vlmtune.models.families.base import TinySizes
from vlmtune.models.families.hf import TINY_INIT_STD, TransformersFamily, render_image_question
from vlmtune.models.families.tokenizer import chat_tokenizer
from vlmtune.utils.config import ConfigError

__all__ = [
    "FAMILY",
    "QWEN_CHAT_TEMPLATE",
    "QWEN_SPECIAL_TOKENS",
    "Qwen2VLImageTextProcessor",
    "Qwen2_5_VLImageTextProcessor",
    "bound_pixels",
    "train_tokenizer",
]

QWEN_SPECIAL_TOKENS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
    "<|image_pad|>", "<|video_pad|>",
]  # fmt: skip
# Qwen2.5-VL-Instruct's chat template (images and videos as content parts; a default system turn).
QWEN_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}"
    "Picture {{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}"
    "Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


class Qwen2_5_VLImageTextProcessor(Qwen2_5_VLProcessor):
    """transformers' ``Qwen2_5_VLProcessor`` without its video processor (which needs torchvision),
    with the :class:`~vlmtune.models.families.base.ChatProcessor` members."""

    end_token = "<|im_end|>"
    image_input_keys = ("pixel_values", "image_grid_thw")
    token_input_keys = ("mm_token_type_ids",)

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):  # noqa: ANN001
        super().__init__(image_processor, tokenizer, chat_template=chat_template, **kwargs)

    def render_prompt(self, question: str) -> str:
        return render_image_question(self, question)

    def image_token_mask(self, input_ids: torch.Tensor) -> torch.Tensor:
        return input_ids == self.image_token_id  # <|image_pad|>, one per merged 2x2 patch group

    def num_image_tokens(self, image: Any) -> int:
        return _merged_patches(self, image)


class Qwen2VLImageTextProcessor(Qwen2VLProcessor):
    """transformers' ``Qwen2VLProcessor`` without its video processor, as the one above."""

    end_token = "<|im_end|>"
    image_input_keys = ("pixel_values", "image_grid_thw")
    token_input_keys = ("mm_token_type_ids",)

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):  # noqa: ANN001
        super().__init__(image_processor, tokenizer, chat_template=chat_template, **kwargs)

    def render_prompt(self, question: str) -> str:
        return render_image_question(self, question)

    def image_token_mask(self, input_ids: torch.Tensor) -> torch.Tensor:
        return input_ids == self.image_token_id

    def num_image_tokens(self, image: Any) -> int:
        return _merged_patches(self, image)


def _merged_patches(processor: Any, image: Any) -> int:
    """Merged patches of ``image`` at the size the image processor resizes it to (raises
    ``ValueError`` for an image it refuses, e.g. one too elongated)."""
    image_processor = processor.image_processor
    patches = image_processor.get_number_of_image_patches(image.height, image.width, {})
    return int(patches // image_processor.merge_size**2)


def bound_pixels(processor: Any, max_pixels: int) -> None:
    """Qwen's image size knob: ``max_pixels`` (the image processor's ``size.longest_edge``), the
    most pixels an image keeps; it is resized, aspect kept, to a multiple of 28 pixels a side
    (``max_pixels / 784`` image tokens at most)."""
    image_processor = processor.image_processor
    factor = image_processor.patch_size * image_processor.merge_size
    smallest = max(image_processor.size.shortest_edge or 0, factor * factor)
    if max_pixels < smallest:
        raise ConfigError(
            f"model.max_image_pixels={max_pixels} is below the {smallest} pixels of this "
            "checkpoint's smallest image (min_pixels)"
        )
    image_processor.size = SizeDict(
        longest_edge=max_pixels, shortest_edge=image_processor.size.shortest_edge
    )


def train_tokenizer(texts: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Byte-level BPE trained on ``texts`` with Qwen's special tokens and chat template."""
    return chat_tokenizer(
        texts,
        vocab_size,
        QWEN_SPECIAL_TOKENS,
        QWEN_CHAT_TEMPLATE,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=QWEN_SPECIAL_TOKENS[1:],
    )


def _build_tiny(texts: Iterable[str], sizes: TinySizes, seed: int) -> tuple[nn.Module, Any]:
    tokenizer = train_tokenizer(texts, sizes["vocab_size"])
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN_SPECIAL_TOKENS}
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(_tiny_config(sizes, len(tokenizer), ids))
    model.generation_config.eos_token_id = [ids["<|im_end|>"], ids["<|endoftext|>"]]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    factor = sizes["patch_size"] * 2
    image_processor = Qwen2VLImageProcessorPil(
        min_pixels=factor * factor,
        # the pixels of the tiny Phi-3-V's crop and global view: 30 tokens of a 224x280 photo
        max_pixels=2 * max(sizes["crop_size"], factor) ** 2,
        patch_size=sizes["patch_size"],
        merge_size=2,
        temporal_patch_size=2,
    )
    processor = Qwen2_5_VLImageTextProcessor(
        image_processor=image_processor, tokenizer=tokenizer, chat_template=QWEN_CHAT_TEMPLATE
    )
    return model, processor


def _tiny_config(sizes: TinySizes, vocab: int, ids: dict[str, int]) -> Qwen2_5_VLConfig:
    hidden, heads = sizes["hidden_size"], sizes["num_attention_heads"]
    half = hidden // heads // 2  # rotary pairs per head, split over (time, height, width)
    section = [half - 2 * (3 * half // 8), 3 * half // 8, 3 * half // 8]
    text = {
        "vocab_size": (vocab + 63) // 64 * 64,
        "hidden_size": hidden,
        "intermediate_size": sizes["intermediate_size"],
        "num_hidden_layers": sizes["num_hidden_layers"],
        "num_attention_heads": heads,
        "num_key_value_heads": heads,
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": 10000.0,
            "mrope_section": section,
        },
        "bos_token_id": ids["<|endoftext|>"],
        "eos_token_id": ids["<|im_end|>"],
        "pad_token_id": ids["<|endoftext|>"],
        "tie_word_embeddings": False,
        "initializer_range": TINY_INIT_STD,
    }
    depth = sizes["vision_layers"]
    vision = {
        "depth": depth,
        "hidden_size": sizes["vision_hidden_size"],
        "intermediate_size": sizes["vision_intermediate_size"],
        "num_heads": sizes["vision_heads"],
        "out_hidden_size": hidden,
        "patch_size": sizes["patch_size"],
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "window_size": sizes["patch_size"] * 4,
        "fullatt_block_indexes": [depth - 1],
        "initializer_range": TINY_INIT_STD,
    }
    return Qwen2_5_VLConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
    )


FAMILY = TransformersFamily(
    name="qwen2_5_vl",
    classes={
        "qwen2_5_vl": (Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLImageTextProcessor),
        "qwen2_vl": (Qwen2VLForConditionalGeneration, Qwen2VLImageTextProcessor),
    },
    projector="visual.merger.",  # the 2x2 patch merger; the rest of model.visual is the ViT
    vision_tower="visual.",
    vision_modules=("model.visual.patch_embed", "model.visual.blocks"),
    special_tokens=tuple(QWEN_SPECIAL_TOKENS),
    tiny=_build_tiny,
    bound_pixels=bound_pixels,
)
"""The Qwen2.5-VL family (also Qwen2-VL checkpoints)."""
