"""``vlmtune train``: fine-tune a vision-language model on a prepared dataset (LoRA, full, frozen vision, QLoRA).

Writes RUN/config.yaml, RUN/metrics.jsonl, RUN/checkpoint-N/ (resumable with
--resume auto), RUN/model/ (the fine-tuned checkpoint or LoRA adapter + processor)
and RUN/train_summary.json. SIGTERM/SIGINT save a checkpoint before exiting.
Works the same under torchrun / accelerate launch (data parallel).
"""

from __future__ import annotations

import json
import signal
from typing import Any

import click

from vlmtune.training.args import TrainConfig
from vlmtune.utils.errors import Interrupted

__all__ = ["CONFIG", "generation_eval_for", "run"]

CONFIG = TrainConfig


def run(cfg: TrainConfig) -> None:
    from vlmtune.training.train import train

    cfg.require_paths()
    gen_eval = (
        generation_eval_for(cfg) if cfg.train.evaluates and cfg.train.generation_eval else None
    )
    try:
        result = train(cfg, gen_eval)
    except KeyboardInterrupt:  # a second signal while the checkpoint was being written
        raise Interrupted("interrupted twice; stopped without a final checkpoint") from None
    if result.interrupted_by is not None:
        stop = Interrupted(
            f"stopped by {result.interrupted_by}; checkpoint {result.last_checkpoint}. "
            f"Resume with: vlmtune train ... --out {result.run_dir} --resume auto"
        )
        stop.exit_code = 128 + int(signal.Signals[result.interrupted_by])
        raise stop
    if result.is_main_process:
        click.echo(
            json.dumps(
                {
                    "run_dir": str(result.run_dir),
                    "model_dir": str(result.model_dir),
                    **_headline(result),
                }
            )
        )


def generation_eval_for(cfg: TrainConfig) -> Any:
    """Generation metrics on the eval subset (price error, category accuracy, title match)."""
    from vlmtune.data.prepared import load_prepared
    from vlmtune.data.prompts import PromptTemplate
    from vlmtune.evaluation.evaluate import make_generation_eval
    from vlmtune.inference.args import GenerationArgs

    dataset = load_prepared(cfg.data.path, cfg.data.eval_split)
    gen = GenerationArgs(
        max_new_tokens=cfg.train.eval_max_new_tokens,
        batch_size=cfg.train.eval_generation_batch_size,
    )
    return make_generation_eval(
        dataset, PromptTemplate(cfg.data.prompt), gen, limit=cfg.data.eval_limit
    )


def _headline(result: Any) -> dict[str, Any]:
    keys = (
        "global_step",
        "final_train_loss",
        "final_eval_loss",
        "train_samples_per_second",
        "best_metric",
    )
    return {key: result.summary.get(key) for key in keys}
