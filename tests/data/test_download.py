"""The HTTP fetcher against a real server on 127.0.0.1: retries, backoff, caps, limits, schemes.

No test sleeps or times itself: the fetcher's backoff waits go to an injected
``sleep`` that records them (the tests check the computed waits), its body
deadline reads an injected clock, and a response that must come late is held
by the server until the test lets it go.
"""

from __future__ import annotations

import email.utils
import itertools
import random
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from fault_server import (
    FaultServer,
    endless_body,
    jpeg_bytes,
    ok,
    redirect,
    reset,
    sequence,
    status,
    too_many_bytes,
    truncated_body,
)

from vlmtune.data.download import DownloadPolicy, Fetcher, check_url, parse_retry_after
from vlmtune.data.urls import forbidden_host

FAST = {"timeout": 5.0, "retries": 2, "backoff": 0.02, "max_backoff": 0.2, "max_retry_after": 2.0}


@pytest.fixture
def server():
    with FaultServer() as srv:
        yield srv


def _fetcher(waits: list[float] | None = None, **overrides) -> Fetcher:
    """A fetcher whose backoff waits are recorded in ``waits`` instead of slept."""
    sleep = (waits if waits is not None else []).append
    return Fetcher(DownloadPolicy(**{**FAST, **overrides}), sleep=sleep)


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


def test_backoff_grows_exponentially_with_jitter_and_a_cap(server):
    url = server.add("/x.jpg", status(500))
    waits: list[float] = []
    policy = DownloadPolicy(**{**FAST, "retries": 4, "backoff": 0.1, "max_backoff": 0.5})
    with Fetcher(policy, rng=random.Random(7), sleep=waits.append) as fetcher:
        result = fetcher.fetch(url)
    jitter = random.Random(7)
    bases = [0.1, 0.2, 0.4, 0.5]  # backoff * 2**k, capped at max_backoff
    assert waits == [base * jitter.uniform(0.5, 1.5) for base in bases]
    assert server.count("/x.jpg") == 5 and "after 5 attempts" in result.reason


def test_retry_after_is_honoured(server):
    body = jpeg_bytes()
    url = server.add("/x.jpg", sequence(status(429, headers={"Retry-After": "1"}), ok(body)))
    waits: list[float] = []
    with _fetcher(waits, backoff=0.01) as fetcher:
        result = fetcher.fetch(url)
    assert result.ok and waits == [1.0]  # the server's wait, not the 0.01 s backoff


def test_retry_after_as_an_http_date_is_honoured_up_to_the_cap(server):
    in_an_hour = email.utils.formatdate(time.time() + 3600, usegmt=True)
    url = server.add("/x.jpg", sequence(status(503, headers={"Retry-After": in_an_hour}), ok(b"x")))
    waits: list[float] = []
    with _fetcher(waits, max_retry_after=60) as fetcher:
        assert fetcher.fetch(url).ok
    assert waits == [60.0]  # the date was read (a backoff would be about 0.02 s), then capped


def test_retry_after_is_capped(server):
    url = server.add("/x.jpg", status(429, headers={"Retry-After": "3600"}))
    waits: list[float] = []
    with _fetcher(waits, retries=1, max_retry_after=0.2) as fetcher:
        result = fetcher.fetch(url)
    assert waits == [0.2]
    assert result.reason.startswith("http 429:") and server.count("/x.jpg") == 2


def test_slow_response_times_out_after_retries(server):
    url = server.add("/x.jpg", server.held(ok(jpeg_bytes())))  # never answers before the test ends
    with _fetcher(timeout=0.3, retries=1) as fetcher:
        result = fetcher.fetch(url)
    assert result.reason.startswith("timeout:") and result.attempts == 2


def test_body_still_arriving_past_the_overall_deadline_times_out(server):
    # The injected clock advances 10 s per read of the body: the deadline of ten read timeouts
    # (10 x 5 s) passes after a few reads however fast the machine is, and the real read
    # timeout (5 s) never trips while the server keeps sending.
    url = server.add("/x.jpg", endless_body(b"\xff" * 1024, declared=8_000_000))
    ticks = itertools.count(0.0, 10.0)
    with Fetcher(DownloadPolicy(**{**FAST, "retries": 0}), clock=lambda: next(ticks)) as fetcher:
        result = fetcher.fetch(url)
    assert result.reason.startswith("timeout: body still arriving after 50 s")
    assert 0 < result.bytes_received < 8_000_000 and result.attempts == 1


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
    with _fetcher(timeout=5, retries=2) as fetcher:
        result = fetcher.fetch(url)
    assert result.reason.startswith("bad redirect:") and "forbidden address:" in result.reason
    assert "link-local" in result.reason
    # one request (to /r), final: not retried, and none to the target
    assert result.attempts == 1 and fetcher.requests_made == 1 and server.count("/r") == 1


