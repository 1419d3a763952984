"""Campaigns: who gets what, when, and why not.

A run materialises the audience into deliveries in streamed batches (keyset by customer id, one
transaction per batch): each customer is either queued — one outbox row, sent at the account's
rate — or excluded with the rule that excluded them. UNIQUE (run, customer) makes a second
scheduler, a restart or a double click harmless; the run's cursor lets a crashed run resume.
Policies, in order: opt-out, a channel, the per-customer cap across channels, the platform's cap,
then the holdout (stable per run, drawn from those who would receive), then the coupon pool. Quiet hours do not exclude: those pushes wait.
"""

from __future__ import annotations

import hashlib
import math
import secrets
import string
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from sqlalchemy import and_, bindparam, func, insert, or_, select, update

from gateway.interactions import log_interaction
from gateway.model import Identity, Message, Segment, Target
from gateway.models import (
    Binding,
    Campaign,
    CampaignRun,
    ChatMessage,
    Clerk,
    ClerkIdentity,
    CouponCode,
    Customer,
    Delivery,
    Order,
    Outbox,
    Product,
    Store,
    TrackedLink,
)
from gateway.models import Identity as IdentityRow
from gateway.outbox import PUSH_KINDS, cap_period
from gateway.service import quiet_until
from gateway.sql import insert_ignore

if TYPE_CHECKING:
    from gateway.runtime import Gateway

BATCH = 2000
RULES = ("opted_out", "no_channel", "cap", "platform_cap", "holdout", "no_coupon")


# -- audience ----------------------------------------------------------------------------------------


def _km(a: tuple[float, float], b: tuple[float, float]) -> float:
    lat1, lng1, lat2, lng2 = map(math.radians, (*a, *b))
    h = math.sin((lat2 - lat1) / 2) ** 2 + math.cos(lat1) * math.cos(lat2) * math.sin((lng2 - lng1) / 2) ** 2
    return 12742 * math.asin(math.sqrt(h))


async def _store_filter(session, aud: dict) -> set[int] | None:
    """Stores the audience is limited to: the listed ones, intersected with those within `near`."""
    stores = set(aud["stores"]) if aud.get("stores") else None
    if aud.get("near"):
        near = aud["near"]
        rows = (await session.execute(select(Store.id, Store.lat, Store.lng))).all()
        centre = next(((lat, lng) for sid, lat, lng in rows if sid == near["store_id"]), None)
        if centre is None or centre[0] is None:
            return set()
        close = {sid for sid, lat, lng in rows if lat is not None and _km(centre, (lat, lng)) <= near["km"]}
        stores = close if stores is None else stores & close
    return stores


async def audience_batch(session, aud: dict, stores: set[int] | None, after: int, limit: int) -> list:
    """The next audience members after customer id `after`, with their open binding (if any)."""
    q = (select(Customer.id, Customer.tags, Customer.opted_out_at, Customer.last_identity_id, Customer.store_id,
                Binding.clerk_id.label("clerk_id"), Binding.store_id.label("bound_store_id"))
         .outerjoin(Binding, and_(Binding.customer_id == Customer.id, Binding.valid_to.is_(None)))
         .where(Customer.id > after, Customer.merged_into_id.is_(None), Customer.erased_at.is_(None))
         .order_by(Customer.id).limit(limit))
    if stores is not None:
        q = q.where(or_(Binding.store_id.in_(stores), and_(Binding.id.is_(None), Customer.store_id.in_(stores))))
    if aud.get("clerks"):
        q = q.where(Binding.clerk_id.in_(aud["clerks"]))
    # Since when the advisor has served them: a merge that carried an advisor over is no new member.
    since = func.coalesce(Binding.served_since, Binding.valid_from)
    if aud.get("bound_after"):
        q = q.where(since >= datetime.fromisoformat(aud["bound_after"]))
    if aud.get("bound_before"):
        q = q.where(since < datetime.fromisoformat(aud["bound_before"]))
    return list((await session.execute(q)).all())


