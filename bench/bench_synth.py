"""Benchmark ``vlmtune synth``: images per second at a given size and worker count.

    .venv/bin/python bench/bench_synth.py [--n 2000] [--size 224x280] [--workers 2] [--repeat 2]

Prints the machine (CPU model, cores, load average, library versions) and, for each
run, the wall time and images/s of :func:`generate_catalog` (drawing, JPEG encoding
and writing every file, CSV included) in a temporary folder, plus the CPU time it
took (this process and its workers): on a shared machine the wall figure depends on
the other load, ``workers / CPU-seconds per image`` is what idle cores would do.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import PIL

from vlmtune.data.synthetic import SynthArgs, generate_catalog


def machine_info() -> dict[str, str]:
    """CPU model, core count, load, Python / numpy / Pillow versions."""
    model = platform.processor() or "unknown"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    return {
        "cpu": model,
        "cores": str(os.cpu_count()),
        "load_avg_1_5_15": load,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "pillow": PIL.__version__,
        "platform": platform.platform(),
    }


def run(n: int, size: str, workers: int) -> tuple[float, float, int]:
    """(wall seconds, CPU seconds of this process and its workers, images written) for ``n`` products."""
    with tempfile.TemporaryDirectory(prefix="bench_synth_") as tmp:
        args = SynthArgs(out=Path(tmp), n=n, image_size=size, workers=workers, broken_frac=0.0)
        before, start = os.times(), time.perf_counter()
        generate_catalog(args)
        seconds, after = time.perf_counter() - start, os.times()
        images = len(list((Path(tmp) / "images").glob("*.jpg")))
    cpu = sum(after[i] - before[i] for i in range(4))  # user + system, self + reaped workers
    return seconds, cpu, images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--size", default="224x280")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=2)
    opts = parser.parse_args()
    for key, value in machine_info().items():
        print(f"{key:>16}: {value}")
    best = best_cpu = 0.0
    for i in range(opts.repeat):
        seconds, cpu, images = run(opts.n, opts.size, opts.workers)
        rate, cpu_rate = images / seconds, images / cpu * opts.workers
        best, best_cpu = max(best, rate), max(best_cpu, cpu_rate)
        print(
            f"run {i + 1}: {images} images {opts.size}, {opts.workers} workers: {seconds:.2f}s wall = {rate:.0f} images/s;"
            f" {cpu:.2f} CPU-s = {1000 * cpu / images:.2f} CPU-ms/image -> {cpu_rate:.0f} images/s on {opts.workers} idle cores"
        )
    print(
        f"best: {best:.0f} images/s wall, {best_cpu:.0f} images/s CPU-bound ({opts.size}, {opts.workers} workers)"
    )


if __name__ == "__main__":
    main()
