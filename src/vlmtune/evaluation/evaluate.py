"""Evaluation of a model on a prepared split: generate, parse, score field by field, write the results.

:func:`evaluate_model` is the core, shared by ``vlmtune eval`` (through
:func:`run_eval`) and by the trainer's evaluation during training (through
:func:`make_generation_eval`): the same generation, parsing and metric code
judges a model wherever it is evaluated. :func:`run_eval` writes into the
output folder ``predictions.jsonl`` (one row per image: id, image path,
reference fields and listing, generated text, parsed fields, per-field
correctness), ``metrics.json`` (``model``, ``baselines``, ``skipped`` and,
with a base model, ``base_model``) and ``report.html``.

A dataset image that can no longer be read (deleted or corrupted since
``prepare`` checked it) is skipped, named with its reason in ``skipped`` and
counted in the ``skipped_images`` metric; the other rows are still scored, so
one bad file neither stops ``vlmtune eval`` nor the evaluation inside a training
run. Only a split with no usable image at all is an error.
"""

from __future__ import annotations

import gc
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from vlmtune.data.prepared import PreparedDataset, PreparedDatasetError, load_prepared
from vlmtune.data.prompts import ParsedListing, PromptTemplate, record_from_row
from vlmtune.evaluation.args import EvalArgs, GenerationArgs
from vlmtune.evaluation.generate import check_image, generate_listings
from vlmtune.evaluation.metrics import baseline_metrics, compute_metrics, score_row
from vlmtune.evaluation.report import ReportData, find_training_log, read_training_log, write_report
from vlmtune.models.loading import load_model_and_processor
from vlmtune.utils.config import config_to_dict
from vlmtune.utils.devices import torch_dtype
from vlmtune.utils.io import atomic_path, atomic_write_json
from vlmtune.utils.logging import get_logger
from vlmtune.utils.seeding import seed_everything

__all__ = [
    "EvalError",
    "EvalResult",
    "default_out_dir",
    "evaluate_model",
    "make_generation_eval",
    "prediction_row",
    "references",
    "run_eval",
]

log = get_logger(__name__)

GenerationEval = Callable[[Any, Any], tuple[dict[str, float], list[dict[str, Any]]]]


class EvalError(RuntimeError):
    """An evaluation input (image, split) cannot be used; the message names it."""


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
    out: Path | None = None
    """Folder the results were written to (``run_eval``)."""


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
) -> EvalResult:
    """Generate a listing for the first ``limit`` rows of ``dataset`` and score it.

    The model is put in eval mode for the duration (and back to train mode if it
    was training); gradients are off. Baselines come from ``train`` when given.
    """
    gen = gen or GenerationArgs()
    refs = references(dataset, limit)
    if not refs:
        raise EvalError(f"no rows to evaluate in {str(dataset.root)!r}")
    was_training = bool(getattr(model, "training", False))
    model.eval()
    try:
        rows, skipped = _generate_rows(model, processor, dataset, refs, template, gen)
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
    return EvalResult(metrics=metrics, predictions=rows, baselines=baselines, skipped=skipped)


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


def default_out_dir(args: EvalArgs) -> Path:
    """``RUN/eval-SPLIT`` for a training run folder, else ``eval-MODELNAME-SPLIT`` in the working directory."""
    model = Path(args.model)
    if (model / "metrics.jsonl").is_file() or (
        (model / "model").is_dir() and not (model / "config.json").is_file()
    ):
        return model / f"eval-{args.split}"
    return Path(f"eval-{model.resolve().name}-{args.split}")


def run_eval(args: EvalArgs) -> EvalResult:
    """Evaluate ``args.model`` (and ``args.base_model``) on ``args.data``/``args.split``; write the results."""
    seed_everything(args.seed)
    out = args.out or default_out_dir(args)
    dataset = load_prepared(args.data, args.split)
    train = _train_split(args.data)
    template = PromptTemplate(args.prompt)
    result = _evaluate_path("model", args.model, args, dataset, template, train)
    if args.base_model is not None:
        base = _evaluate_path("base model", args.base_model, args, dataset, template, None)
        result.base_metrics, result.base_predictions = base.metrics, base.predictions
    result.out = _write_results(out, args, result)
    return result


# --------------------------------------------------------------------------- helpers


def _generate_rows(
    model: Any,
    processor: Any,
    dataset: PreparedDataset,
    refs: list[dict[str, Any]],
    template: PromptTemplate,
    gen: GenerationArgs,
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
        texts = generate_listings(model, processor, images, template, gen) if images else []
        for i, text in zip(kept, texts, strict=True):
            rows.append(
                prediction_row(ids[i], paths[i], refs[i], text, template.parse(text), template)
            )
        log.debug("generated %d/%d listings", len(rows), len(refs))
    if not rows:
        raise EvalError(
            f"none of the {len(refs)} image(s) to evaluate can be read, e.g. {skipped[0]['reason']}"
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


def _train_split(root: Path) -> PreparedDataset | None:
    try:
        return load_prepared(root, "train")
    except PreparedDatasetError as err:
        log.warning("no baselines: %s", err)
        return None


def _evaluate_path(
    role: str,
    path: Path,
    args: EvalArgs,
    dataset: PreparedDataset,
    template: PromptTemplate,
    train: PreparedDataset | None,
) -> EvalResult:
    dtype = torch_dtype(args.dtype) if args.dtype else None
    log.info(
        "evaluating the %s %s on %d row(s) of %s/%s",
        role,
        path,
        min(len(dataset), args.limit or len(dataset)),
        args.data,
        args.split,
    )
    model, processor = load_model_and_processor(path, dtype=dtype, device=args.device)
    try:
        return evaluate_model(
            model, processor, dataset, template, args.generation, train, args.limit
        )
    finally:
        del model
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def _write_results(out: Path, args: EvalArgs, result: EvalResult) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    _write_jsonl(out / "predictions.jsonl", result.predictions)
    if result.base_predictions is not None:
        _write_jsonl(out / "base_predictions.jsonl", result.base_predictions)
    atomic_write_json(out / "metrics.json", _metrics_document(args, result))
    log_path = find_training_log(args.model)
    report = ReportData(
        metrics=result.metrics,
        predictions=result.predictions,
        baselines=result.baselines,
        base_metrics=result.base_metrics,
        base_predictions=result.base_predictions,
        training_log=read_training_log(log_path) if log_path else None,
        info=_report_info(args, log_path),
    )
    write_report(out / "report.html", report)
    log.info(
        "wrote %s, %s and %s", out / "predictions.jsonl", out / "metrics.json", out / "report.html"
    )
    return out


def _metrics_document(args: EvalArgs, result: EvalResult) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "model": result.metrics,
        "baselines": result.baselines,
        "skipped": result.skipped,
    }
    if result.base_metrics is not None:
        doc["base_model"] = result.base_metrics
    doc["config"] = config_to_dict(args)
    doc["created"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    return doc


def _report_info(args: EvalArgs, log_path: Path | None) -> dict[str, str]:
    info = {"model": str(args.model), "data": str(args.data), "split": args.split}
    if args.base_model is not None:
        info["base model"] = str(args.base_model)
    if args.limit is not None:
        info["limit"] = str(args.limit)
    gen = args.generation
    info["generation"] = (
        f"{'sampling' if gen.do_sample else 'greedy'}, beams {gen.num_beams}, max {gen.max_new_tokens} new tokens"
    )
    info["training log"] = str(log_path) if log_path else "none (not a run folder)"
    info["created"] = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return info


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
