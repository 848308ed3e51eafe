"""Load a model for inference from whatever folder a user points at.

Accepted folders:

* an official-layout Phi-3-V checkpoint (``config.json`` + safetensors + processor files),
  e.g. a downloaded ``Phi-3-vision-128k-instruct`` or a ``vlmtune merge`` output;
* a PEFT adapter folder (``adapter_config.json``), whose ``base_model_name_or_path``
  names the base checkpoint; the adapter is merged into the base weights;
* a training run folder (``vlmtune train`` output), whose final model is ``RUN/model``.

The processor (tokenizer + image processor) is read from the same folder as the
weights' final form, so a fine-tuned model is always paired with its own tokenizer.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from vlmtune.models.phi3v import Phi3VForCausalLM, Phi3VProcessor
from vlmtune.utils.devices import default_dtype, resolve_device

__all__ = ["ModelLocation", "load_model_and_processor", "resolve_model_dir"]


@dataclass(frozen=True)
class ModelLocation:
    """Where the weights and the processor of a model folder are."""

    model_dir: Path
    """Folder with the weights' final form (checkpoint or adapter) and the processor files."""
    base_dir: Path | None = None
    """Base checkpoint of an adapter; None for a full checkpoint."""
    run_dir: Path | None = None
    """Training run folder when one was given (its metrics.jsonl has the curves)."""


def resolve_model_dir(path: str | Path) -> ModelLocation:
    """Classify ``path`` as a checkpoint, an adapter or a run folder; raise with what is missing."""
    path = Path(path).expanduser()
    run_dir = None
    if (path / "model").is_dir() and not (path / "config.json").is_file():
        run_dir, path = path, path / "model"
    adapter_cfg = path / "adapter_config.json"
    if adapter_cfg.is_file():
        base = json.loads(adapter_cfg.read_text(encoding="utf-8")).get("base_model_name_or_path")
        if not base or not (Path(base) / "config.json").is_file():
            raise FileNotFoundError(
                f"adapter {str(path)!r} names base model {base!r}, which is not a checkpoint folder here; "
                "merge it where the base exists (`vlmtune merge`) or fix base_model_name_or_path"
            )
        return ModelLocation(model_dir=path, base_dir=Path(base), run_dir=run_dir)
    if (path / "config.json").is_file():
        return ModelLocation(model_dir=path, run_dir=run_dir)
    raise FileNotFoundError(
        f"{str(path)!r} is neither a Phi-3-V checkpoint (config.json), a PEFT adapter "
        "(adapter_config.json) nor a training run folder (model/)"
    )


def load_model_and_processor(
    path: str | Path,
    dtype: torch.dtype | None = None,
    attn_implementation: str = "sdpa",
    device: str | torch.device | None = None,
) -> tuple[Phi3VForCausalLM, Phi3VProcessor]:
    """Load ``path`` (checkpoint, adapter or run folder) as a plain model in eval mode, plus its processor.

    ``dtype`` defaults to float32 on CPU and bfloat16 on a GPU that supports it.
    """
    location = resolve_model_dir(path)
    device = resolve_device(device) if not isinstance(device, torch.device) else device
    dtype = dtype if dtype is not None else default_dtype(device)
    weights_dir = location.base_dir or location.model_dir
    model = Phi3VForCausalLM.from_pretrained(
        weights_dir, torch_dtype=dtype, attn_implementation=attn_implementation
    )
    if location.base_dir is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, location.model_dir).merge_and_unload()
    processor = Phi3VProcessor.from_pretrained(location.model_dir)
    return model.to(device).eval(), processor
