"""Merging a LoRA run's adapter into its base model: a checkpoint folder shaped like the hub's.

peft's ``merge_and_unload`` (through :func:`vlmtune.inference.loading.load_model_and_processor`)
folds each adapter into its Linear layer (``W + B @ A * alpha / r``); the merged model is written
by its family (:meth:`~vlmtune.models.families.ModelFamily.save`; Phi-3-V:
:func:`~vlmtune.models.phi3v.save_model_folder`) in the official layout (weights with the
official key names, sharded with an index above ``max_shard_size``; ``config.json``,
``generation_config.json``, tokenizer and processor files as the hub has them; the base model's
own remote-code ``*.py`` files copied over; the run's ``listing_schema.json`` for constrained
decoding), so it loads in ``Phi3VForCausalLM.from_pretrained``,
the official remote code and vLLM, with no peft involved.

The output follows the output policy (:mod:`vlmtune.utils.outputs`): checked before anything is
loaded (never the run, its adapter or its base model, whatever ``--overwrite`` says), built
beside its target and swapped in, so a failed merge leaves the old folder whole.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from vlmtune.inference.listing_schema import find_schema, save_schema
from vlmtune.inference.loading import check_model, load_model_and_processor
from vlmtune.models.families import family_of_folder
from vlmtune.utils.config import ConfigError, flag
from vlmtune.utils.devices import DTYPE_NAMES, dtype_name, torch_dtype
from vlmtune.utils.logging import get_logger
from vlmtune.utils.outputs import claim_output_dir, replace_dir

__all__ = ["ADAPTER_CONFIG", "MergeArgs", "MergeResult", "adapter_dir_of", "merge", "merge_adapter"]

log = get_logger(__name__)

ADAPTER_CONFIG = "adapter_config.json"
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*(B|KB|MB|GB|TB|KIB|MIB|GIB|TIB)?", re.IGNORECASE)
_UNITS = {
    "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
    "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40,
}  # fmt: skip


@dataclass
class MergeArgs:
    """What ``vlmtune merge`` merges and where it writes the merged checkpoint."""

    run: Path = flag(argument=True)
    """Training run folder (RUN/model holds the adapter) or an adapter folder."""
    out: Path = flag("--out", "-o")
    """Folder to write the merged checkpoint to; never the run, its adapter or its base model."""
    dtype: str = flag("--dtype", default="auto")
    """auto (the base checkpoint's), float32, bfloat16 or float16."""
    overwrite: bool = flag("--overwrite", default=False)
    """Replace ``out`` even when it holds something else than an earlier merge of this run."""
    max_shard_size: str = flag("--max-shard-size", default="5GB")
    """Largest safetensors file (e.g. 5GB, 500MB); a bigger model is sharded with an index file."""

    def __post_init__(self) -> None:
        if self.dtype != "auto" and self.dtype not in DTYPE_NAMES:
            raise ConfigError(f"dtype={self.dtype!r}: use auto, {', '.join(DTYPE_NAMES)}")
        _bytes(self.max_shard_size)


@dataclass(frozen=True)
class MergeResult:
    """The merged folder and how to serve it."""

    path: Path
    """The merged checkpoint folder."""
    vllm_command: str
    """``vllm serve`` command line for the folder."""
    missing_for_vllm: tuple[str, ...]
    """Remote-code files vLLM needs that the base model did not have (empty: it can serve it)."""


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


def merge(args: MergeArgs) -> MergeResult:
    """Merge the adapter of ``args.run`` into its base; write ``args.out``; say how to serve it.

    The merge is computed in float32; ``dtype`` ``auto`` then casts to the base checkpoint's
    dtype. Raises a :class:`~vlmtune.utils.errors.UserError` (before loading anything) when the
    run holds no adapter, a model folder is incomplete, or ``out`` may not be written.
    """
    adapter_dir = adapter_dir_of(args.run)
    location = check_model(adapter_dir, option="RUN")  # the adapter and its base, whole
    base_dir = location.base_dir
    identity = {"adapter": str(adapter_dir.resolve()), "base": str(Path(base_dir).resolve())}
    inputs = {
        "the run being merged": args.run,
        "its adapter": adapter_dir,
        "its base model": base_dir,
    }
    claim_output_dir(args.out, "merge", inputs=inputs, overwrite=args.overwrite, identity=identity)
    merged, processor = load_model_and_processor(adapter_dir, dtype=torch.float32, device="cpu")
    target = torch_dtype(args.dtype) if args.dtype != "auto" else _checkpoint_dtype(base_dir)
    merged = merged.to(target)
    family = family_of_folder(base_dir)
    with replace_dir(args.out, "merge", identity) as staging:
        family.save(
            merged,
            processor,
            staging,
            source=Path(base_dir),
            max_shard_size=_bytes(args.max_shard_size),
        )
        schema = find_schema(adapter_dir)
        if schema is not None:
            save_schema(schema, staging)
    out = Path(args.out)
    log.info("merged %s into %s -> %s (%s)", adapter_dir, base_dir, out, dtype_name(target))
    return MergeResult(out, family.serve_command(out), tuple(family.missing_for_serving(out)))


def merge_adapter(source: str | Path, out: str | Path, dtype: str = "auto") -> Path:
    """:func:`merge` with the default settings; returns the merged folder."""
    return merge(MergeArgs(run=Path(source), out=Path(out), dtype=dtype)).path


def _bytes(size: str) -> int:
    """``5GB``, ``500MB``, ``1.5GiB`` or a number of bytes, as bytes."""
    match = _SIZE.fullmatch(str(size).strip())
    value = float(match.group(1)) * _UNITS[(match.group(2) or "B").upper()] if match else 0
    if value < 1:
        raise ConfigError(
            f"max_shard_size={size!r} is not a size; use e.g. 5GB, 500MB or a number of bytes"
        )
    return int(value)


def _checkpoint_dtype(base_dir: Path | None) -> torch.dtype:
    config = json.loads((Path(base_dir) / "config.json").read_text(encoding="utf-8"))
    name = config.get("torch_dtype") or config.get("dtype") or "float32"
    return torch_dtype(name) if str(name).removeprefix("torch.") in DTYPE_NAMES else torch.float32
