"""``vlmtune prepare``: from a catalog to an image dataset the trainer reads.

The public fine-tuning scripts do this step with a sequential ``requests.get``
loop that prints and skips failures. Here the same job is concurrent,
resumable and accounts for every row:

1. the catalog is loaded (:func:`vlmtune.data.catalog.load_catalog`); its
   rejects become ``failures.csv`` rows with stage ``catalog``;
2. splits are assigned from the product ids over all usable catalog rows
   (:mod:`vlmtune.data.splits`), so a row's split never depends on whether
   other rows' images could be fetched;
3. rows are grouped by image reference (a duplicate URL is fetched once) and
   each group is processed in a thread pool: reuse of an image stored by an
   earlier run (checked by SHA-256, no request made), else an http(s)
   download (:mod:`vlmtune.data.download`) or a copy of a file relative to
   the catalog's folder, then validation and RGB conversion
   (:mod:`vlmtune.data.images`), then an atomic write to ``images/``;
4. each stored image is appended to a journal as soon as it is written, so a
   run killed at any point (SIGINT, SIGKILL) resumes where it stopped;
5. the manifest (``dataset.parquet``, ``dataset.csv``), ``failures.csv``,
   ``vlmtune_dataset.json`` and ``prepare_report.json`` are written
   atomically at the end; then the journal is removed.

Stages of ``failures.csv``: ``catalog`` (row unusable in the catalog itself),
``url`` (reference refused before any I/O: unsupported scheme, malformed URL,
absolute or escaping local path; a relative name with a colon such as
``a:b.jpg`` is a path, not a scheme), ``download`` (HTTP failure), ``local``
(local file missing, unreadable or too large), ``image`` (bytes are not a
usable image: HTML, a format other than the common photo formats,
truncated, corrupt, decompression bomb), ``store``
(writing the image failed). Each reason starts with a kind and a colon.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pandas as pd

from vlmtune.data.catalog import Catalog, CatalogColumns, load_catalog
from vlmtune.data.download import ALLOWED_SCHEMES, DownloadPolicy, Fetcher, check_url
from vlmtune.data.images import (
    DEFAULT_MAX_PIXELS,
    ImageRejected,
    ProcessedImage,
    process_image,
    safe_stem,
)
from vlmtune.data.prepared import DATASET_INFO
from vlmtune.data.splits import SPLITS, assign_splits, parse_split_fractions
from vlmtune.utils.io import atomic_path, atomic_write_bytes, atomic_write_json
from vlmtune.utils.logging import get_logger

__all__ = [
    "FAILURE_COLUMNS",
    "STAGES",
    "PrepareArgs",
    "PrepareError",
    "PrepareReport",
    "check_unique_stems",
    "prepare_dataset",
]

LOG = get_logger(__name__)
STAGES = ("catalog", "url", "download", "local", "image", "store")
FAILURE_COLUMNS = ["source_row", "id", "url", "stage", "reason"]
NEW_COLUMNS = ["local_image_path", "image_width", "image_height", "image_sha256", "split"]
IMAGES_DIR = "images"
JOURNAL = ".prepare_journal.jsonl"
LOCK = ".prepare.lock"
_STORED_NAME = re.compile(r"^[A-Za-z0-9._-]*-[0-9a-f]{16}\.(jpg|png)$")
# URL schemes commonly written without "//" after the colon; any other "name:rest" without
# "//" is a relative file name that happens to contain a colon.
_SCHEMES_WITHOUT_SLASHES = {"file", "data", "javascript", "vbscript", "mailto", "about", "blob",
                            "ftp", "ftps", "sftp", "gopher", "tel", "urn", "news", "jar"}  # fmt: skip


class PrepareError(ValueError):
    """The run cannot start (bad output folder, unusable stratify column...)."""


@dataclass
class PrepareArgs:
    """Everything ``vlmtune prepare`` needs: where from, where to, and how to fetch and check."""

    source: str = ""
    """Catalog: a CSV/TSV/Parquet/JSONL file, a datasets ``save_to_disk`` folder, or a hub name ``owner/name``."""
    out: Path = Path()
    """Output folder (created); re-running with the same folder resumes."""
    columns: CatalogColumns = field(default_factory=CatalogColumns)
    """Which catalog columns hold the id, title, category, price and image reference."""
    concurrency: int = 16
    """Worker threads: downloads, copies and image checks in flight at once."""
    per_host: int = 16
    """Requests in flight to one host at a time (a catalog's images usually sit on one CDN host)."""
    timeout: float = 10.0
    """Connect timeout and read timeout, in seconds, each."""
    retries: int = 3
    """Extra attempts on timeouts, connection errors, 408, 429 and 5xx (never on other 4xx)."""
    backoff: float = 0.5
    """Base of the exponential backoff between attempts, in seconds (jittered)."""
    max_retry_after: float = 60.0
    """Longest wait honoured from a server's Retry-After header, in seconds."""
    max_redirects: int = 5
    """Redirects followed per URL."""
    max_bytes: int = 20_000_000
    """Largest image accepted, in bytes (download streamed and abandoned beyond it)."""
    max_side: int | None = None
    """Downsize images whose longer side exceeds this many pixels (None keeps the size)."""
    max_pixels: int = DEFAULT_MAX_PIXELS
    """Images with more pixels are refused as decompression bombs (40 megapixels by default)."""
    split: str | list[float] = "0.9,0.05,0.05"
    """Train, val, test fractions: ``"0.9,0.05,0.05"`` or a list of three numbers summing to 1."""
    stratify: str | None = None
    """Catalog column whose values get the split proportions each (e.g. ``category3_code``)."""
    seed: int = 0
    """Seed of the id hash that assigns splits."""
    allow_local_paths: bool = False
    """Also read absolute image paths and paths leaving the catalog's folder."""
    progress: bool = True
    """Show a progress bar (rate and ETA) on stderr."""

    def __post_init__(self) -> None:
        if not str(self.source).strip():
            raise ValueError(
                "source is required: a catalog file, folder, or hub dataset name (--source)"
            )
        if not str(self.out).strip() or Path(self.out) == Path():
            raise ValueError("out is required: the output folder (--out)")
        self.out = Path(self.out)
        self.source = str(self.source)
        self.split = list(parse_split_fractions(self.split))
        for name in ("concurrency", "per_host", "max_bytes", "max_pixels"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        if self.max_side is not None and self.max_side < 1:
            raise ValueError(f"max_side must be >= 1 or None, got {self.max_side!r}")
        if self.stratify is not None and not str(self.stratify).strip():
            self.stratify = None
        self.download_policy()  # validates timeout, retries, backoff...

    def download_policy(self) -> DownloadPolicy:
        """The download settings of these arguments."""
        return DownloadPolicy(
            timeout=self.timeout,
            retries=self.retries,
            backoff=self.backoff,
            max_retry_after=self.max_retry_after,
            max_bytes=self.max_bytes,
            max_redirects=self.max_redirects,
            per_host=self.per_host,
        )

    def image_settings(self) -> dict[str, Any]:
        """Settings that change the stored images; an earlier image is reused only if they match."""
        return {"max_side": self.max_side, "max_pixels": self.max_pixels}


@dataclass
class PrepareReport:
    """What a run did; also written to ``prepare_report.json``."""

    source: str
    out: str
    rows_read: int = 0
    """Catalog rows, usable or not."""
    kept: int = 0
    """Rows in the manifest (with a stored, valid image)."""
    dropped: int = 0
    """Rows in ``failures.csv`` (catalog rejects included); ``kept + dropped == rows_read``."""
    reused: int = 0
    """Kept rows whose image an earlier run had stored (no request made)."""
    downloaded: int = 0
    """Kept rows whose image was fetched over http(s) in this run."""
    copied: int = 0
    """Kept rows whose image was copied from a local path in this run."""
    dropped_by_stage: dict[str, int] = field(default_factory=dict)
    dropped_by_reason: dict[str, int] = field(default_factory=dict)
    """``"<stage>/<kind>"`` -> rows, e.g. ``"download/http 404"``."""
    splits: dict[str, int] = field(default_factory=dict)
    """Kept rows per split."""
    unique_references: int = 0
    """Distinct image references among usable catalog rows (duplicates fetched once)."""
    http_requests: int = 0
    """HTTP requests made (retries and redirect hops included)."""
    bytes_downloaded: int = 0
    bytes_stored: int = 0
    """Size of all kept images on disk."""
    pruned: int = 0
    """Image files of earlier runs removed because no kept row uses them any more."""
    seconds: float = 0.0
    images_per_second: float = 0.0
    """Images stored in this run (downloaded + copied) per second of wall time."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _Stored:
    path: str
    sha256: str
    width: int
    height: int


@dataclass
class _RowResult:
    row: int
    stored: _Stored | None = None
    how: str = ""
    """``reused``, ``downloaded`` or ``copied`` when stored."""
    stage: str = ""
    reason: str = ""


@dataclass
class _Job:
    ref: str
    rows: list[int]
    kind: str = "url"
    """``url``, ``local`` or ``refused``."""
    target: str = ""
    """URL or absolute file path to read."""
    refusal: str = ""


@dataclass
class _JobResult:
    ref: str
    rows: list[_RowResult]
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
    stop: threading.Event


def prepare_dataset(args: PrepareArgs) -> PrepareReport:
    """Build the dataset in ``args.out`` from ``args.source``; see the module docstring."""
    started = time.monotonic()
    catalog = load_catalog(args.source, args.columns)
    rows = catalog.rows
    ids = rows[args.columns.id].astype(str).tolist()
    check_unique_stems(ids)
    splits = assign_splits(ids, tuple(args.split), args.seed, _strata(rows, args.stratify))
    out = _prepare_out(args.out)
    with _exclusive(out):
        jobs = _make_jobs(rows[args.columns.image].tolist(), _catalog_folder(args.source), args)
        previous = _previous_images(out, args)
        results, counters = _run(jobs, ids, previous, args, out)
        manifest = _manifest(rows, results, splits)
        failures = _failures(catalog, results, rows[args.columns.image].tolist())
        pruned = _prune_images(out, set(manifest["local_image_path"]))
        _write_outputs(out, args, manifest, failures)
    report = _report(args, catalog, manifest, failures, results, counters, len(jobs))
    report.pruned = pruned
    report.seconds = round(time.monotonic() - started, 3)
    made = report.downloaded + report.copied
    report.images_per_second = round(made / report.seconds, 2) if report.seconds > 0 else 0.0
    atomic_write_json(out / "prepare_report.json", report.to_dict())
    (out / JOURNAL).unlink(missing_ok=True)
    LOG.info(
        "prepare: kept %d of %d rows (%d reused), dropped %d (failures.csv) in %.1f s -> %s",
        report.kept, report.rows_read, report.reused, report.dropped, report.seconds, out,
    )  # fmt: skip
    return report


# --------------------------------------------------------------------------- set-up


def check_unique_stems(ids: list[str], stem: Callable[[str], str] = safe_stem) -> None:
    """Raise :class:`PrepareError` if two product ids would share an image file name.

    The stem carries 64 bits of the id's SHA-256, so this never fires in practice; checking
    makes "one file per product" a guarantee rather than a probability.
    """
    seen: dict[str, str] = {}
    for product_id in ids:
        name = stem(product_id)
        other = seen.setdefault(name, product_id)
        if other != product_id:
            raise PrepareError(
                f"product ids {other!r} and {product_id!r} map to the same image file name "
                f"{name!r}; rename one of them in the catalog"
            )


def _prepare_out(out: Path) -> Path:
    if out.exists() and not out.is_dir():
        raise PrepareError(f"output {str(out)!r} exists and is not a folder")
    (out / IMAGES_DIR).mkdir(parents=True, exist_ok=True)
    for folder in (out, out / IMAGES_DIR):
        for stale in folder.glob(".*.tmp"):  # temp files of a killed run (utils.io naming)
            stale.unlink(missing_ok=True)
    return out


@contextlib.contextmanager
def _exclusive(out: Path) -> Iterator[None]:
    """Refuse a second run writing to the same folder (an OS lock: released even by SIGKILL)."""
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks; runs are not guarded
        yield
        return
    with open(out / LOCK, "a+b") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            raise PrepareError(
                f"another `vlmtune prepare` is writing to {str(out)!r}; wait for it to end"
            ) from err
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _strata(rows: pd.DataFrame, column: str | None) -> list[str] | None:
    if column is None:
        return None
    if column not in rows.columns:
        raise PrepareError(
            f"stratify column {column!r} is not in the catalog; it has {', '.join(rows.columns)}"
        )
    return rows[column].astype(str).tolist()


def _catalog_folder(source: str) -> Path | None:
    path = Path(source)
    if path.is_file():
        return path.resolve().parent
    if path.is_dir():
        return path.resolve()
    return None  # a hub dataset has no folder


def _make_jobs(refs: list[Any], folder: Path | None, args: PrepareArgs) -> list[_Job]:
    """One job per distinct image reference, in first-seen order."""
    by_ref: dict[str, _Job] = {}
    for row, raw in enumerate(refs):
        ref = str(raw).strip()
        job = by_ref.get(ref)
        if job is None:
            job = by_ref[ref] = _classify(ref, folder, args.allow_local_paths)
        job.rows.append(row)
    return list(by_ref.values())


def _classify(ref: str, folder: Path | None, allow_local: bool) -> _Job:
    """Decide how ``ref`` is read: an http(s) URL, a local file, or refused (with the reason)."""
    job = _Job(ref=ref, rows=[])
    try:
        scheme = urlsplit(ref).scheme.lower()
    except ValueError as err:
        return _refused(job, f"bad url: {err}")
    if scheme in ALLOWED_SCHEMES:
        refusal = check_url(ref)
        return _refused(job, refusal) if refusal else _Job(ref, [], "url", ref)
    if _is_url(ref, scheme):
        return _refused(
            job, f"unsupported scheme: {scheme!r} (only http and https URLs are fetched)"
        )
    return _classify_path(job, ref, folder, allow_local)


def _is_url(ref: str, scheme: str) -> bool:
    """Whether ``ref`` is a URL of another scheme rather than a local path with a colon in it.

    ``a:b.jpg`` parses with the scheme ``a`` but names a file; a reference is a
    URL when ``//`` follows its scheme (``ftp://``, ``s3://``) or when the scheme
    is one that is written without it (``file:``, ``data:``, ``javascript:``...).
    """
    if not scheme or (len(scheme) == 1 and os.name == "nt"):  # C:\... is a drive letter
        return False
    return ref[len(scheme) + 1 :].startswith("//") or scheme in _SCHEMES_WITHOUT_SLASHES


def _classify_path(job: _Job, ref: str, folder: Path | None, allow_local: bool) -> _Job:
    if "\0" in ref:
        return _refused(job, "bad path: the image path contains a NUL character")
    path = Path(ref)
    if path.is_absolute() and not allow_local:
        return _refused(
            job, f"absolute path: {ref!r} is refused (pass --allow-local-paths to read it)"
        )
    if folder is None and not allow_local:
        return _refused(
            job,
            f"local path: {ref!r} but the catalog is not a local file, so there is no folder to read it from",
        )
    base = folder or Path.cwd()
    target = (base / path).resolve()
    if not allow_local and not target.is_relative_to(base):
        return _refused(
            job,
            f"path escapes the catalog folder: {ref!r} resolves outside {str(base)!r} (pass --allow-local-paths)",
        )
    return _Job(ref, [], "local", str(target))


def _refused(job: _Job, reason: str) -> _Job:
    job.kind, job.refusal = "refused", reason
    return job


def _previous_images(out: Path, args: PrepareArgs) -> dict[str, dict[str, Any]]:
    """Images stored by earlier runs with the same image settings: id -> record (from manifest + journal)."""
    settings = args.image_settings()
    records: dict[str, dict[str, Any]] = {}
    info_path, manifest_path = out / DATASET_INFO, out / "dataset.parquet"
    if info_path.is_file() and manifest_path.is_file():
        try:
            info = json.loads(info_path.read_text(encoding="utf-8"))
            if info.get("image_settings") == settings:
                image_col = info.get("columns", {}).get("image", args.columns.image)
                id_col = info.get("columns", {}).get("id", args.columns.id)
                frame = pd.read_parquet(manifest_path)
                for rec in frame.to_dict("records"):
                    records[str(rec[id_col])] = {
                        "ref": str(rec[image_col]).strip(),
                        "path": rec["local_image_path"],
                        "sha256": rec["image_sha256"],
                        "width": int(rec["image_width"]),
                        "height": int(rec["image_height"]),
                    }
        except (OSError, ValueError, KeyError) as err:
            LOG.warning("ignoring the earlier manifest in %s: %s", out, err)
    records.update(_read_journal(out / JOURNAL, settings))
    return records


def _read_journal(path: Path, settings: dict[str, Any]) -> dict[str, dict[str, Any]]:
    records: dict[str, dict[str, Any]] = {}
    if not path.is_file():
        return records
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue  # the last line of a killed run may be cut short
        if isinstance(rec, dict) and rec.get("settings") == settings:
            records[str(rec["id"])] = rec
    return records


# --------------------------------------------------------------------------- the pool


def _run(
    jobs: list[_Job],
    ids: list[str],
    previous: dict[str, dict[str, Any]],
    args: PrepareArgs,
    out: Path,
) -> tuple[dict[int, _RowResult], Counter]:
    """Process every job in a thread pool; return row -> result and byte/request counters."""
    stop = threading.Event()
    results: dict[int, _RowResult] = {}
    counters: Counter = Counter()
    with (
        Fetcher(args.download_policy(), stop=stop) as fetcher,
        open(out / JOURNAL, "a", encoding="utf-8") as journal,
        _progress(len(ids), args.progress) as bar,
    ):
        ctx = _Context(args, out, ids, previous, fetcher, stop)
        for job_result in _bounded_map(
            lambda job: _process_job(job, ctx), jobs, args.concurrency, stop
        ):
            counters["bytes_downloaded"] += job_result.bytes_downloaded
            _journal(journal, job_result, ids, args.image_settings())
            for row_result in job_result.rows:
                results[row_result.row] = row_result
            bar.update(len(job_result.rows))
        counters["http_requests"] = fetcher.requests_made
    return results, counters


def _bounded_map(
    fn: Callable[[_Job], _JobResult], items: Iterable[_Job], workers: int, stop: threading.Event
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


def _journal(
    journal: Any, job_result: _JobResult, ids: list[str], settings: dict[str, Any]
) -> None:
    """Append newly stored images to the journal (flushed: a SIGKILL right after loses nothing)."""
    lines = []
    for result in job_result.rows:
        if result.stored is None or result.how == "reused":
            continue
        rec = {
            "id": ids[result.row],
            "ref": job_result.ref,
            **asdict(result.stored),
            "settings": settings,
        }
        lines.append(rec)
    if lines:
        journal.write("".join(json.dumps(rec, ensure_ascii=False) + "\n" for rec in lines))
        journal.flush()


def _progress(total: int, enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(
        total=total,
        unit="img",
        desc="prepare",
        disable=not enabled,
        smoothing=0.1,
        dynamic_ncols=True,
    )


# --------------------------------------------------------------------------- one job


def _process_job(job: _Job, ctx: _Context) -> _JobResult:
    """Reuse, fetch or copy one image reference and store it for each of its rows."""
    reused = [_reuse(row, job, ctx) for row in job.rows]
    results = [r for r in reused if r is not None]
    todo = [row for row, r in zip(job.rows, reused, strict=True) if r is None]
    if not todo:
        return _JobResult(job.ref, results)
    if job.kind == "refused":
        failed = [_RowResult(row, stage="url", reason=job.refusal) for row in todo]
        return _JobResult(job.ref, results + failed)
    payload = _read(job, ctx)
    if payload.data is None:
        failed = [_RowResult(row, stage=payload.stage, reason=payload.reason) for row in todo]
        return _JobResult(job.ref, results + failed, payload.received)
    try:
        image = process_image(
            payload.data, payload.content_type, ctx.args.max_pixels, ctx.args.max_side
        )
    except ImageRejected as err:
        failed = [_RowResult(row, stage="image", reason=err.reason) for row in todo]
        return _JobResult(job.ref, results + failed, payload.received)
    results += [_store(row, image, payload.how, ctx) for row in todo]
    return _JobResult(job.ref, results, payload.received)


def _reuse(row: int, job: _Job, ctx: _Context) -> _RowResult | None:
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
    stored = _Stored(rel, rec["sha256"], int(rec["width"]), int(rec["height"]))
    return _RowResult(row, stored=stored, how="reused")


def _read(job: _Job, ctx: _Context) -> _Payload:
    if job.kind == "local":
        data, reason = _read_local(Path(job.target), job.ref, ctx.args.max_bytes)
        return _Payload(data, "copied", "local", reason)
    fetched = ctx.fetcher.fetch(job.target)
    return _Payload(
        fetched.data,
        "downloaded",
        "download",
        fetched.reason,
        fetched.content_type,
        fetched.bytes_received,
    )


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


def _store(row: int, image: ProcessedImage, how: str, ctx: _Context) -> _RowResult:
    """Write ``image`` as ``images/<safe stem of the id><ext>`` atomically."""
    rel = f"{IMAGES_DIR}/{safe_stem(ctx.ids[row])}{image.extension}"
    try:
        atomic_write_bytes(ctx.out / rel, image.data)
    except OSError as err:
        return _RowResult(row, stage="store", reason=f"write failed: {rel}: {err.strerror or err}")
    stored = _Stored(rel, hashlib.sha256(image.data).hexdigest(), image.width, image.height)
    return _RowResult(row, stored=stored, how=how)


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# --------------------------------------------------------------------------- outputs


def _manifest(
    rows: pd.DataFrame, results: dict[int, _RowResult], splits: list[str]
) -> pd.DataFrame:
    kept = [i for i in range(len(rows)) if results.get(i) and results[i].stored is not None]
    frame = rows.iloc[kept].reset_index(drop=True).drop(columns=NEW_COLUMNS, errors="ignore")
    stored = [results[i].stored for i in kept]
    frame["local_image_path"] = pd.Series([s.path for s in stored], dtype="object")
    frame["image_width"] = pd.Series([s.width for s in stored], dtype="int64")
    frame["image_height"] = pd.Series([s.height for s in stored], dtype="int64")
    frame["image_sha256"] = pd.Series([s.sha256 for s in stored], dtype="object")
    frame["split"] = pd.Series([splits[i] for i in kept], dtype="object")
    return frame


def _failures(catalog: Catalog, results: dict[int, _RowResult], refs: list[Any]) -> pd.DataFrame:
    source_rows = _kept_source_rows(catalog)
    id_col = catalog.columns.id
    records = [
        {
            "source_row": int(r.source_row),
            "id": r.id,
            "url": r.image,
            "stage": r.stage,
            "reason": r.reason,
        }
        for r in catalog.rejects.itertuples(index=False)
    ]
    for i in range(len(catalog.rows)):
        result = results.get(i)
        if result is None or result.stored is not None:
            continue
        records.append(
            {
                "source_row": source_rows[i],
                "id": str(catalog.rows[id_col].iat[i]),
                "url": str(refs[i]).strip(),
                "stage": result.stage,
                "reason": result.reason,
            }
        )
    frame = pd.DataFrame(records, columns=FAILURE_COLUMNS)
    return frame.sort_values("source_row", kind="stable").reset_index(drop=True)


def _kept_source_rows(catalog: Catalog) -> list[int]:
    """0-based source row of each kept catalog row (load_catalog keeps rows in order)."""
    rejected = set(int(r) for r in catalog.rejects["source_row"])
    total = len(catalog.rows) + len(catalog.rejects)
    return [r for r in range(total) if r not in rejected]


def _prune_images(out: Path, keep: set[str]) -> int:
    """Remove files named like ours in ``images/`` that no kept row uses (left by earlier runs)."""
    pruned = 0
    for path in (out / IMAGES_DIR).iterdir():
        rel = f"{IMAGES_DIR}/{path.name}"
        if path.is_file() and _STORED_NAME.match(path.name) and rel not in keep:
            path.unlink(missing_ok=True)
            pruned += 1
    return pruned


def _write_outputs(
    out: Path, args: PrepareArgs, manifest: pd.DataFrame, failures: pd.DataFrame
) -> None:
    with atomic_path(out / "dataset.parquet") as tmp:
        manifest.to_parquet(tmp, index=False)
    with atomic_path(out / "dataset.csv") as tmp:
        manifest.to_csv(tmp, index=False)
    with atomic_path(out / "failures.csv") as tmp:
        failures.to_csv(tmp, index=False)
    counts = manifest["split"].value_counts()
    info = {
        "columns": asdict(args.columns),
        "source": args.source,
        "splits": {name: int(counts.get(name, 0)) for name in SPLITS},
        "split_fractions": list(args.split),
        "stratify": args.stratify,
        "seed": args.seed,
        "image_settings": args.image_settings(),
        "created_by": "vlmtune prepare",
    }
    atomic_write_json(out / DATASET_INFO, info)


def _report(
    args: PrepareArgs,
    catalog: Catalog,
    manifest: pd.DataFrame,
    failures: pd.DataFrame,
    results: dict[int, _RowResult],
    counters: Counter,
    unique_refs: int,
) -> PrepareReport:
    how = Counter(r.how for r in results.values() if r.stored is not None)
    kinds = Counter(
        f"{s}/{str(r).split(':')[0]}"
        for s, r in zip(failures["stage"], failures["reason"], strict=True)
    )
    split_counts = manifest["split"].value_counts()
    return PrepareReport(
        source=args.source,
        out=str(args.out),
        rows_read=len(catalog.rows) + len(catalog.rejects),
        kept=len(manifest),
        dropped=len(failures),
        reused=how["reused"],
        downloaded=how["downloaded"],
        copied=how["copied"],
        dropped_by_stage={s: int(n) for s, n in failures["stage"].value_counts().items()},
        dropped_by_reason=dict(sorted(kinds.items())),
        splits={name: int(split_counts.get(name, 0)) for name in SPLITS},
        unique_references=unique_refs,
        http_requests=int(counters["http_requests"]),
        bytes_downloaded=int(counters["bytes_downloaded"]),
        bytes_stored=int(sum((args.out / p).stat().st_size for p in manifest["local_image_path"])),
    )
