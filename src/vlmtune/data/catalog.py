"""Catalog loading: one validated product table from CSV, Parquet, JSONL or a ``datasets`` folder.

The default column names are those of the DBQ product-price exports
("DBQ/Burberry.Product.prices.*": ``product_code``, ``title``,
``category3_code``, ``full_price``, ``imageurl``); any other catalog maps its own
names through :class:`CatalogColumns`. Every row that cannot become a training
example (missing title, category or image reference, a price that is not a
positive number, a duplicate product id) is kept in ``Catalog.rejects`` with a
reason, never dropped silently. Text passes through untouched (non-Latin
category codes included); CSV cells are read as strings so that codes with
leading zeros and prices with thousands separators survive.
"""

from __future__ import annotations

import json
import math
import os
import re
import socket
import urllib.request
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pandas as pd

from vlmtune.utils.errors import UserError
from vlmtune.utils.io import atomic_path

__all__ = [
    "Catalog",
    "CatalogColumns",
    "CatalogError",
    "PriceError",
    "REJECT_COLUMNS",
    "load_catalog",
    "parse_price",
    "read_table",
]

# Image references that real exports use for "no image".
_MISSING_MARKERS = {"", "n.a.", "n.a", "na", "n/a", "nan", "none", "null", "-"}
_CURRENCY = re.compile(r"^(?:[A-Z]{3}|[$€£¥₩₹]|US\$|HK\$|A\$|C\$)\s*|\s*(?:[A-Z]{3}|[$€£¥₩₹])$")
_NUMBER = re.compile(r"^\d{1,3}(?:,\d{3})+(?:\.\d+)?$|^\d+(?:\.\d+)?$|^\.\d+$")
_TABLE_SUFFIXES = {".csv", ".tsv", ".gz", ".parquet", ".pq", ".jsonl", ".ndjson", ".json"}
REJECT_COLUMNS = ["source_row", "id", "image", "stage", "reason"]
_OFFLINE_VARS = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
_TRUE_VALUES = {"1", "true", "yes", "on"}  # as huggingface_hub reads its variables
_DEFAULT_ENDPOINT = "https://huggingface.co"
_PROBE_TIMEOUT = 3.0  # seconds for the hub's TCP connect; a live hub answers in well under that
_LOCAL_HINT = (
    "Download the dataset elsewhere and pass a local CSV, Parquet or JSONL file, "
    "or a folder written by datasets' save_to_disk, as the catalog source."
)


class CatalogError(UserError, ValueError):
    """The catalog as a whole cannot be used (missing file, unknown format, bad line, missing
    column, no rows); the message names the file and the fix."""


class PriceError(ValueError):
    """A price value is not a positive number; the message says why."""


@dataclass
class CatalogColumns:
    """Which catalog columns hold each field vlmtune needs (DBQ names by default)."""

    id: str = "product_code"
    """Unique product id; also the base of the stored image's file name."""
    title: str = "title"
    """Product title, the ``Product:`` field of the listing."""
    category: str = "category3_code"
    """Category code, the ``Category:`` field of the listing."""
    price: str = "full_price"
    """Full (undiscounted) price, the ``Full Price:`` field of the listing."""
    image: str = "imageurl"
    """Image URL (http/https) or a path relative to the catalog file's folder."""

    def __post_init__(self) -> None:
        names = asdict(self)
        empty = [k for k, v in names.items() if not str(v).strip()]
        if empty:
            raise ValueError(f"column name for {empty[0]!r} must not be empty")


