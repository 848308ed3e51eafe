"""A real HTTP server on 127.0.0.1 that serves images and injects faults (tests and bench only).

``FaultServer`` maps URL paths to *behaviours*: small functions called with the
request handler and how many times that path was requested before. The
behaviours below cover the fault matrix of ``vlmtune prepare``: status codes,
status sequences (500 then 200), Retry-After, slow responses, truncated bodies,
redirects, connection resets and oversized bodies. Every request is logged
so that tests can assert which URLs were fetched and how often.

Nothing here races the test: a response that must come late (a timeout, a run
to interrupt) is *held* (:meth:`FaultServer.held`) until the test sets
``server.go``, and the test waits for the server to reach a state
(:meth:`FaultServer.wait_until`) instead of sleeping.
"""

from __future__ import annotations

import io
import socket
import struct
import threading
import time
import zlib
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from PIL import Image

Behaviour = Callable[[BaseHTTPRequestHandler, int], None]

__all__ = [
    "FaultServer",
    "bomb_png",
    "endless_body",
    "html_page",
    "jpeg_bytes",
    "ok",
    "png_bytes",
    "redirect",
    "reset",
    "sequence",
    "status",
    "too_many_bytes",
    "truncated_body",
]


# --------------------------------------------------------------------------- payloads


def jpeg_bytes(
    color: tuple[int, int, int] = (200, 30, 30), size: tuple[int, int] = (32, 24)
) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def png_bytes(
    mode: str = "RGBA", size: tuple[int, int] = (20, 16), color: object = (0, 0, 255, 0)
) -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def bomb_png(width: int = 100_000, height: int = 100_000) -> bytes:
    """A tiny PNG whose header claims ``width x height`` pixels (a decompression bomb's header)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


def html_page() -> bytes:
    return (
        b"<!DOCTYPE html>\n<html><head><title>Access denied</title></head><body>No.</body></html>"
    )


# --------------------------------------------------------------------------- behaviours


def ok(body: bytes, content_type: str = "image/jpeg") -> Behaviour:
    def behave(handler: BaseHTTPRequestHandler, _n: int) -> None:
        _send(handler, 200, body, {"Content-Type": content_type})

    return behave


def status(code: int, body: bytes = b"error", headers: dict[str, str] | None = None) -> Behaviour:
    def behave(handler: BaseHTTPRequestHandler, _n: int) -> None:
        _send(handler, code, body, {"Content-Type": "text/plain", **(headers or {})})

    return behave


def sequence(*behaviours: Behaviour) -> Behaviour:
    """The n-th request gets ``behaviours[n]`` (the last one repeats)."""

    def behave(handler: BaseHTTPRequestHandler, n: int) -> None:
        behaviours[min(n, len(behaviours) - 1)](handler, n)

    return behave


def truncated_body(body: bytes, declared: int) -> Behaviour:
    """Declare ``declared`` bytes, send ``body`` (shorter), close the connection."""

    def behave(handler: BaseHTTPRequestHandler, _n: int) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", "image/jpeg")
        handler.send_header("Content-Length", str(declared))
        handler.end_headers()
        handler.wfile.write(body)
        handler.wfile.flush()
        handler.close_connection = True

    return behave


def redirect(location: str, code: int = 302) -> Behaviour:
    def behave(handler: BaseHTTPRequestHandler, _n: int) -> None:
        _send(handler, code, b"", {"Location": location})

    return behave


def reset() -> Behaviour:
    """Close the connection with a TCP RST before any response byte."""

    def behave(handler: BaseHTTPRequestHandler, _n: int) -> None:
        handler.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        handler.connection.close()
        handler.close_connection = True

    return behave


def too_many_bytes(size: int, declare: bool = True) -> Behaviour:
    """Send ``size`` bytes, with a Content-Length or (``declare=False``) delimited by closing."""

    def behave(handler: BaseHTTPRequestHandler, _n: int) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", "image/jpeg")
        if declare:
            handler.send_header("Content-Length", str(size))
        handler.end_headers()
        handler.close_connection = True
        block = b"\xff" * 65536
        sent = 0
        while sent < size:
            handler.wfile.write(block[: size - sent])
            sent += len(block)

    return behave


def endless_body(chunk: bytes, declared: int) -> Behaviour:
    """Declare ``declared`` bytes and send ``chunk`` after ``chunk`` until the client hangs up."""

    def behave(handler: BaseHTTPRequestHandler, _n: int) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", "image/jpeg")
        handler.send_header("Content-Length", str(declared))
        handler.end_headers()
        handler.close_connection = True
        for _ in range(declared // max(len(chunk), 1)):
            handler.wfile.write(chunk)
            handler.wfile.flush()

    return behave


def _send(handler: BaseHTTPRequestHandler, code: int, body: bytes, headers: dict[str, str]) -> None:
    handler.send_response(code)
    for key, value in headers.items():
        handler.send_header(key, value)
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


# --------------------------------------------------------------------------- server


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True
    # prepare opens 16+ connections at once; socketserver's default listen backlog of 5
    # drops the others' SYNs, which the kernel resends after 1 s: a spurious timeout
    request_queue_size = 128

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # resets and aborted clients are part of the tests


class FaultServer:
    """``with FaultServer() as server: url = server.add("/a.jpg", ok(jpeg_bytes()))``.

    ``latency`` seconds are slept before every response (the benchmark's
    50 ms, never used by the tests). ``log`` holds ``(path, monotonic time)`` per request;
    ``max_inflight`` the largest number of requests handled at once. Responses
    made with :meth:`held` wait until ``go`` is set (it is set on exit).
    """

    def __init__(self, latency: float = 0.0) -> None:
        self.latency = latency
        self.routes: dict[str, Behaviour] = {}
        self.log: list[tuple[str, float]] = []
        self.max_inflight = 0
        self.go = threading.Event()
        self._inflight = 0
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._server = _QuietServer(("127.0.0.1", 0), self._handler_class())
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def url(self, path: str) -> str:
        return self.base_url + path

    def add(self, path: str, behaviour: Behaviour) -> str:
        """Serve ``behaviour`` at ``path``; return its full URL."""
        self.routes[path] = behaviour
        return self.url(path)

    def count(self, path: str) -> int:
        with self._lock:
            return sum(1 for p, _ in self.log if p == path)

    def paths(self) -> list[str]:
        with self._lock:
            return [p for p, _ in self.log]

    def clear_log(self) -> None:
        with self._lock:
            self.log.clear()

    def held(self, then: Behaviour) -> Behaviour:
        """``then``, once the test has set ``go`` (a response that cannot come early)."""

        def behave(handler: BaseHTTPRequestHandler, n: int) -> None:
            self.go.wait(timeout=300)  # bounded: a failing test must not hang the server forever
            then(handler, n)

        return behave

    def wait_until(
        self, predicate: Callable[[list[str], int], bool], timeout: float = 120.0
    ) -> None:
        """Block until ``predicate(paths requested, requests in flight)`` holds; fail after ``timeout``."""
        with self._changed:
            reached = self._changed.wait_for(
                lambda: predicate([p for p, _ in self.log], self._inflight), timeout
            )
        assert reached, f"the server never reached the state the test waits for ({self.log})"

    def __enter__(self) -> FaultServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.go.set()
        self._server.shutdown()
        self._server.server_close()

    def _record(self, path: str) -> int:
        with self._changed:
            before = sum(1 for p, _ in self.log if p == path)
            self.log.append((path, time.monotonic()))
            self._inflight += 1
            self.max_inflight = max(self.max_inflight, self._inflight)
            self._changed.notify_all()
        return before

    def _done(self) -> None:
        with self._changed:
            self._inflight -= 1
            self._changed.notify_all()

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # else headers and body wait on delayed ACKs (40 ms)

            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                n = server._record(path)
                try:
                    if server.latency:
                        time.sleep(server.latency)
                    behaviour = server.routes.get(path, status(404, b"not found"))
                    behaviour(self, n)
                except OSError:  # the client went away (size limit, timeout): expected
                    self.close_connection = True
                finally:
                    server._done()

            def log_message(self, *args: object) -> None:
                pass

        return Handler
