"""Training throughput of the real-size Phi-3-V on one GPU: img/s, tokens/s, peak memory, MFU.

Builds Phi-3-vision-128k-instruct from its own ``config.json`` (random weights, nothing
downloaded: by default the hub's files in ``../shared/golden/phi3v/hub``, or any checkpoint folder
with ``--model-dir``), puts it in each training mode with vlmtune's builders
(``weights_dtype``, ``apply_training_mode``, ``quantize_language_model_4bit`` for QLoRA), feeds it
catalog photos through vlmtune's dataset and collator (a synthetic catalog at 1000x1250, the
real tokenizer, ``num_crops`` 16: 2,565 tokens a sample) and runs the Trainer's step (bf16
autocast, backward with gradient checkpointing, clipping, the Trainer's fused AdamW) for a fixed
number of steps after a warm-up, per mode (LoRA, frozen vision, full; QLoRA when bitsandbytes is
installed), per attention kernel (SDPA; flash_attention_2 when installed) and batch layout
(padded, and packed: the same samples in one row without padding, :func:`packed_batches`). Batches are built before the
clock starts: the data pipeline is not measured, the host-to-device copy is.

Per run it prints and writes to ``--json``: images/s per GPU, real (non-pad) tokens/s, peak
memory (``torch.cuda.max_memory_allocated`` over the run), the planner's estimate for the same
geometry beside it, MFU, and the ratio to the Phi-3 Cookbook's per-GPU throughput. A mode that
does not fit is recorded as ``oom`` with the planner's estimate. Runs stop starting when
``--budget-seconds`` (7.5 minutes) are spent, so the whole benchmark ends within 8 minutes.

**MFU** counts model FLOPs on the real tokens (padding is waste), without the recomputation of
gradient checkpointing: per token, a Linear of P weights costs 2P forward, 2P for the gradient
of its input when a gradient must flow through it, and 2P for its weight gradient when it
trains (6P trained, 4P frozen on the gradient path, 2P for the frozen vision tower no gradient
reaches); attention adds 2 T^2 H per decoder layer and sample forward (causal: half of the
square), 4 S^2 C per CLIP layer and crop (S = 577 tokens), three times that when a gradient
flows. Peak: the GPU's dense bf16 tensor rate (table below, or ``--peak-tflops``); on CPU the
measured float32 matmul rate.

**The Cookbook** (microsoft/Phi-3CookBook, md/04.Fine-tuning/FineTuning_Vision.md, "Speed
benchmarking", Phi-3-vision on DocVQA, 2,443 tokens a sample at num_crops 16, 8x A100-80GB):
full 5.041 img/s without flash attention and 8.657 with, frozen image model 17.578 / 31.736,
LoRA 5.591 / 12.127, QLoRA 4.831 / 10.545; per GPU, divided by 8. SDPA and flash_attention_2
compare with the flash rows, eager with the others.

    .venv/bin/python bench/bench_gpu.py [--modes lora,frozen_vision,full] [--json out.json]
    .venv/bin/python bench/bench_gpu.py --device cpu --tiny   # the suite's check that it runs
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import math
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer, TrainingArguments

from vlmtune.data.collator import VisionSFTCollator
from vlmtune.data.dataset import VisionSFTDataset
from vlmtune.data.packing import pack_row
from vlmtune.data.prepare import PrepareArgs, prepare_dataset
from vlmtune.data.prepared import load_prepared
from vlmtune.data.prompts import PromptTemplate
from vlmtune.data.synthetic.generate import SynthArgs, generate_catalog
from vlmtune.models.phi3v import (
    Phi3VConfig,
    Phi3VForCausalLM,
    Phi3VProcessor,
    tiny_phi3v_config,
)
from vlmtune.training.args import LoraArgs, ModelArgs, TrainArgs
from vlmtune.training.build import apply_training_mode, quantize_language_model_4bit, weights_dtype
from vlmtune.training.memory_probe import peak_memory, tensor_bytes
from vlmtune.training.memory_shape import ModelShape
from vlmtune.training.plan import GIB, PlanArgs, plan

REPO = Path(__file__).resolve().parents[1]
GOLDEN = REPO.parent / "shared" / "golden" / "phi3v"
COOKBOOK_IMG_PER_S_8_A100 = {
    ("full", False): 5.041, ("full", True): 8.657,
    ("frozen_vision", False): 17.578, ("frozen_vision", True): 31.736,
    ("lora", False): 5.591, ("lora", True): 12.127,
    ("qlora", False): 4.831, ("qlora", True): 10.545,
}  # fmt: skip
"""(mode, flash attention) -> images/s on 8x A100-80GB (the Cookbook's speed table)."""
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0,
                    "A10": 125.0, "RTX 4090": 165.2, "RTX A6000": 154.8}  # fmt: skip
