"""HTTP image fetching for ``vlmtune prepare``: bounded, retried, capped per host.

:class:`Fetcher` turns one URL into its bytes or into a failure with a reason.
It is meant to be called from many threads at once (the caller's thread pool
sets the overall concurrency); each thread gets its own ``requests.Session``
(sessions are not documented as thread-safe) and a per-host semaphore caps how
many requests one server sees at a time.

Policy, following the usual practice of HTTP clients (urllib3's ``Retry``,
the "exponential backoff and jitter" scheme):

- only ``http`` and ``https`` are fetched, including every redirect target;
  redirects are followed by hand up to ``max_redirects``;
- a redirect whose host is (or resolves to) a link-local or cloud-metadata
  address (169.254.0.0/16, fe80::/10, AWS's fd00:ec2::254, Alibaba's
  100.100.100.200) is refused: a catalog may be untrusted, and a redirect to
  169.254.169.254 is the classic way to make a fetcher read cloud credentials.
  Loopback and private addresses stay allowed (local mirrors, the tests);
- connect and read timeouts; timeouts, connection errors (resets, refused
  connections, truncated bodies), 408, 429 and every 5xx (CDN codes such as
  520-524 included) are retried up to ``retries`` times with
  ``backoff * 2**attempt`` seconds times a random factor in [0.5, 1.5), capped
  at ``max_backoff``; a ``Retry-After`` header (seconds or HTTP date) on such a
  response replaces that wait, capped at ``max_retry_after``;
- other 4xx are final at once;
- the body is streamed and abandoned as soon as it exceeds ``max_bytes``, or
  when it is still arriving after 10 read timeouts (a server sending a byte
  now and then never trips the read timeout itself).

Every failure reason starts with a short kind followed by a colon (``http 404:``,
``timeout:``, ``connection error:``, ``too large:``, ``truncated body:``,
``too many redirects:``, ``bad redirect:``, ``unsupported scheme:``,
``bad url:``, ``interrupted:``) so that reports can group them.
"""

from __future__ import annotations

import email.utils
import ipaddress
import random
import socket
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urljoin, urlsplit

import requests
import urllib3  # requests' own transport (a hard dependency of requests)

__all__ = [
    "ALLOWED_SCHEMES",
    "DownloadPolicy",
    "FetchResult",
    "Fetcher",
    "check_url",
    "parse_retry_after",
]

ALLOWED_SCHEMES = ("http", "https")
_REDIRECTS = {301, 302, 303, 307, 308}
_RETRY_4XX = {408, 429}  # request timeout, too many requests: worth another try
_CHUNK = 64 * 1024
_BODY_TIMEOUTS = 10  # a whole body may take at most this many read timeouts
_FORBIDDEN_NETWORKS = tuple(
    ipaddress.ip_network(n)
    for n in ("169.254.0.0/16", "fe80::/10", "fd00:ec2::254/128", "100.100.100.200/32")
)  # link-local (where AWS, GCP, Azure and OpenStack serve metadata) and two metadata hosts


@dataclass
class DownloadPolicy:
    """How one URL is fetched: timeouts, retries, size and redirect limits."""

    timeout: float = 10.0
    """Connect timeout and read timeout (seconds between bytes), each."""
    retries: int = 3
    """Extra attempts after the first on timeouts, connection errors, 408, 429 and 5xx."""
    backoff: float = 0.5
    """Base wait in seconds before retry ``k`` (``backoff * 2**k``, times a jitter in [0.5, 1.5))."""
    max_backoff: float = 30.0
    """Upper bound of one computed backoff wait, in seconds."""
    max_retry_after: float = 60.0
    """Upper bound, in seconds, of a wait requested by a server's ``Retry-After`` header."""
    max_bytes: int = 20_000_000
    """Largest body accepted; larger bodies are abandoned mid-stream."""
    max_redirects: int = 5
    """Redirects followed before giving up."""
    per_host: int = 16
    """Requests in flight to one host (``host:port``) at a time."""
    user_agent: str = "vlmtune-prepare/0.1 (+https://github.com/)"
    """User-Agent header sent with every request."""

    def __post_init__(self) -> None:
        positive = {"timeout": self.timeout, "max_bytes": self.max_bytes, "per_host": self.per_host}
        for name, value in positive.items():
            if value <= 0:
                raise ValueError(f"{name} must be > 0, got {value!r}")
        non_negative = {
            "retries": self.retries,
            "backoff": self.backoff,
            "max_backoff": self.max_backoff,
            "max_retry_after": self.max_retry_after,
            "max_redirects": self.max_redirects,
        }
        for name, value in non_negative.items():
            if value < 0:
                raise ValueError(f"{name} must be >= 0, got {value!r}")


