"""Checks and figures before step 1: what will train, on how many tokens, at which batch size.

:func:`check_backends` refuses, before any model is loaded, a configuration the
machine cannot run (DeepSpeed without the package or a GPU, a tracker that is not
installed). :func:`check_inputs` refuses, also before any loading, a model folder
that is not a readable Phi-3-V checkpoint (config.json, safetensors whose headers
parse and whose data is complete) and a dataset folder that is not a prepared
dataset or lacks the splits the run reads. :func:`preflight_summary` logs and returns the trainable parameters
per component, the fraction of tokens trained on, sequence and image-token
length statistics and the effective batch size, and fails fast when nothing
would train (no trainable parameter, no label token). It also warns when another
split of the dataset (validation, test) holds categories the training split lacks
(:func:`unseen_categories`): the model cannot learn them, and their rows will score 0.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import statistics
from pathlib import Path
from typing import Any

import torch

from vlmtune.data.card import categories_missing_from_train
from vlmtune.data.collator import VisionSFTCollator
from vlmtune.data.dataset import IGNORE_INDEX
from vlmtune.data.prepared import PreparedDatasetError, load_prepared
from vlmtune.models import folder as models_folder
from vlmtune.training.args import TrainConfig
from vlmtune.training.build import Datasets, parameter_counts
from vlmtune.training.tracking import check_tracker_available
from vlmtune.utils.config import ConfigError
from vlmtune.utils.devices import dtype_name, resolve_dtype
from vlmtune.utils.logging import get_logger

__all__ = [
    "PreflightError",
    "check_backends",
    "check_dataset",
    "check_inputs",
    "check_model_folder",
    "preflight_summary",
    "unseen_categories",
]

log = get_logger(__name__)


class PreflightError(ConfigError):
    """The run would train nothing (no trainable parameter or no label token)."""


def check_backends(config: TrainConfig) -> None:
    """Raise :class:`ConfigError` for a tracker, DeepSpeed or QLoRA set-up this machine cannot run."""
    check_tracker_available(config.train.report_to)
    if config.train.deepspeed is not None:
        if importlib.util.find_spec("deepspeed") is None:
            raise ConfigError(
                f"train.deepspeed={str(config.train.deepspeed)!r} needs the deepspeed package "
                "(pip install deepspeed) and CUDA GPUs; see configs/README.md"
            )
        if not torch.cuda.is_available():
            raise ConfigError("train.deepspeed needs CUDA GPUs; none is available on this machine")
        if not config.train.deepspeed.is_file():
            raise ConfigError(f"train.deepspeed: {str(config.train.deepspeed)!r} does not exist")
    for variable, name in (
        ("ACCELERATE_USE_FSDP", "FSDP"),
        ("ACCELERATE_USE_DEEPSPEED", "DeepSpeed"),
    ):
        if os.environ.get(variable, "").lower() in ("1", "true") and not torch.cuda.is_available():
            raise ConfigError(
                f"accelerate launched this run with {name} ({variable}), which needs CUDA GPUs; none is "
                "available: launch without --config_file configs/fsdp.yaml (plain data parallel works on CPU)"
            )
    if config.model.attn_implementation == "flash_attention_2" and (
        importlib.util.find_spec("flash_attn") is None or not torch.cuda.is_available()
    ):
        raise ConfigError(
            "model.attn_implementation=flash_attention_2 needs the flash-attn package and a CUDA "
            "GPU; use model.attn_implementation=sdpa"
        )
    if config.train.mode == "qlora" and (
        importlib.util.find_spec("bitsandbytes") is None or not torch.cuda.is_available()
    ):
        raise ConfigError(
            "train.mode=qlora needs the bitsandbytes package and a CUDA GPU; use train.mode=lora"
        )


def check_inputs(config: TrainConfig) -> None:
    """Raise :class:`ConfigError` for a model folder or a dataset (with its splits) the run cannot read."""
    check_model_folder(Path(config.model.path))
    splits = {"data.train_split": config.data.train_split}
    if config.train.evaluates:
        splits["data.eval_split"] = config.data.eval_split
    check_dataset(Path(config.data.path), splits)


def check_model_folder(path: Path, key: str = "model.path (--model)") -> None:
    """Raise a :class:`~vlmtune.utils.errors.UserError` unless ``path`` is a full checkpoint folder
    with complete safetensors weights (:func:`vlmtune.models.folder.check_model_folder`; no
    tensor is read). A LoRA adapter is refused here: training starts from a whole checkpoint."""
    where = f"{key}: {str(path)!r}"
    if not path.exists():
        raise ConfigError(f"{where} does not exist; give the folder of a model checkpoint")
    if not path.is_dir():
        raise ConfigError(f"{where} is a file; give the checkpoint folder (config.json, weights)")
    if (path / "adapter_config.json").is_file():
        raise ConfigError(
            f"{where} is a LoRA adapter, not a full checkpoint: merge it first "
            f"(vlmtune merge {path} --out MERGED) and train from the merged folder"
        )
    try:
        models_folder.check_model_folder(path)
    except models_folder.ModelFolderError as err:
        raise type(err)(f"{key}: {err}") from None


def check_dataset(path: Path, splits: dict[str, str], key: str = "data.path (--data)") -> None:
    """Raise :class:`ConfigError` unless ``path`` is a prepared dataset with rows in every split of
    ``splits`` (setting name -> split)."""
    where = f"{key}: {str(path)!r}"
    if not path.is_dir():
        state = "is a file" if path.exists() else "does not exist"
        raise ConfigError(f"{where} {state}; give the folder written by `vlmtune prepare`")
    try:
        available = set(load_prepared(path).frame["split"])
    except PreparedDatasetError as err:
        raise ConfigError(f"{key}: {err}") from err
    for setting, split in splits.items():
        if split not in available:
            extra = (
                " (or evaluate nothing: train.eval_steps=null)"
                if setting.endswith("eval_split")
                else ""
            )
            raise ConfigError(
                f"{setting}={split!r}: {str(path)!r} has no rows in that split; it has "
                f"{', '.join(sorted(available)) or 'none'}: choose one of them{extra}"
            )


def preflight_summary(
    model: torch.nn.Module, datasets: Datasets, config: TrainConfig, args: Any
) -> dict[str, Any]:
    """Figures of the run before step 1 (logged); raises :class:`PreflightError` if nothing would train."""
    params = parameter_counts(model)
    if params["trainable"] == 0:
        raise PreflightError(
            f"no trainable parameter in mode {config.train.mode!r} with these freeze settings"
        )
    counts = datasets.train.token_counts()
    label_fraction = sum(counts["label_tokens"]) / max(sum(counts["length"]), 1)
    checked = _check_samples(datasets, config)
    if label_fraction == 0 or checked["label_tokens"] == 0:
        raise PreflightError("no label token to train on: every answer is empty or masked")
    summary = {
        "mode": config.train.mode,
        "parameters": params,
        "precision": dtype_name(resolve_dtype(config.model.dtype)),
        "weights_dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
        "train_samples": len(datasets.train),
        "eval_samples": len(datasets.eval) if datasets.eval is not None else 0,
        "left_out_before_training": datasets.left_out_counts(),
        "left_out_samples": [dataclasses.asdict(s) for s in datasets.left_out[:200]],
        "sequence_length": _stats(counts["length"]),
        "image_tokens": _stats(counts["image_tokens"]),
        "label_tokens": _stats(counts["label_tokens"]),
        "label_token_fraction": round(label_fraction, 5),
        "samples_checked": checked,
        "world_size": args.world_size,
        "effective_batch_size": args.per_device_train_batch_size
        * args.gradient_accumulation_steps
        * args.world_size,
        "categories_absent_from_train": unseen_categories(
            Path(config.data.path), config.data.train_split
        ),
    }
    _log_summary(summary)
    return summary


def unseen_categories(path: Path, train_split: str = "train") -> dict[str, list[str]]:
    """Split -> categories it holds that ``train_split`` lacks (warned; empty when every split is covered)."""
    data = load_prepared(path)
    missing = categories_missing_from_train(data.frame, data.columns.category, train_split)
    for split, names in missing.items():
        shown = ", ".join(names[:10]) + (f" and {len(names) - 10} more" if len(names) > 10 else "")
        log.warning(
            "preflight: the %s split holds %d categor%s absent from the %s split (%s): the model "
            "cannot learn them, so their rows will score 0; see data_card.html in %s",
            split, len(names), "y" if len(names) == 1 else "ies", train_split, shown, path,
        )  # fmt: skip
    return missing


def _check_samples(datasets: Datasets, config: TrainConfig) -> dict[str, int]:
    """Encode the first rows for real (images decoded) and count their label tokens."""
    n = min(config.data.preflight_samples, len(datasets.train))
    pad_id = datasets.train.processor.tokenizer.pad_token_id
    batch = VisionSFTCollator(pad_id)([datasets.train[i] for i in range(n)])
    labels = batch["labels"]
    leaked = int(((labels < 0) & (labels != IGNORE_INDEX)).sum()) if labels.numel() else 0
    if leaked:
        raise PreflightError(f"{leaked} negative ids (image placeholders) reached the labels")
    return {
        "rows": n,
        "encoded": len(batch["sample_ids"]),
        "skipped": len(batch["skipped"]),
        "label_tokens": int((labels != IGNORE_INDEX).sum()) if labels.numel() else 0,
    }


def _stats(values: list[int]) -> dict[str, float]:
    if not values:
        return {}
    ordered = sorted(values)
    return {
        "min": ordered[0],
        "mean": round(statistics.fmean(ordered), 2),
        "p95": ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))],
        "max": ordered[-1],
    }


def _log_summary(summary: dict[str, Any]) -> None:
    p = summary["parameters"]
    log.info(
        "preflight: mode %s, %s; trainable %s of %s parameters (vision_tower %s, projector %s, "
        "language_model %s, lora %s = vision_tower %s + projector %s + language_model %s)",
        summary["mode"], summary["precision"], f"{p['trainable']:,}", f"{p['total']:,}",
        f"{p['vision_tower']:,}", f"{p['projector']:,}", f"{p['language_model']:,}", f"{p['lora']:,}",
        f"{p['lora_vision_tower']:,}", f"{p['lora_projector']:,}", f"{p['lora_language_model']:,}",
    )  # fmt: skip
    log.info(
        "preflight: %d training rows (%d eval), left out %s; sequence length %s; image tokens %s; "
        "label tokens %.2f%% of all; effective batch %d (world size %d)",
        summary["train_samples"], summary["eval_samples"], summary["left_out_before_training"] or "none",
        summary["sequence_length"], summary["image_tokens"], 100 * summary["label_token_fraction"],
        summary["effective_batch_size"], summary["world_size"],
    )  # fmt: skip
