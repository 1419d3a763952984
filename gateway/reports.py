"""Reports for HQ and store managers: per clerk, per store, per campaign, and the 导购三律 funnel.

Every figure is read from the interaction log, the orders and the ledger within [from, to).
Money is Decimal; medians and rates are computed here so they read the same on SQLite and
PostgreSQL. Campaign lift compares buyers among those who got a push with buyers in the holdout
(difference of proportions, 95 % normal-approximation interval).
"""

from __future__ import annotations

import asyncio
import math
import statistics
from datetime import datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING

from sqlalchemy import and_, func, select

from gateway import csvsafe
from gateway.models import (
    Campaign,
    CampaignRun,
    Clerk,
    Delivery,
    Interaction,
    LedgerEntry,
    Order,
    Outbox,
    Refund,
    Store,
)

if TYPE_CHECKING:
    from gateway.runtime import Gateway

KINDS = ("clerks", "stores", "campaigns", "funnel")


def _money(x) -> str:
    return f"{Decimal(x or 0):.2f}"


async def _counts(session, column, types: tuple[str, ...], frm, to) -> dict[str, dict]:
    """type -> {key: count}, in one pass over the period."""
    out: dict[str, dict] = {t: {} for t in types}
    for k, t, n in (await session.execute(select(column, Interaction.type, func.count()).where(
            Interaction.type.in_(types), Interaction.occurred_at >= frm, Interaction.occurred_at < to)
            .group_by(column, Interaction.type))).all():
        out[t][k] = n
    return out


async def _reply_median(session, key, frm, to) -> dict:
    """Median first-reply seconds per key: in SQL on PostgreSQL, in Python on SQLite."""
    seconds = Interaction.payload["seconds"].as_integer()
    where = (Interaction.type == "first_reply", Interaction.occurred_at >= frm, Interaction.occurred_at < to)
    if session.bind.dialect.name == "postgresql":
        rows = (await session.execute(select(key, func.percentile_cont(0.5).within_group(seconds))
                                      .where(*where).group_by(key))).all()
        return {k: int(m) for k, m in rows if k is not None and m is not None}
    by: dict[int, list[int]] = {}
    for k, v in (await session.execute(select(key, seconds).where(*where))).all():
        if k is not None and v is not None:
            by.setdefault(k, []).append(v)
    return {k: int(statistics.median(v)) for k, v in by.items()}


async def _orders(session, key, frm, to) -> dict:
    """Attributed orders and GMV net of refunds, by `key` (Order.clerk_id or Order.attributed_store_id)."""
    refunds = (select(Refund.order_pk, func.sum(Refund.amount).label("back")).group_by(Refund.order_pk).subquery())
    rows = (await session.execute(
        select(key, func.count(Order.id), func.sum(Order.amount), func.sum(func.coalesce(refunds.c.back, 0)))
        .outerjoin(refunds, refunds.c.order_pk == Order.id)
        .where(Order.placed_at >= frm, Order.placed_at < to, key.is_not(None)).group_by(key))).all()
    return {k: (n, Decimal(gmv or 0) - Decimal(back or 0)) for k, n, gmv, back in rows}


async def _active(session, frm, to) -> dict:
    return dict((await session.execute(select(Interaction.clerk_id, func.count(func.distinct(Interaction.customer_id)))
                                       .where(Interaction.type.in_(("message_in", "message_out")),
                                              Interaction.occurred_at >= frm, Interaction.occurred_at < to)
                                       .group_by(Interaction.clerk_id))).all())


async def _commission(session, key, frm, to) -> dict:
    return dict((await session.execute(select(key, func.sum(LedgerEntry.amount)).where(
        LedgerEntry.created_at >= frm, LedgerEntry.created_at < to).group_by(key))).all())


async def _staff(session, store_id):
    q = select(Clerk).order_by(Clerk.id)
    if store_id is not None:
        q = q.where(Clerk.store_id == store_id)
    return (await session.execute(q)).scalars().all()


