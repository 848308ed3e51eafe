"""``VlmTrainer``: transformers' ``Trainer`` with what fine-tuning a vision-language model on catalogs needs.

The optimisation loop, gradient accumulation, mixed precision, checkpoint rotation,
resume, data parallelism and the trackers are the Trainer's. This subclass adds:

* batch metadata (sample ids, skipped samples) is taken out before the forward
  and skipped samples are counted (too many bad images stop the run);
* a non-finite loss stops the run naming the step and the batch's sample ids;
* length-grouped batches use the dataset's exact lengths (the Trainer would
  decode every image to measure them);
* each evaluation also runs the injected :class:`GenerationEval` (``eval_<name>``);
* full-model checkpoints are reloaded in place through the model family's key table
  (Phi-3-V: the official one), strictly, without building a second model (the Trainer's default is a
  non-strict state-dict load);
* checkpoints hold no pickle: the optimizer, scheduler, gradient-scaler and RNG
  states are written as safetensors + JSON (:mod:`vlmtune.training.trainer_state`)
  and the pickled training arguments are not written (``config.yaml`` is the
  record). Under DeepSpeed and FSDP their own sharded checkpoint formats apply;
* every saved model folder (checkpoints and the final model) gets the run's listing schema
  (``listing_schema.json`` beside the processor files), which constrained decoding reads.

Most of these are overrides of the Trainer's private methods, for which transformers
offers no public hook (state serialisation, sampler choice, best-model reload);
``tests/training/test_trainer_seam.py`` fails when a transformers release renames one,
changes its parameters or stops calling it, so our code is never skipped silently.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import Trainer, TrainerState
from transformers.trainer_pt_utils import LengthGroupedSampler

from vlmtune.data.collator import META_KEYS
from vlmtune.data.dataset import BadImagesError, SkippedSample, bad_images_message
from vlmtune.inference.generate import GenerationEval
from vlmtune.inference.listing_schema import ListingSchema, save_schema
from vlmtune.models.families import family_of
from vlmtune.training.tracking import log_eval_table
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
from vlmtune.utils.errors import RunFailure
from vlmtune.utils.logging import get_logger

__all__ = [
    "GenerationEval",
    "NonFiniteLossError",
    "OWN_METHODS",
    "VlmTrainer",
    "load_full_weights",
]

log = get_logger(__name__)

TRAINING_ARGS_FILE = "training_args.bin"


class NonFiniteLossError(RunFailure):
    """The training loss became NaN or infinite; the message names the step and the batch's ids."""

    exit_code = 3  # `vlmtune train` has always exited 3 here; scripts may test for it


OWN_METHODS = frozenset(
    {
        "__init__",
        "_pop_meta",
        "_check_bad_images",
        "skipped_samples",
        "skipped_counts",
        "_generate",
        "load_checkpoint_weights",
    }
)
"""Methods of :class:`VlmTrainer` that are not overrides; every other method overrides the Trainer's."""


class VlmTrainer(Trainer):
    """``Trainer`` with batch metadata, finite-loss and bad-image checks, generation metrics, strict reloads."""

    def __init__(
        self,
        *args: Any,
        generation_eval: GenerationEval | None = None,
        max_bad_image_fraction: float = 1.0,
        bad_before_training: list[SkippedSample] | None = None,
        listing_schema: ListingSchema | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.listing_schema = listing_schema
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
                f"(epoch {self.state.epoch or 0:.2f}); batch sample ids: {', '.join(meta['sample_ids'])}; "
                "lower train.learning_rate or check those samples, then resume with --resume auto"
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
        rows = getattr(self.train_dataset, "num_samples", None) or len(self.train_dataset)
        total = rows + len(self._bad_before)  # samples, also when packed into fewer rows
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

    # ---- samplers: the Trainer reads lengths only from a `datasets.Dataset` column; for
    # any other dataset it would encode every row (decoding its image) to measure it.

    def _get_train_sampler(self, train_dataset: Any = None) -> Any:
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        if self.args.train_sampling_strategy == "group_by_length":
            batch = self.args.train_batch_size * self.args.gradient_accumulation_steps
            return LengthGroupedSampler(batch, lengths=dataset.lengths())
        return super()._get_train_sampler(train_dataset)

    def _get_eval_sampler(self, eval_dataset: Any) -> Any:
        if self.args.train_sampling_strategy == "group_by_length":
            seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
            return LengthGroupedSampler(
                self.args.eval_batch_size,
                lengths=eval_dataset.lengths(),
                generator=torch.Generator().manual_seed(seed),  # the same order on every rank
            )
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

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        super().save_model(output_dir, _internal_call)
        if self.args.should_save:  # the resolved config.yaml is the record; no pickles in a run
            folder = Path(output_dir or self.args.output_dir)
            (folder / TRAINING_ARGS_FILE).unlink(missing_ok=True)
            if self.listing_schema is not None:
                save_schema(self.listing_schema, folder)

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

    def load_checkpoint_weights(self, checkpoint: str) -> None:
        """Take the weights and the step count of ``checkpoint`` without training (a run that
        reached its last step: the Trainer would run one step more from there)."""
        self._load_from_checkpoint(checkpoint)
        self.state = TrainerState.load_from_json(str(Path(checkpoint) / "trainer_state.json"))

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: Any = None) -> None:
        target = self.accelerator.unwrap_model(model if model is not None else self.model)
        if _is_adapter_model(target) or self.is_deepspeed_enabled or self.is_fsdp_enabled:
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        load_full_weights(target, Path(resume_from_checkpoint))

    def _load_best_model(self) -> None:
        target = self.accelerator.unwrap_model(self.model)
        if _is_adapter_model(target) or self.is_deepspeed_enabled or self.is_fsdp_enabled:
            return super()._load_best_model()
        log.info(
            "loading the best model from %s (%s)",
            self.state.best_model_checkpoint,
            self.state.best_metric,
        )
        load_full_weights(target, Path(self.state.best_model_checkpoint))


def _is_adapter_model(model: torch.nn.Module) -> bool:
    return hasattr(model, "peft_config")


def load_full_weights(model: torch.nn.Module, checkpoint: Path) -> None:
    """Copy a checkpoint's weights (its family's layout) into ``model`` in place, strictly.

    The tensors go through the family's key table (Phi-3-V: ``official_to_native``, which fails
    naming missing and unexpected keys; transformers' own classes: their load), every shape is checked before the first copy (so a
    refused checkpoint leaves the model as it was), then ``load_state_dict(strict=True)``
    copies each tensor into its live parameter, keeping the parameter's dtype and device.
    No second model is built; safetensors maps the file, so the tensors read cost page
    cache, not a second copy of the weights. Raises :class:`TrainerStateError`.
    """
    try:
        state = family_of(model).checkpoint_state(checkpoint, model)
    except (ValueError, FileNotFoundError) as err:
        raise TrainerStateError(
            f"checkpoint {str(checkpoint)!r} does not fit the model being trained: {err}; "
            "resume a checkpoint of this run, or start a new run with another --out"
        ) from err
    live = model.state_dict()
    for key, tensor in state.items():
        if key in live and tensor.shape != live[key].shape:
            raise TrainerStateError(
                f"checkpoint {str(checkpoint)!r}: {key} has shape {tuple(tensor.shape)}, the model's "
                f"{tuple(live[key].shape)}; resume a checkpoint of this run"
            )
    model.load_state_dict(state, strict=True)
    log.info("reloaded the full model weights from %s", checkpoint)
