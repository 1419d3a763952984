"""Platform caps shared by every process of the gateway, kept in the database.

- `SendQuota`: per-recipient counts the platforms enforce silently (WeCom: 30 app messages a minute
  and 1,000 an hour per member; DingTalk: 500 work notices a day per user, the same content once a
  day). A send takes its place in `send_log` before the call, under a per-key lock, so N instances
  together never pass the cap; a failed call gives it back.
- `SharedPace`: an account's calls per second (DingTalk ≈ 20/s per app), as GCRA virtual
  scheduling on one row per account: each call reserves the next slot and sleeps until it.

Adapters reach these through the host (typed ports); they never see the database.
"""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from sqlalchemy import case, delete, func, insert, select, text

from gateway.models import SendLog

if TYPE_CHECKING:
    from gateway.clock import Clock

@dataclass(frozen=True, slots=True)
class Window:
    """At most `limit` sends counted since `since`. Sliding windows give their `span` (a send counts
    while it is younger than `span`: `since` = now - span, exclusive); a calendar window (today,
    from `since` inclusive) frees all at once at its end."""

    since: datetime
    limit: int
    span: timedelta | None = None

    def holds(self, at):
        return at > self.since if self.span is not None else at >= self.since


@dataclass(frozen=True, slots=True)
class Full:
    window: int  # which window is full
    frees_at: datetime | None  # when enough places free up (sliding windows)


class SendQuota:
    def __init__(self, db, clock: Clock):
        self._db, self._clock = db, clock

    async def take(self, key: str, windows: list[Window], n: int = 1) -> Full | None:
        """Record `n` sends to `key` if every window has room for them and return None; else
        record nothing and say which window is full and when it frees up."""
        now = self._clock.now()
        log = SendLog.__table__
        async with self._db() as s:
            if s.bind.dialect.name == "postgresql":  # SQLite's BEGIN IMMEDIATE already serialises
                lock = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big", signed=True)
                await s.execute(select(func.pg_advisory_xact_lock(lock)))
            counts = (await s.execute(
                select(*(func.coalesce(func.sum(case((w.holds(log.c.at), 1), else_=0)), 0) for w in windows))
                .where(log.c.key == key, log.c.at >= min(w.since for w in windows))
            )).one()
            for i, (w, used) in enumerate(zip(windows, counts, strict=True)):
                if used + n > w.limit:
                    frees_at = None
                    if w.span is not None:  # the send whose leaving makes room for n more
                        first = (await s.execute(
                            select(log.c.at).where(log.c.key == key, w.holds(log.c.at)).order_by(log.c.at)
                            .offset(max(0, used + n - w.limit - 1)).limit(1))).scalar()
                        frees_at = first + w.span if first is not None else now + w.span
                    return Full(i, frees_at)
            await s.execute(insert(log), [{"key": key, "at": now}] * n)
            await s.commit()
        return None

    async def give_back(self, key: str, n: int = 1) -> None:
        """A send counted by `take` did not happen: free its places."""
        log = SendLog.__table__
        async with self._db() as s:
            newest = select(log.c.id).where(log.c.key == key).order_by(log.c.id.desc()).limit(n)
            await s.execute(delete(log).where(log.c.id.in_(newest)))
            await s.commit()

    async def purge(self, keep: timedelta = timedelta(days=2)) -> int:
        log = SendLog.__table__
        async with self._db() as s:
            res = await s.execute(delete(log).where(log.c.at < self._clock.now() - keep))
            await s.commit()
        return res.rowcount or 0


_PACE = text("""
INSERT INTO rate_slot (account, tat) VALUES (:account, clock_timestamp() + make_interval(secs => :interval))
ON CONFLICT (account) DO UPDATE
   SET tat = greatest(rate_slot.tat, clock_timestamp()) + make_interval(secs => :interval)
RETURNING extract(epoch FROM (rate_slot.tat - clock_timestamp()))
""")


class SharedPace:
    """The token bucket's interface (`acquire`), paced in PostgreSQL across every process."""

    def __init__(self, engine, account: str, rate: float, burst: int, late_ok: float = 0.0):
        self._engine, self.account = engine, account
        self.rate, self.interval = float(rate), 1.0 / float(rate)
        # How late after its slot a call may still go: the caller paces below the platform's cap,
        # which absorbs calls each late by up to that much (see OutboxWorker.limiter). At least a
        # quarter interval. A quarter interval alone is 1.75 ms at WeCom's 150/s and microseconds
        # for a lifted cap: nearly every slot was given up (the round trip that reserved it was
        # longer) and the next reserved, so the lane spun on the database and sent almost nothing.
        self.late_ok = max(late_ok, self.interval / 4)
        self.tolerance = max(0, burst - 1) * self.interval  # GCRA's burst allowance
        self.waited = 0.0  # total seconds spent waiting, for metrics
        self.waits = 0
        self.missed = 0  # slots given up because this process woke too late for them

    async def acquire(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            asked = loop.time()
            async with self._engine.connect() as c:
                ahead = (await c.execute(_PACE, {"account": self.account, "interval": self.interval})).scalar()
                await c.commit()
            # Our slot starts one interval before the new TAT (measured from when we asked).
            wait = float(ahead) - self.interval - self.tolerance - (loop.time() - asked)
            if wait > 0:
                self.waited += wait
                self.waits += 1
                await asyncio.sleep(wait)
            late = loop.time() - (asked + max(0.0, float(ahead) - self.interval - self.tolerance))
            if late <= self.late_ok:
                return
            # Woken too late (a busy loop, a slow database): calling now would crowd the next
            # process's slot. Give this one up and take the next free one.
            self.missed += 1
