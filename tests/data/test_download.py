"""The HTTP fetcher against a real server on 127.0.0.1: retries, backoff, caps, limits, schemes."""

from __future__ import annotations

import email.utils
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from fault_server import (
    FaultServer,
    dribble,
    jpeg_bytes,
    ok,
    redirect,
    reset,
    sequence,
    slow,
    status,
    too_many_bytes,
    truncated_body,
)

from vlmtune.data.download import DownloadPolicy, Fetcher, check_url, parse_retry_after

FAST = {"timeout": 0.5, "retries": 2, "backoff": 0.02, "max_backoff": 0.2, "max_retry_after": 2.0}


@pytest.fixture
def server():
    with FaultServer() as srv:
        yield srv


def _fetcher(**overrides) -> Fetcher:
    return Fetcher(DownloadPolicy(**{**FAST, **overrides}))


@pytest.mark.parametrize(
    "url",
    ["file:///etc/passwd", "ftp://example.com/a.jpg", "data:image/png;base64,iVBORw0KGgo=",
     "javascript:alert(1)", "gopher://x/1", "images/a.jpg", "//host/a.jpg"],
)  # fmt: skip
def test_check_url_refuses_non_http_schemes(url):
    assert check_url(url).startswith("unsupported scheme:")


@pytest.mark.parametrize("url", ["http://", "https:///a.jpg", "http://host:99999/a.jpg"])
def test_check_url_refuses_malformed_urls(url):
    assert check_url(url).startswith("bad url:")


def test_check_url_accepts_http_and_https():
    assert check_url("http://127.0.0.1:8/a.jpg") is None
    assert check_url("HTTPS://Example.com/a.jpg?x=1") is None


def test_non_http_scheme_makes_no_request(server):
    with _fetcher() as fetcher:
        result = fetcher.fetch("file:///etc/passwd")
    assert not result.ok and result.reason.startswith("unsupported scheme:")
    assert result.attempts == 0 and fetcher.requests_made == 0


def test_parse_retry_after_seconds_and_http_date():
    assert parse_retry_after("7") == 7.0
    now = time.time()
    date = email.utils.formatdate(now + 30, usegmt=True)
    assert 28 <= parse_retry_after(date, now=now) <= 31
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None


def test_good_image_is_fetched_with_its_bytes(server):
    body = jpeg_bytes()
    url = server.add("/a.jpg", ok(body))
    with _fetcher() as fetcher:
        result = fetcher.fetch(url)
    assert result.ok and result.data == body and result.status == 200
    assert result.content_type == "image/jpeg" and result.attempts == 1


@pytest.mark.parametrize("code", [400, 401, 403, 404, 410])
def test_client_errors_are_not_retried(server, code):
    url = server.add("/x.jpg", status(code))
    with _fetcher(retries=3) as fetcher:
        result = fetcher.fetch(url)
    assert result.reason.startswith(f"http {code}:")
    assert server.count("/x.jpg") == 1


@pytest.mark.parametrize("code", [500, 501, 503, 507, 520, 522, 408, 429])
def test_server_errors_timeouts_and_throttling_are_retried_then_reported(server, code):
    url = server.add("/x.jpg", status(code))
    with _fetcher(retries=2) as fetcher:
        result = fetcher.fetch(url)
    assert result.reason.startswith(f"http {code}:") and "after 3 attempts" in result.reason
    assert server.count("/x.jpg") == 3


@pytest.mark.parametrize("code", [520, 408])
def test_cdn_error_or_request_timeout_then_200_succeeds(server, code):
    body = jpeg_bytes()
    url = server.add("/x.jpg", sequence(status(code), ok(body)))
    with _fetcher() as fetcher:
        result = fetcher.fetch(url)
    assert result.ok and result.data == body and server.count("/x.jpg") == 2


