"""Typed configuration of ``vlmtune train``: one dataclass per concern, as in litgpt's ``args.py``.

``TrainConfig`` is the root; its sections (``model``, ``data``, ``lora``, ``train``)
map 1:1 onto the sections of the YAML recipes in ``configs/`` and onto dotted
``key=value`` overrides (``train.learning_rate=1e-4``). Every field carries its
documentation; invariants are checked in ``__post_init__`` so that a bad value
fails before a model is loaded, with a message naming the key.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from vlmtune.data.prompts import PromptArgs
from vlmtune.utils.config import ConfigError, flag

__all__ = [
    "DataArgs",
    "LoraArgs",
    "ModelArgs",
    "TrainArgs",
    "TrainConfig",
    "DEFAULT_LM_TARGETS",
    "DEFAULT_VISION_TARGETS",
]

DEFAULT_LM_TARGETS = ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"]
"""LoRA targets of the Phi-3 decoder (fused attention and MLP projections), Phi-3-V's default."""
DEFAULT_VISION_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]
"""LoRA targets of the CLIP vision tower, when it is adapted."""


@dataclass
class ModelArgs:
    """Which checkpoint to fine-tune and how to load it."""

    path: Path | None = flag("--model", "-m", default=None)
    """Checkpoint folder to fine-tune (config.json, safetensors, tokenizer and processor files): an
    official-layout Phi-3-V, or a Qwen2.5-VL / Qwen2-VL, SmolVLM or Gemma 3 checkpoint; the family
    is read from config.json's model_type."""
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] = "sdpa"
    """Attention kernel of the decoder and the vision tower; flash_attention_2 needs the flash-attn
    package and a CUDA GPU (with data.packing it runs transformers' varlen path)."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """Compute dtype; ``auto``: bfloat16 on a GPU that supports it, float32 elsewhere (CPU).

    LoRA and QLoRA keep the frozen base weights in this dtype. Full and frozen-vision
    fine-tuning keep float32 master weights and compute in this dtype under autocast
    (bfloat16 weights would lose most optimizer updates at fine-tuning learning rates),
    except under DeepSpeed, which keeps its own float32 master copy."""
    num_crops: int | None = None
    """Maximum number of image crops of Phi-3-V's HD transform (other families ignore it); None keeps
    the checkpoint's preprocessor value."""
    max_image_pixels: int | None = None
    """Most pixels an image keeps before it becomes image tokens, for the families that size
    images by a pixel budget: Qwen2.5-VL / Qwen2-VL (``max_pixels``; 1003520 = 1280 tokens) and
    SmolVLM (the longest edge, in whole 384-pixel tiles, whose square fits). None keeps the
    checkpoint's value; Phi-3-V (``num_crops``) and Gemma 3 (one fixed size) refuse it. The
    trained model's processor keeps it, so eval, predict and serve see the same images."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass (less memory, about 30% slower)."""

    def __post_init__(self) -> None:
        if self.num_crops is not None and self.num_crops < 1:
            raise ValueError(f"num_crops: {self.num_crops} must be at least 1")
        if self.max_image_pixels is not None and self.max_image_pixels < 1:
            raise ValueError(f"max_image_pixels: {self.max_image_pixels} must be at least 1")


