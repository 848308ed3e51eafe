"""Qwen2.5-VL (and Qwen2-VL) as a family, on transformers' own classes.

The model is ``Qwen2_5_VLForConditionalGeneration`` (``Qwen2VLForConditionalGeneration`` for a
``qwen2_vl`` checkpoint): a ViT with windowed attention (``model.visual``), a 2x2 patch merger
(``model.visual.merger``, the projector) and the Qwen2 decoder (``model.language_model``). Its
multimodal RoPE positions are computed by the model from ``image_grid_thw`` and the per-token
``mm_token_type_ids`` the processor returns; vlmtune passes every processor output and never
its own position ids. The processor is transformers' with images and text only: the stock one
also builds a video processor, which imports torchvision (not a vlmtune dependency). Images go
through the PIL image processor; ``num_crops`` has no meaning here (the image size is bounded by
``max_pixels`` of ``preprocessor_config.json``).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
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
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from vlmtune.models.families.base import TinySizes
from vlmtune.models.families.hf import (
    load_pretrained,
    model_type_of,
    processor_class_of,
    render_image_question,
    save_pretrained_folder,
    state_in_model_names,
    vllm_serve_command,
)
from vlmtune.models.families.tokenizer import train_byte_bpe

__all__ = [
    "QWEN2_5_VL",
    "QWEN_CHAT_TEMPLATE",
    "QWEN_SPECIAL_TOKENS",
    "Qwen2VLImageTextProcessor",
    "Qwen2_5_VLImageTextProcessor",
    "QwenVLFamily",
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


_CLASSES = {
    "qwen2_5_vl": (Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLImageTextProcessor),
    "qwen2_vl": (Qwen2VLForConditionalGeneration, Qwen2VLImageTextProcessor),
}


class QwenVLFamily:
    """Qwen2.5-VL / Qwen2-VL: ``model.visual.merger`` is the projector, the rest of
    ``model.visual`` the vision tower, everything else the language model."""

    name = "qwen2_5_vl"
    model_types = tuple(_CLASSES)
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
    vision_modules = ("model.visual.patch_embed", "model.visual.blocks")
    special_tokens = tuple(QWEN_SPECIAL_TOKENS)
    supports_packing = False

    def component_of(self, param_name: str) -> str:
        if "visual.merger." in param_name:
            return "projector"
        if "visual." in param_name:
            return "vision_tower"
        return "language_model"

    def load_model(
        self, folder: Path, dtype: torch.dtype, attn_implementation: str = "sdpa"
    ) -> nn.Module:
        model_class = _CLASSES[model_type_of(folder)][0]
        return load_pretrained(model_class, folder, dtype, attn_implementation)

    def load_processor(self, folder: Path, num_crops: int | None = None) -> Any:
        del num_crops  # the image size is bounded by the image processor's max_pixels
        by_type = {key: classes[1] for key, classes in _CLASSES.items()}
        processor_class = processor_class_of(folder, by_type, Qwen2_5_VLImageTextProcessor)
        return processor_class.from_pretrained(str(folder))

    def checkpoint_state(self, folder: Path, model: nn.Module) -> dict[str, torch.Tensor]:
        return state_in_model_names(_CLASSES[model_type_of(folder)][0], folder)

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
        ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN_SPECIAL_TOKENS}
        torch.manual_seed(seed)
        model = Qwen2_5_VLForConditionalGeneration(_tiny_config(sizes, len(tokenizer), ids))
        model.generation_config.eos_token_id = [ids["<|im_end|>"], ids["<|endoftext|>"]]
        model.generation_config.pad_token_id = ids["<|endoftext|>"]
        factor = sizes["patch_size"] * 2
        image_processor = Qwen2VLImageProcessorPil(
            min_pixels=factor * factor,
            max_pixels=max(sizes["crop_size"], factor) ** 2,
            patch_size=sizes["patch_size"],
            merge_size=2,
            temporal_patch_size=2,
        )
        processor = Qwen2_5_VLImageTextProcessor(
            image_processor=image_processor, tokenizer=tokenizer, chat_template=QWEN_CHAT_TEMPLATE
        )
        return model, processor


def _tokenizer(texts: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    tok = train_byte_bpe(texts, vocab_size, QWEN_SPECIAL_TOKENS)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=QWEN_SPECIAL_TOKENS[1:],
        chat_template=QWEN_CHAT_TEMPLATE,
        padding_side="right",
        clean_up_tokenization_spaces=False,
        model_max_length=4096,
    )


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


QWEN2_5_VL = QwenVLFamily()
"""The Qwen2.5-VL family (also Qwen2-VL checkpoints)."""
