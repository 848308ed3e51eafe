"""``serve_directory``: serve a folder over HTTP on 127.0.0.1 (a free port) for demos and tests.

A quiet :class:`http.server.ThreadingHTTPServer` in a background thread. Only
files below the folder are reachable (the standard handler resolves ``..`` and
drops it); directory listings are refused, so a missing file is always a 404.
A folder that is missing or a port that is taken is a :class:`ServeError` (a
:class:`~vlmtune.utils.errors.UserError`) naming the fix.
"""

from __future__ import annotations

import errno
import functools
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from vlmtune.utils.errors import UserError

__all__ = ["ImageServer", "ServeError", "serve_directory"]


class ServeError(UserError):
    """The folder cannot be served (missing, or the port is taken); the message says what to do."""


class _QuietHandler(SimpleHTTPRequestHandler):
    """Static files only: no request log on stderr, no directory listings."""

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - signature of the base class
        pass

    def list_directory(self, path):
        self.send_error(404, "Not Found")
        return None


@dataclass(frozen=True)
class ImageServer:
    """A running server: ``url`` ends with ``/``; ``root`` is the folder served."""

    url: str
    root: Path
    port: int


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # prepare opens 16 or more connections at once; socketserver's default listen backlog
    # of 5 drops the other SYNs, which the kernel resends only after a second
    request_queue_size = 128


@contextmanager
def serve_directory(
    folder: str | Path, host: str = "127.0.0.1", port: int = 0
) -> Iterator[ImageServer]:
    """Serve ``folder`` at ``http://127.0.0.1:PORT/`` until the ``with`` block ends (port 0 = a free one)."""
    root = Path(folder).resolve()
    if not root.is_dir():
        raise ServeError(
            f"cannot serve {str(folder)!r}: it is not a folder; give an existing folder"
        )
    handler = functools.partial(_QuietHandler, directory=str(root))
    try:
        server = _Server((host, port), handler)
    except OSError as err:
        if err.errno not in (errno.EADDRINUSE, errno.EACCES):
            raise
        why = "is already in use" if err.errno == errno.EADDRINUSE else "may not be used by you"
        raise ServeError(
            f"port {port} on {host} {why}; choose another --port, or --port 0 for a free one"
        ) from err
    thread = threading.Thread(target=server.serve_forever, name="vlmtune-serve", daemon=True)
    thread.start()
    try:
        bound = server.server_address[1]
        yield ImageServer(url=f"http://{host}:{bound}/", root=root, port=bound)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