"""Dense bf16 tensor-core peak of common GPUs (vendor data sheets; H100 = SXM)."""


# ------------------------------------------------------------------ inputs
def model_config(args: argparse.Namespace) -> Phi3VConfig:
    """The real configuration from ``--model-dir``, or (``--tiny``) the tests' tiny Phi-3-V with
    the real vocabulary and crop geometry, small enough for a CPU to train in seconds."""
    if args.tiny:
        return tiny_phi3v_config(
            hidden_size=64, intermediate_size=128, num_attention_heads=2, crop_size=336,
            vision_hidden_size=32, vision_layers=3, vision_heads=2, vision_intermediate_size=128,
        )  # fmt: skip
    return Phi3VConfig.from_pretrained(args.model_dir)


def build_dataset(args: argparse.Namespace, root: Path) -> VisionSFTDataset:
    """Synthetic catalog photos -> ``vlmtune prepare`` -> vlmtune's SFT dataset (real tokenizer)."""
    csv = generate_catalog(
        SynthArgs(out=root / "synth", n=args.samples, seed=0, image_size=args.image_size,
                  broken_frac=0.0)
    )  # fmt: skip
    data = root / "data"
    prepare_dataset(PrepareArgs(source=str(csv), out=data, split="1.0,0.0,0.0", progress=False))
    processor = Phi3VProcessor.from_pretrained(args.processor_dir, num_crops=args.num_crops)
    return VisionSFTDataset(load_prepared(data, "train"), processor, PromptTemplate(), 16384)


def padded_batches(dataset: VisionSFTDataset, batch: int, count: int) -> list[dict[str, Any]]:
    """``count`` batches of ``batch`` samples, padded to their longest (vlmtune's collator)."""
    collate = VisionSFTCollator(dataset.processor.tokenizer.pad_token_id)
    examples = [dataset[i % len(dataset)] for i in range(batch * count)]
    keys = ("input_ids", "attention_mask", "labels", "pixel_values", "image_sizes")
    return [
        {k: v for k, v in collate(examples[i * batch : (i + 1) * batch]).items() if k in keys}
        for i in range(count)
    ]


def packed_batches(dataset: VisionSFTDataset, batch: int, count: int) -> list[dict[str, Any]]:
    """``count`` rows, each the same ``batch`` samples a padded batch holds, packed without
    padding (vlmtune's ``pack_row``: positions restarting per sample, no attention mask)."""
    examples = [dataset[i % len(dataset)] for i in range(batch * count)]
    return [pack_row(examples[i * batch : (i + 1) * batch]) for i in range(count)]


def sample_lengths(batch: dict[str, Any]) -> list[int]:
    """Real tokens of each sample of a padded batch or a packed row."""
    if "attention_mask" in batch:
        return batch["attention_mask"].sum(dim=1).tolist()
    starts = torch.nonzero(batch["position_ids"][0] == 0).flatten().tolist()
    return [
        b - a for a, b in zip(starts, [*starts[1:], batch["position_ids"].shape[1]], strict=True)
    ]


LAYOUTS = {"padded": padded_batches, "packed": packed_batches}


