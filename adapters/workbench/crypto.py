"""Workbench sign-in: a clerk API token (hashed in the gateway's store), resolved through the host."""

from __future__ import annotations

from gateway.adapter import Unauthorized


async def clerk_of(host, token: str) -> int:
    principal = await host.principal(token)
    if principal is None or principal.clerk_id is None:
        raise Unauthorized("not a valid clerk token")
    return principal.clerk_id
