"""``vlmtune merge``: fold a LoRA run's adapter into its base model, as a standalone checkpoint.

The result (weights, tokenizer, preprocessor, generation config) is a folder in the
model family's own layout: it loads with the family's ``from_pretrained``, with
``vlmtune eval``/``predict``/``serve`` and in other runtimes (vLLM), without peft.
The output folder is built beside its target and swapped into place; the run, its
adapter and its base model are never written.
"""

from __future__ import annotations

import click

from vlmtune.training.merge import MergeArgs

__all__ = ["CONFIG", "run"]

CONFIG = MergeArgs


def run(args: MergeArgs) -> None:
    from vlmtune.training.merge import merge

    result = merge(args)
    click.echo(str(result.path))
    if result.missing_for_vllm:
        click.echo(
            "vLLM needs the model's own remote-code files, which its base folder did not have: "
            f"{', '.join(result.missing_for_vllm)}; copy them from the hub checkpoint into "
            f"{result.path} to serve it with vLLM",
            err=True,
        )
    click.echo(f"serve it with vLLM: {result.vllm_command}", err=True)