async def clerks(session, frm, to, store_id: int | None = None, *, gather=None) -> list[dict]:
    """`gather(*(fn, args…))`, when given, runs the independent aggregations each on its own
    connection at once (the API and CLI do; a bot inside its transaction runs them in turn)."""
    key = Interaction.clerk_id
    parts = [(_staff, store_id), (_counts, key, ("bound", "message_out", "forwarded", "push_sent"), frm, to),
             (_active, frm, to), (_reply_median, key, frm, to), (_orders, Order.clerk_id, frm, to),
             (_commission, LedgerEntry.clerk_id, frm, to)]
    if gather is not None:
        results = await gather(*parts)
    else:
        results = [await fn(session, *args) for fn, *args in parts]
    staff, n, active, replies, orders, commission = results
    recruited, messages, forwards, pushes = n["bound"], n["message_out"], n["forwarded"], n["push_sent"]
    out = []
    for c in staff:
        n, gmv = orders.get(c.id, (0, Decimal(0)))
        out.append({"clerk_id": c.id, "clerk": c.display_name, "store_id": c.store_id, "status": c.status,
                    "members_recruited": recruited.get(c.id, 0), "active_customers": active.get(c.id, 0),
                    "messages": messages.get(c.id, 0),
                    "first_reply_median_s": replies.get(c.id),
                    "forwards": forwards.get(c.id, 0), "pushes_delivered": pushes.get(c.id, 0),
                    "orders": n, "gmv": _money(gmv), "commission": _money(commission.get(c.id))})
    return out


async def stores(session, frm, to, store_id: int | None = None) -> list[dict]:
    q = select(Store).order_by(Store.id)
    if store_id is not None:
        q = q.where(Store.id == store_id)
    key = Interaction.store_id
    n = await _counts(session, key, ("bound", "message_out"), frm, to)
    recruited, messages = n["bound"], n["message_out"]
    replies = await _reply_median(session, key, frm, to)
    orders = await _orders(session, Order.attributed_store_id, frm, to)
    commission = await _commission(session, LedgerEntry.store_id, frm, to)
    out = []
    for st in (await session.execute(q)).scalars():
        n, gmv = orders.get(st.id, (0, Decimal(0)))
        out.append({"store_id": st.id, "store": st.name, "members_recruited": recruited.get(st.id, 0),
                    "messages": messages.get(st.id, 0), "first_reply_median_s": replies.get(st.id),
                    "orders": n, "gmv": _money(gmv), "commission": _money(commission.get(st.id))})
    return out


def lift(treated: int, treated_buyers: int, held: int, held_buyers: int) -> dict:
    """Conversion with the push minus conversion in the holdout, with a 95 % interval."""
    if not treated or not held:
        return {"treated_rate": None, "holdout_rate": None, "lift": None, "ci95": None}
    p1, p2 = treated_buyers / treated, held_buyers / held
    se = math.sqrt(p1 * (1 - p1) / treated + p2 * (1 - p2) / held)
    d = p1 - p2
    return {"treated_rate": round(p1, 4), "holdout_rate": round(p2, 4), "lift": round(d, 4),
            "ci95": [round(d - 1.96 * se, 4), round(d + 1.96 * se, 4)]}


async def _buyers(session, run_ids: list[int], start: datetime, window_days: int, *, holdout: bool) -> int:
    """Customers of these runs (pushed, or held out) who ordered within the window after the first run."""
    cond = Delivery.reason == "holdout" if holdout else Delivery.status == "queued"
    return (await session.execute(select(func.count(func.distinct(Order.customer_id))).select_from(Delivery)
                                  .join(Order, and_(Order.customer_id == Delivery.customer_id, Order.placed_at >= start,
                                                    Order.placed_at < start + timedelta(days=window_days)))
                                  .where(Delivery.run_id.in_(run_ids), cond))).scalar_one()


