"""Merging a LoRA run's adapter into its base model: an official-layout Phi-3-V checkpoint.

peft's ``merge_and_unload`` (through :func:`vlmtune.inference.loading.load_model_and_processor`)
folds each adapter into its Linear layer (``W + B @ A * alpha / r``); the merged model is saved by
``Phi3VForCausalLM.save_pretrained`` in the official key layout, with the run's
processor files, so it loads in ``Phi3VForCausalLM.from_pretrained`` (and other
Phi-3-V runtimes) with no peft involved. The folder is written beside its target
and renamed into place, so a failed merge leaves no partial checkpoint.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Literal

import torch

from vlmtune.inference.loading import load_model_and_processor, resolve_model_dir
from vlmtune.utils.config import ConfigError
from vlmtune.utils.devices import DTYPE_NAMES, torch_dtype
from vlmtune.utils.logging import get_logger

__all__ = ["ADAPTER_CONFIG", "adapter_dir_of", "merge_adapter"]

log = get_logger(__name__)

ADAPTER_CONFIG = "adapter_config.json"


def adapter_dir_of(source: str | Path) -> Path:
    """The adapter folder of a run folder (``RUN/model``) or the folder itself when it holds an adapter."""
    source = Path(source)
    for candidate in (source, source / "model"):
        if (candidate / ADAPTER_CONFIG).is_file():
            return candidate
    raise ConfigError(
        f"{str(source)!r} holds no LoRA adapter ({ADAPTER_CONFIG} not found in it or in its model/ folder); "
        "only runs trained with train.mode=lora or qlora can be merged"
    )


def merge_adapter(
    source: str | Path,
    out: str | Path,
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto",
) -> Path:
    """Merge the adapter of ``source`` (run or adapter folder) into its base; write ``out``; return it.

    The merge is computed in float32; ``dtype`` ``auto`` then casts to the base
    checkpoint's dtype. Raises :class:`ConfigError` when ``source`` holds no adapter.
    """
    adapter_dir, out = adapter_dir_of(source), Path(out)
    location = resolve_model_dir(adapter_dir)
    merged, processor = load_model_and_processor(adapter_dir, dtype=torch.float32, device="cpu")
    target_dtype = torch_dtype(dtype) if dtype != "auto" else _checkpoint_dtype(location.base_dir)
    merged = merged.to(target_dtype)
    merged.config.dtype = target_dtype  # recorded as torch_dtype in config.json
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        merged.save_pretrained(str(staging))
        processor.save_pretrained(str(staging))
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.info(
        "merged %s into %s -> %s (%s)",
        adapter_dir,
        location.base_dir,
        out,
        str(target_dtype).removeprefix("torch."),
    )
    return out


def _checkpoint_dtype(base_dir: Path | None) -> torch.dtype:
    config = json.loads((Path(base_dir) / "config.json").read_text(encoding="utf-8"))
    name = config.get("torch_dtype") or config.get("dtype") or "float32"
    return torch_dtype(name) if str(name).removeprefix("torch.") in DTYPE_NAMES else torch.float32
