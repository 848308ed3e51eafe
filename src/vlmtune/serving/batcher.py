"""Dynamic batching: one generation worker thread fed by a bounded queue of images.

A request hands its images to :meth:`Batcher.submit` and gets one
:class:`concurrent.futures.Future` per image; the event loop awaits them and never
touches the model. The worker takes the oldest image, then keeps taking images
until it holds ``max_batch`` or ``max_wait`` seconds have passed since it took the
first, and generates them in one call (the scheme of TorchServe's and Triton's
dynamic batchers). The queue holds at most ``max_queue`` images: a request whose
images do not all fit is refused as a whole (:class:`QueueFull`), so a burst gets
a fast 503 instead of an ever longer wait. A future cancelled while queued (its
request timed out or its client left) is dropped before generation.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass

from PIL import Image

from vlmtune.serving.metrics import ServeMetrics

__all__ = ["BatchResult", "Batcher", "QueueFull", "ServerClosing"]


class QueueFull(Exception):
    """The queue cannot take a request's images now; retry later (503)."""


class ServerClosing(Exception):
    """The server is stopping and no longer generates (503)."""


@dataclass(frozen=True)
class BatchResult:
    """The generated text of one image and how it was produced."""

    text: str
    queue_seconds: float
    """From submission to the start of its batch's generation."""
    generate_seconds: float
    """Duration of the batch's generation call."""
    batch_size: int
    """Images generated together with (and including) this one."""


@dataclass
class _Item:
    image: Image.Image
    future: Future[BatchResult]
    queued_at: float


class Batcher:
    """Queue images, generate them in batches on one worker thread.

    ``run_batch(images) -> texts`` does the generation (one call per batch).
    ``clock`` is the monotonic clock of the waits and timings.
    """

    def __init__(
        self,
        run_batch: Callable[[list[Image.Image]], list[str]],
        max_batch: int,
        max_wait: float,
        max_queue: int,
        metrics: ServeMetrics | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._run_batch = run_batch
        self.max_batch, self.max_wait, self.max_queue = max_batch, max_wait, max_queue
        self.metrics = metrics or ServeMetrics()
        self._clock = clock
        self._items: deque[_Item] = deque()
        self._cond = threading.Condition()
        self._closing = False
        self._thread = threading.Thread(target=self._work, name="vlmtune-generate", daemon=True)

    def start(self) -> Batcher:
        """Start the worker thread."""
        self._thread.start()
        return self

    @property
    def depth(self) -> int:
        """Images waiting for the model (not counting the batch being generated)."""
        with self._cond:
            return len(self._items)

    @property
    def alive(self) -> bool:
        """True while the worker thread runs."""
        return self._thread.is_alive()

    def submit(self, images: Sequence[Image.Image]) -> list[Future[BatchResult]]:
        """Queue ``images``; raise :class:`QueueFull` when they do not all fit, or
        :class:`ServerClosing` when the batcher is stopping."""
        futures: list[Future[BatchResult]] = [Future() for _ in images]
        with self._cond:
            if self._closing:
                raise ServerClosing("the server is stopping")
            if len(self._items) + len(images) > self.max_queue:
                raise QueueFull(
                    f"{len(self._items)} image(s) are waiting (limit {self.max_queue}); retry later"
                )
            now = self._clock()
            self._items.extend(_Item(im, f, now) for im, f in zip(images, futures, strict=True))
            self.metrics.queue_depth = len(self._items)
            self._cond.notify_all()
        for future in futures:
            future.add_done_callback(self._forget)
        return futures

    def wait_for_depth(self, depth: int, timeout: float | None = None) -> bool:
        """Block until at least ``depth`` images are queued (tests use it to line up a batch)."""
        with self._cond:
            return self._cond.wait_for(lambda: len(self._items) >= depth, timeout)

    def close(self, timeout: float | None = None) -> None:
        """Stop taking images; the worker finishes its batch, queued images fail with
        :class:`ServerClosing`; waits up to ``timeout`` seconds for the worker."""
        with self._cond:
            self._closing = True
            left, self._items = list(self._items), deque()
            self.metrics.queue_depth = 0
            self._cond.notify_all()
        for item in left:
            if item.future.set_running_or_notify_cancel():
                item.future.set_exception(ServerClosing("the server stopped before generating it"))
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _forget(self, future: Future[BatchResult]) -> None:
        """Drop a cancelled image from the queue, so it frees its place at once."""
        if future.cancelled():
            with self._cond:
                self._items = deque(item for item in self._items if item.future is not future)
                self.metrics.queue_depth = len(self._items)

    # ------------------------------------------------------------------ worker

    def _work(self) -> None:
        while True:
            batch = self._take()
            if batch is None:
                return
            live = [item for item in batch if item.future.set_running_or_notify_cancel()]
            if live:
                self._generate(live)

    def _take(self) -> list[_Item] | None:
        """The next batch: the oldest image plus whatever arrives within ``max_wait``."""
        with self._cond:
            self._cond.wait_for(lambda: self._items or self._closing)
            if not self._items:
                return None
            batch = [self._items.popleft()]
            deadline = self._clock() + self.max_wait
            while len(batch) < self.max_batch and not self._closing:
                if self._items:
                    batch.append(self._items.popleft())
                    continue
                remaining = deadline - self._clock()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            self.metrics.queue_depth = len(self._items)
            return batch

    def _generate(self, batch: list[_Item]) -> None:
        start = self._clock()
        try:
            texts = self._run_batch([item.image for item in batch])
            if len(texts) != len(batch):
                raise RuntimeError(f"generation gave {len(texts)} texts for {len(batch)} images")
        except Exception as err:  # every waiting request gets the error, the worker goes on
            for item in batch:
                item.future.set_exception(err)
            return
        seconds = self._clock() - start
        self.metrics.observe_batch(len(batch), seconds, [start - i.queued_at for i in batch])
        for item, text in zip(batch, texts, strict=True):
            item.future.set_result(BatchResult(text, start - item.queued_at, seconds, len(batch)))
