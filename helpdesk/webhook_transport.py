"""HTTP for outgoing webhooks: a ``requests`` session that only talks to public
addresses (SSRF guard) and never follows a redirect.

Contract:
- ``address_refusal(ip)`` says why an address is not a delivery target (None: it is).
  Private, shared, link-local, reserved, multicast and unspecified addresses always are
  refused (``WEBHOOK_ALLOW_PRIVATE_ADDRESSES`` lifts that for a LAN install); loopback is
  refused unless ``WEBHOOK_ALLOW_LOOPBACK`` (on in dev and test, off in prod).
- ``url_refusal(url)`` checks a URL when an admin saves it: http(s), a host, and every
  address the host resolves to allowed.
- ``guarded_session()`` checks the address each connection actually reached, right after
  the TCP connect and before a byte is sent, so a name that resolved to a public address
  when saved and to a private one now (DNS rebinding) is refused too. It ignores proxy
  environment variables (a proxy would be the peer checked). A refusal raises
  ``AddressRefused``.
"""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit

import requests
from django.conf import settings
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool


class AddressRefused(Exception):  # noqa: N818 - a refusal, reported as such
    """The webhook URL leads to an address deliveries may not reach."""


def address_refusal(address: str, *, allow_loopback: bool | None = None,
                    allow_private: bool | None = None) -> str | None:
    """Why ``address`` (an IP literal) is no delivery target; None when it is one. The
    two allowances default to the webhook settings (other outgoing connections that an
    admin aims, such as an IMAP server, pass their own)."""
    if allow_loopback is None:
        allow_loopback = settings.WEBHOOK_ALLOW_LOOPBACK
    if allow_private is None:
        allow_private = settings.WEBHOOK_ALLOW_PRIVATE_ADDRESSES
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_loopback:
        return None if allow_loopback else "a loopback address"
    if ip.is_link_local:
        return "a link-local address"
    if ip.is_multicast or ip.is_unspecified or ip.is_reserved:
        return "a reserved address"
    if not ip.is_global:
        return None if allow_private else "a private address"
    return None


def url_refusal(url: str) -> str | None:
    """Why ``url`` cannot be a webhook endpoint (for people); None when it can."""
    try:
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        return "This is not a valid URL."
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "Use an http:// or https:// URL with a host name."
    try:
        found = socket.getaddrinfo(parts.hostname, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        return f"The host {parts.hostname} does not resolve."
    for *_, sockaddr in found:
        reason = address_refusal(sockaddr[0])
        if reason:
            return f"{parts.hostname} resolves to {reason} ({sockaddr[0]}); webhooks " \
                   "only go to public addresses."
    return None


class _PeerChecked:
    def _new_conn(self):
        sock = super()._new_conn()
        peer = sock.getpeername()[0]
        reason = address_refusal(peer)
        if reason:
            sock.close()
            raise AddressRefused(f"{self.host} is {reason} ({peer})")
        return sock


class _CheckedHTTPConnection(_PeerChecked, HTTPConnection):
    pass


class _CheckedHTTPSConnection(_PeerChecked, HTTPSConnection):
    pass


class _CheckedHTTPPool(HTTPConnectionPool):
    ConnectionCls = _CheckedHTTPConnection


class _CheckedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _CheckedHTTPSConnection


class _CheckedAdapter(HTTPAdapter):
    def init_poolmanager(self, *args, **kwargs):
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _CheckedHTTPPool,
                                                   "https": _CheckedHTTPSPool}


def guarded_session() -> requests.Session:
    """A session for one delivery (see the module's contract)."""
    session = requests.Session()
    session.trust_env = False
    adapter = _CheckedAdapter(max_retries=0)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session
