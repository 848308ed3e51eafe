"""Evaluation of a model on a prepared split: generate, parse, score field by field.

:func:`evaluate_model` is the core, shared by ``vlmtune eval`` (through
:func:`vlmtune.evaluation.run.run_eval`, which checks the inputs and writes the
results) and by the trainer's evaluation during training (through
:func:`make_generation_eval`): the same generation, parsing and metric code
judges a model wherever it is evaluated. Each evaluated image gives one
:func:`prediction_row` (id, image path, reference fields and listing, generated
text, parsed fields, per-field correctness).

A dataset image that can no longer be read (deleted or corrupted since
``prepare`` checked it) is skipped, named with its reason in ``skipped`` and
counted in the ``skipped_images`` metric; the other rows are still scored, so
one bad file neither stops ``vlmtune eval`` nor the evaluation inside a training
run. Only a split with no usable image at all is an error.

:func:`unique_group_metrics` scores again only the rows whose duplicate group (the
``duplicate_group`` column ``prepare`` records) lies wholly in the evaluated split: the
photos the model cannot have seen in training under another id. ``prepare`` puts every
group in one split, so on its datasets these are all the rows; a split made elsewhere,
or edited, shows the difference here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from vlmtune.data.prepared import PreparedDataset, load_prepared
from vlmtune.data.prompts import ParsedListing, PromptTemplate, record_from_row
from vlmtune.evaluation.metrics import baseline_metrics, compute_metrics, score_row
from vlmtune.inference.args import GenerationArgs
from vlmtune.inference.generate import GenerationEval, check_image, generate_listings
from vlmtune.inference.listing_schema import ListingSchema
from vlmtune.utils.errors import UserError
from vlmtune.utils.logging import get_logger

__all__ = [
    "EvalError",
    "EvalResult",
    "evaluate_model",
    "make_generation_eval",
    "prediction_row",
    "references",
    "unique_group_metrics",
]

GROUP_COLUMN = "duplicate_group"

log = get_logger(__name__)


class EvalError(UserError):
    """An evaluation input (dataset, split, image) cannot be used; the message names it and the fix."""


@dataclass
class EvalResult:
    """Metrics, one prediction row per evaluated image, and the training-split baselines."""

    metrics: dict[str, float]
    predictions: list[dict[str, Any]]
    baselines: dict[str, dict[str, Any]]
    base_metrics: dict[str, float] | None = None
    """The base model's metrics on the same rows (``run_eval`` with ``base_model``)."""
    base_predictions: list[dict[str, Any]] | None = None
    skipped: list[dict[str, str]] = field(default_factory=list)
    """Rows whose image could not be read: ``id``, ``image``, ``reason`` (not scored)."""
    unique_groups: dict[str, Any] | None = None
    """:func:`unique_group_metrics` of the predictions (``vlmtune eval``)."""
    out: Path | None = None
    """Folder the results were written to (``run_eval``)."""
    decoding: str = "unconstrained"
    """``constrained`` when the listings were forced into the listing pattern, else ``unconstrained``."""
    compared: dict[str, float] | None = None
    """``eval --compare-constrained``: the model's metrics decoded the other way."""


def references(dataset: PreparedDataset, limit: int | None = None) -> list[dict[str, Any]]:
    """Reference records (``title``, ``category``, ``price``) of the first ``limit`` rows."""
    frame = dataset.frame if limit is None else dataset.frame.head(limit)
    return [record_from_row(row, dataset.columns) for row in frame.to_dict("records")]


def prediction_row(
    row_id: str,
    image: str | Path,
    reference: Mapping[str, Any],
    generated: str,
    parsed: ParsedListing,
    template: PromptTemplate,
) -> dict[str, Any]:
    """One line of ``predictions.jsonl`` (also a row of the W&B table during training)."""
    return {
        "id": row_id,
        "image": str(image),
        "reference": dict(reference),
        "reference_listing": template.answer(reference),
        "generated": generated,
        "parsed": parsed.as_dict(),
        "parsed_ok": parsed.ok,
        "correct": score_row(reference, parsed),
    }


def evaluate_model(
    model: Any,
    processor: Any,
    dataset: PreparedDataset,
    template: PromptTemplate,
    gen: GenerationArgs | None = None,
    train: PreparedDataset | None = None,
    limit: int | None = None,
    schema: ListingSchema | None = None,
) -> EvalResult:
    """Generate a listing for the first ``limit`` rows of ``dataset`` and score it.

    The model is put in eval mode for the duration (and back to train mode if it
    was training); gradients are off. Baselines come from ``train`` when given;
    ``schema`` is the listing schema of constrained decoding (``gen.constrained``).
    """
    gen = gen or GenerationArgs()
    refs = references(dataset, limit)
    if not refs:
        raise EvalError(f"no rows to evaluate in {str(dataset.root)!r}")
    was_training = bool(getattr(model, "training", False))
    model.eval()
    try:
        rows, skipped = _generate_rows(model, processor, dataset, refs, template, gen, schema)
    finally:
        if was_training:
            model.train()
    refs = [row["reference"] for row in rows]
    parsed = [ParsedListing(**_parsed_fields(r["parsed"])) for r in rows]
    metrics = compute_metrics(refs, parsed, fields=template.args.fields)
    metrics["skipped_images"] = float(len(skipped))
    baselines = (
        baseline_metrics(references(train), refs) if train is not None and len(train) else {}
    )
    decoding = "constrained" if gen.constrained else "unconstrained"
    return EvalResult(
        metrics=metrics, predictions=rows, baselines=baselines, skipped=skipped, decoding=decoding
    )


