"""``train()``: fine-tune a vision-language model (any supported family) on a prepared image dataset
with transformers' ``Trainer``.

Reads like a table of contents (torchtune's recipe convention): check every
input and the run folder (:mod:`~vlmtune.training.preflight`,
:mod:`~vlmtune.training.run_folder`) before anything is loaded, build model,
processor and datasets, run the preflight, train, save. The optimisation loop,
gradient accumulation, mixed precision, checkpoint rotation, resume, distributed
data parallelism (torchrun / accelerate launch) and the trackers are the
Trainer's; :class:`~vlmtune.training.trainer.VlmTrainer` adds what it lacks for
this task (batch metadata, finite-loss and bad-image checks, generation metrics,
strict reloads, pickle-free checkpoints).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import PrinterCallback, Trainer, TrainingArguments
from transformers.trainer_utils import get_last_checkpoint

from vlmtune.data.collator import VisionSFTCollator
from vlmtune.data.packing import PackingCollator
from vlmtune.data.prepared import load_prepared
from vlmtune.inference.listing_schema import schema_from_dataset
from vlmtune.models.families import family_of
from vlmtune.models.folder import copy_remote_code
from vlmtune.training.args import TrainConfig
from vlmtune.training.build import build_datasets, build_model, load_processor
from vlmtune.training.callbacks import MetricsJsonlCallback, SignalCheckpointCallback, read_metrics
from vlmtune.training.packing import packed_train_dataset
from vlmtune.training.preflight import check_backends, check_inputs, preflight_summary
from vlmtune.training.run_folder import (
    RUN_CONFIG,
    check_resume_compatible,
    claim_run_folder,
    is_launch_main_process,
    mark_run_folder,
    resolve_resume,
)
from vlmtune.training.tracking import finish_tracking, log_model_artifact, tracking_environment
from vlmtune.training.trainer import GenerationEval, VlmTrainer
from vlmtune.utils.config import ConfigError, save_config
from vlmtune.utils.devices import resolve_dtype
from vlmtune.utils.io import atomic_write_json
from vlmtune.utils.logging import get_logger
from vlmtune.utils.seeding import seed_everything

__all__ = ["TrainResult", "train", "training_arguments"]

log = get_logger(__name__)

_LISTED = 200  # skipped samples listed by name in train_summary.json


@dataclass
class TrainResult:
    """What a run produced."""

    run_dir: Path
    """The run folder (absolute)."""
    model_dir: Path | None
    """``RUN/model`` (full checkpoint or LoRA adapter, with the processor); None when stopped early."""
    metrics: dict[str, float]
    """The Trainer's figures of this call (``train_loss``, ``train_runtime``...)."""
    summary: dict[str, Any] = field(default_factory=dict)
    """What ``train_summary.json`` holds: preflight figures, losses, best checkpoint, skipped samples."""
    interrupted_by: str | None = None
    """Signal name (SIGTERM/SIGINT) when the run stopped early after checkpointing."""
    last_checkpoint: Path | None = None
    """The latest ``checkpoint-N`` folder of the run (resume point)."""
    is_main_process: bool = True
    """False on the other ranks of a distributed run (they write nothing)."""


def train(config: TrainConfig, generation_eval: GenerationEval | None = None) -> TrainResult:
    """Fine-tune per ``config``; write the run folder (see module docs) and return its summary.

    ``generation_eval`` scores generated listings at each evaluation; it is used only
    when ``config.train.generation_eval`` is on and the run evaluates. Every input, the
    run folder and a resume are checked before anything is loaded or written.
    """
    config.require_paths()
    config = _with_absolute_paths(config)
    if not (config.train.generation_eval and config.train.evaluates):
        generation_eval = None
    check_backends(config)
    _check_best_metric(config, generation_eval)
    check_inputs(config)
    run_dir = Path(config.train.output_dir)
    main = is_launch_main_process()
    if main:
        claim_run_folder(config)
    resume = resolve_resume(
        config.train.resume, run_dir, deepspeed=config.train.deepspeed is not None
    )
    check_resume_compatible(config, resume)
    if main:
        mark_run_folder(run_dir)
    seed_everything(config.train.seed)
    with tracking_environment(config.train.report_to, run_dir, config.train.wandb_project):
        trainer, summary = _setup(config, run_dir, generation_eval)
        try:
            return _run(trainer, config, run_dir, resume, summary)
        finally:
            finish_tracking(config.train.report_to)


