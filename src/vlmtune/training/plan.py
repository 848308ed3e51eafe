"""``vlmtune plan``: the peak GPU memory of a training configuration, before it runs, and what fits.

Given a Phi-3-V model folder (or a known preset), a mode and the batch geometry, :func:`plan`
estimates the peak memory per device of a steady-state training step as vlmtune trains
(``training/build.py``: LoRA on a compute-dtype base, QLoRA on NF4, full and frozen-vision
fine-tuning with float32 master weights under bf16 autocast, the Trainer's fused AdamW), split
into weights, gradients, optimizer states, activations of the decoder and of the vision tower,
logits, and a fixed overhead; and tabulates which modes and batch sizes fit ``--gpu-memory``.
The memory model is :mod:`vlmtune.training.memory_step` (weights, gradients, optimizer states,
the phases of a step) and :mod:`vlmtune.training.memory_activations` (what autograd keeps), with
their derivations; ``tests/training/test_plan.py`` checks it against peaks measured on CPU
(within 2.2% on four reduced-size configurations) and against the Phi-3 Cookbook's A100 peaks.

**Overhead** (not measured here; an assumption stated in the output): the CUDA context with
its kernels and cuBLAS workspace, 0.75 GiB; NCCL's buffers with several GPUs, 0.5 GiB; and the
caching allocator's fragmentation, 10% of the allocated peak (reserved memory exceeds what
``torch.cuda.max_memory_allocated`` reports). What ``nvidia-smi`` shows is the total.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from vlmtune.models.phi3v.configuration_phi3v import Phi3VConfig
from vlmtune.training.memory_shape import ModelShape, image_grid, image_tokens
from vlmtune.training.memory_step import PARTS, Phase, StepSetup, step_phases, trainable_params
from vlmtune.utils.config import flag
from vlmtune.utils.errors import UserError

__all__ = [
    "FIT_BATCH_SIZES",
    "MODES",
    "PRESETS",
    "TEXT_TOKENS",
    "FitRow",
    "Plan",
    "PlanArgs",
    "PlanError",
    "plan",
    "render_plan",
]

GIB = 1024**3
MODES = ("lora", "qlora", "full", "frozen_vision")
FIT_BATCH_SIZES = (1, 2, 4, 8, 16)
TEXT_TOKENS = 56
"""Prompt and answer tokens of a catalog sample besides the image: the chat prompt takes 16 with
Phi-3's tokenizer and a listing ``Product: ..., Category: ..., Full Price: ...<|end|>`` about 40."""
CUDA_CONTEXT = 0.75 * GIB
NCCL_BUFFERS = 0.5 * GIB
FRAGMENTATION = 0.10

_PHI3V_SIZES = {
    "hidden_size": 3072,
    "intermediate_size": 8192,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 32,
    "vocab_size": 32064,
    "tie_word_embeddings": False,
    "img_processor": {
        "image_dim_out": 1024,
        "model_name": "openai/clip-vit-large-patch14-336",
        "name": "clip_vision_model",
        "num_img_tokens": 144,
    },
}
PRESETS: dict[str, dict] = {
    "phi3v-128k": {
        "name": "Phi-3-vision-128k-instruct",
        "source": "microsoft/Phi-3-vision-128k-instruct config.json and preprocessor_config.json "
        "(copies in ../shared/golden/phi3v/hub/)",
        "config": _PHI3V_SIZES,
        "num_crops": 16,
    },
    "phi3.5v": {
        "name": "Phi-3.5-vision-instruct",
        "source": "microsoft/Phi-3.5-vision-instruct config.json and preprocessor_config.json "
        "on the Hugging Face hub (same sizes as Phi-3-vision; num_crops 4)",
        "config": _PHI3V_SIZES,
        "num_crops": 4,
    },
}
"""The sizes of the known models, with where they were read (only the sizes matter here)."""


class PlanError(UserError):
    """The model folder or preset cannot be planned for; the message says what to give instead."""


