"""Relay between a customer and their advisor (in the spirit of mautrix relay mode).

Customer → clerk: `【<customer name> #<n>】<text>` in the clerk's work IM; that customer becomes the
clerk's current one. Clerk → customer: `#<n> <text>` or a quoted reply addresses a customer, bare
text goes to the current one; the customer sees the clerk's personal display name, and the clerk
is told who got it. Bare text is never guessed: when a relay has just switched the clerk to another
customer, the gateway holds it and asks "发给谁？" (gateway/focus.py). A customer with no advisor
gets a polite auto-reply and waits in the store's unassigned queue; one who floods is held back.

Both relay handlers are `staged`: they read the batch's lookups and stage their writes, so a
batch of relays costs a handful of statements. Anything rare (a first message, a handle to
allocate, a customer without a known channel) materialises the context and uses the session.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

from gateway import advisors, labels, service
from gateway.addressing import address_of
from gateway.focus import (
    ASK,
    CHOSEN,
    HOLD_ANSWER,
    SHOWN,
    Current,
    Focus,
    open_question,
    recent_focus,
    resolve,
    shown_at,
)
from gateway.model import Message, Segment
from gateway.ratelimit import SlidingCounter
from gateway.router import SKIP, Ctx, Router

router = Router("relay")

UNBOUND_REPLY = "您好，感谢您的留言！我们正在为您安排专属顾问，稍后会有顾问回复您。"
FLOOD_REPLY = "您发送的消息较多，已为您保存，顾问会尽快查看并回复您。"


def _bound(ctx: Ctx) -> bool:
    """An advisor who has left no longer gets messages: the customer waits in the queue instead."""
    return ctx.binding is not None and ctx.clerk is not None and ctx.clerk.status == "active"


# -- what the relay reads and writes, staged or in the session --------------------------------------


async def _handle(ctx: Ctx, clerk_id: int, customer_id: int) -> int:
    if ctx.staged:
        n = ctx.look.handles.get((clerk_id, customer_id))
        if n is not None:
            return n
        await ctx.materialise()  # the first message between them: allocate in the session
    return await advisors.handle_for(ctx.session, clerk_id, customer_id)


async def _by_handle(ctx: Ctx, clerk_id: int, n: int) -> int | None:
    if ctx.staged:
        return ctx.look.by_handle.get((clerk_id, n))
    customer = await advisors.customer_by_handle(ctx.session, clerk_id, n)
    return customer.id if customer else None


async def _recent(ctx: Ctx, clerk_id: int) -> list[Focus]:
    if ctx.staged:
        return ctx.look.focus.get(clerk_id, [])
    return (await recent_focus(ctx.session, [clerk_id]))[clerk_id]


async def _current(ctx: Ctx, clerk_id: int) -> Current:
    """Who the clerk's bare text would reach, and whether that is a guess."""
    guard = timedelta(seconds=ctx.gw.config.policies.reply_guard_seconds)
    rows = await _recent(ctx, clerk_id)
    if ctx.staged:
        shown = ctx.look.shown
    else:
        shown = await shown_at(ctx.session, [f.relay_key for f in rows if f.relay_key])
    return resolve(rows, shown, ctx.now(), guard)


async def _set_focus(ctx: Ctx, f: Focus) -> None:
    if ctx.staged:
        ctx.look.set_focus(f)
        ctx.writes.set_focus(f)
    else:
        from gateway.focus import append

        await append(ctx.session, [f])


# -- customer → clerk --------------------------------------------------------------------------------


