"""API tokens: shown once, stored only as a SHA-256 hash."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

from sqlmodel import select

from gateway.models import ApiToken

ROLES = ("admin", "marketer", "store_manager", "clerk")


@dataclass(frozen=True)
class Principal:
    token_id: int
    role: str
    store_id: int | None = None
    clerk_id: int | None = None
    name: str | None = None


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


async def create_token(session, role: str, *, store_id=None, clerk_id=None, name=None) -> tuple[ApiToken, str]:
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}")
    if role == "store_manager" and store_id is None:
        raise ValueError("a store_manager token needs --store")
    if role == "clerk" and clerk_id is None:
        raise ValueError("a clerk token needs --clerk")
    token = "gw_" + secrets.token_urlsafe(32)
    row = ApiToken(token_hash=hash_token(token), role=role, store_id=store_id, clerk_id=clerk_id, name=name)
    session.add(row)
    await session.flush()
    return row, token


async def resolve_token(session, token: str) -> Principal | None:
    row = (await session.exec(select(ApiToken).where(ApiToken.token_hash == hash_token(token)))).first()
    if row is None or row.revoked_at is not None:
        return None
    return Principal(row.id, row.role, row.store_id, row.clerk_id, row.name)
