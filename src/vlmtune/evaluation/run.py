"""``vlmtune eval`` end to end: every check before any model is loaded, then the work, then the results.

:func:`check_eval` looks at everything the command will touch while it is still
cheap to say no, so that a typo costs a second and not a whole pass of the model:

1. the device and dtype (``--device cuda`` on a CPU-only torch, ``--device gpu0``);
2. the model folder and the base model folder (``--base-model`` with a typo);
3. the dataset and its split (present, with rows, and images for them on disk);
4. the output folder, by the output policy of :mod:`vlmtune.utils.outputs`: missing,
   empty, or an earlier eval of the same model, base model, data and split
   (anything else needs ``--overwrite``; an input of the command never);
5. the training log of a run folder, for the report's curves (a damaged log costs
   the curves, with the reason on the page, never the evaluation).

Each refusal is a :class:`~vlmtune.utils.errors.UserError`: one line, exit 2.
:func:`run_eval` then evaluates the model (and the base model) with
:func:`~vlmtune.evaluation.evaluate.evaluate_model` and writes ``predictions.jsonl``,
``metrics.json`` (``model``, ``baselines``, ``skipped``, ``unique_groups``: the metrics
again on the rows whose duplicate group is wholly in the split, ``base_model``, ``decoding``;
with ``--compare-constrained`` also ``constrained`` and ``unconstrained``; ``config``) and
``report.html`` into a staging folder that replaces the output folder in one
rename, so a failed or interrupted eval leaves an earlier output whole.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from vlmtune.data.prepared import PreparedDataset, PreparedDatasetError, load_prepared
from vlmtune.data.prompts import PromptTemplate
from vlmtune.evaluation.args import EvalArgs
from vlmtune.evaluation.evaluate import (
    EvalError,
    EvalResult,
    evaluate_model,
    unique_group_metrics,
)
from vlmtune.evaluation.report import ReportData, find_training_log, read_training_log, write_report
from vlmtune.inference.listing_schema import ListingSchema, resolve_schema
from vlmtune.inference.loading import ModelLocation, check_model, load_model_and_processor
from vlmtune.models.families import family_of_folder
from vlmtune.utils.config import config_to_dict
from vlmtune.utils.devices import dtype_name, resolve_device, resolve_dtype
from vlmtune.utils.io import atomic_path, atomic_write_json
from vlmtune.utils.jsonl import JsonlError
from vlmtune.utils.logging import get_logger
from vlmtune.utils.outputs import OutputClaim, claim_output_dir, replace_dir
from vlmtune.utils.seeding import seed_everything

__all__ = ["EVAL_FILES", "EvalPlan", "check_eval", "default_out_dir", "run_eval"]

log = get_logger(__name__)

EVAL_FILES = frozenset(
    {"predictions.jsonl", "base_predictions.jsonl", "metrics.json", "report.html"}
)
"""The files an eval output folder holds (besides its marker)."""


@dataclass(frozen=True)
class EvalPlan:
    """What :func:`check_eval` found: what to load, on which device, what to read, where to write."""

    device: torch.device
    dtype: torch.dtype
    model: ModelLocation
    base_model: ModelLocation | None
    dataset: PreparedDataset
    """The split evaluated."""
    train: PreparedDataset | None
    """The training split, for the baselines (None when the dataset has none)."""
    out: OutputClaim
    identity: dict[str, str | None]
    """What tells this eval's output from another's: model, base model, data, split."""
    training_log: list[dict[str, Any]] | None
    log_note: str
    """Where the curves come from, or why there are none (shown in the report's header)."""
    schema: ListingSchema | None = None
    """The listing schema of constrained decoding (None when no listing is constrained)."""


def default_out_dir(args: EvalArgs) -> Path:
    """``RUN/eval-SPLIT`` for a training run folder, else ``eval-MODELNAME-SPLIT`` in the working directory."""
    model = Path(args.model)
    if (model / "metrics.jsonl").is_file() or (
        (model / "model").is_dir() and not (model / "config.json").is_file()
    ):
        return model / f"eval-{args.split}"
    return Path(f"eval-{model.resolve().name}-{args.split}")


def check_eval(args: EvalArgs) -> EvalPlan:
    """Check every input and the output of ``args`` before any work; raise a ``UserError`` naming
    the first that cannot be used."""
    device = resolve_device(args.inference.device)
    dtype = resolve_dtype(args.inference.dtype, device)
    model = check_model(args.model, "--model")
    base = check_model(args.base_model, "--base-model") if args.base_model is not None else None
    dataset = _check_split(args)
    identity = {
        "model": _absolute(args.model),
        "base_model": _absolute(args.base_model),
        "data": _absolute(args.data),
        "split": args.split,
    }
    out = claim_output_dir(
        args.out or default_out_dir(args),
        "eval",
        inputs=_inputs(args, model, base),
        overwrite=args.overwrite,
        identity=identity,
        legacy=_is_earlier_eval,
    )
    events, note = _training_log(args.model)
    schema = None
    if args.inference.generation.constrained or args.compare_constrained:
        schema = resolve_schema(model.model_dir, args.inference.schema_from, args.inference.prompt)
    return EvalPlan(
        device=device,
        dtype=dtype,
        model=model,
        base_model=base,
        dataset=dataset,
        train=_train_split(args.data),
        out=out,
        identity=identity,
        training_log=events,
        log_note=note,
        schema=schema,
    )


def run_eval(args: EvalArgs) -> EvalResult:
    """Evaluate ``args.model`` (and ``args.base_model``) on ``args.data``/``args.split``; write the results."""
    plan = check_eval(args)
    seed_everything(args.inference.seed)
    template = PromptTemplate(args.inference.prompt)
    result = _evaluate(
        "model", plan.model, args, plan, template, plan.train, compare=args.compare_constrained
    )
    result.unique_groups = unique_group_metrics(
        args.data, args.split, result.predictions, tuple(template.args.fields)
    )
    if plan.base_model is not None:
        base = _evaluate("base model", plan.base_model, args, plan, template, None)
        result.base_metrics, result.base_predictions = base.metrics, base.predictions
    result.out = _write_results(plan, args, result)
    return result


# --------------------------------------------------------------------------- checks


def _check_split(args: EvalArgs) -> PreparedDataset:
    try:  # a missing dataset, or a split it does not have (or has no rows of)
        dataset = load_prepared(args.data, args.split)
    except PreparedDatasetError as err:
        raise EvalError(str(err)) from None
    paths = dataset.image_paths()[: args.limit or len(dataset)]
    if not any(path.is_file() for path in paths):
        raise EvalError(
            f"none of the {len(paths)} image(s) to evaluate in {str(args.data)!r} exists "
            f"(e.g. {str(paths[0])!r}); run `vlmtune prepare` again to fetch them"
        )
    return dataset


def _inputs(
    args: EvalArgs, model: ModelLocation, base: ModelLocation | None
) -> dict[str, Path | None]:
    """Everything eval reads: its output may never be (or contain) one of them."""
    return {
        "the model": args.model,
        "the adapter's base model": model.base_dir,
        "the base model": args.base_model,
        "the base model's own base": base.base_dir if base is not None else None,
        "the dataset": args.data,
    }


def _is_earlier_eval(folder: Path) -> bool:
    """An eval output written before output markers existed: only eval's own files, metrics.json among them."""
    names = {entry.name for entry in folder.iterdir()}
    return "metrics.json" in names and names <= EVAL_FILES


def _train_split(root: Path) -> PreparedDataset | None:
    try:
        return load_prepared(root, "train")
    except PreparedDatasetError as err:
        log.warning("no baselines: %s", err)
        return None


def _training_log(model: Path) -> tuple[list[dict[str, Any]] | None, str]:
    path = find_training_log(model)
    if path is None:
        return None, "none (not a run folder)"
    try:
        return read_training_log(path), str(path)
    except (JsonlError, OSError) as err:  # a damaged log costs the curves, not the evaluation
        log.warning("report: no training curves: %s", err)
        return None, f"{path}: not plotted ({err})"


def _absolute(path: Path | None) -> str | None:
    return None if path is None else os.path.abspath(Path(path).expanduser())


# --------------------------------------------------------------------------- work


def _evaluate(
    role: str,
    location: ModelLocation,
    args: EvalArgs,
    plan: EvalPlan,
    template: PromptTemplate,
    train: PreparedDataset | None,
    compare: bool = False,
) -> EvalResult:
    rows = min(len(plan.dataset), args.limit or len(plan.dataset))
    log.info(
        "evaluating the %s %s on %d row(s) of %s/%s (%s, %s)",
        role,
        location.run_dir or location.model_dir,
        rows,
        args.data,
        args.split,
        plan.device,
        dtype_name(plan.dtype),
    )
    model, processor = load_model_and_processor(location, dtype=plan.dtype, device=plan.device)
    gen = args.inference.generation
    try:
        result = evaluate_model(
            model, processor, plan.dataset, template, gen, train, args.limit, plan.schema
        )
        if compare:
            other = dataclasses.replace(gen, constrained=not gen.constrained)
            log.info(
                "evaluating the %s again, %s",
                role,
                "constrained" if other.constrained else "unconstrained",
            )
            result.compared = evaluate_model(
                model, processor, plan.dataset, template, other, None, args.limit, plan.schema
            ).metrics
        return result
    finally:
        del model
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def _write_results(plan: EvalPlan, args: EvalArgs, result: EvalResult) -> Path:
    report = ReportData(
        metrics=result.metrics,
        predictions=result.predictions,
        baselines=result.baselines,
        base_metrics=result.base_metrics,
        base_predictions=result.base_predictions,
        training_log=plan.training_log,
        info=_report_info(args, plan),
        unique_groups=result.unique_groups,
        decoding=result.decoding,
        compared=result.compared,
    )
    with replace_dir(plan.out.path, "eval", plan.identity) as staging:
        _write_jsonl(staging / "predictions.jsonl", result.predictions)
        if result.base_predictions is not None:
            _write_jsonl(staging / "base_predictions.jsonl", result.base_predictions)
        document = _metrics_document(args, result)
        document["family"] = family_of_folder(plan.model.base_dir or plan.model.model_dir).name
        atomic_write_json(staging / "metrics.json", document)
        write_report(staging / "report.html", report)
    log.info("wrote predictions.jsonl, metrics.json and report.html to %s", plan.out.path)
    return plan.out.path


def _metrics_document(args: EvalArgs, result: EvalResult) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "model": result.metrics,
        "baselines": result.baselines,
        "skipped": result.skipped,
        "unique_groups": result.unique_groups,
    }
    if result.base_metrics is not None:
        doc["base_model"] = result.base_metrics
    doc["decoding"] = result.decoding
    if result.compared is not None:  # both ways, by name
        other = "unconstrained" if result.decoding == "constrained" else "constrained"
        doc[result.decoding], doc[other] = result.metrics, result.compared
    doc["config"] = config_to_dict(args)
    doc["created"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    return doc


def _report_info(args: EvalArgs, plan: EvalPlan) -> dict[str, str]:
    info = {"model": str(args.model), "data": str(args.data), "split": args.split}
    if args.base_model is not None:
        info["base model"] = str(args.base_model)
    if args.limit is not None:
        info["limit"] = str(args.limit)
    gen = args.inference.generation
    info["generation"] = (
        f"{'sampling' if gen.do_sample else 'greedy'}, beams {gen.num_beams}, "
        f"max {gen.max_new_tokens} new tokens"
    )
    info["decoding"] = _decoding_note(gen.constrained, plan.schema)
    if args.compare_constrained:
        info["decoding"] += f"; compared with {_decoding_note(not gen.constrained, plan.schema)}"
    info["device"] = f"{plan.device}, {dtype_name(plan.dtype)}"
    info["training log"] = plan.log_note
    info["created"] = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return info


def _decoding_note(constrained: bool, schema: ListingSchema | None) -> str:
    if not constrained or schema is None:
        return "unconstrained"
    return f"constrained (listing pattern, {len(schema.categories)} known categories)"


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
