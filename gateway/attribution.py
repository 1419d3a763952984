"""Orders in, credit out: who earned a sale (the advisor bound at placed_at), which campaign
touched it last, and the ledger lines it produces. The lines come from `ledger.entries`, a pure
function of the customer's history; this module loads that history, appends the lines not yet
stored (UNIQUE source: appending twice is harmless), and can rebuild everything to compare."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING

from sqlalchemy import func, or_, select
from sqlalchemy.exc import IntegrityError

from gateway import ledger
from gateway.interactions import log_interaction
from gateway.models import (
    Binding,
    ChatMessage,
    CouponCode,
    Customer,
    Interaction,
    LedgerEntry,
    Order,
    Outbox,
    Refund,
    Store,
)
from gateway.models import Identity as IdentityRow
from gateway.sql import insert_ignore

if TYPE_CHECKING:
    from gateway.runtime import Gateway


class OrderError(Exception):
    def __init__(self, status: int, code: str, message: str, field: str | None = None):
        super().__init__(message)
        self.status, self.code, self.field = status, code, field


async def history(session, customer_id: int) -> tuple[list, list, list, datetime | None]:
    c = await session.get(Customer, customer_id)
    bindings = [ledger.BindingRec(b.id, b.clerk_id, b.store_id, b.valid_from, b.valid_to, b.end_reason,
                                  b.source or "") for b in (
        await session.execute(select(Binding).where(Binding.customer_id == customer_id))).scalars()]
    orders = (await session.execute(select(Order).where(Order.customer_id == customer_id))).scalars().all()
    refunds = (await session.execute(select(Refund, Order.order_id).join(Order, Order.id == Refund.order_pk)
                                     .where(Order.customer_id == customer_id))).all()
    return (bindings, [ledger.OrderRec(o.order_id, o.amount, o.channel, o.placed_at, o.store_id) for o in orders],
            [ledger.RefundRec(r.id, oid, r.amount, r.refunded_at) for r, oid in refunds], c.erased_at if c else None)


async def sync_customer(session, gw: Gateway, customer_id: int) -> int:
    """Append the customer's ledger lines not stored yet. Returns how many were added."""
    b, o, r, erased = await history(session, customer_id)
    rows = [{"source": e.source, "kind": e.kind, "clerk_id": e.clerk_id, "store_id": e.store_id,
             "customer_id": e.customer_id, "amount": e.amount, "order_id": e.order_id, "binding_id": e.binding_id,
             "rule_version": e.rule, "created_at": gw.clock.now()}
            for e in ledger.entries(customer_id, b, o, r, ledger.Rules.of(gw.config), erased)]
    if not rows:
        return 0
    res = await session.execute(insert_ignore(session, LedgerEntry, conflict=["source"]).returning(LedgerEntry.id),
                                rows)
    return len(res.scalars().all())


async def _customer(session, ref: dict) -> int | None:
    if "customer_id" in ref:
        c = await session.get(Customer, ref["customer_id"])
        if c is None:
            raise OrderError(422, "invalid", "no such customer", "customer.customer_id")
        for _ in range(100):  # the person's record now (merges made before re-pointing left chains)
            if c.merged_into_id is None or (nxt := await session.get(Customer, c.merged_into_id)) is None:
                break
            c = nxt
        return c.id
    row = (await session.execute(select(IdentityRow.customer_id).where(
        IdentityRow.platform == ref["channel"], IdentityRow.external_id == ref["external_id"]))).first()
    return row[0] if row else None


async def last_touch(session, customer_id: int, placed_at: datetime, days: int) -> int | None:
    """The campaign whose push was delivered or whose link was clicked last within the window."""
    since = placed_at - timedelta(days=days)
    sent = (await session.execute(
        select(Outbox.campaign_id, ChatMessage.sent_at).join(ChatMessage, ChatMessage.id == Outbox.message_id)
        .where(Outbox.customer_id == customer_id, Outbox.campaign_id.is_not(None),
               ChatMessage.status.in_(("sent", "delivered")), ChatMessage.sent_at >= since,
               ChatMessage.sent_at <= placed_at)
        .order_by(ChatMessage.sent_at.desc()).limit(1))).first()
    click = (await session.execute(
        select(Interaction.campaign_id, Interaction.occurred_at)
        .where(Interaction.customer_id == customer_id, Interaction.type == "link_click",
               Interaction.campaign_id.is_not(None), Interaction.occurred_at >= since,
               Interaction.occurred_at <= placed_at)
        .order_by(Interaction.occurred_at.desc()).limit(1))).first()
    touches = [t for t in (sent, click) if t is not None]
    return max(touches, key=lambda t: t[1])[0] if touches else None