def _tagged(row, tags: list[str] | None) -> bool:
    return not tags or bool(set(row.tags or []) & set(tags))


# -- decisions ---------------------------------------------------------------------------------------


def in_holdout(run_key: str, customer_id: int, pct: int) -> bool:
    """Random across customers, stable for a run: the same customer is in or out on every replay."""
    h = int.from_bytes(hashlib.sha256(f"{run_key}:{customer_id}".encode()).digest()[:4], "big")
    return h % 10_000 < pct * 100


@dataclass
class Decision:
    customer_id: int
    clerk_id: int | None
    reason: str | None = None  # None: send
    target: Target | None = None
    channel: str | None = None
    vars: dict[str, Any] = field(default_factory=dict)


async def decide(session, gw: Gateway, campaign: Campaign, run_key: str, rows: list, now: datetime) -> list[Decision]:
    """Policy for one batch of audience rows, with a handful of queries per batch (not per customer)."""
    pol = gw.config.policies
    ids = [r.id for r in rows]
    idents = {i.id: i for i in (await session.execute(
        select(IdentityRow).where(IdentityRow.customer_id.in_(ids), IdentityRow.account.in_(list(gw.adapters))))
    ).scalars()}
    by_customer: dict[int, list] = {}
    for i in idents.values():
        by_customer.setdefault(i.customer_id, []).append(i)
    week = (await session.execute(
        select(Outbox.customer_id, func.count()).where(
            Outbox.customer_id.in_(ids), Outbox.kind.in_(PUSH_KINDS), Outbox.status.in_(("pending", "sending", "sent")),
            Outbox.created_at >= now - timedelta(days=7)).group_by(Outbox.customer_id))).all()
    pushes_week = dict(week)
    clerk_ids = {r.clerk_id for r in rows if r.clerk_id}
    clerks = {c.id: c for c in (await session.execute(select(Clerk).where(Clerk.id.in_(clerk_ids)))).scalars()} \
        if clerk_ids else {}
    member_ids = dict(((ci.clerk_id, ci.account), ci.external_id) for ci in (await session.execute(
        select(ClerkIdentity).where(ClerkIdentity.clerk_id.in_(clerk_ids)))).scalars()) if clerk_ids else {}
    # Platform caps (WeCom monthly, Official Account 4 a month): one grouped count per capped account.
    platform_used: dict[tuple[int, str], int] = {}
    for account in {i.account for i in idents.values()}:
        cap = gw.adapters[account].capabilities().push_cap
        if cap is not None:
            start, _ = cap_period(cap, now, gw.tz)
            platform_used.update({(cid, account): n for cid, n in (await session.execute(
                select(Outbox.customer_id, func.count()).where(
                    Outbox.customer_id.in_(ids), Outbox.account == account, Outbox.kind.in_(PUSH_KINDS),
                    Outbox.status.in_(("pending", "sending", "sent")), Outbox.created_at >= start)
                .group_by(Outbox.customer_id))).all()})
    out = []
    for r in rows:
        clerk = clerks.get(r.clerk_id) if r.clerk_id else None
        if clerk is not None and clerk.status != "active":
            clerk = None
        d = Decision(r.id, clerk.id if clerk else None)
        out.append(d)
        if r.opted_out_at is not None:
            d.reason = "opted_out"
            continue
        own = by_customer.get(r.id) or []
        ident = idents.get(r.last_identity_id) if r.last_identity_id in idents else (own[-1] if own else None)
        if ident is None:
            d.reason = "no_channel"
            continue
        if pol.max_pushes.per_week is not None and pushes_week.get(r.id, 0) >= pol.max_pushes.per_week:
            d.reason = "cap"
            continue
        adapter = gw.adapters[ident.account]
        cap = adapter.capabilities().push_cap
        if cap is not None and platform_used.get((r.id, ident.account), 0) >= cap_period(cap, now, gw.tz)[1]:
            d.reason = "platform_cap"
            continue
        # The holdout is drawn from those who would have received it, so it compares like with like.
        if campaign.holdout_pct and in_holdout(run_key, r.id, campaign.holdout_pct):
            d.reason = "holdout"
            continue
        hints = {}
        if clerk is not None and (clerk.id, ident.account) in member_ids:
            hints["advisor"] = member_ids[(clerk.id, ident.account)]
        d.target = Target(Identity(ident.platform, ident.account, ident.external_id), customer_id=r.id,
                          clerk_id=d.clerk_id, hints=hints)
        d.channel = ident.platform
        d.vars = {"customer_name": (ident.profile or {}).get("name") or "",
                  "advisor_name": clerk.display_name if clerk else ""}
    return out


