"""``vlmtune serve-images``: serve a folder (e.g. a synthetic catalog) over HTTP on 127.0.0.1."""

from __future__ import annotations

import time
from pathlib import Path

import typer

from vlmtune.data.synthetic import serve_directory

__all__ = ["command"]


def command(
    folder: Path = typer.Argument(
        ..., help="Folder to serve (its files become http://127.0.0.1:PORT/<path>)."
    ),
    port: int = typer.Option(0, "--port", help="Port to listen on (0 = a free one)."),
) -> None:
    """Serve a folder on 127.0.0.1 until interrupted (Ctrl-C), e.g. the images of `vlmtune synth`.

    Use the printed URL as `vlmtune synth --base-url` so the catalog's imageurl
    column points at it. Only files inside the folder are reachable.
    """
    if not folder.is_dir():
        raise typer.BadParameter(f"{str(folder)!r} is not a folder", param_hint="FOLDER")
    if not 0 <= port <= 65535:
        raise typer.BadParameter(
            f"port must be between 0 and 65535, got {port}", param_hint="--port"
        )
    with serve_directory(folder, port=port) as server:
        typer.echo(f"serving {server.root} at {server.url} (Ctrl-C to stop)", err=True)
        typer.echo(server.url)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
