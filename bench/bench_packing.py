"""Padding waste and training tokens/s: padded random batches, ``group_by_length``, and packing.

The samples have the image-token counts of real catalog photos: a spread of catalog-like sizes
and aspect ratios (square and 4:5 product shots, 2:3 and 3:4 portraits, 3:2 and 16:9 landscapes,
tall and wide banners) counted by vlmtune's own ``Phi3VImageProcessor`` at ``--num-crops``
(default 16, as the real recipes use), plus the text of the prompt and a listing answer of 20 to
60 tokens (``--answer-tokens``: longer texts, e.g. product descriptions). The model is Phi-3-V at reduced size with the real vision geometry (336 px crops,
patch 14: 144 tokens a crop, so the image placeholders and features are the real counts) and a
small CLIP width; its decoder width, depth and vocabulary are ``--hidden``, ``--layers`` and
``--vocab`` (default: width 512, 1 layer, a 16,384-token vocabulary, so that the per-token
cost, like the real model's, is mostly matrix products and not attention; 2 CPU cores).

Three strategies train LoRA (forward, backward, AdamW step) over the same samples, one epoch each:

* **padded random**: shuffled batches of ``--batch`` samples, padded to their longest
  (vlmtune's collator);
* **group_by_length**: the Trainer's ``LengthGroupedSampler`` order, padded;
* **packing**: vlmtune's rows of at most ``--pack-max-tokens`` tokens (best-fit decreasing,
  no padding; SDPA with the block-diagonal mask transformers builds from the position ids).

Per strategy: real (non-pad) tokens/s, the share of pad tokens among the tokens computed, and
steps; ratios to padded random. Batches are built before the clock starts and one warm-up step
runs first; the strategies alternate ``--repeats`` times and the best of each is kept (the
machine may be shared). The pad share is also computed, from the lengths alone, over 10,000
samples of the same distribution (``pad_fraction_10k``).

    .venv/bin/python bench/bench_packing.py [--samples 16] [--batch 4] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import time
from pathlib import Path
from typing import Any

import torch
from transformers.trainer_pt_utils import LengthGroupedSampler

from vlmtune.data.collator import VisionSFTCollator
from vlmtune.data.dataset import IGNORE_INDEX
from vlmtune.data.packing import PackingCollator, pack_lengths
from vlmtune.models.phi3v import Phi3VImageProcessor, build_tiny_phi3v, tiny_phi3v_config
from vlmtune.training.args import LoraArgs, TrainArgs
from vlmtune.training.build import apply_training_mode

# (width, height) of catalog-like photos and their weights (product shots are mostly square or 4:5)
CATALOG_SIZES = {
    (1000, 1000): 4, (1200, 1200): 3, (1000, 1250): 4, (1600, 2000): 2, (800, 1200): 2,
    (1200, 1600): 2, (1500, 1000): 2, (1600, 900): 1, (900, 1600): 1, (600, 1800): 1,
    (2400, 600): 1, (500, 500): 1, (640, 800): 1,
}  # fmt: skip
PROMPT_TOKENS = 22  # <|user|>\n<|image_1|>\nWhat is shown in this image?<|end|>\n<|assistant|>\n


def sample_specs(
    n: int, num_crops: int, seed: int, answer: tuple[int, int] = (20, 60)
) -> list[dict[str, int]]:
    """``n`` samples: image size drawn from CATALOG_SIZES, image tokens from the processor,
    answer tokens uniform in ``answer``."""
    processor = Phi3VImageProcessor(num_crops=num_crops)
    rng = random.Random(seed)
    sizes = rng.choices(list(CATALOG_SIZES), weights=list(CATALOG_SIZES.values()), k=n)
    specs = []
    for width, height in sizes:
        image = processor.num_tokens_for_size(width, height, num_crops)
        specs.append(
            {"width": width, "height": height, "image": image, "answer": rng.randint(*answer)}
        )
    return specs


def make_sample(spec: dict[str, int], num_crops: int, vocab: int, seed: int) -> dict[str, Any]:
    """A dataset-shaped example: prompt with one placeholder run, answer labelled, random pixels."""
    from vlmtune.models.phi3v.image_processing_phi3v import hd_geometry

    g = torch.Generator().manual_seed(seed)
    geo = hd_geometry(spec["width"], spec["height"], num_crops)
    text = torch.randint(3, vocab, (PROMPT_TOKENS + spec["answer"],), generator=g)
    ids = torch.cat([text[:4], torch.full((spec["image"],), -1), text[4:]]).long()
    labels = torch.full_like(ids, IGNORE_INDEX)
    labels[-spec["answer"] :] = ids[-spec["answer"] :]
    pixels = torch.zeros(1, num_crops + 1, 3, 336, 336)
    used = 1 + (geo.height // 336) * (geo.width // 336)
    pixels[0, :used] = torch.randn(used, 3, 336, 336, generator=g)
    return {
        "input_ids": ids,
        "labels": labels,
        "pixel_values": pixels,
        "image_sizes": torch.tensor([[geo.height, geo.width]]),
        "sample_id": str(seed),
        "image_path": f"{seed}.jpg",
    }


def orders(lengths: list[int], args: argparse.Namespace) -> dict[str, list[list[int]]]:
    """Sample indices per step, per strategy."""
    g = torch.Generator().manual_seed(args.seed)
    shuffled = torch.randperm(len(lengths), generator=g).tolist()
    grouped = list(LengthGroupedSampler(args.batch, lengths=lengths, generator=g))
    rows = pack_lengths(lengths, args.pack_max_tokens, separate_above=4096)
    random.Random(args.seed).shuffle(rows)
    chunk = args.batch
    return {
        "padded_random": [shuffled[i : i + chunk] for i in range(0, len(shuffled), chunk)],
        "group_by_length": [grouped[i : i + chunk] for i in range(0, len(grouped), chunk)],
        "packing": rows,
    }


def collate(name: str, steps: list[list[int]], samples: list[dict]) -> list[dict[str, Any]]:
    """The strategy's batches, its first step twice (the first run is the warm-up)."""
    steps = [steps[0], *steps]
    if name == "packing":
        packed = PackingCollator(pad_token_id=0)
        return [packed([{"pack": [samples[i] for i in idx]}]) for idx in steps]
    padded = VisionSFTCollator(pad_token_id=0)
    return [padded([samples[i] for i in idx]) for idx in steps]


