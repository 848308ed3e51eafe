"""``vlmtune compare``: eval runs of the same rows side by side (one page, one table).

Takes two or more eval folders (``vlmtune eval --out``) and writes compare.html (each
field metric per model with the best in bold, the training cost, the listings side by
side), compare.csv and compare.json. Runs evaluated on different rows are refused.
"""

from __future__ import annotations

import click

from vlmtune.evaluation.compare import CompareArgs

__all__ = ["CONFIG", "run"]

CONFIG = CompareArgs


def run(args: CompareArgs) -> None:
    from vlmtune.evaluation.compare import run_compare

    out = run_compare(args)
    click.echo(str(out / "compare.html"))
