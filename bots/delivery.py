"""Delivery reports from platforms (WeCom mass-task results): the message's status moves forward,
and for pushes the interaction log records what reached the customer and what did not, and why."""

from __future__ import annotations

from sqlalchemy import update
from sqlmodel import select

from gateway.models import ChatMessage, Outbox
from gateway.outbox import PUSH_KINDS
from gateway.router import Ctx, Router

router = Router("delivery")


@router.on("delivery", side="customer")
async def delivery(ctx: Ctx):
    ev, p = ctx.event, ctx.event.payload
    m = ChatMessage.__table__
    ids = (await ctx.session.execute(
        update(m)
        .where(m.c.account == ev.sender.account, m.c.peer_id == ev.sender.external_id,
               m.c.platform_msg_id == p["platform_msg_id"], m.c.direction == "out", m.c.status.in_(("queued", "sent")))
        .values(status=p["status"])
        .returning(m.c.id)
    )).scalars().all()
    if not ids:
        return None  # reported before, or not ours
    rows = (await ctx.session.exec(select(Outbox).where(Outbox.message_id.in_(ids)))).all()
    for row in rows:
        if row.kind in PUSH_KINDS:
            await ctx.log("push_sent" if p["status"] == "delivered" else "push_failed", customer_id=row.customer_id,
                          clerk_id=row.clerk_id, campaign_id=row.campaign_id,
                          payload={"outbox_id": row.id, "channel": ev.sender.platform,
                                   **({"code": p["code"], "reason": p["reason"]} if p.get("code") else {})})
    return None
