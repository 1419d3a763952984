"""A clerk's focus: the customer their bare text goes to, and whether it is safe to assume it.

The focus is an append-only log (`clerk_focus`); the latest row per clerk is the state:

- `shown`   a relay moved the focus to its customer (the previous one is kept on the row);
- `chosen`  the clerk addressed a customer (`#n text`, `#n`, a quoted reply);
- `ask`     the clerk's bare text was ambiguous: it is held (`held`) and the clerk was asked.

Bare text must never reach a customer the clerk has not seen as current. When the latest row is a
relay that moved the focus from one customer to another within `policies.reply_guard_seconds`
of the clerk's message, the clerk was probably still answering the previous customer: the gateway
holds the text and asks instead of guessing. A held question rides along on later rows until the
clerk answers "#n" (the held messages go to n) or it expires.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, insert, select

from gateway.models import ClerkFocus

SHOWN, CHOSEN, ASK = "shown", "chosen", "ask"
HOLD_ANSWER = timedelta(minutes=10)  # how long an `ask` waits for the clerk's `#n`


@dataclass(frozen=True, slots=True)
class Focus:
    clerk_id: int
    customer_id: int | None
    previous_customer_id: int | None
    kind: str
    at: datetime
    held: dict[str, Any] | None = None
    relay_key: str | None = None  # shown: the relay's outbox key, to tell when the clerk saw it

    def ambiguous(self, when: datetime, guard: timedelta, shown_at: datetime | None) -> bool:
        """A relay switched the clerk to another customer moments before `when` — or has not even
        reached the clerk yet (`shown_at` None: still queued, retried after a platform's refusal) —
        and the clerk has not chosen since: bare text may have been meant for the previous one."""
        if self.kind != SHOWN or self.previous_customer_id in (None, self.customer_id):
            return False
        seen = shown_at if self.relay_key else self.at
        return seen is None or when - seen < guard

    def pending_ask(self, when: datetime) -> bool:
        """The clerk was asked "发给谁？" and has not answered: their held messages wait for "#n"."""
        return self.held is not None and when - datetime.fromisoformat(self.held["at"]) < HOLD_ANSWER


def row(f: Focus) -> dict[str, Any]:
    return {"clerk_id": f.clerk_id, "customer_id": f.customer_id, "previous_customer_id": f.previous_customer_id,
            "kind": f.kind, "at": f.at, "held": f.held, "relay_key": f.relay_key}


async def latest_focus(session, clerk_ids) -> dict[int, Focus]:
    """The latest focus row of each clerk: one backward probe of (clerk_id, id) per clerk, in one
    statement (`max(id) … GROUP BY clerk_id` would read every row of each clerk's day)."""
    ids = sorted(set(clerk_ids))
    if not ids:
        return {}
    f = ClerkFocus.__table__
    newest = [select(f.c.id).where(f.c.clerk_id == cid).order_by(f.c.id.desc()).limit(1).scalar_subquery()
              for cid in ids]
    rows = (await session.execute(
        select(f.c.clerk_id, f.c.customer_id, f.c.previous_customer_id, f.c.kind, f.c.at, f.c.held, f.c.relay_key)
        .where(f.c.id.in_(newest))
    )).all()
    return {r.clerk_id: Focus(*r) for r in rows}


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


async def current(session, clerk_id: int) -> int | None:
    return getattr((await latest_focus(session, [clerk_id])).get(clerk_id), "customer_id", None)


async def append(session, rows: list[Focus]) -> None:
    if rows:
        await session.execute(insert(ClerkFocus.__table__), [row(r) for r in rows])


async def purge(session, older_than: datetime) -> int:
    """Old rows go; each clerk's latest stays whatever its age (it is the clerk's state)."""
    f = ClerkFocus.__table__
    keep = select(func.max(f.c.id)).group_by(f.c.clerk_id)
    res = await session.execute(delete(f).where(f.c.at < older_than, f.c.id.not_in(keep)))
    return res.rowcount or 0
