"""``vlmtune serve``: the model as an HTTP API (listings, OpenAI chat completions) and a web page.

MODEL is a checkpoint, a PEFT adapter or a training run folder, as ``predict``
takes. The server listens on 127.0.0.1:8000 by default, batches requests that
arrive together (``--max-batch``, ``--max-wait-ms``), refuses what it cannot take
with a clear 4xx/5xx, and stops cleanly on Ctrl-C or SIGTERM (requests in flight
finish). Open http://127.0.0.1:8000/ for the page; ``/v1/listings``,
``/v1/chat/completions``, ``/health`` and ``/metrics`` are the API.
"""

from __future__ import annotations

import click

from vlmtune.serving.args import ServeArgs

__all__ = ["CONFIG", "run"]

CONFIG = ServeArgs


def run(args: ServeArgs) -> int:
    from vlmtune.serving.server import serve

    serve(args, announce=lambda line: click.echo(f"vlmtune serve: {line}", err=True))
    return 0