def test_500_then_200_succeeds(server):
    body = jpeg_bytes()
    url = server.add("/x.jpg", sequence(status(500), ok(body)))
    with _fetcher() as fetcher:
        result = fetcher.fetch(url)
    assert result.ok and result.data == body and server.count("/x.jpg") == 2


def test_backoff_grows_exponentially(server):
    url = server.add("/x.jpg", status(500))
    with _fetcher(retries=3, backoff=0.1, max_backoff=10) as fetcher:
        fetcher.fetch(url)
    times = server.times("/x.jpg")
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    assert len(gaps) == 3
    # jitter in [0.5, 1.5): 0.05..0.15, 0.1..0.3, 0.2..0.6 (+ request time)
    assert 0.04 <= gaps[0] < 0.3 and gaps[2] >= 0.19 and gaps[2] > gaps[0]


def test_retry_after_is_honoured(server):
    body = jpeg_bytes()
    url = server.add("/x.jpg", sequence(status(429, headers={"Retry-After": "1"}), ok(body)))
    with _fetcher(backoff=0.01) as fetcher:
        result = fetcher.fetch(url)
    first, second = server.times("/x.jpg")
    assert result.ok and second - first >= 0.95


def test_retry_after_is_capped(server):
    url = server.add("/x.jpg", status(429, headers={"Retry-After": "3600"}))
    started = time.monotonic()
    with _fetcher(retries=1, max_retry_after=0.2) as fetcher:
        result = fetcher.fetch(url)
    assert time.monotonic() - started < 2.0
    assert result.reason.startswith("http 429:") and server.count("/x.jpg") == 2


def test_slow_response_times_out_after_retries(server):
    url = server.add("/x.jpg", slow(1.5, ok(jpeg_bytes())))
    with _fetcher(timeout=0.3, retries=1) as fetcher:
        result = fetcher.fetch(url)
    assert result.reason.startswith("timeout:") and result.attempts == 2


def test_body_dribbling_past_the_overall_deadline_times_out(server):
    url = server.add("/x.jpg", dribble(b"\xff" * 10, interval=0.05, count=200))
    started = time.monotonic()
    with _fetcher(timeout=0.1, retries=0) as fetcher:
        result = fetcher.fetch(url)
    assert (
        result.reason.startswith("timeout: body still arriving") and time.monotonic() - started < 3
    )


def test_connection_reset_is_a_connection_error(server):
    url = server.add("/x.jpg", reset())
    with _fetcher(retries=1) as fetcher:
        result = fetcher.fetch(url)
    assert result.reason.startswith("connection error:") and server.count("/x.jpg") == 2


def test_connection_refused_is_a_connection_error():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with _fetcher(retries=0) as fetcher:
        result = fetcher.fetch(f"http://127.0.0.1:{port}/x.jpg")
    assert result.reason.startswith("connection error:")


def test_truncated_body_is_detected(server):
    url = server.add("/x.jpg", truncated_body(b"\xff\xd8" + b"x" * 100, declared=5000))
    with _fetcher(retries=1) as fetcher:
        result = fetcher.fetch(url)
    assert not result.ok and result.reason.startswith("truncated body:")
    assert server.count("/x.jpg") == 2


@pytest.mark.parametrize("declare", [True, False])
def test_body_over_max_bytes_is_abandoned(server, declare):
    url = server.add("/big.jpg", too_many_bytes(3_000_000, declare=declare))
    with _fetcher(max_bytes=100_000) as fetcher:
        result = fetcher.fetch(url)
    assert result.reason.startswith("too large:") and server.count("/big.jpg") == 1
    assert result.bytes_received <= 100_000 + 65536


def test_redirects_are_followed_and_bounded(server):
    body = jpeg_bytes()
    server.add("/final.jpg", ok(body))
    server.add("/r1", redirect("/r2"))
    server.add("/r2", redirect(server.url("/final.jpg"), code=301))
    with _fetcher(max_redirects=2) as fetcher:
        result = fetcher.fetch(server.url("/r1"))
    assert result.ok and result.data == body and result.final_url.endswith("/final.jpg")
    with _fetcher(max_redirects=1) as fetcher:
        result = fetcher.fetch(server.url("/r1"))
    assert result.reason.startswith("too many redirects:")


