"""The download pool of ``vlmtune prepare``: every image reference fetched, checked and stored.

Jobs (one per distinct reference, :mod:`.references`) run in a thread pool with at
most ``4 * concurrency`` queued, so a catalog of millions of rows never holds
millions of futures. Each job first offers its rows the image an earlier run
stored (same reference, same settings, SHA-256 of the file still matching: no
request made); otherwise it downloads (:class:`vlmtune.data.download.Fetcher`) or
copies the file, validates and converts it (:func:`vlmtune.data.images.process_image`)
and writes ``images/<safe stem of the id><ext>`` atomically. The main thread
appends each newly stored image to the journal as its job completes.

A Ctrl-C (or any exception) sets the stop event, which ends backoff waits and
body streams in the workers at once, and cancels the queued jobs.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlmtune.data.download import Fetcher
from vlmtune.data.images import ImageRejected, ProcessedImage, process_image, safe_stem
from vlmtune.data.prepare.args import PrepareArgs
from vlmtune.data.prepare.journal import Journal, Stored
from vlmtune.data.prepare.references import Job
from vlmtune.utils.io import atomic_write_bytes

__all__ = ["IMAGES_DIR", "PoolResult", "RowResult", "run_pool"]

IMAGES_DIR = "images"


@dataclass
class RowResult:
    """What became of one catalog row: its stored image, or the failure stage and reason."""

    row: int
    stored: Stored | None = None
    how: str = ""
    """``reused``, ``downloaded`` or ``copied`` when stored."""
    stage: str = ""
    reason: str = ""


@dataclass
class PoolResult:
    """Row (0-based, kept catalog rows) -> result, and the network counters of the run."""

    rows: dict[int, RowResult] = field(default_factory=dict)
    http_requests: int = 0
    """HTTP requests made (retries and redirect hops included)."""
    bytes_downloaded: int = 0


@dataclass
class _JobResult:
    ref: str
    rows: list[RowResult]
    bytes_downloaded: int = 0


@dataclass
class _Payload:
    """The bytes of one image reference, or why there are none."""

    data: bytes | None
    how: str
    """``downloaded`` or ``copied``."""
    stage: str
    """Failure stage if ``data`` is None: ``download`` or ``local``."""
    reason: str = ""
    content_type: str = ""
    received: int = 0


@dataclass
class _Context:
    """What every job reads (never writes): settings, ids, earlier images, the fetcher."""

    args: PrepareArgs
    out: Path
    ids: list[str]
    previous: dict[str, dict[str, Any]]
    fetcher: Fetcher


def run_pool(
    jobs: list[Job],
    ids: list[str],
    previous: dict[str, dict[str, Any]],
    args: PrepareArgs,
    out: Path,
    journal: Journal,
    sleep: Callable[[float], object] | None = None,
) -> PoolResult:
    """Process every job in a thread pool, journaling each stored image; see the module docstring.

    ``sleep`` replaces the fetcher's backoff waits (tests check the computed waits with it).
    """
    stop = threading.Event()
    result = PoolResult()
    with (
        Fetcher(args.download_policy(), stop=stop, sleep=sleep) as fetcher,
        _progress(len(ids), args.progress) as bar,
    ):
        ctx = _Context(args, out, ids, previous, fetcher)
        for job_result in _bounded_map(
            lambda job: _process_job(job, ctx), jobs, args.concurrency, stop
        ):
            result.bytes_downloaded += job_result.bytes_downloaded
            for row_result in job_result.rows:
                result.rows[row_result.row] = row_result
                if row_result.stored is not None and row_result.how != "reused":
                    journal.record(ids[row_result.row], job_result.ref, row_result.stored)
            bar.update(len(job_result.rows))
        result.http_requests = fetcher.requests_made
    return result


def _bounded_map(
    fn: Callable[[Job], _JobResult], items: Iterable[Job], workers: int, stop: threading.Event
) -> Iterator[_JobResult]:
    """Like ``pool.map`` but unordered and with at most ``4 * workers`` jobs queued (3M rows fit in memory)."""
    pending = iter(items)
    inflight: set[Future[_JobResult]] = set()
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="prepare") as pool:
        try:
            while True:
                for item in pending:
                    inflight.add(pool.submit(fn, item))
                    if len(inflight) >= 4 * workers:
                        break
                if not inflight:
                    return
                done, inflight = wait(inflight, return_when=FIRST_COMPLETED)
                for future in done:
                    yield future.result()
        except BaseException:
            stop.set()  # ends backoff waits and body streams in the workers
            for future in inflight:
                future.cancel()
            raise


def _progress(total: int, enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(
        total=total, unit="img", desc="prepare", disable=not enabled, smoothing=0.1,
        dynamic_ncols=True,
    )  # fmt: skip


# --------------------------------------------------------------------------- one job


def _process_job(job: Job, ctx: _Context) -> _JobResult:
    """Reuse, fetch or copy one image reference and store it for each of its rows."""
    reused = [_reuse(row, job, ctx) for row in job.rows]
    results = [r for r in reused if r is not None]
    todo = [row for row, r in zip(job.rows, reused, strict=True) if r is None]
    if not todo:
        return _JobResult(job.ref, results)
    if job.kind == "refused":
        failed = [RowResult(row, stage="url", reason=job.refusal) for row in todo]
        return _JobResult(job.ref, results + failed)
    payload = _read(job, ctx)
    if payload.data is None:
        failed = [RowResult(row, stage=payload.stage, reason=payload.reason) for row in todo]
        return _JobResult(job.ref, results + failed, payload.received)
    try:
        image = process_image(
            payload.data, payload.content_type, ctx.args.max_pixels, ctx.args.max_side
        )
    except ImageRejected as err:
        failed = [RowResult(row, stage="image", reason=err.reason) for row in todo]
        return _JobResult(job.ref, results + failed, payload.received)
    results += [_store(row, image, payload.how, ctx) for row in todo]
    return _JobResult(job.ref, results, payload.received)


def _reuse(row: int, job: Job, ctx: _Context) -> RowResult | None:
    """The earlier run's image for ``row`` if it is the same reference and its bytes still match."""
    rec = ctx.previous.get(ctx.ids[row])
    if rec is None or rec.get("ref") != job.ref:
        return None
    rel = str(rec.get("path", ""))
    if not rel.startswith(f"{IMAGES_DIR}/{safe_stem(ctx.ids[row])}."):
        return None
    path = ctx.out / rel
    if not path.is_file() or _sha256_file(path) != rec.get("sha256"):
        return None
    stored = Stored(rel, rec["sha256"], int(rec["width"]), int(rec["height"]))
    return RowResult(row, stored=stored, how="reused")


