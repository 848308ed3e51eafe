"""Typed configuration of ``vlmtune eval`` and ``vlmtune predict``.

Both run a model, so both hold the shared :class:`~vlmtune.inference.args.InferenceArgs`
as their ``inference`` section (model, device, dtype, seed, generation, prompt: the
same block ``serve`` takes); around it each says what it reads and where it writes.
The YAML of an eval config::

    inference:                  # as in predict and serve (see vlmtune.inference.args)
      model: runs/lora          # --model / -m
      device: cuda              # --device
      generation:
        batch_size: 8           # --batch-size
        max_new_tokens: 64      # --max-new-tokens
    data: data/burberry         # --data / -d
    split: test                 # --split
    limit: null                 # --limit
    base_model: null            # --base-model
    out: null                   # --out / -o
    overwrite: false            # --overwrite
    compare_constrained: false  # --compare-constrained

and of a predict config: ``inference`` as above, then ``inputs`` (the positional
images), ``out``, ``overwrite`` and ``columns``. Dotted overrides follow the same
keys (``inference.generation.batch_size=4``). Every field is validated in
``__post_init__`` with a message naming it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from vlmtune.data.catalog import CatalogColumns
from vlmtune.inference.args import InferenceArgs
from vlmtune.utils.config import flag

__all__ = ["EvalArgs", "PredictArgs"]


@dataclass
class EvalArgs:
    """``vlmtune eval``: generate a listing for every image of a split and score it field by field."""

    inference: InferenceArgs = field(default_factory=InferenceArgs)
    """The model to evaluate and how it runs (``inference.model`` is required)."""
    data: Path | None = flag("--data", "-d", default=None)
    """Prepared dataset folder (written by ``vlmtune prepare``)."""
    split: Literal["train", "val", "test"] = flag("--split", default="test")
    """Which split to evaluate; baselines always come from the ``train`` split when it exists."""
    limit: int | None = flag("--limit", default=None)
    """Evaluate only the first N rows of the split (all rows when unset)."""
    base_model: Path | None = flag("--base-model", default=None)
    """Optional model before fine-tuning, evaluated on the same rows for a before/after comparison."""
    out: Path | None = flag("--out", "-o", default=None)
    """Output folder for predictions.jsonl, metrics.json and report.html. Default: ``RUN/eval-SPLIT``
    for a training run folder, else ``eval-MODELNAME-SPLIT`` in the working directory."""
    overwrite: bool = flag("--overwrite", default=False)
    """Replace an output folder that holds something other than an earlier eval of the same
    model, base model, data and split (never one of the inputs)."""
    compare_constrained: bool = flag("--compare-constrained", default=False)
    """Also decode the other way (constrained when ``generation.constrained`` is off, and the
    reverse): metrics.json holds both, the report shows both beside each other."""

    def __post_init__(self) -> None:
        self.inference.require_model()
        if self.data is None or not str(self.data).strip():
            raise ValueError("data: required (a prepared dataset folder; --data)")
        if self.limit is not None and (isinstance(self.limit, bool) or self.limit < 1):
            raise ValueError(f"limit: must be a positive integer or unset, got {self.limit!r}")
        if self.split not in ("train", "val", "test"):
            raise ValueError(f"split: {self.split!r} is not one of train, val, test")
        self.data = Path(self.data)
        self.base_model = Path(self.base_model) if self.base_model is not None else None
        self.out = Path(self.out) if self.out is not None else None

    @property
    def model(self) -> Path:
        """The model evaluated (``inference.model``)."""
        return self.inference.require_model()


@dataclass
class PredictArgs:
    """``vlmtune predict``: one listing per image file, written as CSV."""

    inference: InferenceArgs = field(default_factory=InferenceArgs)
    """The model to run and how it runs (``inference.model`` is required)."""
    inputs: list[Path] = flag(argument=True, default_factory=list)
    """Image files and/or folders (a folder contributes its image files, recursively, sorted)."""
    out: Path = flag("--out", "-o", default=Path("predictions.csv"))
    """CSV written with columns image, title, category, price (named by ``columns``), raw_text, error."""
    overwrite: bool = flag("--overwrite", default=False)
    """Replace an existing file at ``out`` that is not an earlier predict CSV (never an input)."""
    columns: CatalogColumns = field(default_factory=CatalogColumns)
    """Names of the title, category and price columns of the CSV (DBQ names by default)."""

    def __post_init__(self) -> None:
        self.inference.require_model()
        if not self.inputs:
            raise ValueError("inputs: give at least one image file or folder")
        if str(self.out).strip() in ("", "."):
            raise ValueError(f"out: {str(self.out)!r} is not a file path")
        self.inputs = [Path(p) for p in self.inputs]
        self.out = Path(self.out)

    @property
    def model(self) -> Path:
        """The model run (``inference.model``)."""
        return self.inference.require_model()
