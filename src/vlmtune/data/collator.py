"""Batching of :class:`~vlmtune.data.dataset.VisionSFTDataset` examples with dynamic padding.

Follows nanoVLM's ``data/collators.py``: sequences are padded to the longest in
the batch (never to a fixed length), ``input_ids`` with the tokenizer's pad id,
``labels`` with -100, and samples the dataset marked as skipped (bad image, too
long) are dropped here and reported in the batch's ``skipped`` list so the
trainer can count them. The image inputs (``pixel_values`` and e.g. ``image_sizes`` or
``image_grid_thw``, whatever the processor gave) are concatenated over the batch, since the
processor already gives each image a fixed layout (Phi-3-V pads to ``num_crops + 1`` crops;
Qwen-VL lists patches), or padded with zeros where it does not (SmolVLM's tiles per image); per-token inputs named in ``token_keys`` (Qwen-VL's
``mm_token_type_ids``) are padded with 0 like the ids.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch

from vlmtune.data.dataset import IGNORE_INDEX

__all__ = ["META_KEYS", "VisionSFTCollator"]

META_KEYS = ("sample_ids", "image_paths", "skipped")
"""Batch entries that describe the batch and are not model inputs."""


class VisionSFTCollator:
    """Pads a list of examples into a batch.

    Output: ``input_ids``, ``attention_mask`` and ``labels`` ``[B, T_max]``,
    ``pixel_values`` ``[B, num_crops + 1, 3, S, S]``, ``image_sizes`` ``[B, 2]``,
    plus ``sample_ids``/``image_paths`` (lists of B) and ``skipped`` (the
    :class:`~vlmtune.data.dataset.SkippedSample` of the dropped examples).
    """

    def __init__(
        self,
        pad_token_id: int,
        padding_side: Literal["right", "left"] = "right",
        token_keys: Sequence[str] = (),
    ) -> None:
        if pad_token_id is None or pad_token_id < 0:
            raise ValueError(f"pad_token_id must be a non-negative token id, got {pad_token_id!r}")
        self.pad_token_id = int(pad_token_id)
        self.padding_side = padding_side
        self.token_keys = tuple(token_keys)

    def __call__(self, examples: Sequence[dict[str, Any]]) -> dict[str, Any]:
        skipped = [ex["skipped"] for ex in examples if "skipped" in ex]
        kept = [ex for ex in examples if "skipped" not in ex]
        batch = self._pad(kept) if kept else self._empty()
        batch["sample_ids"] = [ex["sample_id"] for ex in kept]
        batch["image_paths"] = [ex["image_path"] for ex in kept]
        batch["skipped"] = skipped
        return batch

    def _pad(self, kept: Sequence[dict[str, Any]]) -> dict[str, Any]:
        longest = max(int(ex["input_ids"].shape[0]) for ex in kept)
        input_ids = torch.full((len(kept), longest), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(kept), longest), IGNORE_INDEX, dtype=torch.long)
        attention = torch.zeros((len(kept), longest), dtype=torch.long)
        per_token = {
            k: torch.zeros((len(kept), longest), dtype=torch.long) for k in self.token_keys
        }
        for row, ex in enumerate(kept):
            n = int(ex["input_ids"].shape[0])
            span = slice(0, n) if self.padding_side == "right" else slice(longest - n, longest)
            input_ids[row, span] = ex["input_ids"]
            labels[row, span] = ex["labels"]
            attention[row, span] = 1
            for key, values in per_token.items():
                values[row, span] = ex[key]
        images = {
            key: _concat_padded([ex[key] for ex in kept])
            for key, value in kept[0].items()
            if isinstance(value, torch.Tensor) and key not in ("input_ids", "labels", *per_token)
        }
        batch = {"input_ids": input_ids, "attention_mask": attention, "labels": labels}
        return batch | per_token | images

    @staticmethod
    def _empty() -> dict[str, Any]:
        return {
            "input_ids": torch.zeros((0, 0), dtype=torch.long),
            "attention_mask": torch.zeros((0, 0), dtype=torch.long),
            "labels": torch.zeros((0, 0), dtype=torch.long),
        }


def _concat_padded(tensors: list[torch.Tensor]) -> torch.Tensor:
    """Concatenate along dim 0; tensors whose other dims differ (SmolVLM's tiles per image) are
    first padded with zeros to the largest, which the model reads as padding images."""
    shape = [max(t.shape[d] for t in tensors) for d in range(1, tensors[0].dim())]
    if all(list(t.shape[1:]) == shape for t in tensors):
        return torch.cat(tensors)
    padded = []
    for tensor in tensors:
        out = tensor.new_zeros((tensor.shape[0], *shape))
        out[tuple(slice(0, n) for n in tensor.shape)] = tensor
        padded.append(out)
    return torch.cat(padded)
