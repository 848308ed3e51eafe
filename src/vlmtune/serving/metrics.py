"""The server's counters and histograms, written in the Prometheus text format (``GET /metrics``).

Written by hand (a few counters and three histograms do not need a client
library): ``vlmtune_requests_total{endpoint,status}``, ``vlmtune_batch_size``,
``vlmtune_queue_wait_seconds``, ``vlmtune_generation_seconds`` (histograms with
``_bucket``, ``_sum``, ``_count``), and the gauges ``vlmtune_queue_depth`` and
``vlmtune_model_loaded``. Thread-safe: the worker thread observes batches while
the event loop counts requests.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

__all__ = ["Histogram", "ServeMetrics"]

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


@dataclass
class Histogram:
    """Cumulative buckets, sum and count of observed values."""

    buckets: tuple[float, ...]
    counts: list[int] = field(default_factory=list)
    total: float = 0.0
    count: int = 0

    def __post_init__(self) -> None:
        self.counts = [0] * len(self.buckets)

    def observe(self, value: float) -> None:
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                self.counts[i] += 1
        self.total += value
        self.count += 1

    def lines(self, name: str) -> list[str]:
        out = [
            f'{name}_bucket{{le="{_number(b)}"}} {c}'
            for b, c in zip(self.buckets, self.counts, strict=True)
        ]
        out.append(f'{name}_bucket{{le="+Inf"}} {self.count}')
        out += [f"{name}_sum {_number(self.total)}", f"{name}_count {self.count}"]
        return out


class ServeMetrics:
    """What ``/metrics`` reports; the batcher and the app update it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, int], int] = {}
        self.batch_size = Histogram(_BATCH_BUCKETS)
        self.queue_wait = Histogram(_LATENCY_BUCKETS)
        self.generation = Histogram(_LATENCY_BUCKETS)
        self.queue_depth = 0
        self.model_loaded = False

    def count_request(self, endpoint: str, status: int) -> None:
        with self._lock:
            key = (endpoint, status)
            self.requests[key] = self.requests.get(key, 0) + 1

    def observe_batch(self, size: int, seconds: float, waits: Sequence[float]) -> None:
        with self._lock:
            self.batch_size.observe(size)
            self.generation.observe(seconds)
            for wait in waits:
                self.queue_wait.observe(wait)

    def render(self) -> str:
        """The Prometheus text exposition (format 0.0.4)."""
        with self._lock:
            lines = [
                "# HELP vlmtune_requests_total HTTP requests by endpoint and status code.",
                "# TYPE vlmtune_requests_total counter",
            ]
            for (endpoint, status), n in sorted(self.requests.items()):
                lines.append(
                    f'vlmtune_requests_total{{endpoint="{endpoint}",status="{status}"}} {n}'
                )
            for name, help_text, hist in (
                ("vlmtune_batch_size", "Images per generation batch.", self.batch_size),
                (
                    "vlmtune_queue_wait_seconds",
                    "Time an image waited for its batch.",
                    self.queue_wait,
                ),
                (
                    "vlmtune_generation_seconds",
                    "Duration of one batch's generation.",
                    self.generation,
                ),
            ):
                lines += [
                    f"# HELP {name} {help_text}",
                    f"# TYPE {name} histogram",
                    *hist.lines(name),
                ]
            lines += [
                "# HELP vlmtune_queue_depth Images waiting for the model.",
                "# TYPE vlmtune_queue_depth gauge",
                f"vlmtune_queue_depth {self.queue_depth}",
                "# HELP vlmtune_model_loaded 1 when the model is loaded and the worker runs.",
                "# TYPE vlmtune_model_loaded gauge",
                f"vlmtune_model_loaded {int(self.model_loaded)}",
            ]
        return "\n".join(lines) + "\n"


def _number(value: float) -> str:
    return repr(float(value)) if not float(value).is_integer() else f"{float(value):.1f}"