@dataclass
class FetchResult:
    """What fetching one URL gave: the body, or a reason why there is none."""

    url: str
    data: bytes | None = None
    reason: str = ""
    """Empty on success; otherwise ``"<kind>: <details>"``."""
    status: int | None = None
    content_type: str = ""
    final_url: str = ""
    attempts: int = 0
    """HTTP requests made for this URL (redirect hops and retries included)."""
    bytes_received: int = 0
    history: list[str] = field(default_factory=list)
    """One line per attempt that did not succeed, oldest first (for debugging)."""

    @property
    def ok(self) -> bool:
        return self.data is not None


class _Retryable(Exception):
    """An attempt failed in a way worth retrying; ``wait`` overrides the backoff."""

    def __init__(self, reason: str, wait: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.wait = wait


class _Final(Exception):
    """An attempt failed in a way that retrying cannot fix."""

    def __init__(self, reason: str, status: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status


def check_url(url: str) -> str | None:
    """Return why ``url`` may not be fetched (``"unsupported scheme: ..."``), or None if it may."""
    try:
        parts = urlsplit(url)
        _ = parts.port  # raises ValueError on a malformed port
    except ValueError as err:
        return f"bad url: {err}"
    scheme = parts.scheme.lower()
    if scheme not in ALLOWED_SCHEMES:
        shown = scheme or "(none)"
        return f"unsupported scheme: {shown!r} (only http and https URLs are fetched)"
    if not parts.hostname:
        return "bad url: no host name"
    return None


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP date); None if absent/bad."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


class Fetcher:
    """Fetch URLs from many threads with one :class:`DownloadPolicy`.

    ``stop`` (an Event) makes waits and streams end early with an
    ``interrupted:`` failure, so that a Ctrl-C does not wait for backoffs.
    Use as a context manager, or call :meth:`close` to close the sessions.
    """

    def __init__(
        self,
        policy: DownloadPolicy,
        stop: threading.Event | None = None,
        rng: random.Random | None = None,
        session_factory: Callable[[], requests.Session] = requests.Session,
    ) -> None:
        self.policy = policy
        self.stop = stop or threading.Event()
        self._rng = rng or random.Random()
        self._session_factory = session_factory
        self._local = threading.local()
        self._sessions: list[requests.Session] = []
        self._hosts: dict[str, threading.BoundedSemaphore] = {}
        self._lock = threading.Lock()
        self._env_proxies = {k: v for k, v in urllib.request.getproxies().items() if k != "no"}
        self.requests_made = 0

    def __enter__(self) -> Fetcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close every session opened by any thread."""
        with self._lock:
            sessions, self._sessions = self._sessions, []
        for session in sessions:
            session.close()

    def fetch(self, url: str) -> FetchResult:
        """Fetch ``url`` following the policy; never raises for network or HTTP failures."""
        result = FetchResult(url=url, final_url=url)
        refused = check_url(url)
        if refused:
            result.reason = refused
            return result
        for attempt in range(self.policy.retries + 1):
            try:
                self._attempt(url, result)
                return result
            except _Final as err:
                result.reason, result.status = err.reason, err.status or result.status
                return result
            except _Retryable as err:
                result.history.append(err.reason)
                result.reason = err.reason
                if attempt == self.policy.retries:
                    break
                if self._sleep(self._wait(attempt, err.wait)):
                    result.reason = f"interrupted: stopped while retrying ({err.reason})"
                    return result
        if self.policy.retries:
            result.reason = f"{result.reason} (after {self.policy.retries + 1} attempts)"
        return result

    # ------------------------------------------------------------------ one attempt

    def _attempt(self, url: str, result: FetchResult) -> None:
        """One attempt including its redirect hops; fills ``result`` or raises _Retryable/_Final."""
        current = url
        for _hop in range(self.policy.max_redirects + 1):
            if self.stop.is_set():
                raise _Final("interrupted: stopped before the request")
            with self._host_slot(current):
                location = self._request(current, result)
            if location is None:
                return
            target = urljoin(current, location)
            refused = check_url(target) or _forbidden_host(target)
            if refused:
                raise _Final(f"bad redirect: {current} redirects to {target!r}; {refused}")
            current = target
            result.final_url = current
        raise _Final(f"too many redirects: more than {self.policy.max_redirects} from {url}")

    def _request(self, url: str, result: FetchResult) -> str | None:
        """GET ``url``; return a redirect location, or fill ``result`` with the body and return None."""
        timeout = (self.policy.timeout, self.policy.timeout)
        headers = {"User-Agent": self.policy.user_agent, "Accept": "image/*,*/*;q=0.5"}
        with self._lock:
            self.requests_made += 1
        result.attempts += 1
        try:
            response = self._session().get(
                url,
                headers=headers,
                timeout=timeout,
                stream=True,
                allow_redirects=False,
                proxies=self._proxies_for(url),
            )
        except requests.Timeout as err:
            raise _Retryable(f"timeout: no response within {self.policy.timeout:g} s") from err
        except requests.RequestException as err:
            raise _Retryable(f"connection error: {_root_cause(err)}") from err
        with response:
            result.status = response.status_code
            result.content_type = response.headers.get("Content-Type", "")
            if response.status_code in _REDIRECTS and response.headers.get("Location"):
                return response.headers["Location"]
            _raise_for_status(response, self.policy.max_retry_after)
            result.data = self._read_body(response, result)
        return None

    def _read_body(self, response: requests.Response, result: FetchResult) -> bytes:
        limit = self.policy.max_bytes
        declared = response.headers.get("Content-Length", "")
        if declared.isdigit() and int(declared) > limit:
            raise _Final(
                f"too large: Content-Length {int(declared)} bytes exceeds the limit of {limit}"
            )
        chunks, size = [], 0
        deadline = time.monotonic() + _BODY_TIMEOUTS * self.policy.timeout
        try:
            # read1 returns what has arrived (up to _CHUNK) instead of waiting for a full
            # chunk, so the size limit, the stop event and the deadline are checked often.
            while chunk := response.raw.read1(_CHUNK, decode_content=True):
                size += len(chunk)
                result.bytes_received += len(chunk)
                if size > limit:
                    raise _Final(f"too large: body exceeds the limit of {limit} bytes")
                if self.stop.is_set():
                    raise _Final("interrupted: stopped while reading the body")
                if (
                    time.monotonic() > deadline
                ):  # a server dribbling bytes never hits the read timeout
                    raise _Retryable(
                        f"timeout: body still arriving after {_BODY_TIMEOUTS * self.policy.timeout:g} s"
                    )
                chunks.append(chunk)
        except urllib3.exceptions.ReadTimeoutError as err:
            raise _Retryable(
                f"timeout: body stalled for {self.policy.timeout:g} s after {size} bytes"
            ) from err
        except urllib3.exceptions.ProtocolError as err:
            kind = "truncated body" if "IncompleteRead" in str(err) else "connection error"
            raise _Retryable(f"{kind}: the connection broke mid-body ({_root_cause(err)})") from err
        except (urllib3.exceptions.HTTPError, OSError) as err:
            raise _Retryable(f"connection error: while reading the body: {_short(err)}") from err
        return b"".join(chunks)

    # ------------------------------------------------------------------ helpers

    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._session_factory()
            session.max_redirects = self.policy.max_redirects
            # No per-request scan of the environment (proxies are read once, in __init__)
            # and no ~/.netrc credentials sent to the hosts of a catalog.
            session.trust_env = False
            self._local.session = session
            with self._lock:
                self._sessions.append(session)
        return session

    def _proxies_for(self, url: str) -> dict[str, str]:
        """The environment's proxies (HTTP_PROXY, HTTPS_PROXY), unless NO_PROXY exempts the host."""
        if not self._env_proxies:
            return {}
        host = urlsplit(url).hostname or ""
        return {} if urllib.request.proxy_bypass(host) else self._env_proxies

    def _host_slot(self, url: str) -> threading.BoundedSemaphore:
        parts = urlsplit(url)
        key = f"{parts.scheme}://{parts.netloc.lower()}"
        with self._lock:
            slot = self._hosts.get(key)
            if slot is None:
                slot = self._hosts[key] = threading.BoundedSemaphore(self.policy.per_host)
        return slot

    def _wait(self, attempt: int, requested: float | None) -> float:
        if requested is not None:
            return min(requested, self.policy.max_retry_after)
        base = min(self.policy.max_backoff, self.policy.backoff * (2**attempt))
        return base * self._rng.uniform(0.5, 1.5)

    def _sleep(self, seconds: float) -> bool:
        """Sleep ``seconds`` unless stopped; return True if stopped."""
        return self.stop.wait(seconds) if seconds > 0 else self.stop.is_set()


def _raise_for_status(response: requests.Response, max_retry_after: float) -> None:
    status = response.status_code
    if status < 400 and status not in _REDIRECTS:
        return
    label = f"http {status}: {response.reason or 'error'}"
    if 500 <= status < 600 or status in _RETRY_4XX:
        wait = parse_retry_after(response.headers.get("Retry-After"))
        if wait is not None:
            label += f" (Retry-After {wait:g} s, waited at most {max_retry_after:g} s)"
        raise _Retryable(label, wait)
    if status in _REDIRECTS:
        raise _Final(f"bad redirect: http {status} without a Location header", status)
    raise _Final(label, status)


def _forbidden_host(url: str) -> str | None:
    """Why a redirect to ``url`` is refused (its host is a link-local/metadata address), or None.

    The host is resolved so that a name or an odd spelling (``2852039166``,
    ``0xa9.254.169.254``) of such an address is caught too; a host that does
    not resolve is left to the request, which then fails as a connection error.
    """
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme.lower() == "https" else 80)
    try:
        infos = socket.getaddrinfo(parts.hostname, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return None
    for *_, sockaddr in infos:
        address = ipaddress.ip_address(str(sockaddr[0]).split("%")[0])
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
            address = address.ipv4_mapped
        if any(address in network for network in _FORBIDDEN_NETWORKS):
            return (
                f"forbidden address: {parts.hostname!r} is the link-local or cloud-metadata "
                f"address {address} (refused: a catalog may be untrusted)"
            )
    return None


def _root_cause(err: BaseException) -> str:
    """The innermost cause of a requests/urllib3 error, e.g. ``Connection refused`` (not 300 characters of wrappers)."""
    current, seen = err, set()
    while id(current) not in seen:
        seen.add(id(current))
        inner = getattr(current, "reason", None)
        if not isinstance(inner, BaseException):
            inner = next((a for a in current.args if isinstance(a, BaseException)), None)
        inner = inner or current.__cause__ or current.__context__
        if inner is None:
            break
        current = inner
    if isinstance(current, OSError) and current.strerror:
        return current.strerror
    return _short(current)


def _short(err: BaseException) -> str:
    text = str(err) or type(err).__name__
    return text if len(text) <= 200 else text[:197] + "..."