# ------------------------------------------------------------------ FLOPs
def model_flops(shape: ModelShape, mode: str, lora_params: int, batch: dict[str, Any]) -> float:
    """Model FLOPs of one training step on ``batch`` (see the module docstring)."""
    h, v = shape.hidden, shape.vocab
    real = sample_lengths(batch)
    tokens = sum(real)
    decoder = shape.decoder_linear_params() + h * v  # blocks + lm_head
    trained = decoder if mode in ("full", "frozen_vision") else 0
    flops = (4 * decoder + 2 * trained + 6 * lora_params) * tokens
    flops += 3 * sum(2 * shape.layers * t * t * h for t in real)
    crops = sum(
        1 + (int(hh) // shape.crop) * (int(ww) // shape.crop) for hh, ww in batch["image_sizes"]
    )
    s, c = shape.crop_tokens, shape.v_hidden
    vision_linear = (
        sum(x.params for x in shape.vision_linears()) * shape.v_layers_used / shape.v_layers
    )
    per_crop = 2 * vision_linear * s + 4 * shape.v_layers_used * s * s * c
    flops += crops * per_crop * (3 if mode == "full" else 1)
    image_tokens = int((batch["input_ids"] < 0).sum())
    projector = sum(x.params for x in shape.projector_linears())
    flops += image_tokens * projector * (6 if mode in ("full", "frozen_vision") else 2)
    return float(flops)


def peak_flops(device: torch.device, override: float | None) -> tuple[float, str]:
    """(FLOP/s, where it comes from) of one device."""
    if override:
        return override * 1e12, "--peak-tflops"
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, tflops in PEAK_BF16_TFLOPS.items():
            if key in name:
                return tflops * 1e12, f"{name}: dense bf16 data sheet"
        return math.nan, f"{name}: unknown peak (give --peak-tflops)"
    a, b = torch.randn(512, 512), torch.randn(512, 512)
    best, deadline = 0.0, time.perf_counter() + 1.0
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        a @ b
        best = max(best, 2 * 512**3 / (time.perf_counter() - start))
    return best, "measured float32 matmul of this CPU"


# ------------------------------------------------------------------ one run
def build_model(
    config: Phi3VConfig, mode: str, attn: str, device: torch.device, compute: torch.dtype
):
    """Random-weight Phi-3-V in ``mode`` as vlmtune trains it (master weights, adapters, NF4).

    Built straight in its dtype on the device (QLoRA on the CPU, as ``build_model`` loads it,
    then quantized onto the GPU), so no float32 copy of a 16-bit model ever exists."""
    config._attn_implementation = attn
    args = ModelArgs(dtype=str(compute).removeprefix("torch."))
    dtype = compute if mode == "qlora" else weights_dtype(args, TrainArgs(mode=mode))
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device("cpu" if mode == "qlora" else device):
            model = Phi3VForCausalLM(config)
    finally:
        torch.set_default_dtype(previous)
    model.config.use_cache = False
    if mode == "qlora":
        model = quantize_language_model_4bit(model, compute)
    return apply_training_mode(model, TrainArgs(mode=mode), LoraArgs())


def run_one(spec: dict[str, Any], config: Phi3VConfig, batches: list[dict], args, device) -> dict:
    """Train ``spec`` (mode, attn, layout, batch) for warm-up + timed steps; its figures."""
    compute = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = build_model(config, spec["mode"], spec["attn"], device, compute)
    if args.gradient_checkpointing:
        model.activation_checkpointing_enable({"use_reentrant": False})
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    lora = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
    with tempfile.TemporaryDirectory() as tmp:
        targs = TrainingArguments(output_dir=tmp, use_cpu=device.type == "cpu", report_to=[])
        optimizer_cls, kwargs = Trainer.get_optimizer_cls_and_kwargs(targs)
    optimizer = optimizer_cls(params, **kwargs)
    autocast = torch.autocast(device.type, dtype=compute, enabled=compute != torch.float32)

    def step(batch: dict[str, Any]) -> None:
        inputs = {k: t.to(device, non_blocking=True) for k, t in batch.items()}
        with autocast:
            loss = model(**inputs).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for batch in batches[: args.warmup]:
        step(batch)
    timed = batches[args.warmup :]
    _sync(device)
    start = time.perf_counter()
    for batch in timed:
        step(batch)
    _sync(device)
    seconds = time.perf_counter() - start
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device)
    else:  # the profiler that measures a CPU step would distort the timing: one more step
        states = [t for s in optimizer.state.values() for t in s.values()]
        live = tensor_bytes([*model.parameters(), *model.buffers(), *states, *timed[0].values()])
        with peak_memory(device) as measured:
            step(timed[0])
        peak = live + measured.peak
    shape = ModelShape.from_config(config)
    flops = sum(model_flops(shape, spec["mode"], lora, b) for b in timed)
    images = sum(int(b["image_sizes"].shape[0]) for b in timed)
    real = sum(sum(sample_lengths(b)) for b in timed)
    padded = sum(b["input_ids"].numel() for b in timed)
    return {
        "seconds": round(seconds, 3),
        "img_per_s_per_gpu": images / seconds,
        "tokens_per_s": real / seconds,
        "pad_fraction": 1 - real / padded,
        "peak_memory_gib": peak / GIB,
        "model_tflops_per_step": flops / len(timed) / 1e12,
        "achieved_tflops": flops / seconds / 1e12,
    }


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ------------------------------------------------------------------ the benchmark
def planner_estimate(spec: dict, args, device: torch.device, model_dir: Path, seq_len: int) -> dict:
    """The planner's estimate for the run's geometry (allocated peak and total, GiB)."""
    estimate = plan(
        PlanArgs(
            model=model_dir, mode=spec["mode"], num_crops=args.num_crops,
            batch_size=spec["batch_size"], seq_len=seq_len, image_size=args.image_size,
            gradient_checkpointing=args.gradient_checkpointing, attn=spec["attn"],
            dtype="bfloat16" if device.type == "cuda" else "float32", device=device.type,
        )
    )  # fmt: skip
    return {
        "planner_allocated_gib": estimate.allocated / GIB,
        "planner_total_gib": estimate.total / GIB,
    }


