"""``vlmtune plan``: estimate the peak GPU memory of a training run and which modes and batch sizes fit.

Given a model folder or a preset (phi3v-128k, phi3.5v), a mode, num_crops, batch
size, sequence length, gradient checkpointing, attention, GPUs and ZeRO stage, it
prints the estimated peak memory per device (weights, gradients, optimizer states,
activations, logits, overhead) and a table of what fits --gpu-memory. Nothing is
loaded or allocated; the formulas are checked against measured peaks in the tests.
"""

from __future__ import annotations

import click

from vlmtune.training.plan import PlanArgs

__all__ = ["CONFIG", "run"]

CONFIG = PlanArgs


def run(args: PlanArgs) -> None:
    from vlmtune.training.plan import plan, render_plan

    click.echo(render_plan(plan(args)))
