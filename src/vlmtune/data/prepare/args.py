"""``PrepareArgs``: what ``vlmtune prepare`` reads, where it writes, and how it fetches and checks images.

Every user-facing option is a :func:`~vlmtune.utils.config.flag` field: its name is
the YAML key and the dotted override, its docstring the help text. The download
tuning that has no flag (``backoff``, ``max_retry_after``, ``max_redirects``) and
the column mapping (``columns.<field>=NAME``) are set from YAML or overrides.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlmtune.data.catalog import CatalogColumns
from vlmtune.data.dedup_args import DedupArgs
from vlmtune.data.download import DownloadPolicy
from vlmtune.data.images import DEFAULT_MAX_PIXELS
from vlmtune.data.splits import parse_split_fractions
from vlmtune.utils.config import flag
from vlmtune.utils.errors import UserError

__all__ = ["PrepareArgs", "PrepareError"]


class PrepareError(UserError, ValueError):
    """The run cannot start (output folder in use, unusable stratify column, colliding ids...)."""


@dataclass
class PrepareArgs:
    """Everything ``vlmtune prepare`` needs: where from, where to, and how to fetch and check."""

    source: str = flag("--source", "-s", default="")
    """Catalog: a CSV/TSV/Parquet/JSONL file, a datasets ``save_to_disk`` folder, or a hub name ``owner/name``."""
    out: Path = flag("--out", "-o", default=Path())
    """Output folder (created); re-running the same command resumes."""
    columns: CatalogColumns = field(default_factory=CatalogColumns)
    """Which catalog columns hold the id, title, category, price and image reference."""
    concurrency: int = flag("--concurrency", default=16)
    """Worker threads: downloads, copies and image checks in flight at once."""
    per_host: int = flag("--per-host", default=16)
    """Requests in flight to one host at a time (a catalog's images usually sit on one CDN host)."""
    timeout: float = flag("--timeout", default=10.0)
    """Connect timeout and read timeout, in seconds, each."""
    retries: int = flag("--retries", default=3)
    """Extra attempts on timeouts, connection errors, 408, 429 and 5xx (never on other 4xx)."""
    backoff: float = 0.5
    """Base of the exponential backoff between attempts, in seconds (jittered)."""
    max_retry_after: float = 60.0
    """Longest wait honoured from a server's Retry-After header, in seconds."""
    max_redirects: int = 5
    """Redirects followed per URL."""
    max_bytes: int = flag("--max-bytes", default=20_000_000)
    """Largest image accepted, in bytes (download streamed and abandoned beyond it)."""
    max_side: int | None = flag("--max-side", default=None)
    """Downsize images whose longer side exceeds this many pixels (None keeps the size)."""
    max_pixels: int = flag("--max-pixels", default=DEFAULT_MAX_PIXELS)
    """Images with more pixels are refused as decompression bombs (40 megapixels by default)."""
    split: str | list[float] = flag("--split", default="0.9,0.05,0.05")
    """Train, val, test fractions: ``"0.9,0.05,0.05"`` or a list of three numbers summing to 1."""
    stratify: str | None = flag("--stratify", default=None)
    """Catalog column whose values get the split proportions each (e.g. ``category3_code``)."""
    seed: int = flag("--seed", default=0)
    """Seed of the id hash that assigns splits."""
    num_crops: int = flag("--num-crops", default=16)
    """Crops per photo of the model's image processor: the data card counts each photo's image
    tokens at this setting (16 is the reference checkpoint's)."""
    rare_min: int = flag("--rare-min", default=5)
    """The data card flags categories with fewer training rows than this."""
    dedup: DedupArgs = field(default_factory=DedupArgs)
    """Duplicate photos: how near duplicates are found and what training sees of groups that disagree."""
    allow_local_paths: bool = flag("--allow-local-paths", default=False)
    """Also read absolute image paths and paths leaving the catalog's folder."""
    progress: bool = flag("--progress/--no-progress", default=True)
    """Show a progress bar (rate and ETA) on stderr."""
    overwrite: bool = flag("--overwrite", default=False)
    """Replace what ``--out`` holds when it is not this catalog's earlier output (built beside it,
    then swapped in); the catalog itself is never replaced."""

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
        for name in ("concurrency", "per_host", "max_bytes", "max_pixels", "num_crops"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        if self.rare_min < 0:
            raise ValueError(f"rare_min must be >= 0, got {self.rare_min!r}")
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