async def campaigns(session, frm, to, window_days: int) -> list[dict]:
    out = []
    for c in (await session.execute(select(Campaign).where(Campaign.created_at < to).order_by(Campaign.id))).scalars():
        runs = (await session.execute(select(CampaignRun.id, CampaignRun.scheduled_for).where(
            CampaignRun.campaign_id == c.id, CampaignRun.scheduled_for >= frm, CampaignRun.scheduled_for < to))).all()
        if not runs:
            continue
        run_ids = [r for r, _ in runs]
        start = min(t for _, t in runs)
        counts = dict((await session.execute(select(Delivery.reason, func.count()).where(
            Delivery.run_id.in_(run_ids)).group_by(Delivery.reason))).all())

        typ = dict((await session.execute(select(Interaction.type, func.count()).where(
            Interaction.campaign_id == c.id, Interaction.occurred_at >= frm, Interaction.occurred_at < to)
            .group_by(Interaction.type))).all())
        n_orders, gmv = (await session.execute(select(func.count(Order.id), func.sum(Order.amount)).where(
            Order.campaign_id == c.id))).one()
        queued = (await session.execute(select(func.count()).select_from(Delivery).where(
            Delivery.run_id.in_(run_ids), Delivery.status == "queued"))).scalar_one()
        sent = (await session.execute(select(func.count()).select_from(Delivery).join(
            Outbox, Outbox.id == Delivery.outbox_id).where(Delivery.run_id.in_(run_ids), Outbox.status == "sent"))
        ).scalar_one()
        out.append({"campaign_id": c.id, "campaign": c.name, "runs": len(runs), "audience": sum(counts.values()),
                    "queued": queued, "sent": sent, "delivered": typ.get("push_sent", 0),
                    "clicked": typ.get("link_click", 0), "redeemed": typ.get("coupon_redeemed", 0),
                    "orders": n_orders, "gmv": _money(gmv), "holdout": counts.get("holdout", 0),
                    **lift(queued, await _buyers(session, run_ids, start, window_days, holdout=False),
                           counts.get("holdout", 0), await _buyers(session, run_ids, start, window_days, holdout=True))})
    return out


async def funnel(session, frm, to) -> dict:
    """导购三律: clerks active (login rate), sharing (share rate), customers chatted → bought."""
    active_clerks = (await session.execute(select(func.count()).select_from(Clerk).where(Clerk.status == "active"))
                     ).scalar_one()
    working = (await session.execute(select(func.count(func.distinct(Interaction.clerk_id))).where(
        Interaction.type == "message_out", Interaction.occurred_at >= frm, Interaction.occurred_at < to))).scalar_one()
    briefed = (await session.execute(select(func.count(func.distinct(Delivery.clerk_id))).select_from(Delivery)
                                     .join(CampaignRun, CampaignRun.id == Delivery.run_id)
                                     .where(CampaignRun.scheduled_for >= frm, CampaignRun.scheduled_for < to))
               ).scalar_one()
    sharing = (await session.execute(select(func.count(func.distinct(Interaction.clerk_id))).where(
        Interaction.type == "forwarded", Interaction.occurred_at >= frm, Interaction.occurred_at < to))).scalar_one()
    chatted = select(func.distinct(Interaction.customer_id)).where(
        Interaction.type == "message_in", Interaction.occurred_at >= frm, Interaction.occurred_at < to)
    n_chat = (await session.execute(select(func.count()).select_from(chatted.subquery()))).scalar_one()
    bought = (await session.execute(select(func.count(func.distinct(Order.customer_id))).where(
        Order.customer_id.in_(chatted), Order.placed_at >= frm, Order.placed_at < to))).scalar_one()

    def rate(a, b):
        return round(a / b, 4) if b else None

    return {"clerks_active": active_clerks, "clerks_working": working, "login_rate": rate(working, active_clerks),
            "clerks_briefed": briefed, "clerks_sharing": sharing, "share_rate": rate(sharing, briefed),
            "customers_chatted": n_chat, "customers_bought": bought, "chat_to_deal": rate(bought, n_chat)}


async def build(gw: Gateway, kind: str, frm: datetime, to: datetime, store_id: int | None = None):
    async def one(fn, *args):
        async with gw.db() as s:
            return await fn(s, *args)

    async def gather(*parts):
        return await asyncio.gather(*(one(fn, *args) for fn, *args in parts))

    async with gw.db() as s:
        if kind == "clerks":
            return await clerks(s, frm, to, store_id, gather=gather)
        if kind == "stores":
            return await stores(s, frm, to, store_id)
        if kind == "campaigns":
            return await campaigns(s, frm, to, gw.config.attribution.campaign_window_days)
        return await funnel(s, frm, to)


def _day(session, column, tz):
    """The local calendar day of a stored UTC time, as 'YYYY-MM-DD', computed by the database."""
    if session.bind.dialect.name == "postgresql":
        return func.to_char(func.timezone(str(tz), column), "YYYY-MM-DD")
    # SQLite has no zone database: shift by the zone's current offset (exact for zones without DST,
    # such as the default Asia/Shanghai).
    offset = int(datetime.now(tz).utcoffset().total_seconds())
    return func.strftime("%Y-%m-%d", column, f"{offset:+d} seconds")