# -- content -----------------------------------------------------------------------------------------


class _Vars(dict):
    def __missing__(self, key):  # an unknown placeholder stays as written
        return "{" + key + "}"


def render(campaign: Campaign, product: Product | None, vars: dict, link_url: str | None) -> Message:
    text = campaign.content.get("text", "").format_map(_Vars({
        **vars, "product_name": product.name if product else "", "link": link_url or "",
        "coupon_code": vars.get("coupon_code", "")}))
    segs = [Segment.text(text)]
    if product is not None:
        segs.append(Segment("product", {"name": product.name, "price": f"{product.price:.2f}",
                                        "url": link_url or product.url or "", "image_url": product.image_url or ""}))
    sender = vars.get("advisor_name") if campaign.sender == "advisor" and vars.get("advisor_name") else None
    return Message(segs, sender_name=sender)


def _token() -> str:
    return "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(16))


async def issue_codes(session, coupon_id: int, customer_ids: list[int], now: datetime) -> dict[int, str]:
    """One code per customer from the pool (a customer who has one keeps it)."""
    have = dict((await session.execute(select(CouponCode.customer_id, CouponCode.code).where(
        CouponCode.coupon_id == coupon_id, CouponCode.customer_id.in_(customer_ids)))).all())
    need = [c for c in customer_ids if c not in have]
    if need:
        free = (await session.execute(
            select(CouponCode.id, CouponCode.code).where(CouponCode.coupon_id == coupon_id,
                                                         CouponCode.customer_id.is_(None))
            .order_by(CouponCode.id).limit(len(need)).with_for_update(skip_locked=True))).all()
        pairs = list(zip(free, need, strict=False))
        if pairs:
            ct = CouponCode.__table__
            await session.execute(update(ct).where(ct.c.id == bindparam("code_id"))
                                  .values(customer_id=bindparam("cid"), issued_at=now),
                                  [{"code_id": code_id, "cid": cid} for (code_id, _), cid in pairs])
        have.update({cid: code for (_, code), cid in pairs})
    return have


# -- running -----------------------------------------------------------------------------------------


async def materialize(gw: Gateway, run_id: int, *, batch: int | None = None) -> dict:
    """Turn a run's audience into deliveries, batch by batch, resuming after its cursor. Returns
    the run's counts. Stops between batches when the run is cancelled."""
    async with gw.db() as s:
        run = await s.get(CampaignRun, run_id)
        campaign = await s.get(Campaign, run.campaign_id)
        if run.status in ("done", "cancelled"):
            return run.counts
        run.status, run.started_at = "materializing", run.started_at or gw.clock.now()
        await s.commit()
        stores = await _store_filter(s, campaign.audience)
        product = await s.get(Product, campaign.content["product_id"]) if campaign.content.get("product_id") else None
    tags = campaign.audience.get("tags")
    batch = batch or gw.config.campaigns.batch
    while True:
        async with gw.db() as s:
            run = await s.get(CampaignRun, run_id, with_for_update=True)
            if run.status == "cancelled":
                return run.counts
            rows = await audience_batch(s, campaign.audience, stores, run.cursor, batch)
            if not rows:
                run.status, counts = "dispatching", dict(run.counts or {})
                if campaign.mode == "clerk_assisted":
                    counts["clerks_briefed"] = await _brief_clerks(s, gw, campaign, run, counts.pop("_per_clerk", {}))
                    run.counts = counts
                await s.commit()
                break
            now = gw.clock.now()
            members = [r for r in rows if _tagged(r, tags)]
            decisions = await decide(s, gw, campaign, f"run:{run.id}", members, now)
            counts = dict(run.counts or {})
            if campaign.mode == "clerk_assisted":  # count each clerk's reachable customers; briefs at the end
                queued = 0
                per = counts.setdefault("_per_clerk", {})
                for d in decisions:
                    if d.reason is None and d.clerk_id:
                        per[str(d.clerk_id)] = per.get(str(d.clerk_id), 0) + 1
            else:
                queued = await _write_batch(s, gw, campaign, run, product, decisions, now)
            counts["audience"] = counts.get("audience", 0) + len(members)
            counts["queued"] = counts.get("queued", 0) + queued
            for d in decisions:
                if d.reason:
                    counts[d.reason] = counts.get(d.reason, 0) + 1
            run.counts, run.cursor = counts, rows[-1].id
            run.lease_until = now + timedelta(seconds=gw.config.campaigns.lease_seconds)  # still alive: keep the run
            await s.commit()
    gw.outbox.kick()
    return counts