def legacy_body_hash(body: dict) -> str:
    """The hash stored before orders were normalised: of the body as sent (kept so that orders
    stored then still recognise their resend)."""
    return hashlib.sha256(json.dumps(body, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def order_digest(body: dict) -> str:
    """What makes two sends the same order: the content, not how it was written. "100.0" and
    "100.00", 10:00+08:00 and 02:00Z, coupon codes in any order are the same order (a POS that
    resends with another formatting got a 409 before)."""
    canon = {"v": 2, "order_id": body["order_id"], "customer": body["customer"],
             "amount": f"{Decimal(body['amount']):.2f}", "currency": body.get("currency", "CNY"),
             "channel": body["channel"], "store_id": body.get("store_id"),
             "placed_at": datetime.fromisoformat(body["placed_at"]).astimezone(UTC).isoformat(),
             "coupon_codes": sorted(set(body.get("coupon_codes") or []))}
    return hashlib.sha256(json.dumps(canon, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def _same_order_hashes(body: dict) -> set[str]:
    """Every stored hash that means "this very order": the normalised one, and the old raw-body hash
    of this body with its amount written any way it could have been ("88", "88.0", "88.00")."""
    amount = Decimal(body["amount"])
    spellings = {body["amount"], f"{amount:.2f}"} | {f"{amount:.{n}f}" for n in (0, 1) if amount == round(amount, n)}
    return {order_digest(body)} | {legacy_body_hash({**body, "amount": a}) for a in spellings}


async def _resend(s, old: Order, body: dict, gw: Gateway) -> tuple[int, dict]:
    if old.body_hash not in _same_order_hashes(body):
        raise OrderError(409, "conflict", "this order_id was sent before with different content", "order_id")
    return 200, await _out(s, old, gw)


async def _by_order_id(s, order_id: str) -> Order | None:
    return (await s.execute(select(Order).where(Order.order_id == order_id))).scalar_one_or_none()


async def record_order(gw: Gateway, body: dict) -> tuple[int, dict]:
    """(HTTP status, order) — 201 new, 200 the same order again; 409 a different one, same id."""
    async with gw.db() as s:
        old = await _by_order_id(s, body["order_id"])
        if old is not None:
            return await _resend(s, old, body, gw)
        if body.get("store_id") is not None and await s.get(Store, body["store_id"]) is None:
            raise OrderError(422, "invalid", f"no such store: {body['store_id']}", "store_id")
        cid = await _customer(s, body["customer"])
        placed = datetime.fromisoformat(body["placed_at"])
        rules = ledger.Rules.of(gw.config)
        o = Order(order_id=body["order_id"], customer_id=cid, channel=body["channel"], amount=Decimal(body["amount"]),
                  currency=body.get("currency", "CNY"), store_id=body.get("store_id"), placed_at=placed,
                  received_at=gw.clock.now(), body_hash=order_digest(body), rule_version=rules.version)
        if cid is None:
            o.unattributed = "unknown_customer"
        else:
            b, _, _, erased = await history(s, cid)
            lo = ledger.OrderRec(o.order_id, o.amount, o.channel, placed, o.store_id)
            o.unattributed = ledger.why_unattributed(b, lo, erased)
            bound = ledger.bound_at(sorted(b, key=lambda x: (x.valid_from, x.id)), placed)
            if bound is not None and o.unattributed is None:
                o.clerk_id = bound.clerk_id
                o.attributed_store_id = o.store_id if o.store_id is not None else bound.store_id
            o.campaign_id = await last_touch(s, cid, placed, gw.config.attribution.campaign_window_days)
        s.add(o)
        try:
            await s.flush()
        except IntegrityError:
            # A concurrent send of this order_id committed first (UNIQUE order_id): answer as to a
            # resend. Only that race: retrying any other violation recursed until RecursionError.
            await s.rollback()
            if (old := await _by_order_id(s, body["order_id"])) is None:
                raise
            return await _resend(s, old, body, gw)
        for code in body.get("coupon_codes") or []:
            cc = (await s.execute(select(CouponCode).where(CouponCode.code == code, CouponCode.customer_id == cid)
                                  .limit(1))).scalar_one_or_none()
            if cc is not None and cc.redeemed_at is None:
                cc.redeemed_at, cc.order_id = placed, o.order_id
                await log_interaction(s, "coupon_redeemed", occurred_at=placed, customer_id=cid, clerk_id=o.clerk_id,
                                      campaign_id=o.campaign_id, payload={"code": code, "order_id": o.order_id})
        await log_interaction(s, "order", occurred_at=placed, customer_id=cid, clerk_id=o.clerk_id,
                              store_id=o.attributed_store_id, campaign_id=o.campaign_id,
                              payload={"order_id": o.order_id, "amount": str(o.amount), "channel": o.channel,
                                       **({"unattributed": o.unattributed} if o.unattributed else {})})
        if cid is not None:
            await sync_customer(s, gw, cid)
        await s.commit()
        return 201, await _out(s, o, gw)


async def record_refund(gw: Gateway, order_id: str, body: dict) -> tuple[int, dict]:
    async with gw.db() as s:
        # The order's row is the lock: one order's refunds are checked and written one at a time
        # (FOR UPDATE on PostgreSQL; SQLite's BEGIN IMMEDIATE already serialises writers). Without
        # it, 20 concurrent refunds of 60.00 on a 100.00 order each saw nothing refunded yet and 19
        # were accepted. It also makes refund ids follow arrival, which the ledger relies on.
        o = (await s.execute(select(Order).where(Order.order_id == order_id).with_for_update())).scalar_one_or_none()
        if o is None:
            raise OrderError(404, "not_found", "no such order")
        amount, at = Decimal(body["amount"]), datetime.fromisoformat(body["refunded_at"])
        same = (await s.execute(select(Refund).where(Refund.order_pk == o.id, Refund.amount == amount,
                                                     Refund.refunded_at == at))).scalar_one_or_none()
        if same is not None:  # a resend of the same refund
            return 200, await _out(s, o, gw)
        done = (await s.execute(select(func.coalesce(func.sum(Refund.amount), 0)).where(Refund.order_pk == o.id))
                ).scalar_one()
        if Decimal(done) + amount > o.amount:
            raise OrderError(422, "invalid", f"refunds would exceed the order's {o.amount}", "amount")
        s.add(Refund(order_pk=o.id, amount=amount, refunded_at=at, received_at=gw.clock.now()))
        await s.flush()
        await log_interaction(s, "refund", occurred_at=at, customer_id=o.customer_id, clerk_id=o.clerk_id,
                              store_id=o.attributed_store_id, payload={"order_id": order_id, "amount": str(amount)})
        if o.customer_id is not None:
            await sync_customer(s, gw, o.customer_id)
        await s.commit()
        return 201, await _out(s, o, gw)


async def _out(s, o: Order, gw: Gateway) -> dict:
    refunded = (await s.execute(select(func.coalesce(func.sum(Refund.amount), 0)).where(Refund.order_pk == o.id))
                ).scalar_one()
    lines = (await s.execute(select(LedgerEntry).where(LedgerEntry.order_id == o.order_id)
                             .order_by(LedgerEntry.id))).scalars().all()
    return {"order_id": o.order_id, "customer_id": o.customer_id, "channel": o.channel, "amount": f"{o.amount:.2f}",
            "refunded": f"{Decimal(refunded):.2f}", "placed_at": o.placed_at.astimezone(gw.tz).isoformat(),
            "clerk_id": o.clerk_id, "store_id": o.attributed_store_id, "campaign_id": o.campaign_id,
            "unattributed": o.unattributed, "rule_version": o.rule_version,
            "ledger": [{"kind": e.kind, "clerk_id": e.clerk_id, "amount": f"{e.amount:.2f}"} for e in lines]}


async def sync_changed(gw: Gateway, since: datetime) -> int:
    """Bounties and clawbacks follow bindings: append lines for customers whose bindings changed."""
    async with gw.db() as s:
        ids = (await s.execute(select(Binding.customer_id).where(
            or_(Binding.valid_from >= since, Binding.valid_to >= since)).distinct())).scalars().all()
        n = 0
        for cid in ids:
            n += await sync_customer(s, gw, cid)
        await s.commit()
    return n


async def rebuild(gw: Gateway) -> dict:
    """Recompute every customer's ledger from orders, refunds and bindings and compare it with the
    stored lines (amount, clerk, kind per source). Appends what is missing; reports the rest."""
    async with gw.db() as s:
        stored = {e.source: (e.kind, e.clerk_id, e.amount) for e in (await s.execute(select(LedgerEntry))).scalars()}
        ids = set((await s.execute(select(Binding.customer_id).distinct())).scalars()) | set(
            (await s.execute(select(Order.customer_id).where(Order.customer_id.is_not(None)).distinct())).scalars())
        rules = ledger.Rules.of(gw.config)
        expected = {}
        for cid in sorted(ids):
            b, o, r, erased = await history(s, cid)
            expected.update({e.source: (e.kind, e.clerk_id, e.amount) for e in ledger.entries(cid, b, o, r, rules, erased)})
        missing = sorted(set(expected) - set(stored))
        differ = sorted(k for k in set(expected) & set(stored) if expected[k] != stored[k])
        extra = sorted(set(stored) - set(expected))
    return {"lines": len(expected), "missing": missing, "differ": differ, "extra": extra,
            "total": f"{sum((v[2] for v in expected.values()), Decimal(0)):.2f}"}

