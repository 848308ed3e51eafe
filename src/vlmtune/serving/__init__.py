"""Serving a model over HTTP: ``vlmtune serve``'s API, dynamic batcher and web page.

- ``args``: ``ServeArgs`` (the verb's configuration: model, address, batching, limits);
- ``batcher``: one generation worker thread fed by a bounded queue; requests that
  arrive within ``max_wait_ms`` are generated together, up to ``max_batch`` images;
- ``inputs``: request bytes, base64 and data URLs (and, when allowed, remote URLs
  through ``prepare``'s downloader) to checked images, each refusal with its status;
- ``metrics``: the Prometheus text of ``GET /metrics``;
- ``app``: the FastAPI application (``/v1/listings``, ``/v1/chat/completions``,
  ``/health``, ``/metrics`` and the page ``/``);
- ``server``: the socket, the model, uvicorn and a clean stop on Ctrl-C / SIGTERM;
- ``page/``: the web page (plain HTML, CSS and JS shipped as package data).

Imports ``inference``, ``data``, ``models`` and ``utils``; never ``training``,
``evaluation`` or ``cli``.
"""
