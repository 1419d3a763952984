"""In-process caches of what rarely changes and every message needs: clerks' work-IM ids and
stores' opening hours. The database stays the truth. A transaction that changes one calls
`changed(session, kind)`: on commit this process drops the cache, and on PostgreSQL a NOTIFY sent
in the same transaction (so only if it commits) makes every other process — other instances,
`--workers`, a `gateway import` run — drop theirs (the hub listens; after a lost connection it
clears everything, since notifications may have been missed). On SQLite, where no other process
can be told, entries also expire after `max_age` seconds."""

from __future__ import annotations

import time
from collections.abc import Iterable

from sqlalchemy import event, func, select

from gateway.advisors import workbench_clerk_id
from gateway.model import Identity
from gateway.models import ClerkIdentity, Store
from gateway.service import parse_hours

WORK_IDS, HOURS = "work_ids", "hours"
KINDS = (WORK_IDS, HOURS)


CHANNEL = "gw_cache"  # PostgreSQL NOTIFY channel: the payload is the kind that changed


class Caches:
    def __init__(self, *, max_age: float | None = None, monotonic=time.monotonic) -> None:
        self._clerk_of: dict[Identity, int | None] = {}  # a work-IM user → clerk id (None: not a clerk)
        self._ids_of: dict[int, list[Identity]] = {}  # clerk id → their work-IM ids, oldest first
        self._hours: dict[int, dict | None] = {}  # store id → parsed opening hours (None: always open)
        self._filled = {kind: monotonic() for kind in KINDS}
        self.max_age, self._monotonic = max_age, monotonic
        self.loads = 0  # statements spent filling the caches, for benchmarks

    def invalidate(self, kind: str) -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown cache {kind!r}")
        if kind == WORK_IDS:
            self._clerk_of.clear()
            self._ids_of.clear()
        else:
            self._hours.clear()
        self._filled[kind] = self._monotonic()

    def clear(self) -> None:
        for kind in KINDS:
            self.invalidate(kind)

    def _fresh(self, kind: str) -> None:
        if self.max_age is not None and self._monotonic() - self._filled[kind] > self.max_age:
            self.invalidate(kind)

    async def changed(self, session, kind: str) -> None:
        """`session`'s transaction changes `kind`: drop it here now and on commit (another batch may
        have refilled it from the old rows meanwhile), and everywhere on PostgreSQL."""
        if kind not in KINDS:
            raise ValueError(f"unknown cache {kind!r}")
        self.invalidate(kind)  # this transaction's later reads must not use the old entries either
        event.listen(session.sync_session, "after_commit", lambda _s: self.invalidate(kind), once=True)
        if session.bind.dialect.name == "postgresql":
            await session.execute(select(func.pg_notify(CHANNEL, kind)))

    # -- clerks' work-IM identities -----------------------------------------------------------

    async def clerks_of(self, session, idents: Iterable[Identity]) -> dict[Identity, int | None]:
        """Which clerk each work-IM user is (the workbench's user id is the clerk id itself)."""
        self._fresh(WORK_IDS)
        out, missing = {}, []
        for ident in idents:
            if ident.platform == "workbench":
                out[ident] = workbench_clerk_id(ident.platform, ident.external_id)
            elif ident in self._clerk_of:
                out[ident] = self._clerk_of[ident]
            else:
                missing.append(ident)
        if missing:
            from sqlalchemy import tuple_

            ci = ClerkIdentity.__table__
            self.loads += 1
            rows = (await session.execute(
                select(ci.c.platform, ci.c.account, ci.c.external_id, ci.c.clerk_id)
                .where(tuple_(ci.c.platform, ci.c.account, ci.c.external_id).in_(
                    [(i.platform, i.account, i.external_id) for i in set(missing)]))
            )).all()
            found = {Identity(p, a, x): cid for p, a, x, cid in rows}
            for ident in missing:
                self._clerk_of[ident] = out[ident] = found.get(ident)
        return out

    async def work_ids(self, session, clerk_ids: Iterable[int]) -> dict[int, list[Identity]]:
        self._fresh(WORK_IDS)
        missing = [c for c in set(clerk_ids) if c not in self._ids_of]
        if missing:
            ci = ClerkIdentity.__table__
            self.loads += 1
            rows = (await session.execute(
                select(ci.c.clerk_id, ci.c.platform, ci.c.account, ci.c.external_id)
                .where(ci.c.clerk_id.in_(missing)).order_by(ci.c.id)
            )).all()
            for c in missing:
                self._ids_of[c] = []
            for cid, p, a, x in rows:
                self._ids_of[cid].append(Identity(p, a, x))
        return {c: self._ids_of[c] for c in clerk_ids}

    # -- stores' opening hours -----------------------------------------------------------------

    async def hours(self, session, store_ids: Iterable[int]) -> dict[int, dict | None]:
        self._fresh(HOURS)
        missing = [s for s in set(store_ids) if s not in self._hours]
        if missing:
            self.loads += 1
            rows = (await session.execute(select(Store.id, Store.opening_hours).where(Store.id.in_(missing)))).all()
            for sid in missing:
                self._hours[sid] = None
            for sid, spec in rows:
                self._hours[sid] = parse_hours(spec)
        return {s: self._hours[s] for s in store_ids}