@dataclass
class PlanArgs:
    """What ``vlmtune plan`` estimates: a model, a training mode and the batch geometry."""

    model: Path | None = flag("--model", default=None)
    """Phi-3-V model folder (its config.json and preprocessor_config.json are read); or --preset."""
    preset: Literal["phi3v-128k", "phi3.5v"] | None = flag("--preset", default=None)
    """A known model instead of a folder; phi3v-128k when neither --model nor --preset is given."""
    mode: Literal["lora", "qlora", "full", "frozen_vision"] = flag("--mode", default="lora")
    """Training mode (train.mode)."""
    num_crops: int | None = flag("--num-crops", default=None)
    """Most 336 px crops per image; None: the model's preprocessor value (16 for phi3v-128k)."""
    batch_size: int = flag("--batch-size", default=4)
    """Samples per device and forward pass (train.per_device_batch_size)."""
    seq_len: int | None = flag("--seq-len", default=None)
    """Tokens per (padded) sample; None: the image's tokens plus TEXT_TOKENS (56) for the prompt and answer."""
    image_size: str = flag("--image-size", default="1000x1250")
    """A typical photo of the catalog, WIDTHxHEIGHT: decides the crop grid (4x4 at 16 crops for 4:5)."""
    gradient_checkpointing: bool = flag(
        "--gradient-checkpointing/--no-gradient-checkpointing", default=True
    )
    """Recompute activations in the backward pass (model.gradient_checkpointing)."""
    attn: Literal["sdpa", "eager", "flash_attention_2"] = flag("--attn", default="sdpa")
    """Attention kernel: eager keeps [heads, T, T] probabilities per layer; sdpa and flash do not."""
    dtype: Literal["bfloat16", "float16", "float32"] = flag("--dtype", default="bfloat16")
    """Compute dtype (model.dtype on a GPU)."""
    gpus: int = flag("--gpus", default=1)
    """GPUs the run is data-parallel over."""
    zero: int = flag("--zero", default=0)
    """DeepSpeed ZeRO stage (0: none; 1 shards optimizer states, 2 also gradients, 3 also weights)."""
    zero_reduce_bucket: float | None = flag("--zero-reduce-bucket", default=None)
    """ZeRO reduce_bucket_size in elements; None: 'auto' as in configs/deepspeed_zero*.json (hidden^2)."""
    grad_accum: int = flag("--grad-accum", default=1)
    """Micro-batches per optimizer step (gradients then live through the forward passes)."""
    lora_r: int = flag("--lora-r", default=16)
    """LoRA rank (lora.r)."""
    lora_targets: Literal["decoder", "all"] = flag("--lora-targets", default="decoder")
    """Adapted layers: decoder (vlmtune's default) or all (also lm_head, the CLIP tower, the projector)."""
    gpu_memory: float = flag("--gpu-memory", default=24.0)
    """Memory of one GPU in GiB, for the table of what fits."""
    device: Literal["cuda", "cpu"] = flag("--device", default="cuda")
    """Where the run trains: cpu plans a CPU run (no CUDA overhead; LoRA's dropout keeps float32 noise)."""

    def __post_init__(self) -> None:
        if self.model is not None and self.preset is not None:
            raise ValueError("give --model or --preset, not both")
        positive = {"batch_size": self.batch_size, "gpus": self.gpus, "lora_r": self.lora_r}
        positive |= {"grad_accum": self.grad_accum}
        for name, value in positive.items():
            if value < 1:
                raise ValueError(f"{name}: {value} must be at least 1")
        if self.num_crops is not None and self.num_crops < 1:
            raise ValueError(f"num_crops: {self.num_crops} must be at least 1")
        if self.zero not in (0, 1, 2, 3):
            raise ValueError(f"zero: {self.zero} is not a ZeRO stage; use 0, 1, 2 or 3")
        if self.zero and (self.dtype == "float32" or self.device == "cpu"):
            raise ValueError(
                "zero: DeepSpeed runs on GPUs in 16-bit; use --dtype bfloat16 --device cuda"
            )
        if self.gpu_memory <= 0:
            raise ValueError(f"gpu_memory: {self.gpu_memory} GiB must be positive")
        self.photo_size()  # validates image_size

    def photo_size(self) -> tuple[int, int]:
        """``image_size`` as (width, height)."""
        width, sep, height = self.image_size.lower().partition("x")
        if not (sep and width.isdigit() and height.isdigit() and int(width) and int(height)):
            raise ValueError(f"image_size: {self.image_size!r} is not WIDTHxHEIGHT, e.g. 1000x1250")
        return int(width), int(height)


