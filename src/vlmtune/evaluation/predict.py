"""``vlmtune predict``: a listing for each product photo, written as CSV.

Inputs are image files and folders (a folder contributes the files under it
whose suffix is an image suffix, recursively, in sorted order). Every input
that cannot be used (missing path, empty folder, unreadable or corrupt image)
becomes a row with an ``error`` and a warning, and the other images are still
processed. Photos are turned upright by their EXIF orientation before the
model sees them. The CSV has the columns ``image``, the catalog's title,
category and price columns (DBQ names by default), ``raw_text`` and ``error``.

Before any model is loaded, :func:`run_predict` checks the device, the model
folder and the output: ``--out`` must name a file that is missing, an earlier
predict CSV (recognised by its header) or, with ``--overwrite``, any other file;
never a folder and never one of the inputs. The CSV is written atomically, so an
earlier one stays whole until the new one is complete.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, ImageOps

from vlmtune.data.catalog import CatalogColumns
from vlmtune.data.prompts import PromptTemplate
from vlmtune.evaluation.args import PredictArgs
from vlmtune.inference.args import GenerationArgs
from vlmtune.inference.generate import check_image, generate_listings
from vlmtune.inference.listing_schema import ListingSchema, resolve_schema
from vlmtune.inference.loading import ModelLocation, check_model, load_model_and_processor
from vlmtune.utils.devices import resolve_device, resolve_dtype
from vlmtune.utils.io import atomic_path
from vlmtune.utils.logging import get_logger
from vlmtune.utils.outputs import OutputClaim, claim_output_file
from vlmtune.utils.seeding import seed_everything

__all__ = [
    "IMAGE_SUFFIXES",
    "PredictResult",
    "collect_images",
    "is_predictions_csv",
    "predict_images",
    "read_image",
    "run_predict",
    "write_predictions_csv",
]

log = get_logger(__name__)

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
_HEADER_BYTES = 1 << 16
"""Most bytes read to recognise an earlier predict CSV by its first line."""


@dataclass
class PredictResult:
    """One row per input image (in input order) and the path of the CSV written."""

    rows: list[dict[str, Any]]
    """``image``, ``title``, ``category``, ``price``, ``raw_text``, ``error`` (None when fine)."""
    out: Path | None = None

    @property
    def failures(self) -> list[dict[str, Any]]:
        """Rows whose image could not be used."""
        return [r for r in self.rows if r["error"]]


def collect_images(inputs: Sequence[str | Path]) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Image files named by ``inputs`` (folders expanded) and the inputs that name none, with why."""
    files: list[Path] = []
    problems: list[tuple[Path, str]] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found = sorted(
                p for p in item.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
            )
            if not found:
                problems.append(
                    (item, f"folder has no image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
                )
            files += found
        elif item.is_file():
            files.append(item)
        else:
            problems.append((item, "no such file or folder"))
    unique = list(dict.fromkeys(files))
    return unique, problems


def read_image(path: str | Path) -> Image.Image:
    """The image as upright RGB; raises ``ValueError`` naming the file when it cannot be decoded."""
    try:
        with Image.open(path) as image:
            image.load()
            return ImageOps.exif_transpose(image).convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise ValueError(f"{str(path)!r} is not a readable image: {err}") from err


def predict_images(
    model: Any,
    processor: Any,
    paths: Sequence[Path],
    template: PromptTemplate,
    gen: GenerationArgs | None = None,
    schema: ListingSchema | None = None,
) -> list[dict[str, Any]]:
    """Generate and parse a listing per path, ``gen.batch_size`` at a time.

    A file that cannot be decoded, or that the processor cannot take (e.g. a
    1x3000 strip), gets a row with ``error`` set instead of stopping the batch.
    ``schema`` is the listing schema of constrained decoding (``gen.constrained``).
    """
    gen = gen or GenerationArgs()
    rows: list[dict[str, Any]] = []
    model.eval()
    for start in range(0, len(paths), gen.batch_size):
        chunk_rows, images = [], []
        for path in paths[start : start + gen.batch_size]:
            try:
                images.append(_usable_image(path, processor))
                chunk_rows.append(_row(path, None))
            except ValueError as err:
                log.warning("skipped %s", err)
                chunk_rows.append(_row(path, str(err)))
        texts = iter(
            generate_listings(model, processor, images, template, gen, schema) if images else []
        )
        for row in chunk_rows:
            if row["error"] is None:
                _fill(row, next(texts), template)
        rows += chunk_rows
        log.info("predicted %s", _counts(rows, len(paths)))
    return rows


def write_predictions_csv(
    path: str | Path, rows: Sequence[dict[str, Any]], columns: CatalogColumns
) -> Path:
    """Write ``rows`` as CSV with the catalog's column names (atomically)."""
    header = ["image", columns.title, columns.category, columns.price, "raw_text", "error"]
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        for r in rows:
            price = "" if r["price"] is None else f"{r['price']:.2f}"
            writer.writerow(
                [
                    r["image"],
                    r["title"] or "",
                    r["category"] or "",
                    price,
                    r["raw_text"] or "",
                    r["error"] or "",
                ]
            )
    return Path(path)


def is_predictions_csv(path: str | Path) -> bool:
    """True when ``path`` starts with the header :func:`write_predictions_csv` writes
    (``image``, three field columns of any name, ``raw_text``, ``error``)."""
    try:
        with open(path, encoding="utf-8", newline="") as handle:
            header = next(csv.reader([handle.readline(_HEADER_BYTES)]), [])
    except (OSError, UnicodeDecodeError, csv.Error):
        return False
    return len(header) == 6 and header[0] == "image" and header[4:] == ["raw_text", "error"]


def run_predict(args: PredictArgs) -> PredictResult:
    """Check the device, model and output; load ``args.model``; predict every input image; write ``args.out``."""
    inference = args.inference
    device = resolve_device(inference.device)
    dtype = resolve_dtype(inference.dtype, device)
    location = check_model(args.model, "--model")
    claim = _claim_output(args, location)
    schema = None
    if inference.generation.constrained:
        schema = resolve_schema(location.model_dir, inference.schema_from, inference.prompt)
    seed_everything(inference.seed)
    paths, problems = collect_images(args.inputs)
    for path, reason in problems:
        log.warning("skipped %s: %s", path, reason)
    rows: list[dict[str, Any]] = []
    if paths:
        model, processor = load_model_and_processor(location, dtype=dtype, device=device)
        template = PromptTemplate(inference.prompt)
        rows = predict_images(model, processor, paths, template, inference.generation, schema)
    rows += [_row(path, reason) for path, reason in problems]
    out = write_predictions_csv(claim.path, rows, args.columns)
    log.info("predicted %s -> %s", _counts(rows, len(rows)), out)
    return PredictResult(rows=rows, out=out)


def _claim_output(args: PredictArgs, location: ModelLocation) -> OutputClaim:
    inputs: dict[str, Path | None] = {
        "the model": args.model,
        "the adapter's base model": location.base_dir,
    }
    inputs.update({f"input {i} of {len(args.inputs)}": p for i, p in enumerate(args.inputs, 1)})
    return claim_output_file(
        args.out, "predict", inputs=inputs, overwrite=args.overwrite, is_own=is_predictions_csv
    )


def _counts(rows: Sequence[dict[str, Any]], total: int) -> str:
    """``4/5 image(s), 1 failed``: listings written out of ``total``, and the failures so far."""
    failed = sum(1 for row in rows if row["error"])
    text = f"{len(rows) - failed}/{total} image(s)"
    return text + (f", {failed} failed" if failed else "")


def _usable_image(path: Path, processor: Any) -> Image.Image:
    image = read_image(path)
    try:
        check_image(processor, image)
    except ValueError as err:
        raise ValueError(f"{str(path)!r} cannot be processed: {err}") from err
    return image


def _row(path: Path, error: str | None) -> dict[str, Any]:
    return {
        "image": str(path),
        "title": None,
        "category": None,
        "price": None,
        "raw_text": None,
        "error": error,
    }


def _fill(row: dict[str, Any], text: str, template: PromptTemplate) -> None:
    parsed = template.parse(text)
    row.update(title=parsed.title, category=parsed.category, price=parsed.price, raw_text=text)