@dataclass
class DataArgs:
    """The prepared image dataset and how its rows become training examples."""

    path: Path | None = flag("--data", "-d", default=None)
    """Prepared dataset folder, written by `vlmtune prepare` (dataset.parquet and images/)."""
    prompt: PromptArgs = field(default_factory=PromptArgs)
    """The prompt contract (style, question, answer fields)."""
    max_length: int = 4096
    """Longest sequence (prompt + image tokens + answer) trained on; longer samples are dropped and counted."""
    group_by_length: bool = False
    """Batch samples of similar length together (less padding)."""
    packing: bool = False
    """Pack several training samples into each row, without padding (first-fit decreasing by
    length); each sample attends only to itself and the loss is the unpacked one. A forward pass
    is then one row of up to ``pack_max_tokens`` tokens (train.per_device_batch_size must be 1);
    evaluation is not packed."""
    pack_max_tokens: int = 16384
    """Tokens per packed row (with ``packing``); at least ``max_length``, so every sample fits."""
    max_bad_image_fraction: float = 0.02
    """Stop the run (listing the files) when more than this fraction of training images is missing or unreadable."""
    train_split: str = "train"
    """Split of the prepared dataset trained on."""
    eval_split: str = "val"
    """Split evaluated during training."""
    eval_limit: int | None = 64
    """Evaluate on the first N rows of ``eval_split`` (None: all of them)."""
    preflight_samples: int = 64
    """Rows processed (images included) before step 1 for the preflight statistics."""

    def __post_init__(self) -> None:
        if self.max_length < 16:
            raise ValueError(f"max_length: {self.max_length} is too small (at least 16)")
        if not 0.0 <= self.max_bad_image_fraction <= 1.0:
            raise ValueError(
                f"max_bad_image_fraction: {self.max_bad_image_fraction} must be within [0, 1]"
            )
        if self.eval_limit is not None and self.eval_limit < 1:
            raise ValueError(
                f"eval_limit: {self.eval_limit} must be at least 1 (or null for all rows)"
            )
        if self.preflight_samples < 1:
            raise ValueError(f"preflight_samples: {self.preflight_samples} must be at least 1")
        if self.packing and self.pack_max_tokens < self.max_length:
            raise ValueError(
                f"pack_max_tokens: {self.pack_max_tokens} is below max_length {self.max_length}; "
                "raise it so that every sample fits in a row"
            )
        if self.packing and self.group_by_length:
            raise ValueError(
                "group_by_length and packing both fight padding, packing without any: turn one off"
            )


@dataclass
class LoraArgs:
    """LoRA adapters (modes ``lora`` and ``qlora``): rank, scaling and target modules per component."""

    r: int = 16
    """Rank of each adapter."""
    alpha: int = 32
    """Scaling numerator (the update is scaled by alpha / r)."""
    dropout: float = 0.05
    """Dropout on the adapters' input."""
    language_model: list[str] | None = None
    """Linear layers of the decoder adapted (names of the leaf modules); ``all`` for every one;
    None: the model family's attention and MLP projections (Phi-3: qkv_proj, o_proj, gate_up_proj,
    down_proj; Qwen2.5-VL: q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj)."""
    vision_tower: list[str] = field(default_factory=list)
    """Linear layers of the CLIP tower adapted, e.g. q_proj,k_proj,v_proj,out_proj,fc1,fc2; ``all`` for every one."""
    projector: list[str] = field(default_factory=list)
    """Linear layers of the image projector adapted (leaf names); ``all`` for every one."""

    def __post_init__(self) -> None:
        if self.r < 1:
            raise ValueError(f"r: {self.r} must be at least 1")
        if self.alpha < 1:
            raise ValueError(f"alpha: {self.alpha} must be at least 1")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout: {self.dropout} must be within [0, 1)")

    def targets(
        self, family_defaults: Mapping[str, Sequence[str]] | None = None
    ) -> dict[str, list[str]]:
        """Target leaf names per component (``vision_tower``, ``projector``, ``language_model``);
        ``family_defaults`` gives the decoder's when ``language_model`` is None."""
        language_model = self.language_model
        if language_model is None:
            language_model = (family_defaults or {}).get("language_model", DEFAULT_LM_TARGETS)
        return {
            "vision_tower": list(self.vision_tower),
            "projector": list(self.projector),
            "language_model": list(language_model),
        }


