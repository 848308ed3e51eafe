"""The size of the tiny random Phi-3-V that the tests build: one place for every suite.

Hidden 32, two decoder layers, a 56 px CLIP crop and a 400-token vocabulary trained on
the catalog: a model that builds in about a second and trains in seconds on one core,
with every code path of the real model. Tests that need another size say which field
differs (``tiny_sizes(num_hidden_layers=1)``) rather than writing the whole set again.
"""

from __future__ import annotations

from typing import Any

__all__ = ["TINY_SIZES", "tiny_overrides", "tiny_sizes"]

TINY_SIZES: dict[str, int] = {
    "vocab_size": 400,
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 64,
    "vision_hidden_size": 32,
    "vision_intermediate_size": 64,
    "crop_size": 56,
}


def tiny_sizes(**changes: Any) -> dict[str, Any]:
    """``InitModelArgs`` keyword arguments of the tiny model, with ``changes`` applied."""
    return {**TINY_SIZES, **changes}


def tiny_overrides(**changes: Any) -> list[str]:
    """The same sizes as ``key=value`` words for ``vlmtune init-model``."""
    return [f"{key}={value}" for key, value in tiny_sizes(**changes).items()]
