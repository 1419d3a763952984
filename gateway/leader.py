"""Which instance leads the campaign scheduler.

On PostgreSQL the leader is whoever holds a session advisory lock on its own connection. If the
leader dies (even by kill -9) the server sees the connection close and frees the lock; another
instance takes it at its next check. On SQLite there is one process: it leads.
"""

from __future__ import annotations

import logging

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

log = logging.getLogger("gateway.leader")

LOCK_KEY = 0x47570001  # "GW" + 1: the scheduler's advisory lock


class Leadership:
    def __init__(self, engine: AsyncEngine, key: int = LOCK_KEY):
        self.engine, self.key = engine, key
        self.is_leader = False
        self._conn: AsyncConnection | None = None

    async def check(self) -> bool:
        """True while this instance leads; tries to become leader when nobody does."""
        if self.engine.dialect.name != "postgresql":
            self.is_leader = True
            return True
        if self._conn is not None:
            try:  # still ours while the connection lives
                await self._conn.execute(text("SELECT 1"))
                return True
            except Exception:  # noqa: BLE001 - the lock went with the connection (DB restart, network)
                log.warning("lost the scheduler leadership: its database connection failed")
                await self._drop()
        conn = await self.engine.connect()
        try:
            await conn.execution_options(isolation_level="AUTOCOMMIT")  # no transaction held open
            got = (await conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": self.key})).scalar()
        except BaseException:
            await conn.close()
            raise
        if got:
            self._conn, self.is_leader = conn, True
            log.info("this instance now leads the campaign scheduler")
        else:
            await conn.close()
        return self.is_leader

    async def _drop(self) -> None:
        conn, self._conn, self.is_leader = self._conn, None, False
        if conn is not None:
            try:
                await conn.invalidate()  # never back to the pool: its session may still hold the lock
            except Exception:  # noqa: BLE001
                pass

    async def release(self) -> None:
        if self._conn is not None:
            try:
                await self._conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": self.key})
                await self._conn.close()
            except Exception:  # noqa: BLE001 - closing the connection frees it anyway
                await self._drop()
        self._conn, self.is_leader = None, False