@dataclass
class TrainArgs:
    """The optimisation, its schedule, checkpoints, evaluation and tracking."""

    output_dir: Path | None = flag("--out", "-o", default=None)
    """Run folder: config.yaml, metrics.jsonl, checkpoint-N/, model/, train_summary.json. It must be
    new, empty or an earlier run (a folder holding anything else needs --overwrite)."""
    mode: Literal["lora", "full", "frozen_vision", "qlora"] = flag("--mode", default="lora")
    """What trains: lora (adapters only), qlora (adapters on a 4-bit base, CUDA), full (every
    weight) or frozen_vision (all but the vision tower)."""
    freeze_vision: bool = False
    """Freeze the vision tower (implied by mode frozen_vision; for full mode)."""
    freeze_projector: bool = False
    """Freeze the image projector (full and frozen_vision modes)."""
    epochs: float = 1.0
    """Passes over the training split (ignored when max_steps > 0)."""
    max_steps: int = -1
    """Optimizer steps to run; -1: as many as ``epochs`` gives."""
    per_device_batch_size: int = 8
    """Samples per device and forward pass."""
    grad_accum: int = 1
    """Forward passes accumulated per optimizer step."""
    learning_rate: float = 2e-4
    """Peak learning rate (AdamW)."""
    lr_scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = "cosine"
    """Learning-rate schedule after the warm-up."""
    warmup_ratio: float = 0.03
    """Fraction of the optimizer steps spent warming the learning rate up."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    max_grad_norm: float = 1.0
    """Gradient clipping norm (0: no clipping)."""
    logging_steps: int = 10
    """Log the training loss every N optimizer steps."""
    eval_steps: int | None = 100
    """Evaluate every N steps (None or 0: never during training)."""
    eval_max_new_tokens: int = 64
    """Most tokens each listing may take in the generation metrics of an evaluation."""
    eval_generation_batch_size: int = 8
    """Images per ``generate`` call in the generation metrics of an evaluation."""
    save_steps: int = 100
    """Write a checkpoint every N steps."""
    save_total_limit: int | None = 3
    """Keep the last K checkpoints (and the best one); None keeps all."""
    metric_for_best: str | None = None
    """Eval metric choosing the best checkpoint (e.g. eval_loss, eval_price_mape); None: no best tracking."""
    greater_is_better: bool | None = None
    """Direction of ``metric_for_best``; None: lower is better for *loss*/*error*/*mape*, else higher."""
    resume: str | None = flag("--resume", default=None)
    """Continue a run: 'auto' (the latest checkpoint in --out, if any) or a checkpoint folder; unset: a
    new run. The model, mode and adapter settings must be the run's."""
    overwrite: bool = flag("--overwrite", default=False)
    """Write the run into a non-empty folder that is not a vlmtune run (never into the base model or
    the dataset)."""
    generation_eval: bool = flag("--generation-eval/--no-generation-eval", default=True)
    """At each evaluation, also generate listings and score them (price error, category accuracy,
    title match); off: the loss only."""
    seed: int = 42
    """Seed of weights' adapters, data order and dropout."""
    report_to: Literal["wandb", "tensorboard", "mlflow", "none"] = "none"
    """Experiment tracker; metrics.jsonl is always written."""
    wandb_project: str = "vlmtune"
    """Weights & Biases project (also the MLflow experiment name unless MLFLOW_EXPERIMENT_NAME is set)."""
    run_name: str | None = None
    """Tracker run name (default: the run folder's name)."""
    dataloader_workers: int = 0
    """DataLoader worker processes decoding images (0: in the training process)."""
    deepspeed: Path | None = None
    """DeepSpeed JSON config (configs/deepspeed_zero2.json or zero3): needs the deepspeed package and GPUs."""
    ddp_find_unused_parameters: bool | None = None
    """DDP's find_unused_parameters; None: true when some trainable parameter gets no gradient (Phi-3-V's last CLIP layer)."""

    def __post_init__(self) -> None:
        positive = {
            "per_device_batch_size": self.per_device_batch_size,
            "grad_accum": self.grad_accum,
        }
        positive |= {"logging_steps": self.logging_steps, "save_steps": self.save_steps}
        positive |= {
            "eval_max_new_tokens": self.eval_max_new_tokens,
            "eval_generation_batch_size": self.eval_generation_batch_size,
        }
        for name, value in positive.items():
            if value < 1:
                raise ValueError(f"{name}: {value} must be at least 1")
        if self.max_steps == 0 or self.max_steps < -1:
            raise ValueError(f"max_steps: {self.max_steps} must be positive (or -1 to use epochs)")
        if self.max_steps == -1 and self.epochs <= 0:
            raise ValueError(f"epochs: {self.epochs} must be positive when max_steps is -1")
        if self.learning_rate <= 0:
            raise ValueError(f"learning_rate: {self.learning_rate} must be positive")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ValueError(f"warmup_ratio: {self.warmup_ratio} must be within [0, 1)")
        if self.save_total_limit is not None and self.save_total_limit < 1:
            raise ValueError(
                f"save_total_limit: {self.save_total_limit} must be at least 1 (or null)"
            )
        if self.eval_steps is not None and self.eval_steps < 0:
            raise ValueError(f"eval_steps: {self.eval_steps} must be positive, 0 or null")
        if self.mode == "frozen_vision":
            self.freeze_vision = True

    @property
    def uses_lora(self) -> bool:
        """True for the adapter modes (lora, qlora)."""
        return self.mode in ("lora", "qlora")

    @property
    def evaluates(self) -> bool:
        """True when evaluation runs during training."""
        return bool(self.eval_steps)

    def best_is_greater(self) -> bool:
        """Direction of ``metric_for_best``: explicit, or guessed from its name."""
        if self.greater_is_better is not None:
            return self.greater_is_better
        name = (self.metric_for_best or "loss").lower()
        return not any(
            word in name for word in ("loss", "error", "mape", "mae", "rmse", "cer", "wer")
        )


