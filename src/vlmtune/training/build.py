"""Builders of a training run: the model in its training mode, the processor, the datasets.

Modes (``train.mode``):

* ``full``: every weight trains (``freeze_vision``/``freeze_projector`` can hold parts back);
* ``frozen_vision``: full fine-tuning with the CLIP tower frozen;
* ``lora``: peft LoRA adapters on the Linear layers named per component
  (``lora.language_model``, ``lora.vision_tower``, ``lora.projector``), base frozen;
* ``qlora``: the same adapters on a 4-bit NF4 base (bitsandbytes, CUDA only).

Builders take flat arguments (torchtune's convention) and return plain objects;
the Trainer set-up lives in :mod:`vlmtune.training.train`.
"""

from __future__ import annotations

import importlib.util
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vlmtune.data.dataset import SkippedSample, VisionSFTDataset, drop_bad_images
from vlmtune.data.prepared import load_prepared
from vlmtune.data.prompts import PromptTemplate
from vlmtune.models.families import family_of, family_of_folder
from vlmtune.training.args import DataArgs, LoraArgs, ModelArgs, TrainArgs
from vlmtune.utils.config import ConfigError
from vlmtune.utils.devices import resolve_dtype
from vlmtune.utils.logging import get_logger

__all__ = [
    "COMPONENTS",
    "Datasets",
    "apply_training_mode",
    "build_datasets",
    "build_model",
    "load_processor",
    "lora_target_modules",
    "parameter_counts",
    "quantize_language_model_4bit",
    "weights_dtype",
]

log = get_logger(__name__)

COMPONENTS = ("vision_tower", "projector", "language_model")


def weights_dtype(model_args: ModelArgs, train_args: TrainArgs) -> torch.dtype:
    """The dtype the weights are loaded in (see ``ModelArgs.dtype``).

    Weights that the optimizer updates stay float32 (master weights; the Trainer's
    autocast computes in the 16-bit dtype): a bfloat16 weight has 8 bits of mantissa, so
    an update below ~0.4% of its magnitude, the rule at a 2e-5 learning rate, is rounded
    away. Frozen base weights of LoRA, and DeepSpeed's own master copies, need no such care.
    """
    dtype = resolve_dtype(model_args.dtype)
    if dtype != torch.float32 and not train_args.uses_lora and train_args.deepspeed is None:
        log.info("%s mode: float32 master weights, %s compute (autocast)", train_args.mode, dtype)
        return torch.float32
    return dtype


def load_processor(args: ModelArgs) -> Any:
    """The checkpoint's processor (its family's), with its image size (``num_crops`` or
    ``max_image_pixels``) overridden when set."""
    family = family_of_folder(args.path)
    processor = family.load_processor(Path(args.path), args.num_crops, args.max_image_pixels)
    if processor.tokenizer.pad_token_id is None:
        raise ConfigError(
            f"the tokenizer of {str(args.path)!r} has no pad token; set pad_token in tokenizer_config.json"
        )
    return processor


def build_model(model_args: ModelArgs, train_args: TrainArgs, lora_args: LoraArgs) -> nn.Module:
    """Load the checkpoint and put it in ``train_args.mode`` (frozen parts, adapters, quantization)."""
    dtype = weights_dtype(model_args, train_args)
    if train_args.mode == "qlora":
        _require_qlora()
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    path = str(Path(model_args.path).resolve())
    model = family_of_folder(path).load_model(Path(path), dtype, model_args.attn_implementation)
    model.config._name_or_path = path  # recorded as the adapter's base_model_name_or_path
    model.config.use_cache = False
    if train_args.mode == "qlora":
        model = quantize_language_model_4bit(model, dtype)
    return apply_training_mode(model, train_args, lora_args)


def apply_training_mode(model: nn.Module, train_args: TrainArgs, lora_args: LoraArgs) -> nn.Module:
    """Freeze or wrap ``model`` for the mode; returns the model to train (a PeftModel for adapters)."""
    if train_args.uses_lora:
        return _wrap_lora(model, lora_args)
    family = family_of(model)
    for name, param in model.named_parameters():
        component = family.component_of(name)
        frozen = (component == "vision_tower" and train_args.freeze_vision) or (
            component == "projector" and train_args.freeze_projector
        )
        param.requires_grad_(not frozen)
    return model


def lora_target_modules(model: nn.Module, lora_args: LoraArgs) -> list[str]:
    """Full names of the Linear layers adapted, chosen by name suffix within each component.

    A target ``t`` of component ``c`` selects every Linear layer of ``c`` whose
    name is ``t`` or ends with ``.t`` (``qkv_proj``, ``img_projection.0``); ``all``
    selects every Linear layer of ``c``. Raises :class:`ConfigError` for a target
    that selects nothing.
    """
    family = family_of(model)
    wanted = lora_args.targets(family.default_lora_targets)
    linear = [
        (n, family.component_of(f"{n}.weight"))
        for n, m in model.named_modules()
        if isinstance(m, nn.Linear)
    ]
    names = []
    for component, targets in wanted.items():
        mine = [n for n, c in linear if c == component]
        for target in targets:
            hits = (
                mine
                if target == "all"
                else [n for n in mine if n == target or n.endswith(f".{target}")]
            )
            if not hits:
                raise ConfigError(
                    f"lora.{component}: {target!r} is not a Linear layer of the {component}; "
                    f"it has {', '.join(sorted({_short(n) for n in mine})) or 'none'}"
                )
            names += hits
    if not names:
        raise ConfigError(
            "lora: no target module selected (lora.language_model, lora.vision_tower, lora.projector)"
        )
    return sorted(set(names))