@router.on("message", _bound, side="customer", staged=True)
async def customer_to_clerk(ctx: Ctx):
    c, clerk, now = ctx.customer, ctx.clerk, ctx.now()
    target = (ctx.look.clerk_target(clerk, ctx.gw.clerk_accounts) if ctx.staged
              else await ctx.gw.clerk_target(ctx.session, clerk))
    if target is None:  # the advisor has no reachable work IM: treat the customer as unassigned
        return SKIP
    gate = ctx.gw.flood_gate.take(c.id) if ctx.gw.flood_gate else SlidingCounter.OK
    if gate != SlidingCounter.OK:
        return await _held_back(ctx, target, gate == SlidingCounter.FIRST_REFUSED)
    n = await _handle(ctx, clerk.id, c.id)
    target, message = labels.relayed(target, advisors.customer_name(c, ctx.identity), n, c.id, ctx.event.message)
    key = ctx.idem("relay")
    await ctx.send(target, message, idem_key=key, kind="relay")
    # Every relay is a row: which one the clerk met last is decided by when each reached them.
    recent = await _recent(ctx, clerk.id)
    await _set_focus(ctx, Focus(clerk.id, c.id, recent[0].customer_id if recent else None, SHOWN, now,
                                open_question(recent, now), relay_key=key))
    await service.waiting(ctx, c, clerk, ctx.binding.store_id)
    await service.offhours_reply(ctx, ctx.binding.store_id)
    return None


async def _held_back(ctx: Ctx, clerk_target, first: bool) -> None:
    """Over the per-customer limit: the message is kept (marked held), not relayed; the customer
    and the clerk hear it once per burst."""
    row = ctx.data.get("message_row")
    if row is not None and ctx.staged:
        row["status"] = "held"
    if first:
        await ctx.reply(FLOOD_REPLY, suffix="flood")
        name = advisors.customer_name(ctx.customer, ctx.identity)
        await ctx.send(replace(clerk_target, about=ctx.customer.id), Message.of_text(
            f"⚠️ {name} 短时间内发送了大量消息，暂停转发一分钟；消息已保存。 {name} is sending too fast; "
            f"relaying paused for a minute, nothing is lost."), suffix="flood-clerk", kind="notice")
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


# -- clerk → customer --------------------------------------------------------------------------------


@router.on("message", lambda ctx: address_of(ctx.event) is not None, side="clerk", staged=True)
async def clerk_to_customer(ctx: Ctx):
    clerk = ctx.clerk
    addr = address_of(ctx.event)
    segs = list(ctx.event.message.segments)
    current = await _current(ctx, clerk.id)
    if addr.handle is None:  # bare text: the current customer, unless that is a guess
        if current.customer_id is None:
            await ctx.reply("请用 #编号 指定顾客，例如 “#1 您好”。发送 /customers 查看列表。 Address a customer as #n.")
            return None
        if current.ambiguous or current.held:
            return await _ask(ctx, current, segs)
        return await _deliver(ctx, current.customer_id, [segs] if segs else [], chosen=False, current=current)
    customer_id = await _by_handle(ctx, clerk.id, addr.handle)
    if customer_id is None:
        await ctx.reply(f"没有 #{addr.handle} 这位顾客。发送 /customers 查看您的顾客。 No customer #{addr.handle}.")
        return None
    if not addr.quoted:
        segs = ([Segment.text(addr.rest)] if addr.rest.strip() else []) + segs[1:]
    if not segs and current.held:  # "#n" answers the question: the held messages go to n
        messages = [[Segment.from_dict(sg) for sg in m] for m in current.held["messages"]]
        return await _deliver(ctx, customer_id, messages, chosen=True, current=current, answered=True)
    return await _deliver(ctx, customer_id, [segs] if segs else [], chosen=True, current=current)


