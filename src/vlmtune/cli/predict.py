"""``vlmtune predict``: write a listing (title, category, price) for each product photo, as CSV.

The CSV has the columns image, title, category3_code, full_price, raw_text, error
(column names follow ``columns``). An unreadable image gets a row with its error;
the exit code is then 1 (0 when every image got a listing).
"""

from __future__ import annotations

import click

from vlmtune.evaluation.args import PredictArgs

__all__ = ["CONFIG", "run"]

CONFIG = PredictArgs


def run(args: PredictArgs) -> int:
    from vlmtune.evaluation.predict import run_predict

    result = run_predict(args)
    for row in result.failures:
        click.echo(f"vlmtune predict: {row['image']}: {row['error']}", err=True)
    done = len(result.rows) - len(result.failures)
    click.echo(
        f"vlmtune predict: {done} listing(s), {len(result.failures)} failure(s) -> {result.out}",
        err=True,
    )
    return 1 if result.failures else 0
