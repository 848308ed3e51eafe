"""Benchmark ``vlmtune serve``: requests/s and latency under load, dynamic batching against none.

Builds the ``init-model``-default-size random Phi-3-V (hidden 192, 4 layers, 112 px crops; the
demo's model size, as ``bench_generate.py`` builds it), saves it as a checkpoint folder, then
starts ``vlmtune serve`` on 127.0.0.1 twice in a subprocess, as a user would: with dynamic
batching (``--max-batch 16``, the default ``--max-wait-ms 10``) and with ``--max-batch 1``.
Against each it runs a closed-loop load generator at concurrency 1, 4, 16 and 32 (each client
thread posts one 224x280 photo to ``/v1/listings`` and posts again as soon as it has the
answer; ``--requests`` answers per client, at least ``--min-requests`` per level), and
reports requests/s, p50/p95/p99 latency, the mean batch size (from ``/metrics``) and errors.
Greedy, ``--max-new-tokens`` new tokens (a random model never writes ``<|end|>``, so every
listing has that many). Target: at concurrency 16, at least 3x the requests/s of
``--max-batch 1``, with no errors.

Run: ``python bench/bench_serve.py [--max-new-tokens 32] [--requests 2] [--min-requests 16]
[--threads 1]`` (a few minutes on 2 idle cores).
"""

from __future__ import annotations

import argparse
import io
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import torch
from bench_generate import SIZES, _processor_and_model
from bench_synth import machine_info
from PIL import Image

SRC = Path(__file__).resolve().parents[1] / "src"
LEVELS = (1, 4, 16, 32)
DEMO = "init-model default (hidden 192, 4 layers, 112 px crops)"


def save_demo_model(folder: Path) -> Path:
    """The demo-size random model and its processor, saved as a checkpoint folder."""
    processor, model = _processor_and_model(SIZES[DEMO])
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def photos(n: int = 8) -> list[bytes]:
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (280, 224, 3), dtype=np.uint8)).save(buffer, "JPEG")
        out.append(buffer.getvalue())
    return out


def start_server(
    model: Path, max_batch: int, max_new_tokens: int, threads: int
) -> tuple[subprocess.Popen, str]:
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    env.pop("VLMTUNE_API_KEY", None)
    env["OMP_NUM_THREADS"] = str(threads)  # torch's intra-op threads in the server
    proc = subprocess.Popen(
        [sys.executable, "-m", "vlmtune.cli.main", "serve", str(model), "--port", "0",
         "--max-batch", str(max_batch), "--max-queue", "256", "--device", "cpu",
         f"inference.generation.max_new_tokens={max_new_tokens}"],
        stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    for line in proc.stderr:
        match = re.search(r"http://127\.0\.0\.1:\d+", line)
        if match:
            threading.Thread(target=proc.stderr.read, daemon=True).start()  # keep the pipe drained
            return proc, match.group(0)
    raise RuntimeError(f"vlmtune serve did not start (exit {proc.wait()})")


def batch_counts(url: str) -> tuple[float, float]:
    """(sum, count) of the server's batch-size histogram."""
    text = httpx.get(url + "/metrics", timeout=60).text
    total = float(re.search(r"^vlmtune_batch_size_sum (\S+)$", text, re.M).group(1))
    count = float(re.search(r"^vlmtune_batch_size_count (\S+)$", text, re.M).group(1))
    return total, count


def load(url: str, concurrency: int, per_client: int, images: list[bytes]) -> dict[str, float]:
    """Closed loop: ``concurrency`` clients, ``per_client`` requests each; latency and errors."""
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    start_gate = threading.Barrier(concurrency + 1)

    def client(k: int) -> None:
        with httpx.Client(base_url=url, timeout=300) as http:
            start_gate.wait()
            for i in range(per_client):
                image = images[(k + i) % len(images)]
                begin = time.perf_counter()
                response = http.post(
                    "/v1/listings", files=[("images", ("p.jpg", image, "image/jpeg"))]
                )
                took = time.perf_counter() - begin
                with lock:
                    latencies.append(took)
                    errors[0] += response.status_code != 200

    before = batch_counts(url)
    threads = [threading.Thread(target=client, args=(k,)) for k in range(concurrency)]
    for thread in threads:
        thread.start()
    start_gate.wait()
    begin = time.perf_counter()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - begin
    after = batch_counts(url)
    cuts = statistics.quantiles(latencies, n=100, method="inclusive")
    return {
        "requests": len(latencies),
        "req_per_s": len(latencies) / wall,
        "p50_ms": cuts[49] * 1000,
        "p95_ms": cuts[94] * 1000,
        "p99_ms": cuts[98] * 1000,
        "mean_batch": (after[0] - before[0]) / max(after[1] - before[1], 1),
        "errors": errors[0],
    }


def run(model: Path, max_batch: int, args: argparse.Namespace) -> dict[int, dict[str, float]]:
    proc, url = start_server(model, max_batch, args.max_new_tokens, args.threads)
    images = photos()
    try:
        load(url, 2, 2, images)  # warm up
        results = {}
        for level in LEVELS:
            per_client = max(args.requests, -(-args.min_requests // level))
            results[level] = load(url, level, per_client, images)
            row = results[level]
            print(
                f"  max_batch {max_batch:>2}  concurrency {level:>2}: {row['requests']:>3} req "
                f"{row['req_per_s']:6.1f} req/s  p50 {row['p50_ms']:7.1f} ms  p95 {row['p95_ms']:7.1f} ms  "
                f"p99 {row['p99_ms']:7.1f} ms  mean batch {row['mean_batch']:5.2f}  errors {row['errors']}",
                flush=True,
            )
        return results
    finally:
        proc.terminate()
        proc.wait(120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--requests", type=int, default=2, help="requests per client, at least")
    parser.add_argument("--min-requests", type=int, default=16, help="requests per level, at least")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the server")
    parser.add_argument("--max-batch", type=int, default=16)
    args = parser.parse_args()
    info = machine_info() | {
        "torch": torch.__version__,
        "server_torch_threads": str(args.threads),
    }
    print("machine:", ", ".join(f"{k}={v}" for k, v in info.items()))
    with tempfile.TemporaryDirectory() as tmp:
        model = save_demo_model(Path(tmp) / "demo-model")
        batched = run(model, args.max_batch, args)
        single = run(model, 1, args)
    for level in LEVELS:
        ratio = batched[level]["req_per_s"] / single[level]["req_per_s"]
        print(f"concurrency {level:>2}: batched / max-batch 1 = {ratio:.2f}x")
    ratio = batched[16]["req_per_s"] / single[16]["req_per_s"]
    errors = sum(r["errors"] for r in (*batched.values(), *single.values()))
    verdict = "met" if ratio >= 3 and errors == 0 else "NOT met"
    print(f"target (>= 3x at concurrency 16, no errors): {verdict} ({ratio:.2f}x, {errors} errors)")


if __name__ == "__main__":
    main()