FORBIDDEN_URLS = [
    "http://169.254.169.254/latest/meta-data/", "http://[fe80::1]/x.jpg",
    "http://2852039166/x.jpg", "http://0xa9.254.169.254/x.jpg",
    "http://[::ffff:169.254.169.254]/x.jpg", "https://100.100.100.200/x.jpg",
    "http://metadata.google.internal/computeMetadata/v1/", "http://METADATA.goog./x",
    "http://instance-data/latest/", "http://metadata/x.jpg",
]  # fmt: skip


@pytest.mark.parametrize("url", FORBIDDEN_URLS)
def test_a_first_url_to_a_link_local_or_metadata_host_is_refused_without_a_request(url):
    with _fetcher(retries=2) as fetcher:
        result = fetcher.fetch(url)
    assert result.reason.startswith("forbidden address:") and not result.ok
    assert result.attempts == 0 and fetcher.requests_made == 0


@pytest.mark.parametrize("url", FORBIDDEN_URLS)
def test_redirect_to_any_forbidden_host_is_refused_by_the_same_policy(server, url):
    start = server.add("/r", redirect(url))
    with _fetcher(retries=2) as fetcher:
        result = fetcher.fetch(start)
        first = fetcher.fetch(url)
    assert result.reason == f"bad redirect: {start} redirects to {url!r}; {first.reason}"
    assert fetcher.requests_made == 1


def test_a_name_resolving_to_a_metadata_address_is_refused_once_per_host(monkeypatch):
    # A catalog host whose DNS answers with the metadata address (a CNAME to it, or rebinding).
    # The machine's resolver is not ours to configure, so this one lookup is answered here.
    real, asked = socket.getaddrinfo, []

    def resolve(host, port, *args, **kwargs):
        asked.append(host)
        if host == "cdn.catalog.test":
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("169.254.169.254", port))]
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", resolve)
    with _fetcher(retries=2) as fetcher:
        first = fetcher.fetch("http://cdn.catalog.test/a.jpg")
        second = fetcher.fetch("http://cdn.catalog.test/b.jpg")
    assert first.reason.startswith("forbidden address: 'cdn.catalog.test'")
    assert "169.254.169.254" in first.reason and second.reason == first.reason
    assert fetcher.requests_made == 0 and asked == ["cdn.catalog.test"]  # resolved once
    assert forbidden_host("http://cdn.catalog.test/a.jpg", resolve=False) is None


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
        server.add(f"/{i}.jpg", server.held(ok(jpeg_bytes())))
    with _fetcher(per_host=2, timeout=120) as fetcher, ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(fetcher.fetch, server.url(f"/{i}.jpg")) for i in range(8)]
        server.wait_until(lambda _paths, inflight: inflight == 2)  # both slots taken and held
        server.go.set()
        results = [f.result(timeout=60) for f in futures]
    assert all(r.ok for r in results)
    assert server.max_inflight == 2 and len(server.paths()) == 8


def test_stop_event_ends_a_backoff_wait(server):
    # A one-hour Retry-After: the fetch can only end in time if the stop ends the real wait.
    url = server.add("/x.jpg", status(429, headers={"Retry-After": "3600"}))
    stop = threading.Event()
    outcome = []
    with Fetcher(DownloadPolicy(**{**FAST, "max_retry_after": 3600}), stop=stop) as fetcher:
        worker = threading.Thread(target=lambda: outcome.append(fetcher.fetch(url)))
        worker.start()
        server.wait_until(lambda paths, _inflight: len(paths) == 1)
        stop.set()
        worker.join(timeout=60)
    assert not worker.is_alive() and outcome[0].reason.startswith("interrupted:")
    assert server.count("/x.jpg") == 1


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
