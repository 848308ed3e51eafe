"""Typed configuration of running a model: which model, where, in what precision, how it writes.

:class:`GenerationArgs` says how listings are generated (shared by ``eval``,
``predict``, ``serve`` and the evaluation run during training).
:class:`InferenceArgs` is the whole "run this model" block that every verb which
runs a model holds as its ``inference`` section, so the block reads the same in
each verb's YAML and can be copied from one to another::

    inference:
      model: runs/lora          # --model / -m
      device: cuda              # --device
      dtype: bfloat16
      seed: 0
      generation:
        batch_size: 8           # --batch-size
        max_new_tokens: 64      # --max-new-tokens
        constrained: false      # --constrained (listing-constrained decoding)
      prompt:
        style: chat

Every field is validated in ``__post_init__`` with a message naming it; whether a
model is required is the owning verb's decision (``eval`` and ``predict`` require one).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from vlmtune.data.prompts import PromptArgs
from vlmtune.utils.config import flag
from vlmtune.utils.devices import DtypeName

__all__ = ["GenerationArgs", "InferenceArgs"]


@dataclass
class GenerationArgs:
    """How the model writes a listing: greedy decoding with a KV cache by default."""

    max_new_tokens: int = flag("--max-new-tokens", default=64)
    """Most tokens generated per listing; generation stops earlier at ``<|end|>`` or EOS."""
    batch_size: int = flag("--batch-size", default=8)
    """Images per ``generate`` call (prompts are left-padded to the longest in the batch)."""
    num_beams: int = 1
    """Beam width; 1 is greedy (or sampling with ``do_sample``)."""
    do_sample: bool = False
    """Sample instead of taking the most likely token (non-deterministic unless seeded)."""
    constrained: bool = flag("--constrained/--no-constrained", default=False)
    """Force every listing into ``Product: <text>, Category: <a trained category>, Full Price:
    <number>`` and its end token (llguidance, with the model's ``listing_schema.json``), so that
    every output parses; ``max_new_tokens`` is raised to the longest listing the schema allows.
    Greedy or sampling only (not beam search). Off for eval and predict, on for serve."""

    def __post_init__(self) -> None:
        for name in ("max_new_tokens", "batch_size", "num_beams"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: must be a positive integer, got {value!r}")
        if self.constrained and self.num_beams > 1:
            raise ValueError(
                f"constrained: works with greedy decoding or sampling, not num_beams={self.num_beams}; "
                "set num_beams=1 or constrained=false"
            )


@dataclass
class InferenceArgs:
    """The model a verb runs, on which device and in which precision, and how it writes."""

    model: Path | None = flag("--model", "-m", default=None)
    """Model to run: an official-layout checkpoint, a PEFT adapter folder or a training run folder."""
    device: str | None = flag("--device", default=None)
    """Torch device (``cpu``, ``cuda``, ``cuda:1``, ``mps``); default cuda when available, else cpu."""
    dtype: DtypeName | None = None
    """Weights' dtype (float32, bfloat16, float16); default bfloat16 on a GPU that has it, else float32."""
    seed: int = 0
    """Seed for sampling (``generation.do_sample``); greedy decoding does not depend on it."""
    generation: GenerationArgs = field(default_factory=GenerationArgs)
    """Decoding settings."""
    prompt: PromptArgs = field(default_factory=PromptArgs)
    """The prompt the model was trained with (style, question, fields)."""
    schema_from: Path | None = flag("--schema-from", default=None)
    """Prepared dataset whose train split gives the listing schema of constrained decoding
    (known categories, price format); default: the model folder's ``listing_schema.json``."""

    def __post_init__(self) -> None:
        if self.model is not None:
            if not str(self.model).strip():
                raise ValueError("model: must not be empty (a checkpoint, adapter or run folder)")
            self.model = Path(self.model)
        if self.schema_from is not None:
            self.schema_from = Path(self.schema_from)

    def require_model(self) -> Path:
        """The model path; raises ``ValueError`` (reported with the key) when none was given."""
        if self.model is None:
            raise ValueError(
                "inference.model: required (a checkpoint, adapter or run folder; --model)"
            )
        return self.model
