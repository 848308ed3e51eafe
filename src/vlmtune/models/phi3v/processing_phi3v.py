"""Phi-3-Vision processor: tokenizer + HD image processor -> batched model inputs.

Follows Microsoft's official Phi-3-V remote code (``processing_phi3_v.py``) for one sample: the
text is split at the ``<|image_k|>`` tags, every chunk is tokenized on its own (so each chunk
starts with BOS), and tag k becomes ``num_img_tokens[k]`` copies of ``-k``. Text without tags is
tokenized in one piece. Beyond the official processor it handles batches (a list of texts with a
list of image lists, padded on the side asked for, with ``attention_mask``) and checks the tags:
per sample they must read ``<|image_1|>`` ... ``<|image_n|>`` in order, once each, with exactly
n images given.

The tokenizer is the class named in ``tokenizer_config.json`` (``LlamaTokenizer`` for Phi-3-V):
a generic auto class can pick a backend that inserts an extra ``▁`` after special tokens.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import transformers
from PIL import Image
from transformers import PreTrainedTokenizerBase
from transformers.feature_extraction_utils import BatchFeature

from vlmtune.models.phi3v.image_processing_phi3v import Phi3VImageProcessor
from vlmtune.models.phi3v.tokenizer_files import save_tokenizer_files
from vlmtune.utils.io import atomic_write_json

__all__ = ["IMAGE_TAG_PATTERN", "Phi3VProcessor", "load_tokenizer"]

IMAGE_TAG_PATTERN = re.compile(r"<\|image_(\d+)\|>")
_PREPROCESSOR_FILE = "preprocessor_config.json"
# what the official image processor hard-codes (336 px crops of 14 px patches, RGB)
_OFFICIAL_GEOMETRY = {"crop_size": 336, "patch_size": 14, "do_convert_rgb": True}
# preprocessor_config.json's auto_map on the hub: classes in the checkpoint's remote code
_OFFICIAL_AUTO_MAP = {
    "AutoProcessor": "processing_phi3_v.Phi3VProcessor",
    "AutoImageProcessor": "image_processing_phi3_v.Phi3VImageProcessor",
}


def load_tokenizer(folder: str | os.PathLike[str]) -> PreTrainedTokenizerBase:
    """The tokenizer class named in ``tokenizer_config.json`` (AutoTokenizer when none is named)."""
    folder = Path(folder)
    config_path = folder / "tokenizer_config.json"
    name = None
    if config_path.is_file():
        name = json.loads(config_path.read_text(encoding="utf-8")).get("tokenizer_class")
    if not name:
        return transformers.AutoTokenizer.from_pretrained(folder)
    cls = getattr(transformers, name, None)
    if cls is None and name.endswith("Fast"):
        cls = getattr(transformers, name[: -len("Fast")], None)
    if not (isinstance(cls, type) and issubclass(cls, PreTrainedTokenizerBase)):
        raise ValueError(
            f"tokenizer_config.json names {name!r}, which is not a transformers tokenizer class"
        )
    return cls.from_pretrained(folder)


class Phi3VProcessor:
    """Phi-3-V processor: ``tokenizer`` + ``image_processor``.

    ``__call__(text, images, padding_side, return_tensors="pt")`` -> ``BatchFeature`` with
    ``input_ids`` [B, T] long, ``attention_mask`` [B, T] long and, when there are images,
    ``pixel_values`` [N, num_crops + 1, 3, S, S] float32 and ``image_sizes`` [N, 2] long, the N
    images of the whole batch in order of appearance.
    """

    def __init__(
        self,
        image_processor: Phi3VImageProcessor,
        tokenizer: PreTrainedTokenizerBase,
        tokenizer_source: str | os.PathLike[str] | None = None,
    ) -> None:
        self.image_processor = image_processor
        self.tokenizer = tokenizer
        # the folder the tokenizer was read from: save_pretrained writes its files back (what
        # transformers 5 would write, only it reads)
        self.tokenizer_source = Path(tokenizer_source) if tokenizer_source is not None else None

    @classmethod
    def from_pretrained(
        cls, folder: str | os.PathLike[str], num_crops: int | None = None, **kwargs: Any
    ) -> Phi3VProcessor:
        """Tokenizer + image processor from a checkpoint folder; ``num_crops`` overrides the saved one."""
        if kwargs:
            raise TypeError(
                f"Phi3VProcessor.from_pretrained got unsupported arguments: {sorted(kwargs)}"
            )
        folder = Path(folder)
        settings: dict[str, Any] = {}
        path = folder / _PREPROCESSOR_FILE
        if path.is_file():
            settings = json.loads(path.read_text(encoding="utf-8"))
        for key in ("auto_map", "image_processor_type", "processor_class"):
            settings.pop(key, None)
        if num_crops is not None:
            settings["num_crops"] = num_crops
        return cls(Phi3VImageProcessor(**settings), load_tokenizer(folder), tokenizer_source=folder)

    def save_pretrained(self, folder: str | os.PathLike[str]) -> None:
        """Write the tokenizer files in the hub's classic form (see ``tokenizer_files``) and
        ``preprocessor_config.json`` (official field names; ``auto_map`` only for the remote-code
        files the folder holds)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_tokenizer_files(self.tokenizer, folder, source=self.tokenizer_source)
        self.image_processor.save_pretrained(folder)
        path = folder / _PREPROCESSOR_FILE
        data = json.loads(path.read_text(encoding="utf-8"))
        data.pop("auto_map", None)
        for key, official in _OFFICIAL_GEOMETRY.items():  # the hub's file leaves them implicit
            if data.get(key) == official:
                data.pop(key)
        data.update(
            {"processor_class": "Phi3VProcessor", "image_processor_type": "Phi3VImageProcessor"}
        )
        auto_map = {
            auto_class: reference
            for auto_class, reference in _OFFICIAL_AUTO_MAP.items()
            if (folder / f"{reference.split('.')[0]}.py").is_file()
        }
        if auto_map:
            data["auto_map"] = auto_map
        atomic_write_json(path, data)

    # ------------------------------------------------------------------ chat contract
    # (models.families.base.ChatProcessor): what data and inference ask of any family's processor
    end_token = "<|end|>"
    """Phi-3's end of turn: trained on after the answer, and a stop token."""
    image_input_keys = ("pixel_values", "image_sizes")
    """Processor outputs describing the images, passed to the model."""
    token_input_keys: tuple[str, ...] = ()
    """No per-token outputs besides ``input_ids`` and ``attention_mask``."""

    def render_prompt(self, question: str) -> str:
        """``<|user|>\\n<|image_1|>\\n{question}<|end|>\\n<|assistant|>\\n``: the tokenizer's chat
        template renders it (Phi-3's format is written directly when it has none)."""
        user = f"<|image_1|>\n{question}"
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template(
                [{"role": "user", "content": user}], tokenize=False, add_generation_prompt=True
            )
        return f"<|user|>\n{user}<|end|>\n<|assistant|>\n"

    @staticmethod
    def image_token_mask(input_ids: torch.Tensor) -> torch.Tensor:
        """Image placeholders are the negative ids ``-k`` (k: the image's index, from 1)."""
        return input_ids < 0

    # ------------------------------------------------------------------ helpers
    @property
    def num_crops(self) -> int:
        return self.image_processor.num_crops

    def num_image_tokens(self, image: Image.Image) -> int:
        """Placeholder tokens ``image`` gets, without processing its pixels."""
        return self.image_processor.num_image_tokens(image)

    def decode(self, *args: Any, **kwargs: Any) -> str:
        return self.tokenizer.decode(*args, **kwargs)

    def batch_decode(self, *args: Any, **kwargs: Any) -> list[str]:
        return self.tokenizer.batch_decode(*args, **kwargs)

    def apply_chat_template(self, *args: Any, **kwargs: Any) -> Any:
        return self.tokenizer.apply_chat_template(*args, **kwargs)

    # ------------------------------------------------------------------ call
    def __call__(
        self,
        text: str | Sequence[str],
        images: Sequence[Image.Image] | Sequence[Sequence[Image.Image]] | Image.Image | None = None,
        padding_side: str | None = None,
        return_tensors: str | None = "pt",
    ) -> BatchFeature:
        """Tokenize ``text`` with image placeholders and process ``images`` (see class docstring).

        A single string takes a list of images (or one image); a list of strings takes a list of
        image lists, one per string (``None`` for a text-only batch).
        """
        if return_tensors not in (None, "pt"):
            raise ValueError(f"return_tensors={return_tensors!r}: only 'pt' is supported")
        texts, image_lists = _normalise_inputs(text, images)
        flat = [image for sample in image_lists for image in sample]
        pixels = self.image_processor(flat, return_tensors="pt") if flat else None
        tokens = pixels["num_img_tokens"].tolist() if pixels is not None else []
        rows, start = [], 0
        for index, (sample_text, sample_images) in enumerate(zip(texts, image_lists, strict=True)):
            counts = tokens[start : start + len(sample_images)]
            rows.append(self._sample_ids(sample_text, counts, index))
            start += len(sample_images)
        data = self._pad(rows, padding_side or self.tokenizer.padding_side)
        if pixels is not None:
            data["pixel_values"] = pixels["pixel_values"]
            data["image_sizes"] = pixels["image_sizes"]
        return BatchFeature(data=data)

    def _sample_ids(self, text: str, num_tokens: list[int], index: int) -> list[int]:
        """Official id layout for one sample (``num_tokens[k-1]`` placeholders ``-k`` per tag)."""
        tags = [int(k) for k in IMAGE_TAG_PATTERN.findall(text)]
        expected = list(range(1, len(num_tokens) + 1))
        if tags != expected:
            raise ValueError(
                f"sample {index}: image tags {[f'<|image_{k}|>' for k in tags]} do not match the "
                f"{len(num_tokens)} image(s) given; expected {[f'<|image_{k}|>' for k in expected]} "
                "(numbered from 1, in order, once each)"
            )
        if not tags:
            return list(self.tokenizer(text).input_ids)
        chunks = [self.tokenizer(chunk).input_ids for chunk in IMAGE_TAG_PATTERN.split(text)[::2]]
        ids: list[int] = list(chunks[0])
        for k, chunk in enumerate(chunks[1:], start=1):
            ids.extend([-k] * num_tokens[k - 1])
            ids.extend(chunk)
        return ids

    def _pad(self, rows: list[list[int]], side: str) -> dict[str, torch.Tensor]:
        if side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {side!r}")
        pad_id = self.tokenizer.pad_token_id
        longest = max(len(row) for row in rows)
        if pad_id is None and any(len(row) != longest for row in rows):
            raise ValueError(
                "the tokenizer has no pad token; cannot pad a batch of different lengths"
            )
        ids = torch.full(
            (len(rows), longest), pad_id if pad_id is not None else 0, dtype=torch.long
        )
        mask = torch.zeros((len(rows), longest), dtype=torch.long)
        for i, row in enumerate(rows):
            span = slice(longest - len(row), longest) if side == "left" else slice(0, len(row))
            ids[i, span] = torch.tensor(row, dtype=torch.long)
            mask[i, span] = 1
        return {"input_ids": ids, "attention_mask": mask}


def _normalise_inputs(text: Any, images: Any) -> tuple[list[str], list[list[Image.Image]]]:
    """-> (texts, one image list per text), with clear errors for shapes that do not fit."""
    if isinstance(text, str):
        if images is None:
            return [text], [[]]
        if isinstance(images, Image.Image):
            return [text], [[images]]
        images = list(images)
        if not all(isinstance(image, Image.Image) for image in images):
            raise ValueError("for a single text, images must be a list of PIL images")
        return [text], [images]
    texts = list(text)
    if not texts or not all(isinstance(t, str) for t in texts):
        raise ValueError("text must be a string or a non-empty list of strings")
    if images is None:
        return texts, [[] for _ in texts]
    images = list(images)
    if len(images) != len(texts):
        raise ValueError(
            f"{len(texts)} texts but {len(images)} image lists; give one image list per text"
        )
    image_lists = []
    for i, sample in enumerate(images):
        sample = [] if sample is None else sample
        if isinstance(sample, Image.Image) or not all(
            isinstance(image, Image.Image) for image in sample
        ):
            raise ValueError(
                f"images[{i}] must be a list of PIL images (a batch takes one list per text)"
            )
        image_lists.append(list(sample))
    return texts, image_lists
