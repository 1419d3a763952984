"""What a batch's handlers read, loaded before any of them runs: one query per table for the whole
batch (the senders' customers with their advisors, handles, clerks' focus, reply channels, open
waits), plus the in-process caches for clerks' work ids and stores' hours.

Handlers marked `staged` read only these snapshots and stage their writes (gateway/writes.py);
the snapshots are frozen, so a handler cannot change one and believe it saved. A handler that
needs the session (binds, commands, anything rare) gets the ORM objects instead, and the lookups
of the events after it are loaded again, since it may have changed what they show.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from sqlalchemy import select, tuple_

from gateway.addressing import address_of
from gateway.caches import Caches
from gateway.focus import Focus, recent_focus, shown_at
from gateway.model import Event, Identity
from gateway.models import Binding, Clerk, Conversation, Customer, Handle
from gateway.models import Identity as IdentityRow


@dataclass(frozen=True, slots=True)
class CustomerView:
    id: int
    name: str | None
    store_id: int | None
    erased_at: datetime | None
    opted_out_at: datetime | None
    last_identity_id: int | None
    merged_into_id: int | None


@dataclass(frozen=True, slots=True)
class IdentityView:
    id: int
    customer_id: int
    platform: str
    account: str
    external_id: str
    unionid: str | None
    profile: dict | None
    window_at: datetime | None
    window_kind: str | None
    last_seen_at: datetime | None

    @property
    def address(self) -> Identity:
        return Identity(self.platform, self.account, self.external_id)


@dataclass(frozen=True, slots=True)
class BindingView:
    id: int
    customer_id: int
    clerk_id: int
    store_id: int | None


@dataclass(frozen=True, slots=True)
class ClerkView:
    id: int
    name: str
    display_name: str
    store_id: int
    role: str
    status: str
    last_work_account: str | None


@dataclass(frozen=True, slots=True)
class WaitView:
    """A customer's open wait for their advisor (a conversation not yet answered)."""

    id: int | None  # None: opened by this batch, not yet written
    clerk_id: int | None
    store_id: int | None
    started_at: datetime


_I, _C, _B, _K = IdentityRow.__table__, Customer.__table__, Binding.__table__, Clerk.__table__
_IDENTITY_COLS = (_I.c.id, _I.c.customer_id, _I.c.platform, _I.c.account, _I.c.external_id, _I.c.unionid,
                  _I.c.profile, _I.c.window_at, _I.c.window_kind, _I.c.last_seen_at)
_CUSTOMER_COLS = (_C.c.id, _C.c.name, _C.c.store_id, _C.c.erased_at, _C.c.opted_out_at, _C.c.last_identity_id,
                  _C.c.merged_into_id)
_BINDING_COLS = (_B.c.id, _B.c.customer_id, _B.c.clerk_id, _B.c.store_id)
_CLERK_COLS = (_K.c.id, _K.c.name, _K.c.display_name, _K.c.store_id, _K.c.role, _K.c.status, _K.c.last_work_account)


def _split(row, *groups) -> list[tuple]:
    out, i = [], 0
    for n in groups:
        out.append(tuple(row[i:i + n]))
        i += n
    return out


