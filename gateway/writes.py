"""What a batch's handlers write, kept in order and written set-wise at the end of the batch (or
before a handler that needs the session): one multi-row statement per table, whatever the size
of the batch. Every row is written in the batch's transaction, so exactly-once and "nothing
acknowledged is lost" hold as before; only the number of round trips changes."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import bindparam, insert, update

from gateway.focus import Focus, append
from gateway.interactions import TYPES
from gateway.models import ChatMessage, Clerk, Conversation, Customer, Interaction
from gateway.models import Identity as IdentityRow
from gateway.outbox import Outgoing
from gateway.sql import insert_ignore

if TYPE_CHECKING:
    from gateway.outbox import OutboxWorker


@dataclass
class Writes:
    outbox: OutboxWorker
    inbound: list[dict] = field(default_factory=list)  # message rows from the peers
    interactions: list[dict] = field(default_factory=list)
    sends: list[Outgoing] = field(default_factory=list)
    waits_opened: dict[int, dict] = field(default_factory=dict)  # customer → conversation row
    waits_answered: dict[int, int] = field(default_factory=dict)  # customer → the clerk who answered
    waits_reopened: dict[int, dict] = field(default_factory=dict)  # opened again after this batch answered
    focus: list[Focus] = field(default_factory=list)
    identities: dict[int, dict] = field(default_factory=dict)  # identity id → columns to set
    customers: dict[int, dict] = field(default_factory=dict)
    clerks: dict[int, dict] = field(default_factory=dict)
    statements: int = 0  # for benchmarks: statements per batch

    def message_in(self, row: dict) -> None:
        self.inbound.append(row)

    def log(self, type_: str, *, occurred_at: datetime, customer_id=None, clerk_id=None, store_id=None,
            campaign_id=None, payload: dict[str, Any] | None = None) -> None:
        if type_ not in TYPES:
            raise ValueError(f"unknown interaction type {type_!r}")
        self.interactions.append({"type": type_, "occurred_at": occurred_at, "customer_id": customer_id,
                                  "clerk_id": clerk_id, "store_id": store_id, "campaign_id": campaign_id,
                                  "payload": payload or {}})

    def send(self, item: Outgoing) -> None:
        self.sends.append(item)

    def open_wait(self, customer_id: int, clerk_id: int | None, store_id: int | None, at: datetime) -> None:
        row = {"customer_id": customer_id, "clerk_id": clerk_id, "store_id": store_id, "started_at": at}
        (self.waits_reopened if customer_id in self.waits_answered else self.waits_opened).setdefault(customer_id, row)

    def answer_wait(self, customer_id: int, clerk_id: int) -> None:
        self.waits_answered.setdefault(customer_id, clerk_id)

    def set_focus(self, f: Focus) -> None:
        self.focus.append(f)

    def update_identity(self, identity_id: int, **values: Any) -> None:
        self.identities.setdefault(identity_id, {}).update(values)

    def update_customer(self, customer_id: int, **values: Any) -> None:
        self.customers.setdefault(customer_id, {}).update(values)

    def update_clerk(self, clerk_id: int, **values: Any) -> None:
        self.clerks.setdefault(clerk_id, {}).update(values)

    @property
    def empty(self) -> bool:
        return not (self.inbound or self.interactions or self.sends or self.waits_opened or self.waits_answered
                    or self.waits_reopened or self.focus or self.identities or self.customers or self.clerks)

    async def flush(self, session, now: datetime) -> None:
        """Write everything staged so far, in dependency order, and start over."""
        if self.empty:
            return
        n = 0
        if self.inbound:
            await session.execute(insert(ChatMessage.__table__), self.inbound)
            n += 1
        if self.sends:
            await self.outbox.write_many(session, self.sends)
            n += 2
        conv = Conversation.__table__
        n += await _open_waits(session, self.waits_opened)
        if self.waits_answered:
            answered = (await session.execute(
                update(conv).where(conv.c.customer_id.in_(sorted(self.waits_answered)), conv.c.first_reply_at.is_(None))
                .values(first_reply_at=now).returning(conv.c.id, conv.c.customer_id, conv.c.store_id, conv.c.started_at)
            )).all()
            for cid_, customer_id, store_id, started_at in answered:
                self.log("first_reply", occurred_at=now, customer_id=customer_id,
                         clerk_id=self.waits_answered[customer_id], store_id=store_id,
                         payload={"conversation_id": cid_, "seconds": int((now - started_at).total_seconds())})
            n += 1
        n += await _open_waits(session, self.waits_reopened)
        if self.interactions:
            await session.execute(insert(Interaction.__table__), self.interactions)
            n += 1
        if self.focus:
            await append(session, self.focus)
            n += 1
        for table, changes in ((IdentityRow.__table__, self.identities), (Customer.__table__, self.customers),
                               (Clerk.__table__, self.clerks)):
            n += await _update_rows(session, table, changes)
        self.statements += n
        self.inbound, self.interactions, self.sends, self.focus = [], [], [], []
        self.waits_opened, self.waits_answered, self.waits_reopened = {}, {}, {}
        self.identities, self.customers, self.clerks = {}, {}, {}


async def _open_waits(session, rows: dict[int, dict]) -> int:
    """In customer order: two batches never take these index entries in opposite orders."""
    if not rows:
        return 0
    conv = Conversation.__table__
    await session.execute(insert_ignore(session, Conversation, conflict=["customer_id"],
                                        where=conv.c.first_reply_at.is_(None)), [rows[c] for c in sorted(rows)])
    return 1


async def _update_rows(session, table, changes: dict[int, dict]) -> int:
    """Per-row updates as one executemany per set of columns, in id order (a consistent lock order)."""
    shapes: dict[tuple, list[dict]] = {}
    for id_ in sorted(changes):
        values = changes[id_]
        shapes.setdefault(tuple(sorted(values)), []).append({"_id": id_, **{f"v_{k}": v for k, v in values.items()}})
    for cols, rows in shapes.items():
        await session.execute(update(table).where(table.c.id == bindparam("_id"))
                              .values({c: bindparam(f"v_{c}") for c in cols}), rows)
    return len(shapes)
