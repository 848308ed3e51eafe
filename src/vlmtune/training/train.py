"""``train()``: fine-tune Phi-3-V on a prepared image dataset with transformers' ``Trainer``.

Reads like a table of contents (torchtune's recipe convention): set up the run
folder, build model, processor and datasets, run the preflight, train, save.
The optimisation loop, gradient accumulation, mixed precision, checkpoint
rotation, resume (optimizer, scheduler and RNG states), distributed data
parallelism (torchrun / accelerate launch) and the trackers are the Trainer's;
:class:`VlmTrainer` only adds what the Trainer lacks for this task:

* batch metadata (sample ids, skipped samples) is taken out before the forward
  and skipped samples are counted (too many bad images stop the run);
* a non-finite loss stops the run naming the step and the batch's sample ids;
* each evaluation also runs the injected generation metrics (``eval_<name>``);
* full-model checkpoints are reloaded through the model's own strict
  official-layout loader (the Trainer's default is a non-strict state-dict load);
* checkpoints hold no pickle: the optimizer, scheduler, gradient-scaler and
  RNG states are written as safetensors + JSON (:mod:`vlmtune.training.trainer_state`)
  and the pickled training arguments are not written (``config.yaml`` is the
  record). Under DeepSpeed and FSDP their own sharded checkpoint formats apply.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import PrinterCallback, Trainer, TrainingArguments
from transformers.trainer_pt_utils import LengthGroupedSampler
from transformers.trainer_utils import get_last_checkpoint

from vlmtune.data.collator import META_KEYS, VisionSFTCollator
from vlmtune.data.dataset import BadImagesError, SkippedSample, bad_images_message
from vlmtune.training.args import TrainConfig
from vlmtune.training.build import (
    build_datasets,
    build_model,
    load_processor,
)
from vlmtune.training.callbacks import MetricsJsonlCallback, SignalCheckpointCallback, read_metrics
from vlmtune.training.preflight import check_backends, preflight_summary
from vlmtune.training.tracking import (
    finish_tracking,
    log_eval_table,
    log_model_artifact,
    tracking_environment,
)
from vlmtune.training.trainer_state import (
    OPTIMIZER_FILE,
    SCALER_FILE,
    SCHEDULER_FILE,
    TrainerStateError,
    load_json_state,
    load_optimizer_state,
    load_rng_state,
    rng_state_file,
    save_json_state,
    save_optimizer_state,
    save_rng_state,
)
from vlmtune.utils.config import ConfigError, save_config
from vlmtune.utils.devices import resolve_dtype
from vlmtune.utils.io import atomic_write_json
from vlmtune.utils.logging import get_logger
from vlmtune.utils.seeding import seed_everything

__all__ = [
    "GenerationEval",
    "NonFiniteLossError",
    "TrainResult",
    "VlmTrainer",
    "resolve_resume",
    "train",
    "training_arguments",
]

log = get_logger(__name__)

GenerationEval = Callable[[Any, Any], tuple[dict[str, float], list[dict[str, Any]]]]
"""(model, processor) -> (metrics by name, one row per evaluated sample); injected by the CLI."""

TRAINING_ARGS_FILE = "training_args.bin"
_LISTED = 200  # skipped samples listed by name in train_summary.json


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite; the message names the step and the batch's ids."""


@dataclass
class TrainResult:
    """What a run produced."""

    run_dir: Path
    model_dir: Path | None
    metrics: dict[str, float]
    summary: dict[str, Any] = field(default_factory=dict)
    interrupted_by: str | None = None
    """Signal name (SIGTERM/SIGINT) when the run stopped early after checkpointing."""
    last_checkpoint: Path | None = None
    is_main_process: bool = True
    """False on the other ranks of a distributed run (they write nothing)."""


