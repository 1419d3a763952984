"""Signatures that cover no body (DingTalk's robot `sign` covers only the timestamp), each bound to
the message it first came with, in the database so every instance sees the same binding."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import delete, select, tuple_

from gateway.batch import Batcher
from gateway.models import CallbackSignature
from gateway.sql import insert_ignore

PURGE_EVERY = 60.0  # seconds between clean-ups of expired bindings (on the ack path: kept rare)


class SignatureBook:
    def __init__(self, db, clock):
        self._db, self._clock = db, clock
        self._purged_at: datetime | None = None
        # Callbacks that arrive together are bound together: one INSERT and commit for all of
        # them, as claims are. A transaction per callback, on the ack path, was what DingTalk's
        # acks waited for under load (bench/inbound.py --rate 1000: ack p99 50 s).
        self._batch = Batcher(self._bind_many, name="signatures")

    async def bind(self, account: str, sign: str, msg_id: str, until: datetime) -> bool:
        """True if `sign` is new (now bound to msg_id until `until`) or already bound to msg_id (the
        platform's retry); False if another message came with it first. The primary key
        (account, sign) decides races between instances."""
        return await self._batch.submit((account, sign, msg_id, until))

    async def close(self) -> None:
        await self._batch.close()

    async def _bind_many(self, items: list[tuple[str, str, str, datetime]]) -> list[bool]:
        now = self._clock.now()
        t = CallbackSignature.__table__
        rows, first = [], {}
        for account, sign, msg_id, until in items:  # the same sign twice in one batch: the first binds
            if (account, sign) not in first:
                first[(account, sign)] = msg_id
                rows.append({"account": account, "sign": sign, "msg_id": msg_id, "expires_at": until})
        async with self._db() as s:
            if self._purged_at is None or (now - self._purged_at).total_seconds() >= PURGE_EVERY:
                self._purged_at = now
                await s.execute(delete(t).where(t.c.expires_at < now))
            fresh = {(a, g) for a, g in (await s.execute(
                insert_ignore(s, CallbackSignature, conflict=["account", "sign"]).returning(t.c.account, t.c.sign),
                rows)).all()}
            older = [key for key in first if key not in fresh]
            bound = dict(((a, g), m) for a, g, m in (await s.execute(
                select(t.c.account, t.c.sign, t.c.msg_id).where(tuple_(t.c.account, t.c.sign).in_(older)))).all()
            ) if older else {}
            await s.commit()
        out = []
        for account, sign, msg_id, _ in items:
            key = (account, sign)
            owner = first[key] if key in fresh else bound.get(key)  # None: purged meanwhile, so expired anyway
            out.append(owner in (None, msg_id))
        return out