async def series(session, frm: datetime, to: datetime, by: str, tz, store_id: int | None = None) -> dict:
    """GMV (orders placed less refunds made) and commission (ledger lines) per day and per clerk or
    store, for charts over time. Days without figures are zero."""
    okey, rkey, lkey, names = ((Order.clerk_id, Order.clerk_id, LedgerEntry.clerk_id, Clerk) if by == "clerk" else
                               (Order.attributed_store_id, Order.attributed_store_id, LedgerEntry.store_id, Store))
    day = _day(session, Order.placed_at, tz)
    where = [Order.placed_at >= frm, Order.placed_at < to, okey.is_not(None)]
    if store_id is not None:
        where.append(Order.attributed_store_id == store_id)
    cells: dict[tuple[int, str], list[Decimal]] = {}

    def add(k, d, i, v):
        cells.setdefault((k, d), [Decimal(0), Decimal(0)])[i] += Decimal(v or 0)

    for k, d, v in (await session.execute(select(okey, day, func.sum(Order.amount)).where(*where)
                                          .group_by(okey, day))).all():
        add(k, d, 0, v)
    rday = _day(session, Refund.refunded_at, tz)
    rwhere = [Refund.refunded_at >= frm, Refund.refunded_at < to, rkey.is_not(None)]
    if store_id is not None:
        rwhere.append(Order.attributed_store_id == store_id)
    for k, d, v in (await session.execute(select(rkey, rday, func.sum(Refund.amount)).join(Order, Order.id == Refund.order_pk)
                                          .where(*rwhere).group_by(rkey, rday))).all():
        add(k, d, 0, -Decimal(v or 0))
    lday = _day(session, LedgerEntry.created_at, tz)
    lwhere = [LedgerEntry.created_at >= frm, LedgerEntry.created_at < to, lkey.is_not(None)]
    if store_id is not None:
        lwhere.append(LedgerEntry.store_id == store_id)
    for k, d, v in (await session.execute(select(lkey, lday, func.sum(LedgerEntry.amount)).where(*lwhere)
                                          .group_by(lkey, lday))).all():
        add(k, d, 1, v)
    days, d = [], frm.astimezone(tz).date()
    while d <= (to - timedelta(microseconds=1)).astimezone(tz).date() and len(days) < 400:
        days.append(d.isoformat())
        d += timedelta(days=1)
    keys = sorted({k for k, _ in cells})
    label = {}
    if keys:
        rows = (await session.execute(select(names).where(names.id.in_(keys)))).scalars().all()
        label = {r.id: getattr(r, "display_name", None) or r.name for r in rows}
    out = []
    for k in keys:
        gmv = [_money(cells.get((k, day_), (0, 0))[0]) for day_ in days]
        com = [_money(cells.get((k, day_), (0, 0))[1]) for day_ in days]
        out.append({"id": k, "name": label.get(k, str(k)), "gmv": gmv, "commission": com})
    return {"by": by, "days": days, "series": out}


def to_csv(rows) -> str:
    """The report as CSV for spreadsheets (BOM, formula-leading cells escaped: see csvsafe)."""
    rows = rows if isinstance(rows, list) else [rows]
    if not rows:
        return csvsafe.BOM
    cols = list(rows[0])
    return csvsafe.dumps(cols, ([" ".join(map(str, v)) if isinstance(v, list) else v for v in (r.get(c) for c in cols)]
                                for r in rows))


def to_table(rows) -> str:
    rows = rows if isinstance(rows, list) else [rows]
    if not rows:
        return "(nothing in this period)"
    cols = list(rows[0])
    cells = [[("—" if r[c] is None else str(r[c])) for c in cols] for r in rows]
    width = [max(_w(c), *(_w(x[i]) for x in cells)) for i, c in enumerate(cols)]

    def pad(text: str, w: int) -> str:
        return text + " " * (w - _w(text))

    line = "  ".join(pad(c, w) for c, w in zip(cols, width, strict=True))
    return "\n".join([line, "  ".join("-" * w for w in width)] +
                     ["  ".join(pad(x, w) for x, w in zip(row, width, strict=True)) for row in cells])


def _w(text: str) -> int:
    """Display width: CJK characters take two columns in a terminal."""
    import unicodedata

    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)
