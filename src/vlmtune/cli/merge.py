"""``vlmtune merge``: fold a LoRA run's adapter into an official-layout checkpoint (see :mod:`vlmtune.training.merge`)."""

from __future__ import annotations

from pathlib import Path

import typer

from vlmtune.training.merge import merge_adapter

__all__ = ["command"]

_RUN = typer.Argument(
    ..., help="Training run folder (RUN/model holds the adapter) or an adapter folder."
)
_OUT = typer.Option(
    ..., "--out", "-o", help="Folder to write the merged checkpoint to (replaced if it exists)."
)
_DTYPE = typer.Option(
    "auto", "--dtype", help="auto (the base checkpoint's), float32, bfloat16 or float16."
)


def command(run: Path = _RUN, out: Path = _OUT, dtype: str = _DTYPE) -> None:
    """Merge a LoRA adapter into its base model and save an official-layout Phi-3-V checkpoint.

    The result (weights + tokenizer + preprocessor) loads with Phi3VForCausalLM.from_pretrained,
    vlmtune eval/predict and other Phi-3-V runtimes, without peft.
    """
    if dtype not in ("auto", "float32", "bfloat16", "float16"):
        raise typer.BadParameter(
            f"{dtype!r} is not one of auto, float32, bfloat16, float16", param_hint="--dtype"
        )
    try:
        path = merge_adapter(run, out, dtype=dtype)  # type: ignore[arg-type]
    except FileNotFoundError as err:
        typer.echo(f"vlmtune merge: {err}", err=True)
        raise typer.Exit(2) from err
    typer.echo(str(path))