def _read(job: Job, ctx: _Context) -> _Payload:
    if job.kind == "local":
        data, reason = _read_local(Path(job.target), job.ref, ctx.args.max_bytes)
        return _Payload(data, "copied", "local", reason)
    fetched = ctx.fetcher.fetch(job.target)
    return _Payload(
        fetched.data, "downloaded", "download", fetched.reason, fetched.content_type,
        fetched.bytes_received,
    )  # fmt: skip


def _read_local(path: Path, ref: str, max_bytes: int) -> tuple[bytes | None, str]:
    try:
        if not path.is_file():
            what = "is not a file" if path.exists() else "does not exist"
            return None, f"file not found: {ref!r} {what}"
        size = path.stat().st_size
        if size > max_bytes:
            return None, f"too large: {ref!r} has {size} bytes, the limit is {max_bytes}"
        with open(path, "rb") as handle:
            return handle.read(max_bytes + 1), ""
    except OSError as err:
        return None, f"unreadable: {ref!r}: {err.strerror or err}"


def _store(row: int, image: ProcessedImage, how: str, ctx: _Context) -> RowResult:
    """Write ``image`` as ``images/<safe stem of the id><ext>`` atomically."""
    rel = f"{IMAGES_DIR}/{safe_stem(ctx.ids[row])}{image.extension}"
    try:
        atomic_write_bytes(ctx.out / rel, image.data)
    except OSError as err:
        return RowResult(row, stage="store", reason=f"write failed: {rel}: {err.strerror or err}")
    stored = Stored(rel, hashlib.sha256(image.data).hexdigest(), image.width, image.height)
    return RowResult(row, stored=stored, how=how)


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
