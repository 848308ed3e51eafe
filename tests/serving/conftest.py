"""Fixtures of the serving tests: the listing model loaded once per session, and ``serve``,
which starts real uvicorn servers on 127.0.0.1 in threads (see ``serve_fixtures``)."""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import uvicorn
from serve_fixtures import GatedGenerate, Loaded, Running, eval_fixtures

from vlmtune.inference.listing_schema import resolve_schema
from vlmtune.inference.loading import load_model_and_processor
from vlmtune.serving.app import create_app
from vlmtune.serving.args import ServeArgs
from vlmtune.serving.batcher import Batcher
from vlmtune.serving.server import bind_socket, build_state, listing_generator


@pytest.fixture(scope="session")
def loaded(tmp_path_factory: pytest.TempPathFactory) -> Loaded:
    inputs = eval_fixtures().shared_eval_inputs(tmp_path_factory)
    model, processor = load_model_and_processor(inputs.listing_model, device="cpu")
    schema = resolve_schema(inputs.listing_model, inputs.data)
    return Loaded(inputs.listing_model, model, processor, inputs.data, schema)


@pytest.fixture
def serve(loaded: Loaded) -> Iterator[Callable[..., Running]]:
    """``serve(**ServeArgs fields) -> Running``: a real server on 127.0.0.1 in a thread.

    ``deadline=EVENT``: every request's deadline comes when the test sets ``EVENT`` (not after
    ``timeout`` seconds), so that what times out does not depend on the machine's speed."""
    started: list[tuple[Running, threading.Thread]] = []
    deadlines: list[threading.Event] = []

    def start(deadline: threading.Event | None = None, **fields: Any) -> Running:
        args = ServeArgs(model=loaded.path, **{"port": 0, **fields})
        schema = loaded.schema if args.inference.generation.constrained else None
        state = build_state(args, loaded.model, loaded.processor, "listing-model", schema)
        if deadline is not None:
            state.deadline = functools.partial(_until_set, deadline)
            deadlines.append(deadline)
        gated = GatedGenerate(
            listing_generator(loaded.model, loaded.processor, state.template, args, schema)
        )
        state.batcher = Batcher(
            gated, args.max_batch, args.max_wait_ms / 1000, args.max_queue, state.batcher.metrics
        ).start()
        sock = bind_socket("127.0.0.1", 0)
        config = uvicorn.Config(create_app(state), log_level="warning", lifespan="off")
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        running = Running(f"http://127.0.0.1:{sock.getsockname()[1]}", state, gated, server)
        started.append((running, thread))
        return running

    yield start
    for event in deadlines:
        event.set()
    for running, thread in started:
        running.generate.go.set()
        running.server.should_exit = True
        thread.join(30)
        running.state.batcher.close(10)


async def _until_set(event: threading.Event) -> None:
    """A request's deadline that comes when the test sets ``event``."""
    while not event.is_set():
        await asyncio.sleep(0.01)
