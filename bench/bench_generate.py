"""Benchmark: batched listing generation (batch 8) against one image at a time, same run, same model.

Builds tiny random Phi-3-V models (the tests' size and ``vlmtune init-model``'s default size)
with a BPE tokenizer trained on a few listings, then times ``generate_listings`` over the same
16 photo-sized images at ``batch_size=8`` and at ``batch_size=1`` (greedy, KV cache,
``max_new_tokens`` new tokens, stop at ``<|end|>``/EOS), alternating the two so that load from
other processes hits both alike; reports the median of the repeats, checks that both produce
the same texts, and prints machine info. Target: batched at least 3x faster.

Run: ``python bench/bench_generate.py [--images 16] [--max-new-tokens 32] [--repeats 3] [--threads 1]``
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import numpy as np
import torch
from PIL import Image

from vlmtune.data.prompts import PromptTemplate
from vlmtune.inference.args import GenerationArgs
from vlmtune.inference.generate import generate_listings
from vlmtune.models.families.phi3v import train_tokenizer
from vlmtune.models.phi3v import (
    Phi3VImageProcessor,
    Phi3VProcessor,
    build_tiny_phi3v,
    tiny_phi3v_config,
)

SIZES = {
    "tests' tiny (hidden 32, 2 layers, 56 px crops)": dict(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        vision_hidden_size=32, vision_intermediate_size=64, crop_size=56,
    ),
    "init-model default (hidden 192, 4 layers, 112 px crops)": dict(
        hidden_size=192, num_hidden_layers=4, num_attention_heads=6, intermediate_size=512,
        vision_hidden_size=64, vision_intermediate_size=256, crop_size=112,
    ),
}  # fmt: skip


def _processor_and_model(size: dict) -> tuple[Phi3VProcessor, torch.nn.Module]:
    template = PromptTemplate()
    records = [
        {"title": f"{m} {k}", "category": c, "price": 100.0 + 37 * i}
        for i, (m, k, c) in enumerate(
            [
                ("Check Wool", "Scarf", "scarves"),
                ("Leather", "Tote", "bags"),
                ("Cotton", "Polo", "shirts"),
            ]
            * 20
        )
    ]
    tokenizer = train_tokenizer(
        [template.prompt()] + [template.answer(r) + "<|end|>" for r in records], 512
    )
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in ("<s>", "<|endoftext|>")}
    config = tiny_phi3v_config(
        vocab_size=(len(tokenizer) + 63) // 64 * 64,
        bos_token_id=ids["<s>"],
        eos_token_id=ids["<|endoftext|>"],
        pad_token_id=ids["<|endoftext|>"],
        **size,
    )
    processor = Phi3VProcessor(
        Phi3VImageProcessor(num_crops=1, crop_size=size["crop_size"]), tokenizer
    )
    return processor, build_tiny_phi3v(config, seed=0)


def _images(n: int) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (700, 560, 3), dtype=np.uint8)) for _ in range(n)]


def _time(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _bench(
    name: str, size: dict, images: list[Image.Image], max_new_tokens: int, repeats: int
) -> dict:
    processor, model = _processor_and_model(size)
    template = PromptTemplate()
    batched_args = GenerationArgs(max_new_tokens=max_new_tokens, batch_size=8)
    single_args = GenerationArgs(max_new_tokens=max_new_tokens, batch_size=1)
    batched_texts = generate_listings(model, processor, images, template, batched_args)  # warm-up
    single_texts = generate_listings(model, processor, images, template, single_args)
    batched, single = [], []
    for _ in range(repeats):
        batched.append(
            _time(lambda: generate_listings(model, processor, images, template, batched_args))
        )
        single.append(
            _time(lambda: generate_listings(model, processor, images, template, single_args))
        )
    b, s = statistics.median(batched), statistics.median(single)
    params = sum(p.numel() for p in model.parameters())
    return {
        "model": name,
        "params": params,
        "batched_s": b,
        "single_s": s,
        "speedup": s / b,
        "images_per_s_batched": len(images) / b,
        "images_per_s_single": len(images) / s,
        "same_texts": batched_texts == single_texts,
    }


def _machine() -> str:
    cpu = platform.processor() or "unknown"
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            names = [
                line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")
            ]
        cpu = names[0] if names else cpu
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    return (
        f"{cpu}; {os.cpu_count()} logical CPUs; torch {torch.__version__} with {torch.get_num_threads()} "
        f"threads; Python {platform.python_version()}; load average {load}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (1: stable on a shared machine)"
    )
    opts = parser.parse_args()
    torch.set_num_threads(opts.threads)
    images = _images(opts.images)
    print(f"machine: {_machine()}")
    print(
        f"{opts.images} images (560x700, num_crops 1), greedy, {opts.max_new_tokens} new tokens, "
        f"median of {opts.repeats}"
    )
    print(
        "| model | params | batch 8 (s) | one at a time (s) | speed-up | images/s batch 8 | images/s single | same texts |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name, size in SIZES.items():
        r = _bench(name, size, images, opts.max_new_tokens, opts.repeats)
        print(
            f"| {r['model']} | {r['params'] / 1e6:.2f} M | {r['batched_s']:.2f} | {r['single_s']:.2f} | "
            f"{r['speedup']:.1f}x | {r['images_per_s_batched']:.1f} | {r['images_per_s_single']:.1f} | {r['same_texts']} |"
        )


if __name__ == "__main__":
    main()