async def _write_batch(s, gw: Gateway, campaign: Campaign, run: CampaignRun, product, decisions: list[Decision],
                       now: datetime) -> int:
    """Deliveries first (the UNIQUE key decides who is new), then one message + outbox row each."""
    if not decisions:
        return 0
    new = set((await s.execute(
        insert_ignore(s, Delivery, conflict=["run_id", "customer_id"]).returning(Delivery.customer_id),
        [{"run_id": run.id, "customer_id": d.customer_id, "clerk_id": d.clerk_id,
          "status": "excluded" if d.reason else "queued", "reason": d.reason, "channel": d.channel, "created_at": now}
         for d in decisions])).scalars())
    send = [d for d in decisions if d.reason is None and d.customer_id in new]
    if campaign.coupon_id and send:
        codes = await issue_codes(s, campaign.coupon_id, [d.customer_id for d in send], now)
        for d in send:
            if d.customer_id in codes:
                d.vars["coupon_code"] = codes[d.customer_id]
            else:
                d.reason = "no_coupon"
        dry = [d.customer_id for d in send if d.reason]
        if dry:
            await s.execute(update(Delivery).where(Delivery.run_id == run.id, Delivery.customer_id.in_(dry))
                            .values(status="excluded", reason="no_coupon"))
        send = [d for d in send if d.reason is None]
    if not send:
        return 0
    link = campaign.content.get("link") or (product.url if product else None)
    tokens = {}
    if link:
        tokens = {d.customer_id: _token() for d in send}
        await s.execute(insert(TrackedLink), [
            {"token": tokens[d.customer_id], "url": link, "campaign_id": campaign.id, "run_id": run.id,
             "customer_id": d.customer_id, "clerk_id": d.clerk_id, "created_at": now} for d in send])
    base = gw.config.server.base_url()
    quiet = quiet_until(gw.config.policies.quiet_hours, now.astimezone(gw.tz))
    not_before = quiet.astimezone(now.tzinfo) if quiet else now
    messages = [render(campaign, product, d.vars, f"{base}/t/{tokens[d.customer_id]}" if link else None) for d in send]
    ids = await gw.outbox.enqueue_many(s, [
        (d.target, m, f"run:{run.id}:{d.customer_id}") for d, m in zip(send, messages, strict=True)],
        kind="push", campaign_id=campaign.id, not_before=not_before)
    dt = Delivery.__table__
    await s.execute(update(dt).where(dt.c.run_id == run.id, dt.c.customer_id == bindparam("cid"))
                    .values(outbox_id=bindparam("oid")),
                    [{"cid": d.customer_id, "oid": oid} for d, oid in zip(send, ids, strict=True)])
    return len(send)


