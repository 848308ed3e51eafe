"""An ASGI app of vlmtune on a real uvicorn server on 127.0.0.1, in a thread, for the tests that
talk HTTP to it (the serving tests, and every family's trained run)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn

from vlmtune.serving.server import bind_socket

__all__ = ["live_server"]


@contextmanager
def live_server(app: Any) -> Iterator[str]:
    """Serve ``app`` on a free port of 127.0.0.1 and yield its base URL; stop it on exit.

    The socket listens before the server thread starts, so a request made at once waits for
    the server rather than failing to connect."""
    sock = bind_socket("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()