def pad_fraction_at_scale(name: str, args: argparse.Namespace, n: int = 10_000) -> float:
    """The strategy's pad share over ``n`` samples of the same distribution (lengths only)."""
    specs = sample_specs(n, args.num_crops, args.seed + 1, args.answer_tokens)
    lengths = [PROMPT_TOKENS + s["image"] + s["answer"] for s in specs]
    steps = orders(lengths, args)[name]
    computed = sum(
        len(idx) * max(lengths[i] for i in idx)
        if name != "packing"
        else sum(lengths[i] for i in idx)
        for idx in steps
    )
    return 1 - sum(lengths) / computed


def build_model(args: argparse.Namespace):
    config = tiny_phi3v_config(
        vocab_size=args.vocab, hidden_size=args.hidden, num_hidden_layers=args.layers,
        num_attention_heads=args.hidden // 64, intermediate_size=args.hidden * 8 // 3,
        vision_hidden_size=64, vision_layers=2, vision_heads=2, vision_intermediate_size=128,
        crop_size=336, patch_size=14, pad_token_id=0, eos_token_id=2,
    )  # fmt: skip
    config._attn_implementation = "sdpa"
    model = build_tiny_phi3v(config, seed=0)
    model.config.use_cache = False
    model = apply_training_mode(model, TrainArgs(mode="lora"), LoraArgs(dropout=0.0))
    return model.train()


def run(model, batches: list[dict[str, Any]]) -> dict[str, float]:
    """Train on ``batches`` (the first is a warm-up); tokens/s and the pad share of the timed ones."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)

    def step(batch: dict[str, Any]) -> None:
        inputs = {k: v for k, v in batch.items() if isinstance(v, torch.Tensor)}
        model(**inputs).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step(batches[0])
    start = time.perf_counter()
    for batch in batches[1:]:
        step(batch)
    seconds = time.perf_counter() - start
    timed = batches[1:]
    real = sum(_real_tokens(b) for b in timed)
    computed = sum(b["input_ids"].numel() for b in timed)
    return {
        "seconds": round(seconds, 2),
        "steps": len(timed),
        "samples": sum(int(b["image_sizes"].shape[0]) for b in timed),
        "real_tokens": real,
        "tokens_per_s": real / seconds,
        "pad_fraction": 1 - real / computed,
    }


def _real_tokens(batch: dict[str, Any]) -> int:
    if "attention_mask" in batch:
        return int(batch["attention_mask"].sum())
    return int(batch["input_ids"].numel())


def machine_info() -> dict[str, Any]:
    import transformers

    names = []
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            names = [line.split(":", 1)[1].strip() for line in handle if "model name" in line]
    return {
        "cpu": names[0] if names else platform.processor(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "load_average": os.getloadavg(),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--num-crops", type=int, default=16)
    parser.add_argument("--pack-max-tokens", type=int, default=4096)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=1)
    parser.add_argument("--vocab", type=int, default=16384)
    parser.add_argument("--strategies", default="padded_random,group_by_length,packing")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument(
        "--answer-tokens", default="20,60", help="MIN,MAX answer tokens (listings: 20-60)"
    )
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    args.answer_tokens = tuple(int(x) for x in args.answer_tokens.split(","))
    specs = sample_specs(args.samples, args.num_crops, args.seed, args.answer_tokens)
    lengths = [PROMPT_TOKENS + s["image"] + s["answer"] for s in specs]
    image_tokens = sorted(s["image"] for s in specs)
    print(f"image tokens at num_crops {args.num_crops}: min {image_tokens[0]}, "
          f"median {image_tokens[len(image_tokens) // 2]}, max {image_tokens[-1]}")  # fmt: skip
    model = build_model(args)
    samples = [make_sample(spec, args.num_crops, args.vocab, i) for i, spec in enumerate(specs)]
    plans = {k: v for k, v in orders(lengths, args).items() if k in args.strategies.split(",")}
    results: dict[str, dict[str, Any]] = {}
    for repeat in range(args.repeats):  # strategies alternate; the best of each is kept
        for name, steps in plans.items():
            figures = run(model, collate(name, steps, samples))
            print(f"round {repeat + 1}", name, json.dumps(figures), flush=True)
            if figures["tokens_per_s"] > results.get(name, {}).get("tokens_per_s", 0):
                results[name] = figures
    for name, figures in results.items():
        figures["pad_fraction_10k"] = pad_fraction_at_scale(name, args)
    base = results.get("padded_random", {}).get("tokens_per_s")
    for figures in results.values():
        figures["speedup_vs_padded_random"] = figures["tokens_per_s"] / base if base else None
    report = {
        "machine": machine_info(),
        "settings": vars(args) | {"json": str(args.json) if args.json else None},
        "image_tokens": {"min": image_tokens[0], "max": image_tokens[-1]},
        "results": results,
    }
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