def auto_batch(args, device: torch.device, mode: str, model_dir: Path) -> int:
    """--batch-size, or the largest of 8, 4, 2, 1 the planner fits in 90% of the GPU."""
    if args.batch_size:
        return args.batch_size
    if device.type != "cuda":
        return 2
    memory = torch.cuda.get_device_properties(device).total_memory * 0.9
    for batch in (8, 4, 2, 1):
        estimate = plan(PlanArgs(model=model_dir, mode=mode, num_crops=args.num_crops,
                                 batch_size=batch, image_size=args.image_size,
                                 gradient_checkpointing=args.gradient_checkpointing))  # fmt: skip
        if estimate.total <= memory:
            return batch
    return 1


def run_all(args, device: torch.device, dataset, config, model_dir: Path) -> list[dict]:
    started, results = time.perf_counter(), []
    peak, peak_source = peak_flops(device, args.peak_tflops)
    for mode in args.modes:
        batch_size = auto_batch(args, device, mode, model_dir)
        for attn in args.attn:
            for layout in args.layouts:
                spec = {"mode": mode, "attn": attn, "layout": layout, "batch_size": batch_size}
                results.append(spec)
                if time.perf_counter() - started > args.budget_seconds:
                    spec |= {"status": "skipped", "reason": "--budget-seconds spent"}
                    continue
                batches = LAYOUTS[layout](dataset, batch_size, args.warmup + args.steps)
                # a packed row of B samples is planned as B samples of its mean length
                seq_len = max(math.ceil(b["input_ids"].numel() / batch_size) for b in batches)
                spec |= {
                    "seq_len": seq_len,
                    **planner_estimate(spec, args, device, model_dir, seq_len),
                }
                try:
                    spec |= {"status": "ok", **run_one(spec, config, batches, args, device)}
                except torch.cuda.OutOfMemoryError as err:
                    spec |= {"status": "oom", "reason": str(err).splitlines()[0]}
                finally:
                    _free(device)
                if spec["status"] == "ok":
                    _compare(spec, peak, peak_source)
    return results


def _compare(spec: dict, peak: float, peak_source: str) -> None:
    """MFU, the planner's ratio and the Cookbook's per-GPU figure beside the measurement."""
    spec["mfu"] = spec["achieved_tflops"] * 1e12 / peak if peak == peak else None
    spec["peak_flops_source"] = peak_source
    spec["planner_over_measured"] = spec["planner_allocated_gib"] / spec["peak_memory_gib"]
    cookbook = COOKBOOK_IMG_PER_S_8_A100.get((spec["mode"], spec["attn"] != "eager"))
    spec["cookbook_img_per_s_per_gpu"] = cookbook / 8 if cookbook else None
    spec["ratio_to_cookbook"] = spec["img_per_s_per_gpu"] / (cookbook / 8) if cookbook else None