@dataclass
class Catalog:
    """A validated catalog: the rows that can be used and the rows that cannot, with reasons."""

    rows: pd.DataFrame
    """Kept rows, original columns; ``columns.price`` parsed to float, ``columns.id`` as str."""
    rejects: pd.DataFrame
    """One row per rejected source row: ``source_row`` (0-based), ``id``, ``image`` (the row's
    image reference as written, stripped), ``stage``, ``reason``."""
    columns: CatalogColumns = field(default_factory=CatalogColumns)
    source: str = ""

    def summary(self) -> dict[str, Any]:
        """Counts for reports: rows read, kept, rejected, and rejected per reason kind."""
        kinds = Counter(str(r).split(":")[0] for r in self.rejects["reason"])
        return {
            "source": self.source,
            "rows_read": len(self.rows) + len(self.rejects),
            "kept": len(self.rows),
            "rejected": len(self.rejects),
            "rejected_by_reason": dict(sorted(kinds.items())),
        }

    def write_rejects(self, path: str | Path) -> Path:
        """Write the rejects as CSV (atomically)."""
        with atomic_path(path) as tmp:
            self.rejects.to_csv(tmp, index=False)
        return Path(path)


def parse_price(value: Any) -> float:
    """Parse a price cell into a positive float.

    Accepts numbers and strings such as ``1290``, ``1,290``, ``1,290.00``,
    ``$1,290.00``, ``USD 1290``, ``590.0``. Raises :class:`PriceError` for
    anything else (``N.A.``, empty, negative, zero, NaN, malformed separators).
    """
    if isinstance(value, bool) or value is None:
        raise PriceError(f"price {value!r} is not a number")
    if isinstance(value, (int, float)):
        number = float(value)
    else:
        text = str(value).strip().replace("\u00a0", " ")
        if not text:
            raise PriceError("price is empty")
        if text.startswith("-"):
            raise PriceError(f"price {text!r} is negative")
        stripped = _CURRENCY.sub("", text).strip()
        if not _NUMBER.match(stripped):
            raise PriceError(f"price {text!r} is not a number")
        number = float(stripped.replace(",", ""))
    if math.isnan(number) or math.isinf(number):
        raise PriceError(f"price {value!r} is not a finite number")
    if number < 0:
        raise PriceError(f"price {value!r} is negative")
    if number == 0:
        raise PriceError("price is zero")
    return number


def read_table(source: str | os.PathLike[str]) -> pd.DataFrame:
    """Read a raw table: ``.csv``/``.tsv``, ``.parquet``, ``.jsonl``/``.ndjson``, or a ``save_to_disk`` folder.

    A string that is not a local path but looks like ``owner/name`` is loaded
    from the Hugging Face hub with ``datasets`` (from the local cache only when
    offline; fails within seconds when the hub cannot be reached).
    """
    path = Path(source)
    if path.is_dir():
        return _read_datasets_folder(path)
    if not path.exists():
        if (
            re.fullmatch(r"[\w.-]+/[\w.-]+", str(source))
            and path.suffix.lower() not in _TABLE_SUFFIXES
        ):
            return _read_hub_dataset(str(source))
        raise CatalogError(f"catalog {str(source)!r} does not exist")
    suffix = "".join(path.suffixes[-2:]).lower() if path.suffix == ".gz" else path.suffix.lower()
    readers = {
        ".csv": lambda p: pd.read_csv(p, dtype=str, keep_default_na=False),
        ".csv.gz": lambda p: pd.read_csv(p, dtype=str, keep_default_na=False),
        ".tsv": lambda p: pd.read_csv(p, sep="\t", dtype=str, keep_default_na=False),
        ".parquet": pd.read_parquet,
        ".pq": pd.read_parquet,
        ".jsonl": _read_jsonl,
        ".ndjson": _read_jsonl,
    }
    if suffix not in readers:
        raise CatalogError(
            f"catalog {str(source)!r}: unknown format {suffix!r}; use CSV, TSV, Parquet, JSONL "
            "or a folder written by datasets' save_to_disk"
        )
    try:
        return readers[suffix](path)
    except CatalogError:
        raise
    except (ValueError, OSError) as err:
        raise CatalogError(f"catalog {str(source)!r} could not be read as {suffix}: {err}") from err


def _read_jsonl(path: Path) -> pd.DataFrame:
    """One JSON object per line (blank lines skipped); a bad line is named by its line number."""
    records = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise CatalogError(
                    f"catalog {str(path)!r}: line {number} is not valid JSON ({err.msg}, column "
                    f"{err.colno}); fix or remove that line"
                ) from err
            if not isinstance(record, dict):
                raise CatalogError(
                    f"catalog {str(path)!r}: line {number} is not a JSON object (one product per "
                    'line, as {"title": ..., "imageurl": ...}); fix or remove that line'
                )
            records.append(record)
    return pd.DataFrame.from_records(records)


