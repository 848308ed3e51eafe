"""Benchmark: ``vlmtune prepare`` against the seed script's sequential download loop.

A local HTTP server (127.0.0.1, in its own process) serves N small JPEGs and
adds a fixed latency to every request (50 ms by default, a stand-in for a CDN round trip). In the
same run, on the same machine, it times

- the seed style: ``for row in rows: requests.get(url)``, open with Pillow,
  save to ``images/`` (what public fine-tuning scripts do), and
- ``prepare_dataset`` with the default settings (16 workers, 16 per host), with
  a tighter per-host cap (16 workers, 8 per host) and with 32 workers / 32 per
  host (all the benchmark's images are on one host, so the per-host cap is the
  effective concurrency),

and prints machine information, each time, and the ratios.

    .venv/bin/python bench/bench_prepare.py [--n 500] [--latency 0.05]
"""

from __future__ import annotations

import argparse
import io
import multiprocessing as mp
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import requests
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "data"))
from fault_server import FaultServer, ok  # noqa: E402

from vlmtune.data.prepare import PrepareArgs, prepare_dataset  # noqa: E402


def _image(i: int) -> bytes:
    buffer = io.BytesIO()
    color = (i % 256, (i * 7) % 256, (i * 13) % 256)
    Image.new("RGB", (96, 96), color).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def _serve(n: int, latency: float, urls: mp.Queue, stop: mp.Event) -> None:
    """Child process: serve the N images until ``stop`` is set (the client gets the CPU to itself)."""
    with FaultServer(latency=latency) as server:
        for i in range(n):
            server.add(f"/img/{i}.jpg", ok(_image(i)))
        urls.put(server.base_url)
        stop.wait()


def _catalog(base_url: str, folder: Path, n: int) -> Path:
    rows = []
    for i in range(n):
        url = f"{base_url}/img/{i}.jpg"
        rows.append({"product_code": f"P{i:05d}", "title": f"Item {i}", "category3_code": "SCARVES",
                     "full_price": "590", "imageurl": url})  # fmt: skip
    path = folder / "catalog.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def seed_style(catalog: Path, out: Path) -> tuple[float, int]:
    """The public script's loop: one blocking ``requests.get`` per row, print and skip failures."""
    out.mkdir(parents=True)
    frame = pd.read_csv(catalog, dtype=str)
    started, kept = time.perf_counter(), 0
    for _, row in frame.iterrows():
        try:
            response = requests.get(row["imageurl"], timeout=10)
            if response.status_code == 200:
                image = Image.open(io.BytesIO(response.content))
                image.save(out / f"{row['product_code']}.jpg")
                kept += 1
            else:
                print(f"Failed to download {row['imageurl']}")
        except Exception as err:  # noqa: BLE001 - the seed script's behaviour
            print(f"Error: {err}")
    return time.perf_counter() - started, kept


def vlmtune_run(catalog: Path, out: Path, concurrency: int, per_host: int) -> tuple[float, int]:
    started = time.perf_counter()
    report = prepare_dataset(
        PrepareArgs(
            source=str(catalog), out=out, concurrency=concurrency, per_host=per_host, progress=False
        )
    )
    return time.perf_counter() - started, report.kept


def machine_info() -> str:
    load = os.getloadavg() if hasattr(os, "getloadavg") else ("n/a",)
    return (
        f"{platform.platform()}; {platform.processor() or platform.machine()}; {os.cpu_count()} CPUs; "
        f"Python {platform.python_version()}; requests {requests.__version__}; "
        f"load average {', '.join(f'{x:.2f}' for x in load)}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=500, help="images (default 500)")
    parser.add_argument(
        "--latency", type=float, default=0.05, help="seconds added per request (default 0.05)"
    )
    opts = parser.parse_args()
    print(f"machine: {machine_info()}")
    print(
        f"workload: {opts.n} JPEGs of 96x96 from 127.0.0.1, {opts.latency * 1000:.0f} ms latency per request"
    )
    ctx = mp.get_context("fork")
    urls, stop = ctx.Queue(), ctx.Event()
    server = ctx.Process(target=_serve, args=(opts.n, opts.latency, urls, stop), daemon=True)
    server.start()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            _compare(_catalog(urls.get(timeout=60), Path(tmp), opts.n), Path(tmp), opts.n)
    finally:
        stop.set()
        server.join(timeout=10)


def _compare(catalog: Path, root: Path, n: int) -> None:
    seed_s, seed_kept = seed_style(catalog, root / "seed")
    print(
        f"seed-style sequential loop   : {seed_s:7.2f} s  {seed_kept / seed_s:7.1f} images/s  kept {seed_kept}"
    )
    for concurrency, per_host in ((16, 16), (16, 8), (32, 32)):
        secs, kept = vlmtune_run(
            catalog, root / f"vlmtune_{concurrency}_{per_host}", concurrency, per_host
        )
        label = f"vlmtune prepare {concurrency:>2} workers, {per_host:>2}/host"
        print(f"{label} : {secs:7.2f} s  {kept / secs:7.1f} images/s  kept {kept}  "
              f"speed-up {seed_s / secs:5.1f}x")  # fmt: skip
    assert seed_kept == n, "the seed loop lost images"


if __name__ == "__main__":
    main()
