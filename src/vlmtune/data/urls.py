"""Which URLs vlmtune fetches: one policy for a catalog's image URLs and every redirect target.

A catalog may be untrusted, so a URL is requested only when

- its scheme is ``http`` or ``https`` and it names a host (:func:`check_url`);
- its host is not a link-local or cloud-metadata address (169.254.0.0/16,
  fe80::/10, AWS's fd00:ec2::254, Alibaba's 100.100.100.200), in any spelling
  (``2852039166``, ``0xa9.254.169.254``, ``[::ffff:169.254.169.254]``), nor a
  metadata host name (``metadata.google.internal``, ``instance-data``...), nor
  a name that resolves to such an address (:func:`forbidden_host`). A URL or a
  redirect to 169.254.169.254 is the classic way to make a fetcher read cloud
  credentials. Loopback and private addresses stay allowed (local mirrors, the tests).

:class:`UrlGuard` applies both checks and remembers each host's verdict; the
fetcher (:mod:`vlmtune.data.download`) asks it before the first request of a
URL and before following each redirect, so there is no second copy of the rule.
Reasons start with a kind and a colon: ``unsupported scheme:``, ``bad url:``,
``forbidden address:``.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
from urllib.parse import urlsplit

__all__ = ["ALLOWED_SCHEMES", "UrlGuard", "check_url", "forbidden_host"]

ALLOWED_SCHEMES = ("http", "https")
_FORBIDDEN_NETWORKS = tuple(
    ipaddress.ip_network(n)
    for n in ("169.254.0.0/16", "fe80::/10", "fd00:ec2::254/128", "100.100.100.200/32")
)  # link-local (where AWS, GCP, Azure and OpenStack serve metadata) and two metadata hosts
_FORBIDDEN_NAMES = frozenset(
    {"metadata", "metadata.google.internal", "metadata.goog", "instance-data",
     "instance-data.ec2.internal"}
)  # fmt: skip  # names the clouds resolve to their metadata service (only inside the cloud)
_UNTRUSTED = "(refused: a catalog may be untrusted)"

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def check_url(url: str) -> str | None:
    """Return why ``url`` may not be fetched (``"unsupported scheme: ..."``), or None if it may.

    Syntax only (scheme, host, port); no name is resolved. :func:`forbidden_host`
    is the other half of the policy.
    """
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


def forbidden_host(url: str, resolve: bool = True) -> str | None:
    """Why ``url``'s host may never be fetched (link-local or cloud metadata), or None.

    With ``resolve`` a host name is also resolved and refused when any of its
    addresses is forbidden; a name that does not resolve is left to the request,
    which then fails as a connection error.
    """
    parts = urlsplit(url)
    host = (parts.hostname or "").rstrip(".").lower()
    if host in _FORBIDDEN_NAMES:
        return f"forbidden address: {host!r} is a cloud-metadata host name {_UNTRUSTED}"
    address = _literal_address(host)
    if address is not None:
        return _forbidden_address(host, address)
    if not resolve:
        return None
    port = parts.port or (443 if parts.scheme.lower() == "https" else 80)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return None
    for *_, sockaddr in infos:
        refused = _forbidden_address(host, ipaddress.ip_address(str(sockaddr[0]).split("%")[0]))
        if refused:
            return refused
    return None


class UrlGuard:
    """:func:`check_url` then :func:`forbidden_host`, each host's verdict computed once (thread-safe)."""

    def __init__(self) -> None:
        self._verdicts: dict[tuple[str, bool], str | None] = {}
        self._lock = threading.Lock()

    def refusal(self, url: str, resolve: bool = True) -> str | None:
        """Why ``url`` may not be requested, or None if it may (``resolve``: see :func:`forbidden_host`)."""
        refused = check_url(url)
        if refused:
            return refused
        parts = urlsplit(url)
        key = (f"{parts.scheme.lower()}://{parts.netloc.lower()}", resolve)
        with self._lock:
            if key in self._verdicts:
                return self._verdicts[key]
        verdict = forbidden_host(url, resolve=resolve)  # outside the lock: DNS can be slow
        with self._lock:
            self._verdicts[key] = verdict
        return verdict


def _literal_address(host: str) -> Address | None:
    """The address a host written as a number stands for, in any spelling ``inet_aton`` accepts."""
    try:
        return ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        pass
    try:  # 2852039166, 0xa9.254.169.254, 169.254.43518: the C resolver reads these as addresses
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except (OSError, UnicodeError, ValueError):
        return None


def _forbidden_address(host: str, address: Address) -> str | None:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    if any(address in network for network in _FORBIDDEN_NETWORKS):
        return (
            f"forbidden address: {host!r} is the link-local or cloud-metadata address {address} "
            f"{_UNTRUSTED}"
        )
    return None