def _setup(
    config: TrainConfig, run_dir: Path, generation_eval: GenerationEval | None
) -> tuple[VlmTrainer, dict[str, Any]]:
    """Processor, model in its mode, datasets, preflight, resolved config.yaml and the Trainer."""
    processor = load_processor(config.model)
    model = build_model(config.model, config.train, config.lora)
    datasets = build_datasets(config.data, processor, with_eval=config.train.evaluates)
    args = training_arguments(config, run_dir, model)
    summary = preflight_summary(model, datasets, config, args)
    if args.should_save:
        save_config(config, run_dir / RUN_CONFIG)
    token_keys = getattr(processor, "token_input_keys", ())
    train_dataset = datasets.train
    collator = VisionSFTCollator(processor.tokenizer.pad_token_id, token_keys=token_keys)
    if config.data.packing:
        _check_packing(model)
        train_dataset = packed_train_dataset(train_dataset, config.data.pack_max_tokens, model)
        collator = PackingCollator(processor.tokenizer.pad_token_id)
        summary["packing"] = {
            "rows": len(train_dataset),
            "samples_per_row": round(train_dataset.num_samples / len(train_dataset), 3),
            "pad_fraction": round(train_dataset.pad_fraction(), 4),
        }
    trainer = VlmTrainer(
        model=model,
        args=args,
        train_dataset=train_dataset,
        eval_dataset=datasets.eval,
        data_collator=collator,
        processing_class=processor,
        callbacks=[MetricsJsonlCallback(run_dir / "metrics.jsonl")],
        generation_eval=generation_eval,
        max_bad_image_fraction=config.data.max_bad_image_fraction,
        bad_before_training=[s for s in datasets.left_out if s.reason == "bad_image"],
        listing_schema=schema_from_dataset(
            load_prepared(config.data.path, config.data.train_split), config.data.prompt
        ),
    )
    trainer.remove_callback(PrinterCallback)  # MetricsJsonlCallback logs the events instead
    return trainer, summary


def _run(
    trainer: VlmTrainer, config: TrainConfig, run_dir: Path, resume: str | None, summary: dict
) -> TrainResult:
    """Train under the signal guard, then save the final model (or not, when stopped) and the summary."""
    started = time.perf_counter()
    with SignalCheckpointCallback() as stopper:
        trainer.add_callback(stopper)
        if (
            resume is not None
            and config.train.deepspeed is None
            and _finished(Path(resume), config)
        ):
            # The Trainer would run one more step from a checkpoint at the last step (it checks
            # the step count only after a step): load the weights and finish instead.
            log.info("%s is the run's last step: nothing left to train", resume)
            trainer.load_checkpoint_weights(resume)
            metrics: dict[str, float] = {}
        else:
            metrics = trainer.train(resume_from_checkpoint=resume).metrics
    last = get_last_checkpoint(str(run_dir))
    last = Path(last) if last else None
    summary |= _run_figures(trainer, metrics, time.perf_counter() - started)
    if stopper.received is not None:
        step = trainer.state.global_step
        log.warning(
            "stopped by %s at step %s; resume with --resume auto", stopper.signal_name, step
        )
        _write_summary(trainer, run_dir, summary | {"interrupted_by": stopper.signal_name})
        return TrainResult(
            run_dir=run_dir,
            model_dir=None,
            metrics=metrics,
            summary=summary,
            interrupted_by=stopper.signal_name,
            last_checkpoint=last,
            is_main_process=trainer.is_world_process_zero(),
        )
    model_dir = run_dir / "model"
    if trainer.is_world_process_zero() and not config.train.uses_lora:
        # a full model folder loads where its base did (vLLM reads the remote-code files);
        # copied first, so that config.json's auto_map names them
        model_dir.mkdir(parents=True, exist_ok=True)
        copy_remote_code(config.model.path, model_dir)
    trainer.save_model(str(model_dir))
    if trainer.is_world_process_zero() and config.train.report_to == "wandb":
        log_model_artifact(
            model_dir, config.train.run_name or run_dir.name, {"mode": config.train.mode}
        )
    _write_summary(trainer, run_dir, summary)
    return TrainResult(
        run_dir=run_dir,
        model_dir=model_dir,
        metrics=metrics,
        summary=summary,
        last_checkpoint=last,
        is_main_process=trainer.is_world_process_zero(),
    )


def _finished(checkpoint: Path, config: TrainConfig) -> bool:
    """True when ``checkpoint`` is at the run's last optimizer step (``max_steps``, or the step
    count the Trainer recorded for an epoch-based run)."""
    state = json.loads((checkpoint / "trainer_state.json").read_text(encoding="utf-8"))
    total = config.train.max_steps if config.train.max_steps > 0 else state.get("max_steps", 0)
    return 0 < total <= int(state.get("global_step", 0))


def _with_absolute_paths(config: TrainConfig) -> TrainConfig:
    """A copy whose folders are absolute, so the saved config.yaml is valid from anywhere."""
    config = copy.deepcopy(config)
    config.model.path = Path(config.model.path).resolve()
    config.data.path = Path(config.data.path).resolve()
    config.train.output_dir = Path(config.train.output_dir).resolve()
    if config.train.deepspeed is not None:
        config.train.deepspeed = Path(config.train.deepspeed).resolve()
    return config