@dataclass
class FitRow:
    """One mode at one batch size: its estimated total per GPU and whether it fits."""

    mode: str
    batch_size: int
    total: float
    fits: bool


@dataclass
class Plan:
    """The estimate: bytes per part at the peak (``breakdown``, overhead included), where the
    step peaks (``phase``), the geometry used and the table of what fits ``gpu_memory``."""

    args: PlanArgs
    model_name: str
    num_crops: int
    grid: tuple[int, int]
    image_tokens: int
    seq_len: int
    parameters: int
    trainable: int
    phase: str
    breakdown: dict[str, float]
    allocated: float
    """Peak of allocated memory (what ``torch.cuda.max_memory_allocated`` reports)."""
    total: float
    """``allocated`` plus the overhead: what the GPU must hold."""
    phases: list[Phase] = field(default_factory=list)
    fits: list[FitRow] = field(default_factory=list)


def plan(args: PlanArgs) -> Plan:
    """Estimate the peak GPU memory per device of ``args`` and which modes and batch sizes fit."""
    config, name, default_crops = _load_model(args)
    shape = ModelShape.from_config(config)
    num_crops = args.num_crops or default_crops
    rows, cols = image_grid(*args.photo_size(), num_crops, shape.crop)
    tokens = image_tokens(rows, cols, shape.tokens_per_crop)
    seq_len = args.seq_len or tokens + TEXT_TOKENS
    if seq_len <= tokens:
        raise PlanError(
            f"--seq-len {seq_len} cannot hold the {tokens} tokens of a {args.image_size} photo at "
            f"{num_crops} crops; give a longer --seq-len or fewer --num-crops"
        )
    setup = _setup(args, shape, num_crops, (rows, cols), tokens, seq_len)
    phases = step_phases(shape, setup)
    peak = max(phases, key=lambda p: p.total)
    overhead = _overhead(peak.total, args.gpus) if args.device == "cuda" else 0.0
    fits = [
        FitRow(mode, batch, total, total <= args.gpu_memory * GIB)
        for mode in MODES
        for batch in sorted({*FIT_BATCH_SIZES, args.batch_size})
        for total in [_total(shape, _setup(args, shape, num_crops, (rows, cols), tokens, seq_len,
                                           mode=mode, batch=batch))]
    ]  # fmt: skip
    return Plan(
        args=args,
        model_name=name,
        num_crops=num_crops,
        grid=(rows, cols),
        image_tokens=tokens,
        seq_len=seq_len,
        parameters=shape.total_params(),
        trainable=sum(trainable_params(shape, setup).values()),
        phase=peak.name,
        breakdown={**peak.parts, "overhead": overhead},
        allocated=peak.total,
        total=peak.total + overhead,
        phases=phases,
        fits=fits,
    )


def _load_model(args: PlanArgs) -> tuple[Phi3VConfig, str, int]:
    """(config, display name, the preprocessor's num_crops) of the folder or preset."""
    if args.model is None:
        preset = PRESETS[args.preset or "phi3v-128k"]
        return Phi3VConfig(**preset["config"]), preset["name"], preset["num_crops"]
    folder = Path(args.model)
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise PlanError(
            f"{str(folder)!r} is not a model folder (no config.json); give a Phi-3-V checkpoint "
            f"folder or --preset {' or '.join(PRESETS)}"
        )
    data = json.loads(config_file.read_text(encoding="utf-8"))
    if data.get("model_type") != "phi3_v":
        raise PlanError(
            f"{str(folder)!r} holds a {data.get('model_type')!r} model; vlmtune plan knows "
            "Phi-3-V (model_type phi3_v); use --preset for a known model"
        )
    preprocessor = folder / "preprocessor_config.json"
    crops = 1
    if preprocessor.is_file():
        crops = int(json.loads(preprocessor.read_text(encoding="utf-8")).get("num_crops", 1))
    return Phi3VConfig.from_pretrained(folder), folder.name, crops