async def preview(gw: Gateway, campaign: Campaign, *, samples: int = 3) -> dict:
    """What a run now would do, without writing anything: counts by rule, channel and store, and
    three rendered samples."""
    now = gw.clock.now()
    out: dict[str, Any] = {"audience": 0, "eligible": 0, "excluded": dict.fromkeys(RULES, 0), "by_channel": {},
                           "by_store": {}, "samples": [], "quiet_hours": False}
    out["quiet_hours"] = quiet_until(gw.config.policies.quiet_hours, now.astimezone(gw.tz)) is not None
    async with gw.db() as s:
        stores = await _store_filter(s, campaign.audience)
        product = await s.get(Product, campaign.content["product_id"]) if campaign.content.get("product_id") else None
        cursor = 0
        while True:
            rows = await audience_batch(s, campaign.audience, stores, cursor, BATCH)
            if not rows:
                break
            cursor = rows[-1].id
            members = [r for r in rows if _tagged(r, campaign.audience.get("tags"))]
            store_of = {r.id: r.bound_store_id or r.store_id for r in members}
            for d in await decide(s, gw, campaign, "preview", members, now):
                out["audience"] += 1
                if d.reason:
                    out["excluded"][d.reason] += 1
                    continue
                out["eligible"] += 1
                out["by_channel"][d.channel] = out["by_channel"].get(d.channel, 0) + 1
                sid = str(store_of.get(d.customer_id))
                out["by_store"][sid] = out["by_store"].get(sid, 0) + 1
                if len(out["samples"]) < samples:
                    vars_ = {**d.vars, "coupon_code": "SAMPLE-CODE" if campaign.coupon_id else ""}
                    m = render(campaign, product, vars_, f"{gw.config.server.base_url()}/t/SAMPLE"
                               if campaign.content.get("link") or (product and product.url) else None)
                    out["samples"].append({"customer_id": d.customer_id, "channel": d.channel,
                                           "sender": m.sender_name, "text": m.plain_text})
    if campaign.holdout_pct:
        out["excluded"]["holdout_note"] = "holdout is drawn per run; the preview uses a sample draw"
    return out


async def report(gw: Gateway, campaign: Campaign) -> dict:
    async with gw.db() as s:
        runs = (await s.execute(select(CampaignRun).where(CampaignRun.campaign_id == campaign.id)
                                .order_by(CampaignRun.scheduled_for))).scalars().all()
        out = []
        for i, r in enumerate(runs):
            # Orders credited to the campaign (last touch) from this run's customers, until the next run.
            until = runs[i + 1].scheduled_for if i + 1 < len(runs) else None
            n_orders, gmv = (await s.execute(
                select(func.count(Order.id), func.sum(Order.amount)).join(
                    Delivery, and_(Delivery.customer_id == Order.customer_id, Delivery.run_id == r.id))
                .where(Order.campaign_id == campaign.id, Order.placed_at >= r.scheduled_for,
                       *([Order.placed_at < until] if until else [])))).one()
            sent = dict((await s.execute(
                select(Outbox.status, func.count()).join(Delivery, Delivery.outbox_id == Outbox.id)
                .where(Delivery.run_id == r.id).group_by(Outbox.status))).all())
            delivered = (await s.execute(
                select(func.count()).select_from(Delivery).join(Outbox, Delivery.outbox_id == Outbox.id)
                .join(ChatMessage, ChatMessage.id == Outbox.message_id)
                .where(Delivery.run_id == r.id, ChatMessage.status == "delivered"))).scalar_one()
            clicked = (await s.execute(select(func.count(func.distinct(TrackedLink.customer_id))).where(
                TrackedLink.run_id == r.id, TrackedLink.clicked_at.is_not(None)))).scalar_one()
            redeemed = 0
            if campaign.coupon_id:
                redeemed = (await s.execute(select(func.count()).select_from(CouponCode).join(
                    Delivery, and_(Delivery.customer_id == CouponCode.customer_id, Delivery.run_id == r.id))
                    .where(CouponCode.coupon_id == campaign.coupon_id, CouponCode.redeemed_at.is_not(None))
                )).scalar_one()
            c = r.counts or {}
            extra = {}
            if campaign.mode == "clerk_assisted":  # the share rate: clerks briefed, clerks who forwarded
                forwarded = (await s.execute(select(func.count(func.distinct(Delivery.clerk_id))).where(
                    Delivery.run_id == r.id, Delivery.status == "queued"))).scalar_one()
                extra = {"clerks_briefed": c.get("clerks_briefed", 0), "clerks_forwarded": forwarded,
                         "share_rate": round(forwarded / c["clerks_briefed"], 3) if c.get("clerks_briefed") else None}
            out.append({**extra, "id": r.id, "scheduled_for": r.scheduled_for.astimezone(gw.tz).isoformat(), "status": r.status,
                        "audience": c.get("audience", 0), "queued": c.get("queued", 0),
                        "excluded": {k: c[k] for k in RULES if c.get(k)},
                        "progress": {"materialized": c.get("audience", 0), "cursor": r.cursor},
                        "sent": sent.get("sent", 0), "pending": sent.get("pending", 0) + sent.get("sending", 0),
                        "delivered": delivered, "failed": sent.get("dead", 0), "held": sent.get("held", 0),
                        "cancelled": sent.get("cancelled", 0), "clicked": clicked, "redeemed": redeemed,
                        "orders": n_orders, "gmv": f"{Decimal(gmv or 0):.2f}"})
    return {"id": campaign.id, "name": campaign.name, "status": campaign.status, "runs": out}