def _short(name: str) -> str:
    """The leaf name of a module, with its parent's name when the leaf is an index (``img_projection.0``)."""
    parts = name.split(".")
    return ".".join(parts[-2:]) if parts[-1].isdigit() and len(parts) > 1 else parts[-1]


def _wrap_lora(model: nn.Module, lora_args: LoraArgs) -> nn.Module:
    from peft import LoraConfig, get_peft_model

    targets = lora_target_modules(model, lora_args)
    config = LoraConfig(
        r=lora_args.r,
        lora_alpha=lora_args.alpha,
        lora_dropout=lora_args.dropout,
        target_modules=targets,
    )
    peft_model = get_peft_model(model, config)
    peft_model.peft_config["default"].base_model_name_or_path = str(model.config._name_or_path)
    return peft_model


def _require_qlora() -> None:
    if importlib.util.find_spec("bitsandbytes") is None or not torch.cuda.is_available():
        why = (
            "the bitsandbytes package is not installed"
            if torch.cuda.is_available()
            else "no CUDA GPU is available"
        )
        raise ConfigError(
            f"train.mode=qlora needs bitsandbytes on a CUDA GPU, and {why}; use train.mode=lora instead"
        )


def quantize_language_model_4bit(model: nn.Module, compute_dtype: torch.dtype) -> nn.Module:
    """QLoRA base: the decoder's Linear layers (not ``lm_head``) as bitsandbytes NF4 ``Linear4bit``.

    Weights are quantized when the model moves to the GPU (bitsandbytes' ``Params4bit``);
    the vision tower and projector stay in ``compute_dtype``. CUDA only.
    """
    import bitsandbytes as bnb

    family = family_of(model)
    for name, module in list(model.named_modules()):
        if not isinstance(module, nn.Linear) or name == "lm_head":
            continue
        if family.component_of(f"{name}.weight") != "language_model":
            continue
        quant = bnb.nn.Linear4bit(
            module.in_features, module.out_features, bias=module.bias is not None,
            compute_dtype=compute_dtype, quant_type="nf4", compress_statistics=True,
        )  # fmt: skip
        quant.weight = bnb.nn.Params4bit(
            module.weight.data, requires_grad=False, quant_type="nf4", compress_statistics=True
        )
        if module.bias is not None:
            quant.bias = module.bias
        parent, _, leaf = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, leaf, quant)
    model = model.to("cuda")
    model.is_loaded_in_4bit = True
    from peft import prepare_model_for_kbit_training

    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)


def parameter_counts(model: nn.Module) -> dict[str, int]:
    """Trainable parameters per component (vision_tower, projector, language_model), of the LoRA
    adapters (``lora``, and ``lora_<component>`` by where they sit), ``trainable`` and ``total``."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    family = family_of(base)
    counts: Counter[str] = Counter()
    total = 0
    for name, param in model.named_parameters():
        total += param.numel()
        if not param.requires_grad:
            continue
        component = family.component_of(_base_name(name))
        key = f"lora_{component}" if "lora_" in name else component
        counts[key] += param.numel()
    out = {key: int(counts.get(key, 0)) for key in COMPONENTS}
    out["lora"] = sum(int(counts.get(f"lora_{c}", 0)) for c in COMPONENTS)
    out["trainable"] = sum(out.values())
    out |= {f"lora_{c}": int(counts.get(f"lora_{c}", 0)) for c in COMPONENTS}
    out["total"] = int(total)
    return out


def _base_name(name: str) -> str:
    """Parameter name in the base model (peft prefixes and modules_to_save wrappers removed)."""
    name = name.removeprefix("base_model.model.")
    return name.replace(".modules_to_save.default.", ".").replace(".original_module.", ".")


@dataclass
class Datasets:
    """Training and evaluation datasets, and the rows left out before training."""

    train: VisionSFTDataset
    eval: VisionSFTDataset | None
    left_out: list[SkippedSample] = field(default_factory=list)

    def left_out_counts(self) -> dict[str, int]:
        """Rows left out per reason (bad_image, too_long)."""
        return dict(Counter(s.reason for s in self.left_out))


def build_datasets(args: DataArgs, processor: Any, with_eval: bool) -> Datasets:
    """The train split (bad images and over-long rows left out and counted) and the eval subset."""
    template = PromptTemplate(args.prompt)
    train = VisionSFTDataset(
        load_prepared(args.path, args.train_split), processor, template, args.max_length
    )
    train, left_out = drop_bad_images(train, args.max_bad_image_fraction)
    lengths = train.lengths()
    keep = [i for i, n in enumerate(lengths) if n <= args.max_length]
    for i in (i for i, n in enumerate(lengths) if n > args.max_length):
        detail = f"{lengths[i]} tokens > max_length {args.max_length}"
        left_out.append(
            SkippedSample(train.sample_id(i), str(train.image_path(i)), "too_long", detail)
        )
    train = train.subset(keep) if len(keep) < len(lengths) else train
    for sample in left_out:
        log.warning("left out %s (%s): %s", sample.sample_id, sample.reason, sample.detail)
    if len(train) == 0:
        raise ConfigError(
            f"no training rows left in {str(args.path)!r} split {args.train_split!r} (see warnings)"
        )
    evaluation = None
    if with_eval:
        prepared = load_prepared(args.path, args.eval_split)
        evaluation = VisionSFTDataset(
            prepared, processor, template, args.max_length, limit=args.eval_limit
        )
    return Datasets(train=train, eval=evaluation, left_out=left_out)