def train(config: TrainConfig, generation_eval: GenerationEval | None = None) -> TrainResult:
    """Fine-tune per ``config``; write the run folder (see module docs) and return its summary."""
    config.require_paths()
    config = _with_absolute_paths(config)
    check_backends(config)
    _check_best_metric(config, generation_eval)
    run_dir = Path(config.train.output_dir)
    resume = resolve_resume(config.train.resume, run_dir)
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
        save_config(config, run_dir / "config.yaml")
    trainer = VlmTrainer(
        model=model,
        args=args,
        train_dataset=datasets.train,
        eval_dataset=datasets.eval,
        data_collator=VisionSFTCollator(processor.tokenizer.pad_token_id),
        processing_class=processor,
        callbacks=[MetricsJsonlCallback(run_dir / "metrics.jsonl")],
        generation_eval=generation_eval,
        max_bad_image_fraction=config.data.max_bad_image_fraction,
        bad_before_training=[s for s in datasets.left_out if s.reason == "bad_image"],
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
        output = trainer.train(resume_from_checkpoint=resume)
    last = get_last_checkpoint(str(run_dir))
    last = Path(last) if last else None
    summary |= _run_figures(trainer, output.metrics, time.perf_counter() - started)
    if stopper.received is not None:
        step = trainer.state.global_step
        log.warning(
            "stopped by %s at step %s; resume with --resume auto", stopper.signal_name, step
        )
        _write_summary(trainer, run_dir, summary | {"interrupted_by": stopper.signal_name})
        main = trainer.is_world_process_zero()
        return TrainResult(run_dir, None, output.metrics, summary, stopper.signal_name, last, main)
    model_dir = run_dir / "model"
    trainer.save_model(str(model_dir))
    if trainer.is_world_process_zero() and config.train.report_to == "wandb":
        log_model_artifact(
            model_dir, config.train.run_name or run_dir.name, {"mode": config.train.mode}
        )
    _write_summary(trainer, run_dir, summary)
    return TrainResult(
        run_dir, model_dir, output.metrics, summary, None, last, trainer.is_world_process_zero()
    )


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
            "(--no-generation-eval); use train.metric_for_best=eval_loss"
        )


def resolve_resume(resume: str | None, run_dir: Path) -> str | None:
    """Checkpoint folder to resume from: ``auto`` picks the latest in ``run_dir`` (None if there is none)."""
    if resume is None:
        if run_dir.is_dir() and get_last_checkpoint(str(run_dir)) is not None:
            raise ConfigError(
                f"{str(run_dir)!r} already holds checkpoints of a run: continue it with --resume auto "
                "(train.resume=auto) or choose a new --out"
            )
        return None
    if resume == "auto":
        last = get_last_checkpoint(str(run_dir)) if run_dir.is_dir() else None
        if last is None:
            log.info("resume=auto: no checkpoint in %s, starting fresh", run_dir)
        else:
            log.info("resuming from %s", last)
        return last
    path = Path(resume)
    if not (path / "trainer_state.json").is_file():
        raise ConfigError(
            f"train.resume: {resume!r} is not a checkpoint folder (no trainer_state.json)"
        )
    return str(path)


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