async def cancel(gw: Gateway, campaign_id: int) -> dict:
    """Stop a campaign: no new runs; a run in progress stops materializing; what has not gone, won't."""
    async with gw.db() as s:
        campaign = await s.get(Campaign, campaign_id, with_for_update=True)
        campaign.status, campaign.next_run_at = "cancelled", None
        runs = (await s.execute(select(CampaignRun.id).where(
            CampaignRun.campaign_id == campaign_id, CampaignRun.status.in_(("pending", "materializing", "dispatching")))
        )).scalars().all()
        await s.execute(update(CampaignRun).where(CampaignRun.id.in_(runs)).values(status="cancelled",
                                                                                  finished_at=gw.clock.now()))
        stopped = (await s.execute(
            update(Outbox).where(Outbox.id.in_(select(Delivery.outbox_id).where(Delivery.run_id.in_(runs))),
                                 Outbox.status == "pending")
            .values(status="cancelled", last_error="campaign cancelled").returning(Outbox.id))).scalars().all()
        if stopped:
            await s.execute(update(ChatMessage).where(ChatMessage.id.in_(
                select(Outbox.message_id).where(Outbox.id.in_(stopped)))).values(status="cancelled"))
        await s.commit()
    return {"runs": len(runs), "cancelled_sends": len(stopped)}


async def click(gw: Gateway, token: str) -> str | None:
    """A tracked link: log the click (campaign, customer, clerk), answer the target."""
    async with gw.db() as s:
        link = (await s.execute(select(TrackedLink).where(TrackedLink.token == token))).scalar_one_or_none()
        if link is None:
            return None
        link.clicked_at = link.clicked_at or gw.clock.now()
        await log_interaction(s, "link_click", occurred_at=gw.clock.now(), customer_id=link.customer_id,
                              clerk_id=link.clerk_id, campaign_id=link.campaign_id,
                              payload={"link_id": link.id, "run_id": link.run_id})
        await s.commit()
        return link.url


async def finish_dispatched(gw: Gateway) -> int:
    """Runs whose every send has an outcome are done."""
    async with gw.db() as s:
        runs = (await s.execute(select(CampaignRun.id).where(CampaignRun.status == "dispatching"))).scalars().all()
        done = 0
        for run_id in runs:
            open_ = (await s.execute(select(func.count()).select_from(Delivery).join(
                Outbox, Delivery.outbox_id == Outbox.id).where(Delivery.run_id == run_id,
                                                              Outbox.status.in_(("pending", "sending"))))).scalar_one()
            if not open_:
                await s.execute(update(CampaignRun).where(CampaignRun.id == run_id, CampaignRun.status == "dispatching")
                                .values(status="done", finished_at=gw.clock.now()))
                done += 1
        await s.commit()
    return done



