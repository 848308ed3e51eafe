"""Padding-free packing: several training samples per row, each attending only to itself.

Samples are packed into rows of at most ``max_tokens`` tokens by best-fit decreasing (longest
first, each into the fullest row it still fits; at least as tight as first-fit decreasing).
A packed row is the samples' ids one after the other, with no padding, and

* ``position_ids`` restarting at 0 at each sample: transformers (``masking_utils``) reads a
  restart as a sequence boundary when no ``attention_mask`` is given, and builds a
  block-diagonal causal mask for SDPA and eager attention; flash attention 2 takes its varlen
  path from the same position ids. No sample attends to another;
* ``labels`` at -100 over every image placeholder (the dataset's labels) and at the first
  token of each sample, so the loss's shift never trains one sample's last token to predict
  the next sample's first;
* image placeholders renumbered along the row (the k-th image of the row is ``-k``) and
  ``pixel_values``/``image_sizes`` concatenated in the same order, so each image's features
  land on its own placeholders, as they do across an unpacked batch.

Rotary embeddings whose frequencies depend on the sequence length (Phi-3's LongRoPE switches
to its long factors once the longest position passes ``original_max_position_embeddings``)
read the longest *sample* of a row, since positions restart: ``separate_above`` keeps samples
longer than that limit out of rows of shorter ones, so each sample gets the factors it gets
unpacked. The loss is a mean over the labelled tokens, which packing leaves the same.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from typing import Any

import torch

from vlmtune.data.collator import VisionSFTCollator
from vlmtune.data.dataset import IGNORE_INDEX

__all__ = ["PackedDataset", "PackingCollator", "pack_lengths", "pack_row"]


def pack_lengths(
    lengths: Sequence[int], max_tokens: int, separate_above: int | None = None
) -> list[list[int]]:
    """Indices of ``lengths`` grouped into rows of at most ``max_tokens`` tokens.

    Best-fit decreasing: longest first, each into the row with the least room that still holds
    it. With ``separate_above``, samples longer than it and the others are packed apart (no
    row mixes them). Deterministic; rows come ordered by their first (longest) sample.
    Raises ``ValueError`` for a sample longer than ``max_tokens``.
    """
    too_long = [i for i, n in enumerate(lengths) if n > max_tokens]
    if too_long:
        raise ValueError(
            f"sample {too_long[0]} has {lengths[too_long[0]]} tokens > pack_max_tokens {max_tokens}"
        )
    if separate_above is None:
        groups = [list(range(len(lengths)))]
    else:
        groups = [
            [i for i, n in enumerate(lengths) if n > separate_above],
            [i for i, n in enumerate(lengths) if n <= separate_above],
        ]
    rows: list[list[int]] = []
    for group in groups:
        rows += _best_fit_decreasing(group, lengths, max_tokens)
    return rows


def _best_fit_decreasing(
    indices: list[int], lengths: Sequence[int], max_tokens: int
) -> list[list[int]]:
    order = sorted(indices, key=lambda i: (-lengths[i], i))
    rows: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (room left, row number), sorted
    for i in order:
        slot = bisect.bisect_left(free, (lengths[i], -1))
        if slot == len(free):
            rows.append([i])
            room, row = max_tokens - lengths[i], len(rows) - 1
        else:
            room, row = free.pop(slot)
            rows[row].append(i)
            room -= lengths[i]
        if room > 0:
            bisect.insort(free, (room, row))
    return rows


class PackedDataset(torch.utils.data.Dataset):
    """A dataset of packed rows over a sample dataset that has ``lengths()``.

    ``__getitem__(i)`` returns ``{"pack": [sample, ...]}`` (the samples of row ``i`` as the
    wrapped dataset gives them); :class:`PackingCollator` turns it into one row. The rows are
    fixed at construction (the order of rows is the sampler's), so a resumed run sees the rows
    it would have seen.
    """

    def __init__(self, dataset: Any, max_tokens: int, separate_above: int | None = None) -> None:
        self.dataset = dataset
        self.max_tokens = max_tokens
        sample_lengths = list(dataset.lengths())
        self.rows = pack_lengths(sample_lengths, max_tokens, separate_above)
        self._lengths = [sum(sample_lengths[i] for i in row) for row in self.rows]
        self.num_samples = len(sample_lengths)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"pack": [self.dataset[i] for i in self.rows[index]]}

    def lengths(self) -> list[int]:
        """Tokens in each packed row."""
        return list(self._lengths)

    def pad_fraction(self) -> float:
        """Share of the rows' ``max_tokens`` left empty (what padding to ``max_tokens`` would waste;
        the rows themselves carry no padding)."""
        return 1.0 - sum(self._lengths) / max(len(self.rows) * self.max_tokens, 1)


def pack_row(examples: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """One packed row from dataset examples (see the module docstring).

    Returns ``input_ids``, ``labels``, ``position_ids`` ``[1, T]`` (T the sum of the lengths),
    ``pixel_values`` ``[N, crops + 1, 3, S, S]`` and ``image_sizes`` ``[N, 2]`` for the N images.
    """
    ids, labels, positions = [], [], []
    images = 0
    for ex in examples:
        sample = ex["input_ids"].clone()
        placeholders = sample < 0
        sample[placeholders] -= images  # image k of this sample is image images + k of the row
        images += int(ex["image_sizes"].shape[0])
        target = ex["labels"].clone()
        target[0] = IGNORE_INDEX
        ids.append(sample)
        labels.append(target)
        positions.append(torch.arange(sample.shape[0], dtype=torch.long))
    return {
        "input_ids": torch.cat(ids).unsqueeze(0),
        "labels": torch.cat(labels).unsqueeze(0),
        "position_ids": torch.cat(positions).unsqueeze(0),
        "pixel_values": torch.cat([ex["pixel_values"] for ex in examples]),
        "image_sizes": torch.cat([ex["image_sizes"] for ex in examples]),
    }


class PackingCollator:
    """Collates :class:`PackedDataset` items into one packed row; other batches (evaluation)
    are padded by :class:`~vlmtune.data.collator.VisionSFTCollator`.

    A packed batch has ``input_ids``, ``labels``, ``position_ids`` ``[1, T]``, no
    ``attention_mask`` (its absence is what lets transformers read the position ids as
    sequence boundaries), the images, and the metadata keys of the padded batches. Samples the
    dataset marked as skipped are left out of the row and listed in ``skipped``.
    """

    def __init__(self, pad_token_id: int) -> None:
        self.padded = VisionSFTCollator(pad_token_id)

    def __call__(self, items: Sequence[dict[str, Any]]) -> dict[str, Any]:
        if not items or "pack" not in items[0]:
            return self.padded(items)
        if len(items) != 1:
            raise ValueError(
                f"a packed batch is one row, got {len(items)} packs (per-device batch size must be 1)"
            )
        examples = items[0]["pack"]
        kept = [ex for ex in examples if "skipped" not in ex]
        batch = pack_row(kept) if kept else self.padded([])
        batch["sample_ids"] = [ex["sample_id"] for ex in kept]
        batch["image_paths"] = [ex["image_path"] for ex in kept]
        batch["skipped"] = [ex["skipped"] for ex in examples if "skipped" in ex]
        return batch
