"""Trainer callbacks of a vlmtune run: the metrics log and the stop-on-signal checkpoint.

* :class:`MetricsJsonlCallback` appends every log/eval event to ``RUN/metrics.jsonl``
  (one JSON object per line with ``step``, ``epoch`` and the wall-clock ``time``),
  whatever tracker is used.
  On resume it first drops the events logged after the resumed step, so the
  file reads as one uninterrupted run. The file is read and appended with
  :mod:`vlmtune.utils.jsonl`: a last line cut short by a kill is dropped (it
  belongs to a step after the last checkpoint), never a reason to abort the resume.
* :class:`SignalCheckpointCallback` turns SIGTERM/SIGINT into "save a checkpoint
  at the end of this step, then stop"; a second signal stops at once. In a
  distributed run the flag is all-reduced each step, so every rank stops (and
  joins the checkpoint save) at the same step even if only one was signalled.
"""

from __future__ import annotations

import json
import math
import signal
import threading
import time
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback

from vlmtune.utils.io import atomic_write_text
from vlmtune.utils.jsonl import append_jsonl, read_jsonl
from vlmtune.utils.logging import get_logger

__all__ = ["MetricsJsonlCallback", "SignalCheckpointCallback", "read_metrics"]

log = get_logger(__name__)


class MetricsJsonlCallback(TrainerCallback):
    """Writes ``metrics.jsonl`` on the main process."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.is_world_process_zero and self.path.is_file():
            kept = [e for e in read_metrics(self.path) if e.get("step", 0) <= state.global_step]
            atomic_write_text(
                self.path, "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in kept)
            )

    def on_log(
        self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any
    ) -> None:
        if not state.is_world_process_zero or not logs:
            return
        event = {"step": state.global_step, "epoch": state.epoch, "time": round(time.time(), 3)}
        event |= {k: _plain(v) for k, v in logs.items()}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        append_jsonl(self.path, event)
        log.info(
            "step %d: %s", state.global_step, ", ".join(f"{k}={_short(v)}" for k, v in logs.items())
        )


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The events of a ``metrics.jsonl`` file, in order (a torn last line dropped with a warning)."""
    return read_jsonl(path)


class SignalCheckpointCallback(TrainerCallback):
    """Saves a checkpoint and stops training after the step during which SIGTERM/SIGINT arrived.

    Use as a context manager around ``trainer.train()``: the handlers are
    installed on entry (main thread only) and the previous ones restored on exit.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.received: int | None = None
        self.stopped_at_step: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> SignalCheckpointCallback:
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: Any) -> None:
        if self.received is not None:
            raise KeyboardInterrupt(
                f"second {signal.Signals(signum).name}: stopping without a checkpoint"
            )
        self.received = signum
        log.warning(
            "%s received: saving a checkpoint after this step, then stopping",
            signal.Signals(signum).name,
        )

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        if self._any_rank_received(args):
            control.should_save = True
            control.should_training_stop = True
            self.stopped_at_step = state.global_step
        return control

    def _any_rank_received(self, args: Any) -> bool:
        """True when this or any other process got a signal, so that all ranks stop at the same step."""
        received = self.received is not None
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            return received
        flag = torch.tensor([1.0 if received else 0.0], device=args.device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        if flag.item() > 0 and self.received is None:
            self.received = int(signal.SIGTERM)  # stopped because another rank was signalled
        return flag.item() > 0

    @property
    def signal_name(self) -> str | None:
        """Name of the signal received (``SIGTERM``/``SIGINT``), if any."""
        return None if self.received is None else signal.Signals(self.received).name


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _plain(value: Any) -> Any:
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value
