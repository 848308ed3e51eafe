"""Sequence helpers of the Phi-3-V model: positions from a padded mask, packed rows, and the
KV cache's argument and output names in the installed transformers (renamed within 5.x)."""

from __future__ import annotations

import functools
import inspect
from typing import Any

import torch
from transformers import Phi3Model
from transformers.modeling_outputs import CausalLMOutputWithPast

__all__ = ["cache_argument", "cache_output_field", "is_packed", "positions_from_mask"]


def positions_from_mask(attention_mask: torch.Tensor, length: int) -> torch.LongTensor:
    """Positions counted over real tokens (left padding gets the same positions as none):
    [B, T_total] -> [B, length] (the last ``length`` columns)."""
    positions = attention_mask.long().cumsum(-1) - 1
    positions = positions.clamp_min(0)
    return positions[:, -length:]


def is_packed(
    position_ids: torch.Tensor | None, attention_mask: torch.Tensor | None, cache: Any
) -> bool:
    """True for packed rows: positions that restart within a row, no mask, no cache given."""
    if position_ids is None or attention_mask is not None or cache is not None:
        return False
    return bool((position_ids[..., 1:] <= position_ids[..., :-1]).any())


@functools.cache
def cache_argument() -> str:
    """The KV cache's argument name in this transformers: ``cache`` (5.2x on; the old name is
    deprecated there) or ``past_key_values`` (earlier 5.x)."""
    params = inspect.signature(Phi3Model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


@functools.cache
def cache_output_field() -> str:
    """The KV cache's field name in transformers' model outputs (renamed with the argument)."""
    return "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"