# -- clerk-assisted (the WeMall way) -------------------------------------------------------------------


BRIEF = ("📣 活动「{name}」\n内容：{text}\n您有 {n} 位顾客可以收到。发送 /forward {id} 以您的名义转发给他们"
         "（系统会按规则排除退订和超频的顾客）。{earn}\nCampaign #{id}: send /forward {id} to pass it to your customers.")


async def _brief_clerks(s, gw: Gateway, campaign: Campaign, run: CampaignRun, per_clerk: dict) -> int:
    """What, what to do, how much they can earn — in each clerk's work IM."""
    rates = gw.config.attribution.rates
    earn = "顾客成交您可得 " + "、".join(f"{k} {Decimal(v) * 100:.0f}%" for k, v in rates.items() if Decimal(v) > 0) + " 佣金。"
    n = 0
    for clerk_id, count in per_clerk.items():
        clerk = await s.get(Clerk, int(clerk_id))
        target = await gw.clerk_target(s, clerk) if clerk and clerk.status == "active" else None
        if target is None:
            continue
        text = BRIEF.format(name=campaign.name, text=campaign.content.get("text", "")[:200], n=count, id=campaign.id,
                            earn=earn)
        await gw.outbox.enqueue(s, target, Message.of_text(text), idem_key=f"brief:{run.id}:{clerk.id}", kind="brief",
                                campaign_id=campaign.id)
        n += 1
    return n


async def forward(gw: Gateway, session, campaign_id: int, clerk: Clerk) -> dict | str:
    """A clerk's /forward: their own customers in the campaign's audience get it in their name,
    under the same policies; each customer at most once per run. Returns counts, or why not."""
    campaign = await session.get(Campaign, campaign_id)
    if campaign is None or campaign.mode != "clerk_assisted" or campaign.status == "cancelled":
        return "没有这个可转发的活动。 No such campaign to forward."
    run = (await session.execute(select(CampaignRun).where(
        CampaignRun.campaign_id == campaign_id, CampaignRun.status.in_(("dispatching", "done")))
        .order_by(CampaignRun.scheduled_for.desc()).limit(1))).scalar_one_or_none()
    if run is None:
        return "这个活动还没有开始。 The campaign has not started yet."
    aud = {**campaign.audience, "clerks": [clerk.id]}
    stores = await _store_filter(session, aud)
    product = await session.get(Product, campaign.content["product_id"]) if campaign.content.get("product_id") else None
    now, cursor, sent, excluded = gw.clock.now(), 0, 0, {}
    while rows := await audience_batch(session, aud, stores, cursor, gw.config.campaigns.batch):
        cursor = rows[-1].id
        decisions = await decide(session, gw, campaign, f"run:{run.id}", [r for r in rows if _tagged(r, aud.get("tags"))],
                                 now)
        sent += await _write_batch(session, gw, campaign, run, product, decisions, now)
        for d in decisions:
            if d.reason:
                excluded[d.reason] = excluded.get(d.reason, 0) + 1
    counts = dict(run.counts or {})
    counts["queued"] = counts.get("queued", 0) + sent
    counts["forwards"] = counts.get("forwards", 0) + 1
    run.counts = counts
    await log_interaction(session, "forwarded", occurred_at=now, clerk_id=clerk.id, store_id=clerk.store_id,
                          campaign_id=campaign.id, payload={"run_id": run.id, "sent": sent, **excluded})
    return {"sent": sent, "excluded": excluded}


async def clerk_campaigns(session, clerk: Clerk, now: datetime) -> list[Campaign]:
    """Campaigns a clerk can forward now."""
    return list((await session.execute(select(Campaign).join(CampaignRun, CampaignRun.campaign_id == Campaign.id).where(
        Campaign.mode == "clerk_assisted", Campaign.status != "cancelled",
        CampaignRun.status.in_(("dispatching", "done")), CampaignRun.scheduled_for >= now - timedelta(days=30))
        .distinct().order_by(Campaign.id.desc()).limit(10))).scalars())
