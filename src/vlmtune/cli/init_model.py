"""``vlmtune init-model``: write a small Phi-3-V checkpoint (official layout) for offline runs."""

from __future__ import annotations

from pathlib import Path

import typer

from vlmtune.cli._common import CONFIG_OPTION, OVERRIDES_ARGUMENT, build_config
from vlmtune.training.init_model import InitModelArgs, init_model

__all__ = ["command"]


def command(
    data: Path = typer.Option(
        ..., "--data", help="Prepared dataset folder or catalog file (trains the tokenizer)."
    ),
    out: Path = typer.Option(..., "--out", help="Checkpoint folder to write."),
    tiny: bool = typer.Option(
        True,
        "--tiny/--no-tiny",
        help="Small sizes that learn on a laptop CPU (the only kind built here).",
    ),
    seed: int | None = typer.Option(None, "--seed", help="Seed of the random weights."),
    config: Path | None = CONFIG_OPTION,
    overrides: list[str] | None = OVERRIDES_ARGUMENT,
) -> None:
    """Build a small Phi-3-V with random weights and a BPE tokenizer trained on the catalog.

    It is saved exactly like a downloaded Phi-3-vision-128k-instruct (config.json,
    safetensors with official key names, tokenizer files, preprocessor config),
    so train, eval and predict treat it like the real one. Sizes are overridable:
    e.g. hidden_size=256 num_hidden_layers=4 crop_size=112.
    """
    if not tiny:
        raise typer.BadParameter(
            "only --tiny models are built here; for a real model pass its checkpoint folder to "
            "`vlmtune train --model /path/to/Phi-3-vision-128k-instruct`",
            param_hint="--tiny",
        )
    args = build_config(
        InitModelArgs, config, overrides, flags={"data": data, "out": out, "seed": seed}
    )
    path = init_model(args)
    typer.echo(f"wrote {path}")
