"""``vlmtune serve-images``: serve a folder (e.g. a synthetic catalog) over HTTP on 127.0.0.1.

Use the printed URL as ``vlmtune synth --base-url`` so the catalog's imageurl
column points at it. Only files inside the folder are reachable; Ctrl-C stops it.
"""

from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass
from pathlib import Path

import click

from vlmtune.utils.config import flag
from vlmtune.utils.errors import UserError

__all__ = ["CONFIG", "ServeImagesArgs", "run"]


@dataclass
class ServeImagesArgs:
    """What ``vlmtune serve-images`` serves, and on which port."""

    folder: Path | None = flag(argument=True, default=None)
    """Folder to serve (its files become http://127.0.0.1:PORT/<path>)."""
    port: int = flag("--port", default=0)
    """Port to listen on on 127.0.0.1 (0: a free one)."""

    def __post_init__(self) -> None:
        if self.folder is None:
            raise ValueError("folder: give the folder to serve (vlmtune serve-images FOLDER)")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port: {self.port} is not between 0 and 65535")


CONFIG = ServeImagesArgs


def run(args: ServeImagesArgs) -> None:
    from vlmtune.data.synthetic import serve_directory

    if not Path(args.folder).is_dir():
        raise UserError(f"{str(args.folder)!r} is not a folder; give the folder to serve")
    with serve_directory(args.folder, port=args.port) as server:
        click.echo(f"serving {server.root} at {server.url} (Ctrl-C to stop)", err=True)
        click.echo(server.url)
        with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C is how it stops
            threading.Event().wait()
