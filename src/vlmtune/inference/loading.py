"""Load a model for inference from whatever folder a user points at.

Accepted folders:

* a checkpoint of a supported family (``config.json`` + safetensors + processor files), e.g.
  a downloaded ``Phi-3-vision-128k-instruct`` or ``Qwen2.5-VL-3B-Instruct``, or a
  ``vlmtune merge`` output; the family comes from ``config.json``'s ``model_type``;
* a PEFT adapter folder (``adapter_config.json``), whose ``base_model_name_or_path``
  names the base checkpoint; the adapter is merged into the base weights;
* a training run folder (``vlmtune train`` output), whose final model is ``RUN/model``.

The processor (tokenizer + image processor) is read from the same folder as the
weights' final form, so a fine-tuned model is always paired with its own tokenizer.
:func:`check_model` is what a verb calls before any work (a wrong folder is a
one-line :class:`ModelFolderError`); :func:`load_model_and_processor` does the loading.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from vlmtune.models.families import UnknownFamilyError, family_of_folder
from vlmtune.models.folder import ModelFolderError, check_model_folder
from vlmtune.utils.devices import default_dtype, resolve_device

__all__ = [
    "ModelFolderError",
    "ModelLocation",
    "check_model",
    "load_model_and_processor",
    "resolve_model_dir",
]


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
    if not path.exists():
        raise ModelFolderError(
            f"{str(path)!r} does not exist; give a checkpoint, a PEFT adapter or a training run folder"
        )
    run_dir = None
    if (path / "model").is_dir() and not (path / "config.json").is_file():
        run_dir, path = path, path / "model"
    adapter_cfg = path / "adapter_config.json"
    if adapter_cfg.is_file():
        base = _adapter_base(adapter_cfg)
        if not base or not (Path(base) / "config.json").is_file():
            raise ModelFolderError(
                f"adapter {str(path)!r} names base model {base!r}, which is not a checkpoint folder here; "
                "merge it where the base exists (`vlmtune merge`) or fix base_model_name_or_path"
            )
        return ModelLocation(model_dir=path, base_dir=Path(base), run_dir=run_dir)
    if (path / "config.json").is_file():
        return ModelLocation(model_dir=path, run_dir=run_dir)
    raise ModelFolderError(
        f"{str(path)!r} is neither a model checkpoint (config.json), a PEFT adapter "
        "(adapter_config.json) nor a training run folder (model/)"
    )


def check_model(path: str | Path, option: str = "--model") -> ModelLocation:
    """Resolve ``path`` before any work; a folder that cannot be used is a :class:`ModelFolderError`
    whose one-line message starts with ``option`` (the flag the user gave it with)."""
    try:
        location = resolve_model_dir(path)
    except ModelFolderError as err:
        raise ModelFolderError(f"{option} {err}") from None
    # The one place a model folder is checked before loading: config and complete weights of
    # the folder (and of an adapter's base), without reading a tensor.
    for folder in (location.model_dir, location.base_dir):
        if folder is not None:
            try:
                check_model_folder(folder)
            except ModelFolderError as err:
                raise type(err)(f"{option} {err}") from None
    try:  # a model type no family serves stops here, listing the supported ones
        family_of_folder(location.base_dir or location.model_dir)
    except UnknownFamilyError as err:
        raise ModelFolderError(f"{option} {err}") from None
    return location


def load_model_and_processor(
    path: str | Path | ModelLocation,
    dtype: torch.dtype | None = None,
    attn_implementation: str = "sdpa",
    device: str | torch.device | None = None,
) -> tuple[torch.nn.Module, Any]:
    """Load ``path`` (checkpoint, adapter or run folder) as a plain model in eval mode, plus its processor.

    ``dtype`` defaults to float32 on CPU and bfloat16 on a GPU that supports it.
    """
    location = path if isinstance(path, ModelLocation) else resolve_model_dir(path)
    device = device if isinstance(device, torch.device) else resolve_device(device)
    dtype = dtype if dtype is not None else default_dtype(device)
    weights_dir = location.base_dir or location.model_dir
    family = family_of_folder(weights_dir)
    model = family.load_model(Path(weights_dir), dtype, attn_implementation)
    if location.base_dir is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, location.model_dir).merge_and_unload()
    processor = family.load_processor(Path(location.model_dir))
    return model.to(device).eval(), processor


def _adapter_base(adapter_cfg: Path) -> str | None:
    try:
        config = json.loads(adapter_cfg.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ModelFolderError(f"{str(adapter_cfg)!r} is not readable JSON ({err})") from None
    base = config.get("base_model_name_or_path") if isinstance(config, dict) else None
    return base if isinstance(base, str) else None