async def _deliver(ctx: Ctx, customer_id: int, messages: list[list[Segment]], *, chosen: bool, current: Current,
                   answered: bool = False):
    """Send to the addressed customer. A question still open stays open unless this answers it."""
    clerk, s, now = ctx.clerk, ctx.session, ctx.now()
    customer, channel, binding = await _addressee(ctx, customer_id)
    n = await _handle(ctx, clerk.id, customer_id)
    name = advisors.customer_name(customer)
    if binding is None or binding.clerk_id != clerk.id:
        await ctx.reply(f"{name} #{n} 已不是您的顾客，消息未发送。 Not sent: no longer your customer.")
        return None
    if chosen:
        await _set_focus(ctx, Focus(clerk.id, customer_id, current.customer_id, CHOSEN, now,
                                    None if answered else current.held))
    if not messages:  # "#3" alone switches the current customer
        await ctx.reply(f"当前顾客：{name} #{n}。 Now talking to {name} #{n}.")
        return None
    if customer.erased_at is not None or channel is None:
        await ctx.reply(f"{name} #{n} 没有可用的联系渠道，消息未发送。 Not sent: no channel.")
        return None
    work_ids = ctx.look.work_ids.get(clerk.id, []) if ctx.staged else await ctx.gw.caches.work_ids(s, [clerk.id])
    target = advisors.customer_target_on(customer_id, channel, clerk.id,
                                         work_ids if ctx.staged else work_ids[clerk.id])
    for i, segs in enumerate(messages):
        out = Message(segs, sender_name=clerk.display_name)
        await ctx.send(target, out, suffix="relay" if i == 0 else f"relay:{i}", kind="reply")
        await ctx.log("message_out", customer_id=customer_id, clerk_id=clerk.id, store_id=clerk.store_id,
                      payload={"channel": target.identity.platform, "account": target.identity.account,
                               "chars": len(out.plain_text)})
    await service.replied(ctx, customer_id, clerk)
    note = ctx.gw.adapters[target.identity.account].capabilities().customer_send_note
    sent = f"（{len(messages)} 条）" if len(messages) > 1 else ""
    await ctx.reply(f"→ 已发送给 {name} #{n}{sent}" + (f"\n{note}" if note else ""), suffix="confirm")
    return None


async def _addressee(ctx: Ctx, customer_id: int):
    """The customer, the channel they last wrote from, and their open binding."""
    if ctx.staged:
        look = ctx.look
        customer, channel = look.customers.get(customer_id), look.channels.get(customer_id)
        if customer is not None and channel is not None:
            return customer, channel.address, look.bindings.get(customer_id)
        await ctx.materialise()  # not in the lookups (no channel on record): the slow way
    from gateway.models import Customer

    customer = await ctx.session.get(Customer, customer_id)
    target = await advisors.customer_target(ctx.session, customer)
    bound = await advisors.open_binding(ctx.session, customer_id)
    return customer, target.identity if target else None, bound[0] if bound else None


async def _name(ctx: Ctx, customer_id: int) -> str:
    customer = ctx.look.customers.get(customer_id) if ctx.staged else None
    if customer is None:
        from gateway.models import Customer

        await ctx.materialise()
        customer = await ctx.session.get(Customer, customer_id)
    return advisors.customer_name(customer)


async def _ask(ctx: Ctx, current: Current, segs: list[Segment]):
    """Hold the clerk's bare text and ask who it is for; "#n" answers and sends it."""
    now = ctx.now()
    held = current.held or {"messages": [], "candidates": []}
    candidates = list(dict.fromkeys([*held["candidates"], current.customer_id, current.previous_customer_id]))
    candidates = [c for c in candidates if c is not None]
    held = {"messages": [*held["messages"], [sg.to_dict() for sg in segs]], "candidates": candidates,
            "at": now.isoformat()}
    await _set_focus(ctx, Focus(ctx.clerk.id, current.customer_id, current.previous_customer_id, ASK, now, held))
    options = [f"#{await _handle(ctx, ctx.clerk.id, cid)} {await _name(ctx, cid)}" for cid in candidates]
    minutes = int(HOLD_ANSWER.total_seconds() // 60)
    await ctx.reply(f"发给谁？{' / '.join(options)}\n回复 #编号 即发送刚才的消息（{minutes} 分钟内有效）。"
                    f" Who is this for? Reply #n to send it.", suffix="ask")
    return None
