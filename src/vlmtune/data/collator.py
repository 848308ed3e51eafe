"""Batching of :class:`~vlmtune.data.dataset.VisionSFTDataset` examples with dynamic padding.

Follows nanoVLM's ``data/collators.py``: sequences are padded to the longest in
the batch (never to a fixed length), ``input_ids`` with the tokenizer's pad id,
``labels`` with -100, and samples the dataset marked as skipped (bad image, too
long) are dropped here and reported in the batch's ``skipped`` list so the
trainer can count them. Pixel values are concatenated over images, since the
processor already padded every image to ``num_crops + 1`` crops.
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

    def __init__(self, pad_token_id: int, padding_side: Literal["right", "left"] = "right") -> None:
        if pad_token_id is None or pad_token_id < 0:
            raise ValueError(f"pad_token_id must be a non-negative token id, got {pad_token_id!r}")
        self.pad_token_id = int(pad_token_id)
        self.padding_side = padding_side

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
        for row, ex in enumerate(kept):
            n = int(ex["input_ids"].shape[0])
            span = slice(0, n) if self.padding_side == "right" else slice(longest - n, longest)
            input_ids[row, span] = ex["input_ids"]
            labels[row, span] = ex["labels"]
            attention[row, span] = 1
        return {
            "input_ids": input_ids,
            "attention_mask": attention,
            "labels": labels,
            "pixel_values": torch.cat([ex["pixel_values"] for ex in kept]),
            "image_sizes": torch.cat([ex["image_sizes"] for ex in kept]),
        }

    @staticmethod
    def _empty() -> dict[str, Any]:
        return {
            "input_ids": torch.zeros((0, 0), dtype=torch.long),
            "attention_mask": torch.zeros((0, 0), dtype=torch.long),
            "labels": torch.zeros((0, 0), dtype=torch.long),
        }