def load_catalog(source: str | os.PathLike[str], columns: CatalogColumns | None = None) -> Catalog:
    """Read ``source`` and split it into valid rows and rejects (with reasons)."""
    columns = columns or CatalogColumns()
    table = read_table(source).reset_index(drop=True)
    if table.empty:
        raise CatalogError(
            f"catalog {str(source)!r} has no rows (only a header, or nothing at all); "
            "give a catalog with at least one product"
        )
    _check_columns(table, columns, str(source))
    keep, prices, rejects = [], [], []
    first_seen: dict[str, int] = {}
    for i, row in enumerate(table.to_dict("records")):
        reason, price = _row_problem(row, columns)
        pid = _text(row.get(columns.id))
        if reason is None and pid in first_seen:
            reason = f"duplicate id: product id {pid!r} already at row {first_seen[pid]}"
        if reason is not None:
            image = _text(row.get(columns.image))
            rejects.append(
                {"source_row": i, "id": pid, "image": image, "stage": "catalog", "reason": reason}
            )
            continue
        first_seen[pid] = i
        keep.append(i)
        prices.append(price)
    rows = table.iloc[keep].reset_index(drop=True).copy()
    rows[columns.id] = rows[columns.id].map(_text)
    rows[columns.price] = pd.Series(prices, dtype="float64")
    rejects_frame = pd.DataFrame(rejects, columns=REJECT_COLUMNS)
    return Catalog(rows=rows, rejects=rejects_frame, columns=columns, source=str(source))


def _row_problem(row: dict[str, Any], columns: CatalogColumns) -> tuple[str | None, float | None]:
    """Return (reason, price): reason is None when the row is usable."""
    if not _text(row.get(columns.id)):
        return "missing id: the product id is empty", None
    if not _text(row.get(columns.title)):
        return "missing title: the title is empty", None
    if not _text(row.get(columns.category)):
        return "missing category: the category is empty", None
    image = _text(row.get(columns.image))
    if image.lower() in _MISSING_MARKERS:
        return f"missing image: no image reference ({image!r})", None
    try:
        return None, parse_price(row.get(columns.price))
    except PriceError as err:
        return f"bad price: {err}", None


def _text(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value).strip()


def _check_columns(table: pd.DataFrame, columns: CatalogColumns, source: str) -> None:
    missing = [(k, v) for k, v in asdict(columns).items() if v not in table.columns]
    if missing:
        field_name = missing[0][0]
        guess = _guess_column(table, columns, field_name)
        example = (
            f"e.g. columns.{field_name}={guess} if that column holds the {field_name}"
            if guess
            else f"e.g. columns.{field_name}=YOUR_COLUMN"
        )
        raise CatalogError(
            f"catalog {source!r} lacks the column(s) "
            f"{', '.join(f'{k}={v!r}' for k, v in missing)}; it has "
            f"{', '.join(map(str, table.columns))}. Map yours with columns.<field>=NAME "
            f"({example}) or a columns: section in the --config file"
        )


_PHOTO_NAME = re.compile(r"\.(jpe?g|png|webp|gif|bmp|tiff?)(\?.*)?$", re.I)


def _guess_column(table: pd.DataFrame, columns: CatalogColumns, field_name: str) -> str | None:
    """The unmapped column most likely meant for ``field_name`` (None when none stands out).

    A close name wins (``titel`` for ``title``); for the image, the one unmapped column whose
    values end like photo files (``.jpg``, ``.png`` ..., a query string allowed).
    """
    import difflib

    mapped = set(asdict(columns).values())
    free = [str(c) for c in table.columns if c not in mapped]
    close = difflib.get_close_matches(getattr(columns, field_name), free, n=1, cutoff=0.75)
    if close:
        return close[0]
    if field_name != "image":
        return None
    photos = [c for c in free if _share(table[c], _PHOTO_NAME) >= 0.8]
    return photos[0] if len(photos) == 1 else None