def _check_best_metric(config: TrainConfig, generation_eval: GenerationEval | None) -> None:
    metric = config.train.metric_for_best
    if metric and generation_eval is None and metric.removeprefix("eval_") != "loss":
        raise ConfigError(
            f"train.metric_for_best={metric!r} is a generation metric, but no generation evaluation runs "
            "(--no-generation-eval, or none given); use train.metric_for_best=eval_loss"
        )


def training_arguments(
    config: TrainConfig, run_dir: Path, model: torch.nn.Module
) -> TrainingArguments:
    """Map :class:`TrainConfig` onto transformers' ``TrainingArguments``."""
    t, cuda = config.train, torch.cuda.is_available()
    dtype = resolve_dtype(config.model.dtype)
    best = t.metric_for_best
    return TrainingArguments(
        output_dir=str(run_dir),
        per_device_train_batch_size=t.per_device_batch_size,
        per_device_eval_batch_size=t.per_device_batch_size,
        gradient_accumulation_steps=t.grad_accum,
        num_train_epochs=t.epochs,
        max_steps=t.max_steps,
        learning_rate=t.learning_rate,
        lr_scheduler_type=t.lr_scheduler,
        # transformers 5 dropped warmup_ratio: a warmup_steps below 1 is read as a fraction of
        # the total steps (TrainingArguments.get_warmup_steps: ceil(ratio * steps)), 1 and up
        # as a step count; warmup_ratio is validated to [0, 1), so it is always the fraction.
        warmup_steps=t.warmup_ratio,
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        logging_strategy="steps",
        logging_steps=t.logging_steps,
        eval_strategy="steps" if t.evaluates else "no",
        eval_steps=t.eval_steps or None,
        save_strategy="steps",
        save_steps=t.save_steps,
        save_total_limit=t.save_total_limit,
        load_best_model_at_end=best is not None,
        metric_for_best_model=best,
        greater_is_better=t.best_is_greater() if best else None,
        seed=t.seed,
        data_seed=t.seed,
        report_to=[] if t.report_to == "none" else [t.report_to],
        run_name=t.run_name or run_dir.name,
        dataloader_num_workers=t.dataloader_workers,
        dataloader_pin_memory=cuda,
        bf16=dtype == torch.bfloat16,  # autocast; on CPU too when asked for explicitly
        fp16=cuda and dtype == torch.float16,
        use_cpu=not cuda,
        activation_checkpointing=config.model.gradient_checkpointing,
        activation_checkpointing_kwargs={"use_reentrant": False}
        if config.model.gradient_checkpointing
        else None,
        remove_unused_columns=False,
        label_names=["labels"],
        train_sampling_strategy="group_by_length" if config.data.group_by_length else "random",
        ddp_find_unused_parameters=_find_unused(config, model),
        deepspeed=str(t.deepspeed) if t.deepspeed else None,
        disable_tqdm=True,
    )


def _check_packing(model: torch.nn.Module) -> None:
    """Packing passes its own position ids, which only families with 1-D positions can take."""
    family = family_of(model)
    if not family.supports_packing:
        raise ConfigError(
            f"data.packing=true: {family.name} computes its own position ids from the images "
            "(packing would overwrite them); set data.packing=false"
        )


def _find_unused(config: TrainConfig, model: torch.nn.Module) -> bool:
    """DDP must look for unused parameters when the vision tower trains (its last layer gets no gradient)."""
    if config.train.ddp_find_unused_parameters is not None:
        return config.train.ddp_find_unused_parameters
    family = family_of(model)
    return any(
        p.requires_grad
        and family.component_of(n.removeprefix("base_model.model.")) == "vision_tower"
        for n, p in model.named_parameters()
    )


def _run_figures(trainer: Trainer, metrics: dict[str, float], seconds: float) -> dict[str, Any]:
    events = (
        read_metrics(Path(trainer.args.output_dir) / "metrics.jsonl")
        if trainer.is_world_process_zero()
        else []
    )
    losses = [e["loss"] for e in events if "loss" in e]
    eval_losses = [e["eval_loss"] for e in events if "eval_loss" in e]
    return {
        "global_step": trainer.state.global_step,
        "train_runtime_s": round(seconds, 3),
        "train_samples_per_second": metrics.get("train_samples_per_second"),
        "final_train_loss": losses[-1] if losses else None,
        "mean_train_loss": metrics.get("train_loss"),
        "final_eval_loss": eval_losses[-1] if eval_losses else None,
        "best_metric": trainer.state.best_metric,
        "best_checkpoint": trainer.state.best_model_checkpoint,
        "skipped_during_training": trainer.skipped_counts(),
        "skipped_samples": [dataclasses.asdict(s) for s in trainer.skipped_samples()[:_LISTED]],
    }


def _write_summary(trainer: Trainer, run_dir: Path, summary: dict[str, Any]) -> None:
    if trainer.is_world_process_zero():
        atomic_write_json(run_dir / "train_summary.json", summary)
