"""Image tokens per photo, as the reference model's processor counts them, for tools below the models.

The data card (``vlmtune prepare``, ``vlmtune inspect``) shows what the photos cost in
sequence length. The data layer may not import the models, so the CLI hands it the
counter made here: the reference model's (Phi-3-V's) image processor's own
``num_tokens_for_size``, never a copy of its formula.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

__all__ = ["DEFAULT_NUM_CROPS", "image_token_counter"]

DEFAULT_NUM_CROPS = 16
"""The reference checkpoint's (Phi-3-vision-128k-instruct's) ``num_crops``."""


def image_token_counter(num_crops: int = DEFAULT_NUM_CROPS) -> Callable[[int, int], int]:
    """``(width, height) -> image tokens`` of one photo at ``num_crops``.

    The processor (and torch with it) is loaded at the first count, not here, so a command
    that stops before its data card costs no import.
    """
    if num_crops < 1:
        raise ValueError(f"num_crops must be >= 1, got {num_crops}")

    def count(width: int, height: int) -> int:
        return _processor(num_crops).num_tokens_for_size(width, height)

    return count


@functools.cache
def _processor(num_crops: int) -> Any:  # the class is imported lazily (torch)
    from vlmtune.models.phi3v.image_processing_phi3v import Phi3VImageProcessor

    return Phi3VImageProcessor(num_crops=num_crops)