def test_redirect_to_a_non_http_scheme_is_refused(server):
    url = server.add("/r", redirect("file:///etc/passwd"))
    with _fetcher() as fetcher:
        result = fetcher.fetch(url)
    assert result.reason.startswith("bad redirect:") and "unsupported scheme" in result.reason


@pytest.mark.parametrize(
    "target",
    ["http://169.254.169.254/latest/meta-data/", "http://[fe80::1]/x.jpg",
     "http://2852039166/x.jpg", "http://[::ffff:169.254.169.254]/x.jpg"],
)  # fmt: skip
def test_redirect_to_a_link_local_or_metadata_address_is_refused(server, target):
    url = server.add("/r", redirect(target))
    started = time.monotonic()
    with _fetcher(timeout=5, retries=2) as fetcher:
        result = fetcher.fetch(url)
    assert result.reason.startswith("bad redirect:") and "link-local" in result.reason
    assert result.attempts == 1 and server.count("/r") == 1  # final: not retried
    assert time.monotonic() - started < 2  # refused before any connection to the target


def test_redirect_to_loopback_by_name_is_followed(server):
    body = jpeg_bytes()
    server.add("/final.jpg", ok(body))
    port = server.base_url.rsplit(":", 1)[1]
    url = server.add("/r", redirect(f"http://localhost:{port}/final.jpg"))
    with _fetcher() as fetcher:
        result = fetcher.fetch(url)
    assert result.ok and result.data == body


def test_per_host_cap_limits_requests_in_flight(server):
    for i in range(8):
        server.add(f"/{i}.jpg", slow(0.2, ok(jpeg_bytes())))
    with _fetcher(per_host=2) as fetcher, ThreadPoolExecutor(8) as pool:
        results = list(pool.map(fetcher.fetch, [server.url(f"/{i}.jpg") for i in range(8)]))
    assert all(r.ok for r in results)
    assert server.max_inflight == 2


def test_stop_event_ends_a_backoff_wait(server):
    url = server.add("/x.jpg", status(429, headers={"Retry-After": "30"}))
    stop = threading.Event()
    with Fetcher(DownloadPolicy(**{**FAST, "max_retry_after": 30}), stop=stop) as fetcher:
        threading.Timer(0.3, stop.set).start()
        started = time.monotonic()
        result = fetcher.fetch(url)
    assert result.reason.startswith("interrupted:") and time.monotonic() - started < 5


@pytest.mark.parametrize(
    ("field", "value"),
    [("timeout", 0), ("retries", -1), ("max_bytes", 0), ("per_host", 0), ("backoff", -1)],
)
def test_policy_validates_its_fields(field, value):
    with pytest.raises(ValueError, match=field):
        DownloadPolicy(**{field: value})


def test_http_proxy_of_the_environment_is_used_unless_no_proxy_exempts_the_host(
    server, monkeypatch
):
    # The fault server plays the proxy: a proxied request names the whole URL in its path.
    image = jpeg_bytes((1, 2, 3))
    server.add("http://catalog.invalid/a.jpg", ok(image))
    monkeypatch.setenv("HTTP_PROXY", server.base_url.rstrip("/"))
    monkeypatch.setenv("NO_PROXY", "exempt.invalid")
    with _fetcher(retries=0) as fetcher:
        assert fetcher.fetch("http://catalog.invalid/a.jpg").data == image
        exempt = fetcher.fetch("http://exempt.invalid/a.jpg")  # direct: the name cannot resolve
    assert server.paths() == ["http://catalog.invalid/a.jpg"]
    assert not exempt.ok and exempt.reason.startswith("connection error")
