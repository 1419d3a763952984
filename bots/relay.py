"""Relay between a customer and their advisor (in the spirit of mautrix relay mode).

Customer → clerk: `【<customer name> #<n>】<text>` in the clerk's work IM; that customer becomes the
clerk's current one. Clerk → customer: `#<n> <text>` addresses a customer, bare text goes to the
current one; the customer sees the clerk's personal display name, and the clerk is told who got it.
A customer with no advisor gets a polite auto-reply and waits in the store's unassigned queue.
"""

from __future__ import annotations

import re

from sqlmodel import select

from gateway import advisors, labels, service
from gateway.model import Message, Segment
from gateway.models import Binding, Customer, Store
from gateway.router import SKIP, Ctx, Router

router = Router("relay")

_ADDRESS = re.compile(r"^\s*#(\d{1,6})(?:\s+|$)(.*)$", re.S)

UNBOUND_REPLY = "您好，感谢您的留言！我们正在为您安排专属顾问，稍后会有顾问回复您。"


def _bound(ctx: Ctx) -> bool:
    """An advisor who has left no longer gets messages: the customer waits in the queue instead."""
    return ctx.binding is not None and ctx.clerk is not None and ctx.clerk.status == "active"


@router.on("message", _bound, side="customer")
async def customer_to_clerk(ctx: Ctx):
    c, clerk = ctx.customer, ctx.clerk
    target = await ctx.gw.clerk_target(ctx.session, clerk)
    if target is None:  # the advisor has no reachable work IM: treat the customer as unassigned
        return SKIP
    n = await advisors.handle_for(ctx.session, clerk.id, c.id)
    if clerk.current_customer_id != c.id:
        clerk.current_customer_id = c.id
    target, message = labels.relayed(target, advisors.customer_name(c, ctx.identity), n, c.id, ctx.event.message)
    await ctx.send(target, message, suffix="relay", kind="relay")
    await service.customer_waiting(ctx.session, c, clerk, ctx.binding.store_id, ctx.now())
    if ctx.binding.store_id is not None:
        await service.offhours_reply(ctx, await ctx.session.get(Store, ctx.binding.store_id))
    return None


@router.on("message", side="customer")
async def customer_unbound(ctx: Ctx):
    """No advisor (never bound, or theirs left): one polite reply per wait, and the store queue."""
    reason = "advisor_unreachable" if ctx.binding is not None else "no_advisor"
    entry, new = await advisors.enqueue_unassigned(ctx.session, ctx.customer, reason, ctx.now())
    if new:
        await ctx.log("queued_unassigned", customer_id=ctx.customer.id, store_id=ctx.customer.store_id)
    await service.customer_waiting(ctx.session, ctx.customer, None, ctx.customer.store_id, ctx.now())
    if entry.notified_at is None:
        entry.notified_at = ctx.now()
        await ctx.send(ctx.reply_target(), Message.of_text(UNBOUND_REPLY), suffix="reply")  # the brand's voice
    return None


@router.on("message", lambda ctx: not ctx.event.text.lstrip().startswith("/"), side="clerk")
async def clerk_to_customer(ctx: Ctx):
    clerk, s = ctx.clerk, ctx.session
    segs = list(ctx.event.message.segments)
    m = _ADDRESS.match(segs[0].data.get("text", "")) if segs and segs[0].type == "text" else None
    if m:
        n = int(m.group(1))
        customer = await advisors.customer_by_handle(s, clerk.id, n)
        if customer is None:
            await ctx.reply(f"没有 #{n} 这位顾客。发送 /customers 查看您的顾客。 No customer #{n}.")
            return None
        rest = m.group(2)
        segs = ([Segment.text(rest)] if rest.strip() else []) + segs[1:]
    else:
        customer = await s.get(Customer, clerk.current_customer_id) if clerk.current_customer_id else None
        if customer is None:
            await ctx.reply("请用 #编号 指定顾客，例如 “#1 您好”。发送 /customers 查看列表。 Address a customer as #n.")
            return None
        n = await advisors.handle_for(s, clerk.id, customer.id)
    name = advisors.customer_name(customer)
    still_bound = (
        await s.exec(select(Binding.id).where(Binding.customer_id == customer.id, Binding.clerk_id == clerk.id,
                                              Binding.valid_to.is_(None)))
    ).first()
    if still_bound is None:
        await ctx.reply(f"{name} #{n} 已不是您的顾客，消息未发送。 Not sent: no longer your customer.")
        return None
    clerk.current_customer_id = customer.id
    if not segs:  # "#3" alone switches the current customer
        await ctx.reply(f"当前顾客：{name} #{n}。 Now talking to {name} #{n}.")
        return None
    target = await advisors.customer_target(s, customer, clerk)
    if target is None or customer.erased_at is not None:
        await ctx.reply(f"{name} #{n} 没有可用的联系渠道，消息未发送。 Not sent: no channel.")
        return None
    out = Message(segs, sender_name=clerk.display_name)
    await ctx.send(target, out, suffix="relay", kind="reply")
    await service.advisor_replied(s, customer.id, clerk, ctx.now())
    await ctx.log("message_out", customer_id=customer.id, clerk_id=clerk.id, store_id=clerk.store_id,
                  payload={"channel": target.identity.platform, "account": target.identity.account,
                           "chars": len(out.plain_text)})
    note = ctx.gw.adapters[target.identity.account].capabilities().customer_send_note
    await ctx.reply(f"→ 已发送给 {name} #{n}" + (f"\n{note}" if note else ""), suffix="confirm")
    return None
