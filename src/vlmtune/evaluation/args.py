"""Typed configuration of ``vlmtune eval`` and ``vlmtune predict`` (one dataclass per concern).

:class:`GenerationArgs` says how listings are generated (shared by evaluation,
prediction and the evaluation run during training); :class:`EvalArgs` and
:class:`PredictArgs` say what is evaluated or predicted and where results go.
YAML files map 1:1 onto these dataclasses (``generation:`` and ``prompt:``
sections); every field is validated in ``__post_init__`` with a message naming it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from vlmtune.data.catalog import CatalogColumns
from vlmtune.data.prompts import PromptArgs

__all__ = ["EvalArgs", "GenerationArgs", "PredictArgs"]


@dataclass
class GenerationArgs:
    """How the model writes a listing: greedy decoding with a KV cache by default."""

    max_new_tokens: int = 64
    """Most tokens generated per listing; generation stops earlier at ``<|end|>`` or EOS."""
    batch_size: int = 8
    """Images per ``generate`` call (prompts are left-padded to the longest in the batch)."""
    num_beams: int = 1
    """Beam width; 1 is greedy (or sampling with ``do_sample``)."""
    do_sample: bool = False
    """Sample instead of taking the most likely token (non-deterministic unless seeded)."""

    def __post_init__(self) -> None:
        for name in ("max_new_tokens", "batch_size", "num_beams"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: must be a positive integer, got {value!r}")


@dataclass
class EvalArgs:
    """``vlmtune eval``: generate a listing for every image of a split and score it field by field."""

    model: Path | None = None
    """Model to evaluate: an official-layout checkpoint, a PEFT adapter folder or a training run folder."""
    data: Path | None = None
    """Prepared dataset folder (written by ``vlmtune prepare``)."""
    split: Literal["train", "val", "test"] = "test"
    """Which split to evaluate; baselines always come from the ``train`` split when it exists."""
    limit: int | None = None
    """Evaluate only the first N rows of the split (all rows when unset)."""
    base_model: Path | None = None
    """Optional model before fine-tuning, evaluated on the same rows for a before/after comparison."""
    out: Path | None = None
    """Output folder for predictions.jsonl, metrics.json and report.html. Default: ``RUN/eval-SPLIT``
    for a training run folder, else ``eval-MODELNAME-SPLIT`` in the working directory."""
    dtype: Literal["float32", "bfloat16", "float16"] | None = None
    """Weights' dtype at inference (default: as the checkpoint loader decides)."""
    device: str | None = None
    """Torch device (``cpu``, ``cuda``, ``cuda:1``); default cuda when available, else cpu."""
    seed: int = 0
    """Seed for sampling (``generation.do_sample``); greedy decoding does not depend on it."""
    generation: GenerationArgs = field(default_factory=GenerationArgs)
    """Decoding settings."""
    prompt: PromptArgs = field(default_factory=PromptArgs)
    """The prompt the model was trained with (style, question, fields)."""

    def __post_init__(self) -> None:
        if self.model is None or not str(self.model).strip():
            raise ValueError("model: required (a checkpoint, adapter or run folder; --model)")
        if self.data is None or not str(self.data).strip():
            raise ValueError("data: required (a prepared dataset folder; --data)")
        if self.limit is not None and (isinstance(self.limit, bool) or self.limit < 1):
            raise ValueError(f"limit: must be a positive integer or unset, got {self.limit!r}")
        if self.split not in ("train", "val", "test"):
            raise ValueError(f"split: {self.split!r} is not one of train, val, test")
        self.model, self.data = Path(self.model), Path(self.data)
        self.base_model = Path(self.base_model) if self.base_model is not None else None
        self.out = Path(self.out) if self.out is not None else None


@dataclass
class PredictArgs:
    """``vlmtune predict``: one listing per image file, written as CSV."""

    model: Path | None = None
    """Model to run: an official-layout checkpoint, a PEFT adapter folder or a training run folder."""
    inputs: list[Path] = field(default_factory=list)
    """Image files and/or folders (a folder contributes its image files, recursively, sorted)."""
    out: Path = Path("predictions.csv")
    """CSV written with columns image, title, category, price (named by ``columns``), raw_text, error."""
    columns: CatalogColumns = field(default_factory=CatalogColumns)
    """Names of the title, category and price columns of the CSV (DBQ names by default)."""
    dtype: Literal["float32", "bfloat16", "float16"] | None = None
    """Weights' dtype at inference (default: as the checkpoint loader decides)."""
    device: str | None = None
    """Torch device; default cuda when available, else cpu."""
    seed: int = 0
    """Seed for sampling (``generation.do_sample``)."""
    generation: GenerationArgs = field(default_factory=GenerationArgs)
    """Decoding settings."""
    prompt: PromptArgs = field(default_factory=PromptArgs)
    """The prompt the model was trained with."""

    def __post_init__(self) -> None:
        if self.model is None or not str(self.model).strip():
            raise ValueError("model: required (a checkpoint, adapter or run folder; --model)")
        if not self.inputs:
            raise ValueError("inputs: give at least one image file or folder")
        if str(self.out).strip() in ("", "."):
            raise ValueError(f"out: {str(self.out)!r} is not a file path")
        self.model = Path(self.model)
        self.inputs = [Path(p) for p in self.inputs]
        self.out = Path(self.out)
