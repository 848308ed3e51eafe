"""Benchmark: Phi3VImageProcessor throughput on one core.

Measures images/s for one decoded 1000x1300 (portrait) RGB image at ``num_crops=4`` with
``torch.set_num_threads(1)``, and, for context, the time of the PIL bilinear resize the HD
transform must do (the official algorithm's own floor). Prints machine info and the figures.

Run: ``python bench/bench_image_processor.py [--seconds 3] [--repeats 5]``
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import statistics
import time

import numpy as np
import PIL
import torch
from PIL import Image

from vlmtune.models.phi3v import Phi3VImageProcessor
from vlmtune.models.phi3v.image_processing_phi3v import hd_geometry


def _decoded_image(width: int = 1000, height: int = 1300) -> Image.Image:
    """A structured-noise photo stand-in, PNG-encoded then decoded (pixels in memory)."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack([(xx * 0.3) % 256, (yy * 0.2) % 256, ((xx + yy) * 0.1) % 256], axis=-1)
    noisy = np.clip(base + rng.normal(0, 25, base.shape), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noisy).save(buffer, format="PNG")
    buffer.seek(0)
    image = Image.open(buffer)
    image.load()
    return image.convert("RGB")


def _rate(fn, seconds: float) -> tuple[float, float]:
    """Calls per second of ``fn`` over about ``seconds``: (wall clock, this thread's CPU time).

    The CPU-time rate is what one dedicated core gives; on a shared machine the wall-clock rate
    also counts time spent waiting for a core.
    """
    for _ in range(3):
        fn()
    count, start, cpu_start = 0, time.perf_counter(), time.thread_time()
    while time.perf_counter() - start < seconds:
        fn()
        count += 1
    return count / (time.perf_counter() - start), count / (time.thread_time() - cpu_start)


def _machine() -> str:
    cpu = platform.processor() or "unknown"
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            names = [
                line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")
            ]
        cpu = names[0] if names else cpu
    load = os.getloadavg() if hasattr(os, "getloadavg") else ("n/a",)
    return (
        f"cpu: {cpu} ({os.cpu_count()} logical cores), load avg {tuple(round(x, 2) for x in load)}\n"
        f"python {platform.python_version()}, torch {torch.__version__}, pillow {PIL.__version__}, "
        f"numpy {np.__version__}, {platform.system()} {platform.machine()}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="time per repeat")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    image = _decoded_image()
    processor = Phi3VImageProcessor(num_crops=4)
    geo = hd_geometry(image.width, image.height, 4)

    def resize_only() -> None:
        tall = image.resize((image.width, geo.resized_w), Image.Resampling.BILINEAR)
        tall.resize((geo.resized_h, geo.resized_w), Image.Resampling.BILINEAR)

    rates = [
        _rate(lambda: processor(image, return_tensors="pt"), args.seconds)
        for _ in range(args.repeats)
    ]
    resize_rates = [_rate(resize_only, args.seconds / 2) for _ in range(args.repeats)]
    wall, cpu = max(r[0] for r in rates), max(r[1] for r in rates)
    resize_cpu = max(r[1] for r in resize_rates)
    print(_machine())
    print(
        f"torch threads: {torch.get_num_threads()}; 1000x1300 -> HD {geo.height}x{geo.width}, num_crops=4"
    )
    print(
        f"Phi3VImageProcessor: {wall:.1f} images/s wall clock (best of {args.repeats}; median "
        f"{statistics.median(r[0] for r in rates):.1f}); {cpu:.1f} images/s per CPU-second "
        f"({1000 / cpu:.1f} ms CPU/image)"
    )
    print(
        f"  of which the PIL bilinear resize alone: {1000 / resize_cpu:.1f} ms CPU (ceiling {resize_cpu:.1f}/s)"
    )


if __name__ == "__main__":
    main()
