"""Typed configuration of ``vlmtune serve``: which model, where it listens, how it batches and
what it refuses.

The ``inference`` block is the one ``eval`` and ``predict`` take (device, dtype,
generation, prompt); the model may be given as the positional ``MODEL`` or as
``--model``. The YAML of a serve config::

    model: runs/lora            # MODEL (or inference.model / --model)
    inference:
      generation:
        max_new_tokens: 64
    host: 127.0.0.1             # --host
    port: 8000                  # --port
    max_batch: 8                # --max-batch (= inference.generation.batch_size)
    max_wait_ms: 10             # --max-wait-ms
    max_queue: 64               # --max-queue
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from vlmtune.inference.args import GenerationArgs, InferenceArgs
from vlmtune.utils.config import flag

__all__ = ["API_KEY_ENV", "ServeArgs"]

API_KEY_ENV = "VLMTUNE_API_KEY"
"""Environment variable read for the API key when ``--api-key`` is not given."""


@dataclass
class ServeArgs:
    """``vlmtune serve``: the model as an HTTP API and a web page."""

    model: Path | None = flag(argument=True, default=None)
    """Model to serve: a checkpoint, a PEFT adapter or a training run folder (as ``predict`` takes)."""
    inference: InferenceArgs = field(default_factory=lambda: _constrained_inference())
    """How the model runs (device, dtype, generation, prompt), as in ``eval`` and ``predict``; serve
    decodes constrained by default (``--no-constrained`` to let the model write freely), with the
    listing schema saved beside the model or ``--schema-from DATA``."""
    host: str = flag("--host", default="127.0.0.1")
    """Address to listen on (``0.0.0.0`` for every interface; then set an API key)."""
    port: int = flag("--port", default=8000)
    """TCP port to listen on (0 picks a free one, printed at start)."""
    max_batch: int | None = flag("--max-batch", default=None)
    """Most images generated together in one batch (default: ``inference.generation.batch_size``,
    8; either sets both)."""
    max_wait_ms: float = flag("--max-wait-ms", default=10.0)
    """How long the worker waits for more images after the first one of a batch arrives."""
    max_queue: int = flag("--max-queue", default=64)
    """Most images waiting for the model; beyond it requests get 503 with Retry-After."""
    max_images: int = flag("--max-images", default=16)
    """Most images in one request (more is 413)."""
    max_upload_mb: float = flag("--max-upload-mb", default=20.0)
    """Largest request body in megabytes (more is 413)."""
    max_pixels: int = 40_000_000
    """Images declaring more pixels are refused as decompression bombs (400)."""
    timeout: float = flag("--timeout", default=60.0)
    """Seconds a request may take, upload and queue included (more is 504)."""
    api_key: str | None = flag("--api-key", default=None)
    """Bearer token every endpoint but ``/health`` requires (default: $VLMTUNE_API_KEY; none: open)."""
    cors_origin: list[str] = flag("--cors-origin", default_factory=list)
    """Origin allowed to call the API from a browser (repeatable); none: no CORS headers."""
    allow_remote_images: bool = flag("--allow-remote-images", default=False)
    """Accept http(s) image URLs in chat requests, fetched by prepare's safe downloader."""

    def __post_init__(self) -> None:
        given = self.inference.model
        if self.model is not None and given is not None and Path(self.model) != Path(given):
            raise ValueError(
                f"model: given twice ({str(self.model)!r} and --model {str(given)!r}); give one"
            )
        self.model = Path(self.model) if self.model is not None else given
        if self.model is None:
            raise ValueError("model: required (a checkpoint, adapter or run folder: serve MODEL)")
        self.inference.model = self.model
        if self.max_batch is None:
            self.max_batch = self.inference.generation.batch_size
        self.inference.generation.batch_size = self.max_batch
        positive = ("max_batch", "max_queue", "max_images", "max_pixels")
        for name in positive:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: must be a positive integer, got {value!r}")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port: {self.port} is not a TCP port (0-65535)")
        for name in ("max_wait_ms",):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}: must be >= 0, got {getattr(self, name)!r}")
        for name in ("max_upload_mb", "timeout"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name}: must be > 0, got {getattr(self, name)!r}")
        if self.max_images > self.max_queue:
            raise ValueError(
                f"max_images: {self.max_images} exceeds max_queue {self.max_queue}; such a "
                "request could never be queued (raise --max-queue)"
            )
        if not self.host.strip():
            raise ValueError("host: must not be empty (127.0.0.1 for this machine only)")
        if self.api_key is None:
            self.api_key = os.environ.get(API_KEY_ENV) or None
        if self.api_key is not None and not self.api_key.strip():
            raise ValueError(f"api_key: must not be blank (unset it or ${API_KEY_ENV} for none)")

    @property
    def max_upload_bytes(self) -> int:
        """``max_upload_mb`` in bytes."""
        return int(self.max_upload_mb * 1_000_000)


def _constrained_inference() -> InferenceArgs:
    """Serve's default: every listing parses and names a trained category."""
    return InferenceArgs(generation=GenerationArgs(constrained=True))
