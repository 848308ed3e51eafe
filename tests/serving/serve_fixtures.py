"""Helpers of the serving tests (a unique module name; imported by conftest.py and the tests).

``eval_fixtures`` gives the evaluation tests' listing model (it answers every photo with
``LISTING``); :class:`GatedGenerate` wraps the model's batched generation: it records each
batch's size and, while gated, holds the worker inside a batch until the test says go, so
that batches are lined up without sleeps; ``png_bytes`` makes small test photos.
"""

from __future__ import annotations

import importlib.util
import io
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from vlmtune.serving.app import ServeState

_FIXTURES = Path(__file__).resolve().parents[1] / "evaluation" / "eval_fixtures.py"


def eval_fixtures():
    if "eval_fixtures" not in sys.modules:
        spec = importlib.util.spec_from_file_location("eval_fixtures", _FIXTURES)
        module = importlib.util.module_from_spec(spec)
        sys.modules["eval_fixtures"] = module
        spec.loader.exec_module(module)
    return sys.modules["eval_fixtures"]


eval_fixtures()


def png_bytes(color: tuple[int, int, int], size: tuple[int, int] = (112, 140)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


COLORS = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30), (30, 200, 200)]


class GatedGenerate:
    """``images -> texts`` around the real generation; records batch sizes; can hold the worker."""

    def __init__(self, inner: Callable[[list[Image.Image]], list[str]]) -> None:
        self.inner = inner
        self.calls: list[int] = []
        self.gated = False
        self.entered = threading.Event()
        self.go = threading.Event()
        self.fail_next = False
        self.finished = threading.Event()

    def __call__(self, images: list[Image.Image]) -> list[str]:
        self.calls.append(len(images))
        self.entered.set()
        if self.gated:
            assert self.go.wait(60), "the test never said go"
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("out of memory (a test's failure)")
        try:
            return self.inner(images)
        finally:
            self.finished.set()


@dataclass
class Running:
    url: str
    state: ServeState
    generate: GatedGenerate


@dataclass(frozen=True)
class Loaded:
    path: Path
    model: Any
    processor: Any
    data: Path
    """The prepared dataset the model was trained on (its train split gives the listing schema)."""
    schema: Any
