"""Signatures that cover no body (DingTalk's robot `sign` covers only the timestamp), each bound to
the message it first came with, in the database so every instance sees the same binding."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import delete, select

from gateway.models import CallbackSignature
from gateway.sql import insert_ignore

PURGE_EVERY = 60.0  # seconds between clean-ups of expired bindings (on the ack path: kept rare)


class SignatureBook:
    def __init__(self, db, clock):
        self._db, self._clock = db, clock
        self._purged_at: datetime | None = None

    async def bind(self, account: str, sign: str, msg_id: str, until: datetime) -> bool:
        """True if `sign` is new (now bound to msg_id until `until`) or already bound to msg_id (the
        platform's retry); False if another message came with it first. One INSERT on the usual
        path; the primary key (account, sign) decides races between instances."""
        now = self._clock.now()
        async with self._db() as s:
            if self._purged_at is None or (now - self._purged_at).total_seconds() >= PURGE_EVERY:
                self._purged_at = now
                await s.execute(delete(CallbackSignature).where(CallbackSignature.expires_at < now))
            stmt = insert_ignore(s, CallbackSignature, conflict=["account", "sign"]).values(
                account=account, sign=sign, msg_id=msg_id, expires_at=until)
            fresh = (await s.execute(stmt.returning(CallbackSignature.msg_id))).first() is not None
            bound = None if fresh else (await s.execute(select(CallbackSignature.msg_id).where(
                CallbackSignature.account == account, CallbackSignature.sign == sign))).scalar()
            await s.commit()
        return fresh or bound in (None, msg_id)  # None: purged meanwhile, so expired anyway