@dataclass
class TrainConfig:
    """Everything ``vlmtune train`` needs; the YAML recipes in configs/ are instances of it."""

    model: ModelArgs = field(default_factory=ModelArgs)
    data: DataArgs = field(default_factory=DataArgs)
    lora: LoraArgs = field(default_factory=LoraArgs)
    train: TrainArgs = field(default_factory=TrainArgs)

    def __post_init__(self) -> None:
        t = self.train
        if t.metric_for_best and not t.evaluates:
            raise ValueError(
                f"train.metric_for_best={t.metric_for_best!r} needs evaluation: set train.eval_steps"
            )
        if t.metric_for_best and not t.generation_eval and not _is_loss(t.metric_for_best):
            raise ValueError(
                f"train.metric_for_best={t.metric_for_best!r} is a generation metric, but "
                "train.generation_eval is off (--no-generation-eval); use train.metric_for_best=eval_loss"
            )
        if t.metric_for_best and t.save_steps % t.eval_steps:
            raise ValueError(
                f"train.save_steps={t.save_steps} must be a multiple of train.eval_steps={t.eval_steps} "
                "when train.metric_for_best is set (the best checkpoint is chosen at evaluations)"
            )

        if self.data.packing and t.per_device_batch_size != 1:
            raise ValueError(
                f"data.packing=true makes each forward pass one packed row of data.pack_max_tokens "
                f"tokens: set train.per_device_batch_size=1 (not {t.per_device_batch_size}) and size "
                "the batch with data.pack_max_tokens"
            )

    def require_paths(self) -> None:
        """Raise :class:`ConfigError` unless the model, data and output folders are set."""
        missing = [
            key
            for key, value in (
                ("model.path (--model)", self.model.path),
                ("data.path (--data)", self.data.path),
                ("train.output_dir (--out)", self.train.output_dir),
            )
            if value is None
        ]
        if missing:
            raise ConfigError(f"missing required setting(s): {', '.join(missing)}")


def _is_loss(metric: str) -> bool:
    """True for the evaluation loss (``loss`` / ``eval_loss``), the one metric that needs no generation."""
    return metric.removeprefix("eval_") == "loss"
