"""Client addresses: who is on the other end of a request, believing X-Forwarded-For only from the
proxies the operator named (anyone else can write any address there)."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from functools import lru_cache

from aiohttp import web

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@lru_cache(maxsize=64)
def _networks(items: tuple[str, ...]) -> tuple[Network, ...]:
    return tuple(networks(items))


def networks(items: Iterable[str]) -> list[Network]:
    """CIDR blocks (a bare address is a /32 or /128); ValueError names the first bad one."""
    out = []
    for item in items:
        try:
            out.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ValueError(f"{item!r} is not an IP address or CIDR block") from None
    return out


def _ip(address: str | None):
    try:
        return ipaddress.ip_address(address or "")
    except ValueError:  # no peer (a unix socket) or garbage
        return None


def within(address: str | None, nets: Iterable[Network]) -> bool:
    ip = _ip(address)
    return ip is not None and any(ip in net for net in nets)


def client_address(request: web.Request, trusted: Iterable[str]) -> str:
    """The peer, or — when the peer is one of the `trusted` proxies (CIDRs) — the right-most
    X-Forwarded-For entry that is not one (the left ones were written by whoever sent the request)."""
    trusted_proxies = _networks(tuple(trusted))
    address = request.remote or ""
    if not trusted_proxies or not within(address, trusted_proxies):
        return address
    hops = [h.strip() for h in ",".join(request.headers.getall("X-Forwarded-For", [])).split(",") if h.strip()]
    for hop in reversed(hops):
        if not within(hop, trusted_proxies):
            return hop if _ip(hop) is not None else address  # garbage: count it as the proxy's
    return address