def _free(device: torch.device) -> None:
    import gc

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def machine_info(device: torch.device) -> dict[str, Any]:
    import transformers

    info = {
        "python": platform.python_version(), "torch": torch.__version__,
        "transformers": transformers.__version__, "platform": platform.platform(),
        "device": str(device),
    }  # fmt: skip
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info |= {"gpu": props.name, "gpu_memory_gib": props.total_memory / GIB,
                 "cuda": torch.version.cuda}  # fmt: skip
        info["flash_attn"] = importlib.util.find_spec("flash_attn") is not None
    return info


OPTIONS = [
    ("--device", dict(default="cuda")),
    ("--tiny", dict(action="store_true", help="a tiny model (the suite's CPU check)")),
    ("--model-dir", dict(type=Path, default=GOLDEN / "hub", help="folder with config.json")),
    ("--processor-dir", dict(type=Path, default=GOLDEN / "checkpoint", help="tokenizer folder")),
    ("--modes", dict(default=None, help="comma list; lora,frozen_vision,full[,qlora]")),
    ("--attn", dict(default=None, help="comma list; sdpa[,flash_attention_2]")),
    ("--layouts", dict(default="padded,packed")),
    ("--num-crops", dict(type=int, default=16)),
    ("--image-size", dict(default="1000x1250")),
    ("--batch-size", dict(type=int, default=0, help="0: the largest the planner fits")),
    ("--steps", dict(type=int, default=8, help="timed steps per run")),
    ("--warmup", dict(type=int, default=2)),
    ("--samples", dict(type=int, default=32, help="distinct catalog photos")),
    ("--no-gradient-checkpointing", dict(dest="gradient_checkpointing", action="store_false")),
    ("--peak-tflops", dict(type=float, default=None)),
    ("--budget-seconds", dict(type=float, default=450.0)),
    ("--json", dict(type=Path, default=Path("bench_gpu.json"))),
]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name, kwargs in OPTIONS:
        parser.add_argument(name, **kwargs)
    args = parser.parse_args(argv)
    cuda = args.device.startswith("cuda")
    gpu_extras = cuda and importlib.util.find_spec("bitsandbytes") is not None
    modes = "lora,frozen_vision,full" + (",qlora" if gpu_extras else "")
    flash = cuda and importlib.util.find_spec("flash_attn") is not None
    args.modes = (args.modes or modes).split(",")
    args.attn = (args.attn or "sdpa" + (",flash_attention_2" if flash else "")).split(",")
    args.layouts = args.layouts.split(",")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    from vlmtune.utils.devices import resolve_device

    device = resolve_device(args.device)
    config = model_config(args)
    with tempfile.TemporaryDirectory(prefix="bench-gpu-") as tmp:
        model_dir = Path(tmp) / "model"
        config.save_pretrained(model_dir)  # the planner reads the same config.json
        (model_dir / "preprocessor_config.json").write_text(
            json.dumps({"num_crops": args.num_crops})
        )
        dataset = build_dataset(args, Path(tmp))
        results = run_all(args, device, dataset, config, model_dir)
    report = {
        "benchmark": "bench_gpu",
        "machine": machine_info(device),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "model": "tiny" if args.tiny else "Phi-3-vision-128k-instruct (random weights)",
        "results": results,
    }
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    _print(results)
    return report


def _print(results: list[dict]) -> None:
    header = [
        "mode",
        "attn",
        "layout",
        "B",
        "img/s/GPU",
        "tok/s",
        "peak_GiB",
        "plan_GiB",
        "MFU",
        "x_Cookbook",
    ]
    print(("{:>14} " * len(header)).format(*header))
    for r in results:
        head = (r["mode"], r["attn"], r["layout"], r["batch_size"])
        if r.get("status") != "ok":
            print(("{:>14} " * 4).format(*head), f"{r.get('status')}: {r.get('reason', '')}")
            continue
        figures = ("img_per_s_per_gpu", "tokens_per_s", "peak_memory_gib", "planner_allocated_gib")
        cells = [f"{r[k]:.3f}" for k in figures]
        cells += [f"{r[k]:.3f}" if r[k] else "-" for k in ("mfu", "ratio_to_cookbook")]
        print(("{:>14} " * 10).format(*head, *cells))


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
