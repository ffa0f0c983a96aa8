"""Push endpoints are URLs a browser hands us: checked before the service ever calls one.

A subscriber could name any URL, so an endpoint must be ``https://`` on the default port
range of a public host, and every address its host resolves to must be public (no
loopback, private, link-local, multicast, reserved or unspecified address, IPv4 or IPv6,
including IPv4 mapped into IPv6). The check runs when the subscription is stored and
again before every send, since DNS can change; the connection itself then goes to an
address this check accepted (``app/push/transport.py``), so a rebinding between check and
connect cannot reach an inside address either. ``PUSH_ALLOW_LOCAL_ENDPOINTS`` (tests)
and development lift the rules, never in production.
"""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit

MAX_ENDPOINT_LENGTH = 2048


class EndpointRefused(ValueError):
    """Why an endpoint is not called; the message is safe to show the subscriber."""


class EndpointUnresolved(EndpointRefused):
    """The host did not resolve: refused when subscribing, retried when sending."""


def allowed_address(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


def split_endpoint(endpoint: str, allow_local: bool) -> tuple[str, int]:
    """(host, port) of an acceptable endpoint URL, by its form alone."""
    if len(endpoint) > MAX_ENDPOINT_LENGTH:
        raise EndpointRefused(f"must be at most {MAX_ENDPOINT_LENGTH} characters")
    try:
        parts = urlsplit(endpoint)
        port = parts.port
    except ValueError:
        raise EndpointRefused("is not a URL") from None
    schemes = ("https", "http") if allow_local else ("https",)
    if parts.scheme not in schemes:
        raise EndpointRefused("must be an https:// URL")
    if not parts.hostname or parts.username is not None or parts.password is not None:
        raise EndpointRefused("must name a host, without user or password")
    if any(c.isspace() for c in endpoint) or parts.fragment:
        raise EndpointRefused("must not hold spaces or a #fragment")
    return parts.hostname, port or (443 if parts.scheme == "https" else 80)


def resolve(host: str, port: int, allow_local: bool) -> list[str]:
    """The addresses to connect to for ``host``; every one must be public (unless allowed)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        raise EndpointUnresolved(f"host {host!r} does not resolve") from None
    addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    if not addresses:
        raise EndpointUnresolved(f"host {host!r} does not resolve")
    if not allow_local:
        for address in addresses:
            if not allowed_address(address):
                raise EndpointRefused(f"host {host!r} resolves to a non-public address ({address})")
    return addresses


def check_endpoint(endpoint: str, allow_local: bool) -> list[str]:
    """Form and addresses of ``endpoint``; the accepted addresses, else EndpointRefused."""
    host, port = split_endpoint(endpoint, allow_local)
    return resolve(host, port, allow_local)
