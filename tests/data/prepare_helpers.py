"""Shared by the prepare tests: a catalog writer, a quick ``prepare_dataset`` call, failures.csv as a dict."""

from __future__ import annotations

import io
import random
from collections.abc import Callable
from pathlib import Path

import pandas as pd
from fault_server import FaultServer, ok
from PIL import Image

from vlmtune.data.prepare import FAILURE_COLUMNS, PrepareArgs, PrepareReport, prepare_dataset

FAST = {"timeout": 5.0, "retries": 1, "backoff": 0.02, "max_retry_after": 3.0, "progress": False}
"""Timeouts long enough for a loaded machine; the backoff waits are never slept (see :func:`run`)."""


def write_catalog(
    path: Path, rows: list[tuple[str, str]], categories: list[str] | None = None
) -> Path:
    """A catalog with the default (DBQ) column names; ``rows`` are (product id, image reference)."""
    frame = pd.DataFrame(
        {
            "product_code": [pid for pid, _ in rows],
            "title": [f"Item {i}" for i in range(len(rows))],
            "category3_code": categories or ["SCARVES"] * len(rows),
            "full_price": ["1,290.00"] * len(rows),
            "imageurl": [ref for _, ref in rows],
        }
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".parquet":
        frame.to_parquet(path, index=False)
    else:
        frame.to_csv(path, index=False)
    return path


def run(
    catalog: Path, out: Path, sleep: Callable[[float], object] | None = None, **overrides
) -> PrepareReport:
    """``prepare_dataset`` with :data:`FAST` settings; backoff waits go to ``sleep`` (default: none)."""
    args = PrepareArgs(source=str(catalog), out=out, **{**FAST, **overrides})
    return prepare_dataset(args, sleep=sleep or (lambda _seconds: None))


def failures(out: Path) -> dict[str, tuple[str, str]]:
    """``failures.csv`` as id -> (stage, kind of reason)."""
    frame = pd.read_csv(out / "failures.csv", dtype=str, keep_default_na=False)
    assert list(frame.columns) == FAILURE_COLUMNS
    return {r.id: (r.stage, r.reason.split(":")[0]) for r in frame.itertuples()}


def noisy_jpeg(size: int = 64, seed: int = 0) -> bytes:
    pixels = random.Random(seed).randbytes(size * size * 3)
    buffer = io.BytesIO()
    Image.frombytes("RGB", (size, size), pixels).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def good_server(server: FaultServer, n: int) -> list[tuple[str, str]]:
    """``n`` distinct photos served at ``/p<i>.jpg``; returns (product id, URL) rows.

    Distinct to prepare's duplicate finder too: each is its own random pattern (plain
    colours a few levels apart would be near duplicates, one group, one split).
    """
    return [(f"p{i}", server.add(f"/p{i}.jpg", ok(noisy_jpeg(32, seed=i)))) for i in range(n)]
