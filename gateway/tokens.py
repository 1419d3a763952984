"""API tokens: shown once, stored only as a SHA-256 hash; revoked at once on every instance.

Instances cache resolved tokens briefly (gateway/runtime.py). A revocation is written and
announced in one transaction: on PostgreSQL a NOTIFY on `REVOKED_CHANNEL`, delivered to every
instance's listening connection (gateway/hub.py) only if the revocation commits, so no instance
drops its cache before the database says revoked and none keeps it after. A clerk token also
stops working once its clerk is not active, whether or not a cache heard of it.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import event, text, update
from sqlmodel import select

from gateway.models import ApiToken, Clerk

REVOKED_CHANNEL = "gw_tokens"

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
    if role == "clerk":
        status = (await session.exec(select(Clerk.status).where(Clerk.id == clerk_id))).first()
        if status is None:
            raise ValueError("no such clerk")
        if status != "active":
            raise ValueError("this clerk has left: a departed clerk gets no token")
    token = "gw_" + secrets.token_urlsafe(32)
    row = ApiToken(token_hash=hash_token(token), role=role, store_id=store_id, clerk_id=clerk_id, name=name)
    session.add(row)
    await session.flush()
    return row, token


async def resolve_token(session, token: str) -> Principal | None:
    """The principal of a live token: not revoked, and for a clerk token a clerk still active
    (checked in the same query, so a leave that some path did not revoke still locks them out)."""
    row = (await session.exec(
        select(ApiToken, Clerk.status).join(Clerk, Clerk.id == ApiToken.clerk_id, isouter=True)
        .where(ApiToken.token_hash == hash_token(token))
    )).first()
    if row is None:
        return None
    tok, clerk_status = row
    if tok.revoked_at is not None or (tok.clerk_id is not None and clerk_status != "active"):
        return None
    return Principal(tok.id, tok.role, tok.store_id, tok.clerk_id, tok.name)


async def revoke(session, now: datetime, *, token_ids: list[int] | None = None, clerk_id: int | None = None,
                 forget: Callable[[], None] | None = None) -> list[int]:
    """Revoke the given tokens, or every live token of a clerk, inside the caller's transaction.
    Returns the ids newly revoked. Caches hear of it when the transaction commits: this
    instance's through `forget`, every instance's through NOTIFY on PostgreSQL."""
    q = update(ApiToken).where(ApiToken.revoked_at.is_(None))
    if token_ids is not None:
        q = q.where(ApiToken.id.in_(token_ids))
    elif clerk_id is not None:
        q = q.where(ApiToken.clerk_id == clerk_id)
    else:
        raise ValueError("revoke what: token_ids or clerk_id")
    ids = list((await session.execute(q.values(revoked_at=now).returning(ApiToken.id))).scalars())
    if not ids:
        return ids
    if session.bind.dialect.name == "postgresql":  # sent at COMMIT, dropped on ROLLBACK
        await session.execute(text("SELECT pg_notify(:channel, :ids)"),
                              {"channel": REVOKED_CHANNEL, "ids": json.dumps(ids)[:7000]})
    if forget is not None:
        event.listen(session.sync_session, "after_commit", lambda _s: forget(), once=True)
    return ids