@dataclass
class Lookups:
    identities: dict[Identity, IdentityView] = field(default_factory=dict)  # customer-side senders
    customers: dict[int, CustomerView] = field(default_factory=dict)
    bindings: dict[int, BindingView | None] = field(default_factory=dict)  # by customer; None: no advisor
    clerks: dict[int, ClerkView] = field(default_factory=dict)
    clerk_of: dict[Identity, int | None] = field(default_factory=dict)  # clerk-side senders
    handles: dict[tuple[int, int], int] = field(default_factory=dict)  # (clerk, customer) → n
    by_handle: dict[tuple[int, int], int] = field(default_factory=dict)  # (clerk, n) → customer
    focus: dict[int, list[Focus]] = field(default_factory=dict)  # clerk → their recent focus rows, newest first
    channels: dict[int, IdentityView] = field(default_factory=dict)  # customer → their reply channel
    work_ids: dict[int, list[Identity]] = field(default_factory=dict)  # clerk → work-IM ids
    hours: dict[int, dict | None] = field(default_factory=dict)  # store → opening hours
    waits: dict[int, WaitView | None] = field(default_factory=dict)  # customer → open wait
    shown: dict[str, datetime | None] = field(default_factory=dict)  # relay key → when its clerk got it
    stale: bool = False  # a handler used the session: load again before the next event

    # -- what handlers change during the batch (staged alongside the writes) -----------------

    def set_focus(self, f: Focus) -> None:
        self.focus[f.clerk_id] = [f, *self.focus.get(f.clerk_id, [])]

    def set_identity(self, ident: IdentityView, **changes: Any) -> IdentityView:
        new = replace(ident, **changes)
        self.identities[ident.address] = new
        return new

    def set_channel(self, customer: CustomerView, ident: IdentityView) -> CustomerView:
        """The customer wrote from another of their channels: replies go there from now on."""
        new = replace(customer, last_identity_id=ident.id)
        self.customers[customer.id] = new
        self.channels[customer.id] = ident
        return new

    def set_wait(self, customer_id: int, wait: WaitView | None) -> None:
        self.waits[customer_id] = wait

    def clerk_target(self, clerk: ClerkView, clerk_accounts: dict[str, str]):
        from gateway.advisors import pick_clerk_target

        return pick_clerk_target(clerk.id, clerk.last_work_account, self.work_ids.get(clerk.id, []), clerk_accounts)

    # -- loading --------------------------------------------------------------------------------

    @classmethod
    async def load(cls, session, events: list[Event], caches: Caches) -> Lookups:
        lk = cls()
        customer_side = {e.sender for e in events if e.side == "customer"}
        clerk_side = [e for e in events if e.side == "clerk"]
        if customer_side:
            await lk._load_customer_senders(session, customer_side)
        clerk_ids: set[int] = {b.clerk_id for b in lk.bindings.values() if b is not None}
        if clerk_side:
            lk.clerk_of = await caches.clerks_of(session, {e.sender for e in clerk_side})
            senders = {c for c in lk.clerk_of.values() if c is not None}
            await lk._load_clerks(session, senders - lk.clerks.keys())
            clerk_ids |= senders
        if clerk_ids:
            lk.focus = await recent_focus(session, clerk_ids)
            lk.work_ids = await caches.work_ids(session, clerk_ids)
        # Customers the clerks' messages will reach: by #n, by quote, or their focus (and the others
        # they met lately, for the question when bare text is ambiguous).
        pairs = {(b.clerk_id, b.customer_id) for b in lk.bindings.values() if b is not None}
        numbers, wanted, relay_keys = set(), set(), set()
        for e in clerk_side:
            clerk_id, addr = lk.clerk_of.get(e.sender), address_of(e)
            if clerk_id is None or addr is None:
                continue
            if addr.handle is not None:
                numbers.add((clerk_id, addr.handle))
            mine: set[int] = set()
            for f in lk.focus.get(clerk_id, []):
                if addr.handle is None and f.relay_key:
                    relay_keys.add(f.relay_key)
                mine |= {c for c in (f.customer_id, f.previous_customer_id) if c is not None}
                if f.held and f.held.get("candidates"):
                    mine |= set(f.held["candidates"])
            wanted |= mine
            pairs |= {(clerk_id, c) for c in mine}
        await lk._load_handles(session, pairs, numbers)
        if relay_keys:  # bare text: when did each recent relay reach the clerk (gateway/focus.py)?
            lk.shown = await shown_at(session, relay_keys)
        # Customers clerks address by #n (senders of customer messages came with their channel).
        wanted |= {lk.by_handle[kn] for kn in numbers if kn in lk.by_handle}
        await lk._load_customers(session, wanted - lk.channels.keys())
        waiting = set(lk.customers)
        if waiting:
            await lk._load_waits(session, waiting)
        stores = {b.store_id for b in lk.bindings.values() if b is not None and b.store_id is not None}
        if stores:
            lk.hours = await caches.hours(session, stores)
        return lk

    async def _load_customer_senders(self, session, senders: set[Identity]) -> None:
        rows = (await session.execute(
            select(*_IDENTITY_COLS, *_CUSTOMER_COLS, *_BINDING_COLS, *_CLERK_COLS)
            .select_from(_I.join(_C, _C.c.id == _I.c.customer_id)
                         .outerjoin(_B, (_B.c.customer_id == _C.c.id) & _B.c.valid_to.is_(None))
                         .outerjoin(_K, _K.c.id == _B.c.clerk_id))
            .where(tuple_(_I.c.platform, _I.c.account, _I.c.external_id).in_(
                [(i.platform, i.account, i.external_id) for i in senders]))
        )).all()
        for row in rows:
            ident, cust, bind, clerk = _split(row, len(_IDENTITY_COLS), len(_CUSTOMER_COLS), len(_BINDING_COLS),
                                              len(_CLERK_COLS))
            iv = IdentityView(*ident)
            self.identities[iv.address] = iv
            self.customers[cust[0]] = view = CustomerView(*cust)
            if view.last_identity_id == iv.id:  # their reply channel, should a clerk in this batch answer
                self.channels[cust[0]] = iv
            self.bindings[cust[0]] = BindingView(*bind) if bind[0] is not None else None
            if clerk[0] is not None:
                self.clerks[clerk[0]] = ClerkView(*clerk)

    async def _load_clerks(self, session, ids: set[int]) -> None:
        if ids:
            for row in (await session.execute(select(*_CLERK_COLS).where(_K.c.id.in_(ids)))).all():
                self.clerks[row[0]] = ClerkView(*row)

    async def _load_handles(self, session, pairs: set[tuple[int, int]], numbers: set[tuple[int, int]]) -> None:
        h = Handle.__table__
        conds = []
        if pairs:
            conds.append(tuple_(h.c.clerk_id, h.c.customer_id).in_(sorted(pairs)))
        if numbers:
            conds.append(tuple_(h.c.clerk_id, h.c.n).in_(sorted(numbers)))
        if not conds:
            return
        from sqlalchemy import or_

        for clerk_id, customer_id, n in (await session.execute(
                select(h.c.clerk_id, h.c.customer_id, h.c.n).where(or_(*conds)))).all():
            self.handles[(clerk_id, customer_id)] = n
            self.by_handle[(clerk_id, n)] = customer_id

    async def _load_customers(self, session, ids: set[int]) -> None:
        """Customers a clerk addresses, with their advisor and the channel they last wrote from."""
        if not ids:
            return
        last = _I.alias("last")
        rows = (await session.execute(
            select(*_CUSTOMER_COLS, *_BINDING_COLS, *(last.c[c.key] for c in _IDENTITY_COLS))
            .select_from(_C.outerjoin(_B, (_B.c.customer_id == _C.c.id) & _B.c.valid_to.is_(None))
                         .outerjoin(last, last.c.id == _C.c.last_identity_id))
            .where(_C.c.id.in_(ids))
        )).all()
        for row in rows:
            cust, bind, ident = _split(row, len(_CUSTOMER_COLS), len(_BINDING_COLS), len(_IDENTITY_COLS))
            self.customers[cust[0]] = CustomerView(*cust)
            self.bindings[cust[0]] = BindingView(*bind) if bind[0] is not None else None
            if ident[0] is not None:
                self.channels[cust[0]] = IdentityView(*ident)

    async def _load_waits(self, session, customer_ids: set[int]) -> None:
        c = Conversation.__table__
        for cid in customer_ids:
            self.waits[cid] = None
        for id_, customer_id, clerk_id, store_id, started_at in (await session.execute(
                select(c.c.id, c.c.customer_id, c.c.clerk_id, c.c.store_id, c.c.started_at)
                .where(c.c.customer_id.in_(customer_ids), c.c.first_reply_at.is_(None)))).all():
            self.waits[customer_id] = WaitView(id_, clerk_id, store_id, started_at)
