"""What the server refuses, each with its status and reason, and the server answering afterwards;
dynamic batching proven with a gated worker (no sleeps); the queue bound and the deadline."""

from __future__ import annotations

import base64
import io
import socket
import struct
import threading
import zlib
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from PIL import Image
from serve_fixtures import COLORS, png_bytes


def _bomb_png(width: int = 100_000, height: int = 100_000) -> bytes:
    """A PNG whose header declares width x height pixels (10 G) over a few bytes of data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


def _truncated_jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (112, 140), (1, 2, 3)).save(buffer, format="JPEG")
    return buffer.getvalue()[:300]


def _upload(data: bytes, name: str = "x.png") -> dict:
    return {"files": [("images", (name, data, "application/octet-stream"))]}


def _data_url(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


def _chat(url: str) -> dict:
    content = [{"type": "image_url", "image_url": {"url": url}}]
    return {"json": {"model": "m", "messages": [{"role": "user", "content": content}]}}


PNG = png_bytes(COLORS[0])
# (name, path, request kwargs, status, words of the reason)
BAD_INPUTS = [
    ("text file", "/v1/listings", _upload(b"just some text, not a photo", "a.txt"), 415, "not an image"),
    ("html page", "/v1/listings", _upload(b"<!doctype html><html><body>hi</body></html>"), 415, "html"),
    ("empty file", "/v1/listings", _upload(b""), 415, "empty"),
    ("pdf", "/v1/listings", _upload(b"%PDF-1.4\n%...\n" + b"0" * 200), 415, "image"),
    ("decompression bomb", "/v1/listings", _upload(_bomb_png()), 400, "decompression bomb"),
    ("truncated jpeg", "/v1/listings", _upload(_truncated_jpeg()), 400, "image"),
    ("elongated strip", "/v1/listings", _upload(png_bytes((9, 9, 9), (4000, 3))), 400, "cannot take"),
    ("too many images", "/v1/listings", {"files": [("images", ("a.png", PNG, "image/png"))] * 5}, 413, "at most 4"),
    ("body over the cap", "/v1/listings", _upload(b"\0" * 600_000), 413, "upload limit"),
    ("no image", "/v1/listings", {"json": {"images": []}}, 400, "no image"),
    ("bad base64", "/v1/listings", {"json": {"images": ["@@@not base64@@@"]}}, 400, "base64"),
    ("bad json", "/v1/listings", {"content": b"{", "headers": {"content-type": "application/json"}}, 400, "JSON"),
    ("wrong content type", "/v1/listings", {"content": PNG, "headers": {"content-type": "image/png"}}, 415, "multipart"),
    ("chat remote url", "/v1/chat/completions", _chat("https://example.com/a.jpg"), 400, "--allow-remote-images"),
    ("chat file url", "/v1/chat/completions", _chat("file:///etc/passwd"), 400, "only data: URLs"),
    ("chat two images", "/v1/chat/completions", {"json": {"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": _data_url(PNG)}}] * 2}]}}, 413, "exactly one"),
    ("chat no image", "/v1/chat/completions", {"json": {"messages": [{"role": "user", "content": "hi"}]}}, 400, "exactly one"),
    ("chat stream", "/v1/chat/completions", {"json": {"stream": True, **_chat(_data_url(PNG))["json"]}}, 400, "stream"),
    ("chat text as image", "/v1/chat/completions", _chat("data:image/png;base64," + base64.b64encode(b"hello").decode()), 415, "not an image"),
]  # fmt: skip


@pytest.mark.slow
def test_bad_inputs_get_their_status_and_the_server_keeps_serving(serve):
    server = serve(max_images=4, max_upload_mb=0.5)
    with httpx.Client(base_url=server.url, timeout=60) as client:
        for name, path, kwargs, status, words in BAD_INPUTS:
            response = client.post(path, **kwargs)
            assert response.status_code == status, (name, response.text)
            message = response.json()["error"]["message"]
            assert words.lower() in message.lower(), (name, message)
            assert client.get("/health").json()["status"] == "ok", name
        good = client.post("/v1/listings", files=[("images", ("a.png", PNG, "image/png"))])
        assert good.status_code == 200 and good.json()["listings"][0]["parsed"]
    assert server.generate.calls == [1]  # no refused image reached the model


@pytest.mark.slow
def test_a_streamed_body_over_the_cap_is_413(serve):
    server = serve(max_upload_mb=0.1)

    def chunks():
        # a well-formed file part whose data goes on past the cap: the form parser keeps reading
        # (a malformed body could be refused as 400 before the cap, depending on how it arrives)
        yield b'--x\r\nContent-Disposition: form-data; name="images"; filename="p.png"\r\n'
        yield b"Content-Type: image/png\r\n\r\n"
        for _ in range(50):
            yield b"\0" * 10_000

    with httpx.Client(base_url=server.url, timeout=60) as client:
        response = client.post(
            "/v1/listings",
            content=chunks(),
            headers={"content-type": "multipart/form-data; boundary=x"},
        )
        assert response.status_code == 413
        assert client.get("/health").status_code == 200


@pytest.mark.slow
def test_concurrent_requests_are_batched_with_the_same_texts(serve):
    images = [png_bytes(c) for c in COLORS]
    alone = serve(max_batch=8)
    with httpx.Client(base_url=alone.url, timeout=60) as client:
        one_by_one = [
            client.post("/v1/listings", files=[("images", ("p.png", im, "image/png"))]).json()
            for im in images
        ]
    assert alone.generate.calls == [1, 1, 1, 1, 1]

    server = serve(max_batch=8, max_wait_ms=0)
    server.generate.gated = True
    with (
        ThreadPoolExecutor(len(images)) as pool,
        httpx.Client(base_url=server.url, timeout=60) as client,
    ):

        def post(im):
            return client.post("/v1/listings", files=[("images", ("p.png", im, "image/png"))])

        first = pool.submit(post, images[0])
        assert server.generate.entered.wait(60)  # the worker holds the first image's batch
        rest = [pool.submit(post, im) for im in images[1:]]
        assert server.state.batcher.wait_for_depth(len(rest), 60)
        server.generate.go.set()
        answers = [f.result().json() for f in [first, *rest]]
    assert server.generate.calls == [1, 4]
    assert [a["listings"][0]["raw_text"] for a in answers] == [
        a["listings"][0]["raw_text"] for a in one_by_one
    ]
    assert [a["listings"][0]["timing"]["batch_size"] for a in answers] == [1, 4, 4, 4, 4]


@pytest.mark.slow
def test_a_full_queue_is_503_with_retry_after_and_a_late_request_504(serve):
    deadline = threading.Event()
    server = serve(max_queue=2, max_images=2, timeout=2.5, deadline=deadline)
    server.generate.gated = True
    one = [("images", ("p.png", PNG, "image/png"))]
    with ThreadPoolExecutor(3) as pool, httpx.Client(base_url=server.url, timeout=60) as client:
        held = pool.submit(client.post, "/v1/listings", files=one)
        assert server.generate.entered.wait(60)
        queued = [pool.submit(client.post, "/v1/listings", files=one) for _ in range(2)]
        assert server.state.batcher.wait_for_depth(2, 60)
        busy = client.post("/v1/listings", files=one)
        assert busy.status_code == 503 and busy.headers["retry-after"] == "1"
        assert "server busy" in busy.json()["error"]["message"]
        deadline.set()  # the held and queued requests pass their deadline while the worker is held
        for future in [held, *queued]:
            late = future.result()
            assert late.status_code == 504 and "deadline" in late.json()["error"]["message"]
        assert server.state.batcher.depth == 0  # the timed-out images left the queue
        deadline.clear()  # the next request has its time
        server.generate.go.set()
        assert server.generate.finished.wait(60)  # the held batch is done: the worker is free
        assert client.get("/health").json()["queue_depth"] == 0
        again = client.post("/v1/listings", files=one)
        assert again.status_code == 200
    assert server.generate.calls == [1, 1]  # the queued, timed-out images were never generated
    metrics = httpx.get(server.url + "/metrics").text
    assert 'endpoint="/v1/listings",status="503"} 1' in metrics
    assert 'endpoint="/v1/listings",status="504"} 3' in metrics


class _Images(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802
        body = PNG if self.path == "/photo.png" else b"nope"
        self.send_response(200 if self.path == "/photo.png" else 404)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.mark.slow
def test_remote_images_only_when_allowed_and_through_the_url_policy(serve):
    http = ThreadingHTTPServer(("127.0.0.1", 0), _Images)
    threading.Thread(target=http.serve_forever, daemon=True).start()
    photo = f"http://127.0.0.1:{http.server_address[1]}/photo.png"
    try:
        closed = serve()
        refused = httpx.post(closed.url + "/v1/chat/completions", **_chat(photo), timeout=60)
        assert refused.status_code == 400 and "--allow-remote-images" in refused.text
        opened = serve(allow_remote_images=True)
        with httpx.Client(base_url=opened.url, timeout=60) as client:
            answer = client.post("/v1/chat/completions", **_chat(photo))
            assert answer.status_code == 200, answer.text
            assert answer.json()["choices"][0]["message"]["content"].startswith("Product:")
            missing = client.post("/v1/chat/completions", **_chat(photo.replace("photo", "gone")))
            assert missing.status_code == 400 and "http 404" in missing.text
            metadata = client.post(
                "/v1/chat/completions", **_chat("http://169.254.169.254/latest/")
            )
            assert metadata.status_code == 400 and "forbidden address" in metadata.text
    finally:
        http.shutdown()


@pytest.mark.slow
def test_a_slow_client_does_not_block_others_and_meets_the_deadline(serve):
    deadline = threading.Event()
    server = serve(timeout=5, deadline=deadline)
    port = int(server.url.rsplit(":", 1)[1])
    body = b"--b\r\nContent-Disposition: form-data; name=images; filename=p.png\r\n\r\n" + PNG
    head = (
        "POST /v1/listings HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        "Content-Type: multipart/form-data; boundary=b\r\n"
        f"Content-Length: {len(body) + 100}\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=60) as slow:
        slow.sendall(head + body[:50])  # and nothing more: an upload that stalls
        other = httpx.post(
            server.url + "/v1/listings", files=[("images", ("a.png", PNG, "image/png"))], timeout=60
        )
        assert other.status_code == 200 and other.json()["listings"][0]["parsed"]
        deadline.set()  # the stalled upload's time is up
        answer = _response(slow)
    assert answer.startswith(b"HTTP/1.1 504"), answer
    assert b"deadline" in answer


def _response(sock: socket.socket) -> bytes:
    """One whole HTTP response (headers and the Content-Length bytes of its body)."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(next(
        line.split(b":", 1)[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")
    ))  # fmt: skip
    while len(body) < length:
        body += sock.recv(65536)
    return head + b"\r\n\r\n" + body


