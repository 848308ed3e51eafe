"""Training throughput: vlmtune (Trainer, batch 8, masked labels) against a seed-style batch-1 loop.

Both train the same small Phi-3-V (``vlmtune init-model`` sizes) on the same synthetic
prepared dataset, in full fine-tuning mode with AdamW, in the same process:

* **seed-style loop**: what the public fine-tuning script does: one sample per step,
  the image decoded and processed inside the loop, ``labels = input_ids.clone()``
  (placeholders set to -100, or the loss would index out of range), forward,
  backward, ``optimizer.step()``;
* **vlmtune**: ``vlmtune.training.train.train`` with ``per_device_batch_size=8``.

Both exclude their first 2 steps (warm-up) from the timing. The machine may be shared, so
the two paths are alternated ``--repeats`` times (best of each kept) and measured in wall
time and in this process's CPU time (insensitive to other processes' load; with the
default ``--workers 0`` all of vlmtune's work is in this process too).

It also counts the FLOPs of one vlmtune training step (``torch.utils.flop_counter``)
and divides the achieved training FLOP/s by this CPU's measured fp32 matmul peak.

    .venv/bin/python bench/bench_train.py [--size tiny|demo] [--threads 1] [--workers 1] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode

from vlmtune.data.collator import VisionSFTCollator
from vlmtune.data.dataset import VisionSFTDataset
from vlmtune.data.prepare import PrepareArgs, prepare_dataset
from vlmtune.data.prepared import load_prepared
from vlmtune.data.prompts import PromptTemplate, record_from_row
from vlmtune.data.synthetic.generate import SynthArgs, generate_catalog
from vlmtune.models.phi3v import Phi3VForCausalLM, Phi3VProcessor
from vlmtune.training.args import DataArgs, ModelArgs, TrainArgs, TrainConfig
from vlmtune.training.init_model import InitModelArgs, init_model
from vlmtune.training.train import train


def machine_info() -> dict[str, Any]:
    """CPU model, core counts and library versions."""
    import transformers

    cpu = platform.processor()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        names = [
            line.split(":", 1)[1].strip()
            for line in cpuinfo.read_text().splitlines()
            if "model name" in line
        ]
        cpu = names[0] if names else cpu
    return {
        "cpu": cpu,
        "logical_cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "platform": platform.platform(),
        "load_average_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }


def matmul_peak(size: int = 1024, seconds: float = 3.0) -> float:
    """Measured fp32 matmul FLOP/s of this CPU (best of repeated ``size``x``size`` products)."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    for _ in range(3):
        a @ b
    best, deadline = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        for _ in range(4):
            a @ b
        best = max(best, 4 * 2 * size**3 / (time.perf_counter() - start))
    return best


SIZES = {
    "tiny": dict(
        vocab_size=512, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        vision_hidden_size=32, vision_intermediate_size=64, crop_size=56,
    ),  # the test suite's tiny model
    "demo": {},  # init-model's defaults: hidden 192, 4 layers, vision 64 x 2 layers, crop 112, vocab 1024
}  # fmt: skip


def build_inputs(root: Path, n: int, size: str) -> tuple[Path, Path]:
    """Synthetic catalog -> prepared dataset (all rows in train) -> init-model checkpoint of ``size``."""
    csv = generate_catalog(
        SynthArgs(out=root / "synth", n=n, seed=0, image_size="224x280", broken_frac=0.0)
    )
    data = root / "data"
    prepare_dataset(PrepareArgs(source=str(csv), out=data, split="1.0,0.0,0.0", progress=False))
    checkpoint = init_model(InitModelArgs(data=data, out=root / "checkpoint", **SIZES[size]))
    return data, Path(checkpoint)