def _share(values: pd.Series, pattern: re.Pattern[str]) -> float:
    """Fraction of the first 20 non-empty values matching ``pattern`` (0 for an empty column)."""
    sample = values.dropna().astype(str).str.strip().head(20)
    return float(sample.map(lambda v: bool(pattern.search(v))).mean()) if sample.size else 0.0


def _read_datasets_folder(path: Path) -> pd.DataFrame:
    if not any(
        (path / marker).exists()
        for marker in ("dataset_info.json", "dataset_dict.json", "state.json")
    ):
        raise CatalogError(f"catalog folder {str(path)!r} is not a datasets save_to_disk folder")
    import datasets

    return _to_frame(datasets.load_from_disk(str(path)))


def _read_hub_dataset(name: str) -> pd.DataFrame:
    """Load ``owner/name`` with ``datasets``, failing within seconds when the hub cannot be used.

    Offline (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE set) only the local datasets
    cache is read. Online, the hub endpoint gets a short TCP probe first:
    ``datasets`` would otherwise spend tens of seconds retrying a dead endpoint
    and then blame a missing local file.
    """
    offline = [v for v in _OFFLINE_VARS if os.environ.get(v, "").lower() in _TRUE_VALUES]
    if offline:
        cached = _read_cached_dataset(name)
        if cached is not None:
            return cached
        raise CatalogError(
            f"catalog {name!r} is not a local file nor in the local datasets cache, and the "
            f"Hugging Face hub is offline ({offline[0]} is set). {_LOCAL_HINT}"
        )
    endpoint = os.environ.get("HF_ENDPOINT", "").strip() or _DEFAULT_ENDPOINT
    problem = _unreachable(endpoint)
    if problem:
        raise CatalogError(
            f"catalog {name!r} is not a local file, and the Hugging Face hub cannot be reached "
            f"at {endpoint} ({problem}). {_LOCAL_HINT}"
        )
    import datasets

    try:
        loaded = datasets.load_dataset(name, download_mode="reuse_cache_if_exists")
    except Exception as err:  # noqa: BLE001 - any hub failure becomes one clear message
        raise CatalogError(
            f"catalog {name!r} is not a local file and could not be loaded from the Hugging Face "
            f"hub ({type(err).__name__}: {err}). {_LOCAL_HINT}"
        ) from err
    return _to_frame(loaded)


def _read_cached_dataset(name: str) -> pd.DataFrame | None:
    """``name`` from the local datasets cache without any network access, or None if not cached.

    This is the builder ``datasets.load_dataset`` itself falls back to offline;
    calling it directly also works when the offline variable was set after
    ``datasets`` was imported (its own offline flag is read at import).
    """
    try:
        from datasets.packaged_modules.cache.cache import Cache

        builder = Cache(repo_id=name, dataset_name=name.split("/")[-1], version="auto", hash="auto")
        return _to_frame(builder.as_dataset())
    except (ValueError, KeyError, OSError, ImportError):  # not cached, or an unreadable cache
        return None


def _unreachable(endpoint: str) -> str | None:
    """Why a TCP connection to ``endpoint`` (or the proxy it goes through) fails, or None."""
    parts = urlsplit(endpoint)
    host, port = parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)
    if not host:
        return f"HF_ENDPOINT {endpoint!r} has no host"
    proxy = urllib.request.getproxies().get(parts.scheme)
    if proxy and not urllib.request.proxy_bypass(host):
        proxy_parts = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        host, port = proxy_parts.hostname or host, proxy_parts.port or 80
    try:
        with socket.create_connection((host, port), timeout=_PROBE_TIMEOUT):
            return None
    except OSError as err:
        return f"connecting to {host}:{port} failed: {err.strerror or err}"


def _to_frame(loaded: Any) -> pd.DataFrame:
    import datasets

    splits = loaded.values() if isinstance(loaded, datasets.DatasetDict) else [loaded]
    return pd.concat([split.to_pandas() for split in splits], ignore_index=True)
