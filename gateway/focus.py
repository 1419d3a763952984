"""A clerk's focus: the customer their bare text goes to, and whether it is safe to assume it.

The focus is an append-only log (`clerk_focus`), written with the batch that makes it:

- `shown`   a relay to the clerk, with its outbox key (`relay_key`): it counts from when it reached
            the clerk, which is the message's `sent_at`;
- `chosen`  the clerk addressed a customer (`#n text`, `#n`, a quoted reply), counting from `at`;
- `ask`     the clerk's bare text was ambiguous: it is held (`held`) and the clerk was asked.

The current customer is the one of the row the clerk met last — by when it reached them, not by
row id: two batches (two lanes, two instances) commit in their own order, so ids do not tell what
the clerk saw last. Bare text must never reach a customer the clerk has not seen as current: when
the last row is a relay that switched from another customer less than
`policies.reply_guard_seconds` before, or a relay has not reached the clerk yet, the gateway holds
the text and asks. A held question rides along on later rows until the clerk answers "#n" (the held
messages go to n) or it expires.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Integer, bindparam, delete, func, insert, select, union_all

from gateway.models import ClerkFocus

SHOWN, CHOSEN, ASK = "shown", "chosen", "ask"
HOLD_ANSWER = timedelta(minutes=10)  # how long an `ask` waits for the clerk's `#n`
RECENT = 8  # rows per clerk weighed: more than batches that can commit out of id order at once
_NOT_YET = datetime.max.replace(tzinfo=UTC)  # a relay still on its way: the clerk will meet it last


@dataclass(frozen=True, slots=True)
class Focus:
    clerk_id: int
    customer_id: int | None
    previous_customer_id: int | None
    kind: str
    at: datetime
    held: dict[str, Any] | None = None
    relay_key: str | None = None  # shown: the relay's outbox key, to tell when the clerk saw it

    def pending_ask(self, when: datetime) -> bool:
        """The clerk was asked "发给谁？" and has not answered: their held messages wait for "#n"."""
        return self.held is not None and when - datetime.fromisoformat(self.held["at"]) < HOLD_ANSWER


@dataclass(frozen=True, slots=True)
class Current:
    """What a clerk's bare text would reach, and whether that is a guess."""

    customer_id: int | None
    previous_customer_id: int | None  # the customer met before, if another one
    ambiguous: bool
    held: dict[str, Any] | None  # a question still open


def resolve(rows: list[Focus], shown: dict[str, datetime | None], now: datetime, guard: timedelta) -> Current:
    """The clerk's current customer from their recent rows (newest first) and when each relay
    reached them (`shown`: relay key → sent_at, None while on its way)."""
    if not rows:
        return Current(None, None, False, None)

    def met(f: Focus) -> datetime:
        if f.kind == SHOWN and f.relay_key:
            return shown.get(f.relay_key) or _NOT_YET
        return f.at

    ordered = [f for _, f in sorted(enumerate(rows), key=lambda p: (met(p[1]), -p[0]))]  # ties: newer last
    last = ordered[-1]
    previous = next((f.customer_id for f in reversed(ordered) if f.customer_id != last.customer_id), None)
    held = open_question(rows, now)
    switched = last.kind == SHOWN and previous is not None
    ambiguous = switched and (met(last) is _NOT_YET or now - met(last) < guard)
    ambiguous = ambiguous or any(met(f) is _NOT_YET and f.customer_id != last.customer_id for f in rows)
    return Current(last.customer_id, previous, ambiguous, held)


def open_question(rows: list[Focus], now: datetime) -> dict[str, Any] | None:
    """The held messages of a question still open: the clerk's own latest row (asked, or chose
    without answering) says so; relays carry it along but do not decide (another lane's relay may
    not have known it)."""
    mine = next((f for f in rows if f.kind in (ASK, CHOSEN)), None)
    return mine.held if mine is not None and mine.pending_ask(now) else None


def row(f: Focus) -> dict[str, Any]:
    return {"clerk_id": f.clerk_id, "customer_id": f.customer_id, "previous_customer_id": f.previous_customer_id,
            "kind": f.kind, "at": f.at, "held": f.held, "relay_key": f.relay_key}


async def recent_focus(session, clerk_ids, n: int = RECENT) -> dict[int, list[Focus]]:
    """Each clerk's last `n` focus rows, newest first: a backward probe of (clerk_id, id) per clerk,
    in one statement."""
    ids = sorted(set(clerk_ids))
    if not ids:
        return {}
    params = {"n": n, **{f"c{i}": cid for i, cid in enumerate(ids)}}
    rows = (await session.execute(_recent_statement(len(ids)), params)).all()
    out: dict[int, list[Focus]] = {cid: [] for cid in ids}
    for r in rows:
        out[r.clerk_id].append(Focus(*r))
    return out


@functools.lru_cache(maxsize=64)
def _recent_statement(clerks: int):
    """Built once per number of clerks, with the clerks and `n` as parameters: building it for
    every batch cost more CPU than running it."""
    f = ClerkFocus.__table__
    n = bindparam("n", type_=Integer)
    recent = union_all(*(select(sub.c.id) for sub in (
        select(f.c.id).where(f.c.clerk_id == bindparam(f"c{i}", type_=Integer)).order_by(f.c.id.desc()).limit(n)
        .subquery() for i in range(clerks))))
    return (select(f.c.clerk_id, f.c.customer_id, f.c.previous_customer_id, f.c.kind, f.c.at, f.c.held, f.c.relay_key)
            .where(f.c.id.in_(recent)).order_by(f.c.id.desc()))


async def current_of(session, clerk_id: int, now: datetime, guard: timedelta) -> Current:
    rows = (await recent_focus(session, [clerk_id]))[clerk_id]
    return resolve(rows, await shown_at(session, [f.relay_key for f in rows if f.relay_key]), now, guard)


async def shown_at(session, relay_keys) -> dict[str, datetime | None]:
    """When each relay reached its clerk (None: not yet, or never)."""
    from gateway.models import ChatMessage, Outbox

    keys = sorted({k for k in relay_keys if k})
    if not keys:
        return {}
    o, m = Outbox.__table__, ChatMessage.__table__
    rows = (await session.execute(
        select(o.c.idem_key, o.c.status, m.c.sent_at).select_from(o.outerjoin(m, m.c.id == o.c.message_id))
        .where(o.c.idem_key.in_(keys))
    )).all()
    sent = {k: at if status == "sent" else None for k, status, at in rows}
    return {k: sent.get(k) for k in keys}


async def current(session, clerk_id: int, now: datetime) -> int | None:
    """The clerk's current customer (for lists: no guard)."""
    return (await current_of(session, clerk_id, now, timedelta(0))).customer_id


async def append(session, rows: list[Focus]) -> None:
    if rows:
        await session.execute(insert(ClerkFocus.__table__), [row(r) for r in rows])


async def purge(session, older_than: datetime) -> int:
    """Old rows go; each clerk's latest stays whatever its age (it is the clerk's state)."""
    f = ClerkFocus.__table__
    keep = select(func.max(f.c.id)).group_by(f.c.clerk_id)
    res = await session.execute(delete(f).where(f.c.at < older_than, f.c.id.not_in(keep)))
    return res.rowcount or 0
