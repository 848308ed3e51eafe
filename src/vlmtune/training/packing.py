"""Packed training data for a model: where its rotary embedding changes with the sequence length.

:mod:`vlmtune.data.packing` packs samples into rows; this module decides, from the model's
config, which samples must not share a row. LongRoPE (Phi-3's ``rope_type: longrope``) uses
its long factors for a whole forward pass once its longest position passes
``original_max_position_embeddings``; packed positions restart per sample, so a row of
samples all at or all above that length gets, for each sample, the factors the sample gets
alone. Other rotary embeddings do not depend on the length in training and need no separation.
"""

from __future__ import annotations

from typing import Any

from vlmtune.data.dataset import VisionSFTDataset
from vlmtune.data.packing import PackedDataset
from vlmtune.utils.logging import get_logger

__all__ = ["packed_train_dataset", "rope_switch_length"]

log = get_logger(__name__)


def rope_switch_length(model: Any) -> int | None:
    """The sample length above which the model's rotary embedding switches factors (LongRoPE's
    ``original_max_position_embeddings``), or None when it does not depend on the length."""
    config = model.config
    rope = getattr(config, "rope_parameters", None) or {}
    if rope.get("rope_type") != "longrope":
        return None
    limit = rope.get("original_max_position_embeddings") or getattr(
        config, "original_max_position_embeddings", None
    )
    return int(limit) if limit else None


def packed_train_dataset(dataset: VisionSFTDataset, max_tokens: int, model: Any) -> PackedDataset:
    """``dataset`` packed into rows of at most ``max_tokens`` tokens, samples longer than the
    model's :func:`rope_switch_length` kept apart from shorter ones."""
    packed = PackedDataset(dataset, max_tokens, separate_above=rope_switch_length(model))
    log.info(
        "packing: %d samples in %d rows of at most %d tokens (%.1f%% of the rows' room empty)",
        packed.num_samples,
        len(packed),
        max_tokens,
        100 * packed.pad_fraction(),
    )
    return packed