def _find_unused(config: TrainConfig, model: torch.nn.Module) -> bool:
    """DDP must look for unused parameters when the vision tower trains (its last layer gets no gradient)."""
    if config.train.ddp_find_unused_parameters is not None:
        return config.train.ddp_find_unused_parameters
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return any(
        p.requires_grad and base.component_of(n.removeprefix("base_model.model.")) == "vision_tower"
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


class VlmTrainer(Trainer):
    """``Trainer`` with batch metadata, finite-loss and bad-image checks, generation metrics, strict reloads."""

    def __init__(
        self,
        *args: Any,
        generation_eval: GenerationEval | None = None,
        max_bad_image_fraction: float = 1.0,
        bad_before_training: list[SkippedSample] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.generation_eval = generation_eval
        self.max_bad_image_fraction = max_bad_image_fraction
        # rows already left out for a bad image count against the same limit
        self._bad_before = list(bad_before_training or [])
        self._skipped: dict[str, SkippedSample] = {}

    # ---- batches

    def compute_loss(
        self,
        model: Any,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: Any = None,
    ) -> Any:
        meta = self._pop_meta(inputs, training=True)
        if inputs["input_ids"].numel() == 0:  # every sample of the batch was skipped
            zero = sum(p.sum() * 0.0 for p in model.parameters() if p.requires_grad)
            return (zero, None) if return_outputs else zero
        result = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        loss = result[0] if return_outputs else result
        if not torch.isfinite(loss.detach()).all():
            raise NonFiniteLossError(
                f"training loss is {loss.detach().float().item()} at step {self.state.global_step + 1} "
                f"(epoch {self.state.epoch or 0:.2f}); batch sample ids: {', '.join(meta['sample_ids'])}"
            )
        return result

    def prediction_step(
        self,
        model: Any,
        inputs: dict[str, Any],
        prediction_loss_only: bool,
        ignore_keys: Any = None,
    ) -> Any:
        self._pop_meta(inputs, training=False)
        if inputs["input_ids"].numel() == 0:
            return None, None, None
        return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys)

    def _pop_meta(self, inputs: dict[str, Any], training: bool) -> dict[str, Any]:
        meta = {key: inputs.pop(key, []) for key in META_KEYS}
        if training and meta["skipped"]:
            for sample in meta["skipped"]:
                self._skipped.setdefault(f"{sample.reason}:{sample.sample_id}", sample)
                log.warning(
                    "skipped sample %s (%s): %s", sample.sample_id, sample.reason, sample.detail
                )
            self._check_bad_images()
        return meta

    def _check_bad_images(self) -> None:
        bad = [s for s in self._skipped.values() if s.reason == "bad_image"]
        if not bad:
            return
        bad = self._bad_before + bad
        total = len(self.train_dataset) + len(self._bad_before)
        if len(bad) / total > self.max_bad_image_fraction:
            raise BadImagesError(
                bad_images_message(
                    [(s.image_path, s.detail) for s in bad], total, self.max_bad_image_fraction
                )
            )

    def skipped_samples(self) -> list[SkippedSample]:
        """Samples skipped while training (bad image, too long), each once."""
        return list(self._skipped.values())

    def skipped_counts(self) -> dict[str, int]:
        """Samples skipped while training, per reason (each sample counted once)."""
        counts: dict[str, int] = {}
        for sample in self._skipped.values():
            counts[sample.reason] = counts.get(sample.reason, 0) + 1
        return counts

    def _get_train_sampler(self, train_dataset: Any = None) -> Any:
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        if self.args.train_sampling_strategy == "group_by_length":
            batch = self.args.train_batch_size * self.args.gradient_accumulation_steps
            return LengthGroupedSampler(batch, lengths=dataset.lengths())
        return super()._get_train_sampler(train_dataset)

    def _get_eval_sampler(self, eval_dataset: Any) -> Any:
        if self.args.train_sampling_strategy == "group_by_length":
            return LengthGroupedSampler(self.args.eval_batch_size, lengths=eval_dataset.lengths())
        return super()._get_eval_sampler(eval_dataset)

    # ---- evaluation

    def evaluation_loop(
        self,
        dataloader: Any,
        description: str,
        prediction_loss_only: bool | None = None,
        ignore_keys: Any = None,
        metric_key_prefix: str = "eval",
    ) -> Any:
        output = super().evaluation_loop(
            dataloader, description, prediction_loss_only, ignore_keys, metric_key_prefix
        )
        if self.generation_eval is not None:
            metrics, rows = self._generate()
            output.metrics.update(
                {f"{metric_key_prefix}_{name}": value for name, value in metrics.items()}
            )
            if self.is_world_process_zero() and "wandb" in self.args.report_to:
                log_eval_table(rows, self.state.global_step)
        return output

    def _generate(self) -> tuple[dict[str, float], list[dict[str, Any]]]:
        # Every rank generates on the same rows, so metric_for_best (and the best checkpoint) agree.
        model = self.accelerator.unwrap_model(self.model)
        was_training, use_cache = model.training, model.config.use_cache
        model.eval()
        model.config.use_cache = True
        try:
            with torch.no_grad():
                return self.generation_eval(model, self.processing_class)
        finally:
            model.config.use_cache = use_cache
            model.train(was_training)

    # ---- checkpoints

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        super()._save(output_dir, state_dict)
        pickled = Path(output_dir or self.args.output_dir) / TRAINING_ARGS_FILE
        pickled.unlink(
            missing_ok=True
        )  # the resolved config.yaml is the record; no pickles in a run

    def _save_optimizer_and_scheduler(self, output_dir: str) -> None:
        if self.is_deepspeed_enabled or self.is_fsdp_enabled:
            return super()._save_optimizer_and_scheduler(output_dir)  # their sharded formats
        if self.args.should_save:
            save_optimizer_state(self.optimizer.state_dict(), Path(output_dir) / OPTIMIZER_FILE)
            save_json_state(self.lr_scheduler.state_dict(), Path(output_dir) / SCHEDULER_FILE)

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        if checkpoint is None or self.is_deepspeed_enabled or self.is_fsdp_enabled:
            return super()._load_optimizer_and_scheduler(checkpoint)
        folder = Path(checkpoint)
        missing = [
            name for name in (OPTIMIZER_FILE, SCHEDULER_FILE) if not (folder / name).is_file()
        ]
        if missing:
            raise TrainerStateError(
                f"checkpoint {str(folder)!r} has no {' or '.join(missing)}, so its run cannot be "
                "resumed exactly (vlmtune stores no pickled state); to start a new run from its "
                "weights, pass the folder as --model instead"
            )
        load_optimizer_state(self.optimizer, folder / OPTIMIZER_FILE)
        load_json_state(self.lr_scheduler, folder / SCHEDULER_FILE)

    def _save_scaler(self, output_dir: str) -> None:
        scaler = getattr(self.accelerator, "scaler", None)
        if scaler is not None and self.args.should_save:
            save_json_state(scaler.state_dict(), Path(output_dir) / SCALER_FILE)

    def _load_scaler(self, checkpoint: str | None) -> None:
        scaler = getattr(self.accelerator, "scaler", None)
        if (
            checkpoint is not None
            and scaler is not None
            and (Path(checkpoint) / SCALER_FILE).is_file()
        ):
            load_json_state(scaler, Path(checkpoint) / SCALER_FILE)

    def _save_rng_state(self, output_dir: str) -> None:
        name = rng_state_file(self.args.process_index, self.args.world_size)
        save_rng_state(Path(output_dir) / name)

    def _load_rng_state(self, checkpoint: str | None) -> None:
        if checkpoint is None:
            return
        path = Path(checkpoint) / rng_state_file(self.args.process_index, self.args.world_size)
        if not path.is_file():
            log.warning(
                "no %s in %s: random draws after the resume will differ", path.name, checkpoint
            )
            return
        load_rng_state(path)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: Any = None) -> None:
        target = self.accelerator.unwrap_model(model if model is not None else self.model)
        if _is_adapter_model(target) or self.is_deepspeed_enabled or self.is_fsdp_enabled:
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        _load_full_weights(target, Path(resume_from_checkpoint))

    def _load_best_model(self) -> None:
        target = self.accelerator.unwrap_model(self.model)
        if _is_adapter_model(target) or self.is_deepspeed_enabled or self.is_fsdp_enabled:
            return super()._load_best_model()
        log.info(
            "loading the best model from %s (%s)",
            self.state.best_model_checkpoint,
            self.state.best_metric,
        )
        _load_full_weights(target, Path(self.state.best_model_checkpoint))


def _is_adapter_model(model: torch.nn.Module) -> bool:
    return hasattr(model, "peft_config")


def _load_full_weights(model: torch.nn.Module, checkpoint: Path) -> None:
    """Load an official-layout checkpoint into ``model`` through the model class's strict loader."""
    param = next(model.parameters())
    loaded = type(model).from_pretrained(str(checkpoint), torch_dtype=param.dtype)
    model.load_state_dict(loaded.state_dict(), strict=True)
    log.info("reloaded the full model weights from %s", checkpoint)
