"""``vlmtune train``: fine-tune Phi-3-V on a prepared dataset (see :mod:`vlmtune.training.train`)."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import typer

from vlmtune.cli._common import CONFIG_OPTION, OVERRIDES_ARGUMENT, build_config
from vlmtune.data.dataset import BadImagesError
from vlmtune.data.prepared import PreparedDatasetError, load_prepared
from vlmtune.data.prompts import PromptTemplate
from vlmtune.evaluation.evaluate import make_generation_eval
from vlmtune.inference.args import GenerationArgs
from vlmtune.training.args import TrainConfig
from vlmtune.training.train import TrainResult, train
from vlmtune.training.trainer import GenerationEval, NonFiniteLossError

__all__ = ["command", "generation_eval_for"]

_MODEL = typer.Option(
    None, "--model", "-m", help="Official-layout Phi-3-V checkpoint folder to fine-tune."
)
_DATA = typer.Option(None, "--data", "-d", help="Prepared dataset folder (vlmtune prepare).")
_OUT = typer.Option(None, "--out", "-o", help="Run folder (checkpoints, metrics.jsonl, model/).")
_RESUME = typer.Option(
    None, "--resume", help="'auto' (latest checkpoint in --out, if any) or a checkpoint folder."
)
_MODE = typer.Option(
    None, "--mode", help="lora, full, frozen_vision or qlora (default: the recipe's)."
)
_NO_GEN = typer.Option(
    False, "--no-generation-eval", help="Evaluate the loss only (no generated listings)."
)


def command(
    model: Path | None = _MODEL,
    data: Path | None = _DATA,
    out: Path | None = _OUT,
    resume: str | None = _RESUME,
    mode: str | None = _MODE,
    no_generation_eval: bool = _NO_GEN,
    config: Path | None = CONFIG_OPTION,
    overrides: list[str] | None = OVERRIDES_ARGUMENT,
) -> None:
    """Fine-tune Phi-3-Vision on a prepared dataset: LoRA (default), full, frozen vision tower or QLoRA.

    Writes RUN/config.yaml, RUN/metrics.jsonl, RUN/checkpoint-N/ (resumable with
    --resume auto), RUN/model/ (official checkpoint or LoRA adapter + processor)
    and RUN/train_summary.json. SIGTERM/SIGINT save a checkpoint before exiting.
    Works the same under torchrun / accelerate launch (data parallel).
    """
    flags = {
        "model.path": model,
        "data.path": data,
        "train.output_dir": out,
        "train.resume": resume,
    }
    cfg = build_config(TrainConfig, config, overrides, flags=flags | {"train.mode": mode})
    cfg.require_paths()
    try:
        gen_eval = (
            None if no_generation_eval or not cfg.train.evaluates else generation_eval_for(cfg)
        )
        result = train(cfg, gen_eval)
    except (PreparedDatasetError, BadImagesError) as err:
        typer.echo(f"vlmtune train: {err}", err=True)
        raise typer.Exit(2) from err
    except NonFiniteLossError as err:
        typer.echo(f"vlmtune train: stopped: {err}", err=True)
        raise typer.Exit(3) from err
    except KeyboardInterrupt:  # a second signal while the checkpoint was being written
        typer.echo("vlmtune train: interrupted twice; stopped without a final checkpoint", err=True)
        raise typer.Exit(130) from None
    if result.interrupted_by is not None:
        typer.echo(
            f"vlmtune train: stopped by {result.interrupted_by}; checkpoint {result.last_checkpoint}. "
            f"Resume with: vlmtune train ... --out {result.run_dir} --resume auto",
            err=True,
        )
        raise typer.Exit(128 + int(signal.Signals[result.interrupted_by]))
    if not result.is_main_process:
        return
    typer.echo(
        json.dumps(
            {
                "run_dir": str(result.run_dir),
                "model_dir": str(result.model_dir),
                **_headline(result),
            }
        )
    )


def generation_eval_for(cfg: TrainConfig) -> GenerationEval:
    """Generation metrics on the eval subset (price error, category accuracy, title match)."""
    dataset = load_prepared(cfg.data.path, cfg.data.eval_split)
    gen = GenerationArgs(
        max_new_tokens=cfg.train.eval_max_new_tokens,
        batch_size=cfg.train.eval_generation_batch_size,
    )
    return make_generation_eval(
        dataset, PromptTemplate(cfg.data.prompt), gen, limit=cfg.data.eval_limit
    )


def _headline(result: TrainResult) -> dict[str, Any]:
    keys = (
        "global_step",
        "final_train_loss",
        "final_eval_loss",
        "train_samples_per_second",
        "best_metric",
    )
    return {key: result.summary.get(key) for key in keys}