def _setup(
    args: PlanArgs,
    shape: ModelShape,
    num_crops: int,
    grid: tuple[int, int],
    tokens: int,
    seq_len: int,
    mode: str | None = None,
    batch: int | None = None,
) -> StepSetup:
    bucket = args.zero_reduce_bucket if args.zero_reduce_bucket is not None else shape.hidden**2
    return StepSetup(
        mode=mode or args.mode,
        compute_bytes=4 if args.dtype == "float32" else 2,
        batch=batch or args.batch_size,
        seq_len=seq_len,
        crops=1 + grid[0] * grid[1],
        pixel_crops=num_crops + 1,
        image_tokens=tokens,
        checkpointing=args.gradient_checkpointing,
        attn=args.attn,
        lora_r=args.lora_r,
        lora_targets=args.lora_targets,
        gpus=args.gpus,
        zero=args.zero,
        grad_accum=args.grad_accum,
        reduce_bucket=int(bucket),
        prefetch_bucket=int(0.9 * shape.hidden**2),  # 'auto' in configs/deepspeed_zero3.json
        cuda=args.device == "cuda",
    )


def _overhead(allocated: float, gpus: int) -> float:
    """CUDA context, NCCL's buffers with several GPUs, the allocator's fragmentation."""
    return CUDA_CONTEXT + (NCCL_BUFFERS if gpus > 1 else 0.0) + FRAGMENTATION * allocated


def _total(shape: ModelShape, setup: StepSetup) -> float:
    peak = max(p.total for p in step_phases(shape, setup))
    return peak + (_overhead(peak, setup.gpus) if setup.cuda else 0.0)


_LABELS = {
    "weights": "weights",
    "gradients": "gradients",
    "optimizer": "optimizer states",
    "activations_decoder": "activations: decoder",
    "activations_vision": "activations: vision tower + projector",
    "logits": "logits and loss",
    "overhead": "overhead (assumed)",
}


def render_plan(result: Plan) -> str:
    """The plan as text: the configuration, the peak split by part, and the table of what fits."""
    from io import StringIO

    from rich.console import Console
    from rich.table import Table

    args = result.args
    rows, cols = result.grid
    console = Console(file=StringIO(), width=110, color_system=None, highlight=False)
    console.print(
        f"{result.model_name}: {args.mode}, batch {args.batch_size} x {result.seq_len:,} tokens "
        f"({rows}x{cols} crops of a {args.image_size} photo at num_crops {result.num_crops}: "
        f"{result.image_tokens:,} image tokens), {args.dtype}, {args.attn}, "
        f"{'with' if args.gradient_checkpointing else 'without'} gradient checkpointing, "
        f"{args.gpus} GPU{'s' if args.gpus > 1 else ''}"
        + (f", ZeRO-{args.zero}" if args.zero else "")
        + (f", {args.grad_accum} micro-batches a step" if args.grad_accum > 1 else "")
    )
    console.print(
        f"parameters {result.parameters / 1e9:.2f} B, trained {result.trainable / 1e6:,.1f} M"
    )
    peak = Table(title=f"Peak memory per GPU (at: {result.phase})", title_justify="left")
    peak.add_column("part")
    peak.add_column("GiB", justify="right")
    for part in (*PARTS, "overhead"):
        peak.add_row(_LABELS[part], f"{result.breakdown[part] / GIB:.2f}")
    peak.add_row("total", f"{result.total / GIB:.2f}", end_section=True)
    console.print(peak)
    console.print(
        f"allocated peak {result.allocated / GIB:.2f} GiB (torch.cuda.max_memory_allocated); "
        f"overhead: CUDA context {CUDA_CONTEXT / GIB:.2f} GiB"
        + (f", NCCL {NCCL_BUFFERS / GIB:.2f} GiB" if args.gpus > 1 else "")
        + f", allocator fragmentation {FRAGMENTATION:.0%} of the allocated peak"
    )
    console.print(_fits_table(result))
    return console.file.getvalue()


def _fits_table(result: Plan):
    from rich.table import Table

    batches = sorted({row.batch_size for row in result.fits})
    table = Table(
        title=f"Estimated GiB per GPU by mode and batch size; * fits {result.args.gpu_memory:g} GiB",
        title_justify="left",
    )
    table.add_column("mode")
    for batch in batches:
        table.add_column(f"batch {batch}", justify="right")
    for mode in MODES:
        cells = {row.batch_size: row for row in result.fits if row.mode == mode}
        table.add_row(
            mode,
            *(f"{cells[b].total / GIB:.1f}{'*' if cells[b].fits else ' '}" for b in batches),
        )
    return table