@pytest.mark.slow
def test_a_failed_generation_is_500_and_the_next_request_is_served(serve):
    server = serve()
    one = [("images", ("p.png", PNG, "image/png"))]
    with httpx.Client(base_url=server.url, timeout=60) as client:
        server.generate.fail_next = True
        failed = client.post("/v1/listings", files=one)
        assert failed.status_code == 500
        assert failed.json()["error"]["message"] == (
            "generation failed: RuntimeError: out of memory (a test's failure)"
        )
        assert client.post("/v1/listings", files=one).status_code == 200


@pytest.mark.slow
def test_without_an_injected_deadline_the_timeout_is_the_servers_clock(serve):
    """The default deadline is ``--timeout`` seconds: a request that cannot finish (the worker
    is held until its answer has come) gets 504 naming it."""
    server = serve(timeout=0.5)
    server.generate.gated = True
    one = [("images", ("p.png", PNG, "image/png"))]
    with httpx.Client(base_url=server.url, timeout=60) as client:
        late = client.post("/v1/listings", files=one)
        assert late.status_code == 504, late.text
        assert "server's 0.5 s deadline" in late.json()["error"]["message"]
        server.generate.go.set()  # (the request may have timed out before it reached the worker)
        assert client.post("/v1/listings", files=one).status_code == 200
