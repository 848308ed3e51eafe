"""``vlmtune serve`` as a user starts it, in a real subprocess: the start line, a request,
SIGTERM with a request in flight (it finishes; the process exits 0); through ``main()``
a busy port, a wrong model folder and a bad limit as one-line errors."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from serve_fixtures import COLORS, png_bytes

from vlmtune.cli.main import main

SRC = Path(__file__).resolve().parents[2] / "src"


def _vlmtune(*args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    env.pop("VLMTUNE_API_KEY", None)
    return subprocess.Popen(
        [sys.executable, "-m", "vlmtune.cli.main", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _line_with(proc: subprocess.Popen, words: str) -> str:
    """Read the server's stderr up to the first line containing ``words``."""
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if words in line:
            return line
    raise AssertionError(f"{words!r} never printed; stderr was:\n{''.join(seen)}")


def _multipart(data: bytes) -> tuple[bytes, bytes]:
    """(head, body) of a raw HTTP/1.1 POST /v1/listings uploading ``data``."""
    boundary = "vlmtuneboundary"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="images"; filename="p.png"\r\n'
            "Content-Type: image/png\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    head = (
        "POST /v1/listings HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    return head, body


@pytest.mark.slow
def test_start_line_request_and_sigterm_with_a_request_in_flight(loaded):
    proc = _vlmtune(
        "serve",
        str(loaded.path),
        "--port",
        "0",
        "--max-batch",
        "4",
        "--schema-from",
        str(loaded.data),
    )
    try:
        start = _line_with(proc, "serving")
        assert start.startswith(f"vlmtune serve: serving {loaded.path} on http://127.0.0.1:")
        assert "Ctrl-C to stop" in start and "constrained decoding" in start
        url = re.search(r"http://127\.0\.0\.1:\d+", start).group(0)
        port = int(url.rsplit(":", 1)[1])
        assert httpx.get(url + "/health", timeout=60).json()["model_loaded"] is True

        head, body = _multipart(png_bytes(COLORS[0]))
        flight = socket.create_connection(("127.0.0.1", port), timeout=60)
        flight.sendall(head + body[:100])  # the upload is half sent when the server is told to stop
        assert httpx.get(url + "/health", timeout=60).status_code == 200  # the server has read it
        proc.send_signal(signal.SIGTERM)
        assert "stopping on SIGTERM" in _line_with(proc, "stopping")
        flight.sendall(body[100:])
        response = b""
        while chunk := flight.recv(65536):
            response += chunk
        flight.close()
        status, _, payload = response.partition(b"\r\n\r\n")
        assert status.startswith(b"HTTP/1.1 200"), response
        assert json.loads(payload)["listings"][0]["raw_text"].startswith("Product:")
        assert proc.wait(60) == 0
        assert "stopped" in proc.stderr.read()
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_busy_port_and_wrong_model_are_one_line_errors(loaded, tmp_path, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        argv = ["serve", str(loaded.path), "--port", str(port), "--schema-from", str(loaded.data)]
        assert main(argv) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"vlmtune serve: port {port} on 127.0.0.1 is in use (another server?); stop it or choose --port"
    ]
    assert main(["serve", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith(
        f"vlmtune serve: MODEL {str(tmp_path)!r}"
    )
    assert main(["serve", str(loaded.path), "--max-images", "9", "--max-queue", "4"]) == 2
    assert "max_images: 9 exceeds max_queue 4" in capsys.readouterr().err
    assert main(["serve", str(loaded.path), "--model", str(tmp_path)]) == 2
    assert "model: given twice" in capsys.readouterr().err
    assert main(["serve"]) == 2
    assert "model: required" in capsys.readouterr().err
    # constrained by default: a model without its listing schema is refused before the port is taken
    assert main(["serve", str(loaded.path), "--port", "0"]) == 2
    assert "--schema-from DATA" in capsys.readouterr().err