def seed_style_loop(
    checkpoint: Path, data: Path, samples: int, lr: float = 1e-4
) -> tuple[float, float]:
    """(wall, CPU) samples/s of a batch-1 loop with unmasked labels, images processed inside the loop."""
    model = Phi3VForCausalLM.from_pretrained(checkpoint).train()
    processor = Phi3VProcessor.from_pretrained(checkpoint)
    prepared = load_prepared(data, "train")
    template = PromptTemplate()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    rows = prepared.frame.to_dict("records")
    paths = prepared.image_paths()

    def step(i: int) -> None:
        record = record_from_row(rows[i % len(rows)], prepared.columns)
        prompt, answer = template.conversation(record, processor.tokenizer)
        image = Image.open(paths[i % len(rows)]).convert("RGB")
        inputs = processor(text=[prompt + answer], images=[[image]], return_tensors="pt")
        labels = inputs["input_ids"].clone()
        labels[labels < 0] = -100
        loss = model(**inputs, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    for i in range(2):  # warm-up
        step(i)
    wall, cpu = time.perf_counter(), time.process_time()
    for i in range(samples):
        step(i)
    return samples / (time.perf_counter() - wall), samples / (time.process_time() - cpu)


def vlmtune_run(
    checkpoint: Path, data: Path, out: Path, steps: int, batch: int, workers: int
) -> tuple[float, float]:
    """(wall, CPU) samples/s of ``train()``: the difference between a 2-step and a ``steps``-step run.

    Both runs pay the same set-up (model load, preflight, Trainer), so the difference is
    the cost of ``steps - 2`` training steps, warm-up excluded. CPU time counts this
    process only: exact with ``workers=0``, an underestimate of the work otherwise.
    """
    totals = []
    for n in (2, steps):
        config = TrainConfig(
            model=ModelArgs(path=checkpoint),
            data=DataArgs(path=data, preflight_samples=8),
            train=TrainArgs(
                output_dir=out / f"steps{n}", mode="full", max_steps=n, per_device_batch_size=batch,
                learning_rate=1e-4, logging_steps=n, eval_steps=None, save_steps=10 * steps,
                dataloader_workers=workers,
            ),
        )  # fmt: skip
        wall, cpu = time.perf_counter(), time.process_time()
        train(config)
        totals.append((time.perf_counter() - wall, time.process_time() - cpu))
    samples = (steps - 2) * batch
    return samples / (totals[1][0] - totals[0][0]), samples / (totals[1][1] - totals[0][1])


def flops_per_step(checkpoint: Path, data: Path, batch: int) -> float:
    """Forward + backward FLOPs of one training batch (counted by torch's FlopCounterMode)."""
    model = Phi3VForCausalLM.from_pretrained(checkpoint).train()
    processor = Phi3VProcessor.from_pretrained(checkpoint)
    dataset = VisionSFTDataset(load_prepared(data, "train"), processor, PromptTemplate(), 4096)
    batch_inputs = VisionSFTCollator(processor.tokenizer.pad_token_id)(
        [dataset[i] for i in range(batch)]
    )
    inputs = {
        k: batch_inputs[k]
        for k in ("input_ids", "attention_mask", "labels", "pixel_values", "image_sizes")
    }
    with FlopCounterMode(display=False) as counter:
        model(**inputs).loss.backward()
    return float(counter.get_total_flops())


def _rounded(value: Any) -> Any:
    return round(value, 2) if isinstance(value, float) else str(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12, help="vlmtune optimizer steps (batch 8)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seed-samples", type=int, default=48, help="samples of the batch-1 loop")
    parser.add_argument(
        "--workers", type=int, default=0, help="vlmtune DataLoader workers (image decoding)"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's choice)")
    parser.add_argument(
        "--repeats", type=int, default=3, help="alternate the two paths this often; best kept"
    )
    parser.add_argument("--rows", type=int, default=64, help="rows of the synthetic dataset")
    parser.add_argument(
        "--size", choices=sorted(SIZES), default="tiny", help="model sizes (tiny: the tests')"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    info = machine_info()
    print("machine:", json.dumps(info))
    seed_runs, our_runs = [], []
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        data, checkpoint = build_inputs(Path(tmp), args.rows, args.size)
        peak = matmul_peak()
        for r in range(args.repeats):  # alternated, so both see the same machine load
            seed_runs.append(seed_style_loop(checkpoint, data, args.seed_samples))
            run = Path(tmp) / f"run{r}"
            our_runs.append(
                vlmtune_run(checkpoint, data, run, args.steps, args.batch, args.workers)
            )
        flops = flops_per_step(checkpoint, data, args.batch)
    best = {
        "seed_wall": max(w for w, _ in seed_runs), "seed_cpu": max(c for _, c in seed_runs),
        "ours_wall": max(w for w, _ in our_runs), "ours_cpu": max(c for _, c in our_runs),
    }  # fmt: skip
    achieved = flops * best["ours_wall"] / args.batch
    figures = {
        "machine": info,
        "model": f"{args.size}: {SIZES[args.size] or 'init-model defaults'}; full fine-tuning, AdamW",
        "images": "224x280, num_crops 1",
        "torch_threads": torch.get_num_threads(),
        "vlmtune_dataloader_workers": args.workers,
        "runs_wall_cpu_samples_per_s": {
            "seed_batch1": seed_runs,
            f"vlmtune_batch{args.batch}": our_runs,
        },
        "seed_loop_batch1_samples_per_s": round(best["seed_wall"], 2),
        f"vlmtune_batch{args.batch}_samples_per_s": round(best["ours_wall"], 2),
        "speedup_wall": round(best["ours_wall"] / best["seed_wall"], 2),
        "speedup_cpu_time": round(best["ours_cpu"] / best["seed_cpu"], 2),
        "train_flops_per_step": flops,
        "achieved_train_flops_per_s": achieved,
        "fp32_matmul_peak_flops_per_s": peak,
        "fraction_of_peak": round(achieved / peak, 4),
    }
    for key, value in figures.items():
        if key != "machine":
            shown = (
                f"{value:,.4g}" if isinstance(value, float) else json.dumps(value, default=_rounded)
            )
            print(f"{key:>40}: {shown}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
