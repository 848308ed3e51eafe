"""Run ``vlmtune serve``: check, bind, load, serve until Ctrl-C / SIGTERM, stop cleanly.

The order puts every cheap check before the expensive load: the device, the
model folder (``check_model``, as ``predict`` does), then the listening socket
(a busy port is a one-line :class:`~vlmtune.utils.errors.UserError`), then the
model. The socket is bound by us and handed to uvicorn, so the address printed
is the one that listens (``--port 0`` picks a free port).

Stopping: on SIGINT or SIGTERM uvicorn closes the listening socket, lets every
request in flight finish (each is bounded by the request deadline, and the wait
by ``timeout + 5`` seconds) and returns; then the batcher stops, failing whatever
is still queued with a 503. The verb then returns normally (exit 0).
"""

from __future__ import annotations

import contextlib
import errno
import signal
import socket
from collections.abc import Callable, Generator, Sequence
from typing import Any

import uvicorn
from PIL import Image

from vlmtune.data.download import DownloadPolicy, Fetcher
from vlmtune.data.prompts import PromptTemplate
from vlmtune.inference.generate import generate_listings
from vlmtune.inference.listing_schema import ListingSchema, resolve_schema
from vlmtune.inference.loading import check_model, load_model_and_processor
from vlmtune.serving.app import ServeState, create_app
from vlmtune.serving.args import ServeArgs
from vlmtune.serving.batcher import Batcher
from vlmtune.serving.metrics import ServeMetrics
from vlmtune.utils.devices import resolve_device, resolve_dtype
from vlmtune.utils.errors import UserError
from vlmtune.utils.seeding import seed_everything

__all__ = ["bind_socket", "build_state", "listing_generator", "run_server", "serve"]


def serve(args: ServeArgs, announce: Callable[[str], None] = print) -> None:
    """Serve ``args.model`` until stopped; ``announce`` prints the start and stop lines."""
    inference = args.inference
    device = resolve_device(inference.device)
    dtype = resolve_dtype(inference.dtype, device)
    location = check_model(args.model, "MODEL")
    schema = None
    if inference.generation.constrained:  # a missing schema is said before the port is taken
        schema = resolve_schema(location.model_dir, inference.schema_from, inference.prompt)
    sock = bind_socket(args.host, args.port)
    try:
        seed_everything(inference.seed)
        model, processor = load_model_and_processor(location, dtype=dtype, device=device)
        state = build_state(args, model, processor, str(args.model), schema)
        host, port = sock.getsockname()[:2]
        announce(
            f"serving {args.model} on http://{_url_host(host)}:{port} (page /, API /v1/listings "
            f"and /v1/chat/completions, max batch {args.max_batch}, "
            f"{'constrained' if schema is not None else 'unconstrained'} decoding); Ctrl-C to stop"
        )
        run_server(state, sock, announce)
    finally:
        sock.close()
    announce("stopped")


def build_state(
    args: ServeArgs,
    model: Any,
    processor: Any,
    model_name: str,
    schema: ListingSchema | None = None,
) -> ServeState:
    """The endpoints' shared state around a loaded model (the batcher is not started);
    ``schema``: the listing schema of constrained decoding (``inference.generation.constrained``)."""
    template = PromptTemplate(args.inference.prompt)
    run_batch = listing_generator(model, processor, template, args, schema)
    batcher = Batcher(
        run_batch, args.max_batch, args.max_wait_ms / 1000, args.max_queue, ServeMetrics()
    )
    fetcher = None
    if args.allow_remote_images:
        fetcher = Fetcher(
            DownloadPolicy(
                timeout=min(10.0, args.timeout), retries=1, max_bytes=args.max_upload_bytes
            )
        )
    return ServeState(batcher, processor, template, model_name, args, fetcher)


def listing_generator(
    model: Any,
    processor: Any,
    template: PromptTemplate,
    args: ServeArgs,
    schema: ListingSchema | None = None,
) -> Callable[[list[Image.Image]], list[str]]:
    """``images -> texts`` in one ``generate`` call, with the user's generation settings
    (``inference.generation``; its batch size is ``max_batch``), constrained by ``schema``."""
    generation = args.inference.generation
    model.eval()

    def run_batch(images: list[Image.Image]) -> list[str]:
        return generate_listings(model, processor, images, template, generation, schema)

    return run_batch


def run_server(
    state: ServeState, sock: socket.socket, announce: Callable[[str], None] = print
) -> None:
    """Serve the app on ``sock`` until SIGINT/SIGTERM (or ``should_exit``); then stop the batcher."""
    state.batcher.start()
    state.batcher.metrics.model_loaded = True
    config = uvicorn.Config(
        create_app(state),
        log_level="warning",
        access_log=False,
        lifespan="off",
        timeout_graceful_shutdown=int(state.args.timeout) + 5,
    )
    try:
        _Server(config, announce).run(sockets=[sock])
    finally:
        state.batcher.metrics.model_loaded = False
        state.batcher.close(timeout=state.args.timeout + 5)
        if state.fetcher is not None:
            state.fetcher.close()


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port``; a busy port or a foreign address is a UserError."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except (socket.gaierror, UnicodeError) as err:
        raise UserError(f"--host {host!r} is not an address of this machine ({err})") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(2048)
    except OSError as err:
        sock.close()
        if err.errno == errno.EADDRINUSE:
            raise UserError(
                f"port {port} on {host} is in use (another server?); stop it or choose --port"
            ) from None
        raise UserError(
            f"cannot listen on {host}:{port} ({err.strerror}); choose --host/--port"
        ) from None
    sock.set_inheritable(True)
    return sock


class _Server(uvicorn.Server):
    """uvicorn's server, whose SIGINT/SIGTERM handling ends :meth:`run` normally: uvicorn
    re-raises the signal after its graceful shutdown, which would kill the process."""

    def __init__(self, config: uvicorn.Config, announce: Callable[[str], None]) -> None:
        super().__init__(config)
        self._announce = announce

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        handled: Sequence[int] = (signal.SIGINT, signal.SIGTERM)
        try:
            previous = {sig: signal.signal(sig, self._on_signal) for sig in handled}
        except ValueError:  # not the main thread: the caller stops the server (should_exit)
            yield
            return
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _on_signal(self, sig: int, frame: Any) -> None:
        if not self.should_exit:
            self._announce(
                f"stopping on {signal.Signals(sig).name}: requests in flight finish, new ones are refused"
            )
        self.handle_exit(sig, frame)


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