def unique_group_metrics(
    root: str | Path, split: str, predictions: list[dict[str, Any]], fields: tuple[str, ...]
) -> dict[str, Any]:
    """Metrics of the ``predictions`` whose duplicate group has rows in ``split`` only.

    Returns ``recorded`` (False when the dataset has no ``duplicate_group`` column, with a
    ``note``), ``rows`` (predictions in such groups), ``other_rows`` (in groups that reach
    another split) and ``metrics`` (:func:`compute_metrics` of the former; None if none).
    """
    full = load_prepared(root)
    frame = full.frame
    if GROUP_COLUMN not in frame.columns:
        return {"recorded": False, "note": "the dataset records no duplicate groups; "
                "prepare it again with this vlmtune to have them"}  # fmt: skip
    spread = frame.groupby(GROUP_COLUMN)["split"].nunique()
    alone = set(spread.index[spread == 1])
    inside = frame[(frame["split"] == split) & frame[GROUP_COLUMN].isin(alone)]
    ids = set(inside[full.columns.id].astype(str))
    chosen = [row for row in predictions if str(row["id"]) in ids]
    metrics = None
    if chosen:
        refs = [row["reference"] for row in chosen]
        parsed = [ParsedListing(**_parsed_fields(row["parsed"])) for row in chosen]
        metrics = compute_metrics(refs, parsed, fields=fields)
    return {
        "recorded": True,
        "rows": len(chosen),
        "other_rows": len(predictions) - len(chosen),
        "metrics": metrics,
    }


def make_generation_eval(
    dataset: PreparedDataset,
    template: PromptTemplate,
    gen: GenerationArgs | None = None,
    limit: int | None = None,
) -> GenerationEval:
    """A ``(model, processor) -> (metrics, rows)`` function for evaluation during training.

    ``rows`` are :func:`prediction_row` dicts (image path, reference listing,
    generated text, parsed fields, correctness) for a W&B table. The model may
    be PEFT-wrapped and in train mode; it is returned to its mode afterwards.
    """
    gen = gen or GenerationArgs()

    def evaluate(model: Any, processor: Any) -> tuple[dict[str, float], list[dict[str, Any]]]:
        result = evaluate_model(model, processor, dataset, template, gen, limit=limit)
        return result.metrics, result.predictions

    return evaluate


# --------------------------------------------------------------------------- helpers


def _generate_rows(
    model: Any,
    processor: Any,
    dataset: PreparedDataset,
    refs: list[dict[str, Any]],
    template: PromptTemplate,
    gen: GenerationArgs,
    schema: ListingSchema | None,
) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """Prediction rows of the readable images, and the rows skipped with their reason."""
    paths = dataset.image_paths()[: len(refs)]
    ids = [str(v) for v in dataset.frame[dataset.columns.id].head(len(refs))]
    rows: list[dict[str, Any]] = []
    skipped: list[dict[str, str]] = []
    for start in range(0, len(refs), gen.batch_size):
        images, kept = [], []
        for i in range(start, min(start + gen.batch_size, len(refs))):
            try:
                images.append(_load_image(paths[i], processor))
                kept.append(i)
            except EvalError as err:
                log.warning("skipping row %s: %s", ids[i], err)
                skipped.append({"id": ids[i], "image": str(paths[i]), "reason": str(err)})
        texts = generate_listings(model, processor, images, template, gen, schema) if images else []
        for i, text in zip(kept, texts, strict=True):
            rows.append(
                prediction_row(ids[i], paths[i], refs[i], text, template.parse(text), template)
            )
        log.debug("generated %d/%d listings", len(rows), len(refs))
    if not rows:
        raise EvalError(
            f"none of the {len(refs)} image(s) to evaluate can be read, e.g. {skipped[0]['reason']}; "
            "run `vlmtune prepare` again to fetch them"
        )
    return rows, skipped


def _load_image(path: Path, processor: Any) -> Image.Image:
    try:
        with Image.open(path) as image:
            rgb = image.convert("RGB")
        check_image(processor, rgb)
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise EvalError(
            f"image {str(path)!r} of the prepared dataset cannot be used: {err}"
        ) from err
    return rgb


def _parsed_fields(parsed: Mapping[str, Any]) -> dict[str, Any]:
    return {k: parsed[k] for k in ("title", "category", "price", "errors")}
