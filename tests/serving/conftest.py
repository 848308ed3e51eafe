"""Fixtures of the serving tests: the listing model loaded once per session, and ``serve``,
which starts real uvicorn servers on 127.0.0.1 in threads (see ``serve_fixtures``)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from serve_fixtures import GatedGenerate, Loaded, Running, eval_fixtures

from live_server import live_server
from vlmtune.inference.listing_schema import resolve_schema
from vlmtune.inference.loading import load_model_and_processor
from vlmtune.serving.app import create_app
from vlmtune.serving.args import ServeArgs
from vlmtune.serving.batcher import Batcher
from vlmtune.serving.server import build_state, listing_generator


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
    with contextlib.ExitStack() as stack:

        def start(deadline: threading.Event | None = None, **fields: Any) -> Running:
            args = ServeArgs(model=loaded.path, **{"port": 0, **fields})
            schema = loaded.schema if args.inference.generation.constrained else None
            state = build_state(args, loaded.model, loaded.processor, "listing-model", schema)
            if deadline is not None:
                state.deadline = functools.partial(_until_set, deadline)
            gated = GatedGenerate(
                listing_generator(loaded.model, loaded.processor, state.template, args, schema)
            )
            state.batcher = Batcher(
                gated,
                args.max_batch,
                args.max_wait_ms / 1000,
                args.max_queue,
                state.batcher.metrics,
            ).start()
            # on exit, last first: let every held request go, stop the server, then the batcher
            stack.callback(state.batcher.close, 10)
            url = stack.enter_context(live_server(create_app(state)))
            stack.callback(gated.go.set)
            if deadline is not None:
                stack.callback(deadline.set)
            return Running(url, state, gated)

        yield start


async def _until_set(event: threading.Event) -> None:
    """A request's deadline that comes when the test sets ``event``."""
    while not event.is_set():
        await asyncio.sleep(0.01)
