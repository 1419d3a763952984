"""In-process caches of what rarely changes and every message needs: clerks' work-IM ids and
stores' opening hours. The database stays the truth; a write through the admin API, an import or
an org event calls `invalidate`, which clears this process at once and, through the hub, every
other instance (PostgreSQL NOTIFY). After a lost hub connection everything is cleared, since
notifications may have been missed meanwhile."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from sqlalchemy import select

from gateway.model import Identity
from gateway.models import ClerkIdentity, Store
from gateway.service import parse_hours

WORK_IDS, HOURS = "work_ids", "hours"
KINDS = (WORK_IDS, HOURS)


class Caches:
    def __init__(self) -> None:
        self._clerk_of: dict[Identity, int | None] = {}  # a work-IM user → clerk id (None: not a clerk)
        self._ids_of: dict[int, list[Identity]] = {}  # clerk id → their work-IM ids, oldest first
        self._hours: dict[int, dict | None] = {}  # store id → parsed opening hours (None: always open)
        self.broadcast: Callable[[str], None] | None = None  # set by the runtime: tell other instances
        self.loads = 0  # statements spent filling the caches, for benchmarks

    def invalidate(self, kind: str, *, local_only: bool = False) -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown cache {kind!r}")
        if kind == WORK_IDS:
            self._clerk_of.clear()
            self._ids_of.clear()
        else:
            self._hours.clear()
        if not local_only and self.broadcast is not None:
            self.broadcast(kind)

    def clear(self) -> None:
        for kind in KINDS:
            self.invalidate(kind, local_only=True)

    # -- clerks' work-IM identities -----------------------------------------------------------

    async def clerks_of(self, session, idents: Iterable[Identity]) -> dict[Identity, int | None]:
        """Which clerk each work-IM user is (the workbench's user id is the clerk id itself)."""
        out, missing = {}, []
        for ident in idents:
            if ident.platform == "workbench":
                out[ident] = int(ident.external_id) if ident.external_id.isdigit() else None
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
        missing = [s for s in set(store_ids) if s not in self._hours]
        if missing:
            self.loads += 1
            rows = (await session.execute(select(Store.id, Store.opening_hours).where(Store.id.in_(missing)))).all()
            for sid in missing:
                self._hours[sid] = None
            for sid, spec in rows:
                self._hours[sid] = parse_hours(spec)
        return {s: self._hours[s] for s in store_ids}
