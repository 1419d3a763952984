"""Middlewares every event passes through before the bots."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy import insert

from gateway import advisors
from gateway.models import ChatMessage
from gateway.router import Ctx

log = logging.getLogger("gateway.router")

Next = Callable[[], Awaitable[Any]]


async def resolve_parties(ctx: Ctx, nxt: Next) -> Any:
    """Customer side: find or create the customer and load their advisor. Clerk side: the clerk."""
    ev = ctx.event
    s = ctx.session
    if ev.side == "customer":
        ctx.customer, ctx.identity = await advisors.resolve_customer(s, ev.sender, ev.profile, ctx.now())
        if ev.payload.get("window"):  # this event opened the platform's reply window
            _open_window(ctx, ev)
        bound = await advisors.open_binding(s, ctx.customer.id)
        if bound is not None:
            ctx.binding, ctx.clerk = bound
    else:
        ctx.clerk = await advisors.clerk_by_identity(s, ev.sender)
        if ctx.clerk is not None and ctx.clerk.last_work_account != ev.sender.account:
            ctx.clerk.last_work_account = ev.sender.account
    return await nxt()


def _open_window(ctx: Ctx, ev) -> None:
    """A message opens the long window; a follow / scan / menu tap the short one, which must not
    cut short a long window still open (the platform keeps allowing those replies)."""
    ident, kind = ctx.identity, ev.payload["window"]
    if ident.window_at is not None and ev.occurred_at < ident.window_at:
        return  # an older event arriving late
    long_window = ctx.gw.adapters[ev.sender.account].capabilities().reply_window if ev.sender.account in \
        ctx.gw.adapters else None
    if (kind != "message" and ident.window_kind == "message" and long_window is not None
            and ev.occurred_at < ident.window_at + long_window):
        return
    ident.window_at, ident.window_kind = ev.occurred_at, kind


async def record_inbound(ctx: Ctx, nxt: Next) -> Any:
    """Every inbound message is stored (and logged as `message_in` on the customer side) first."""
    ev = ctx.event
    if ev.type == "message" and ev.message is not None:
        await ctx.session.execute(
            insert(ChatMessage).values(
                direction="in",
                side=ev.side,
                platform=ev.sender.platform,
                account=ev.sender.account,
                peer_id=ev.sender.external_id,
                customer_id=ctx.customer.id if ctx.customer else None,
                clerk_id=ctx.clerk.id if ctx.clerk else None,
                segments=[seg.to_dict() for seg in ev.message.segments],
                text=ev.text,
                status="received",
                client_msg_id=ev.payload.get("client_msg_id"),
                platform_msg_id=ev.payload.get("platform_msg_id"),
                created_at=ev.occurred_at,
            )
        )
        if ev.side == "customer":
            await ctx.log(
                "message_in",
                customer_id=ctx.customer.id,
                clerk_id=ctx.clerk.id if ctx.clerk else None,
                store_id=ctx.binding.store_id if ctx.binding else ctx.customer.store_id,
                payload={"channel": ev.sender.platform, "account": ev.sender.account, "chars": len(ev.text)},
            )
    return await nxt()


async def unknown_clerk(ctx: Ctx, nxt: Next) -> Any:
    """A work-IM user who is not a registered clerk gets told so instead of silence."""
    if ctx.event.type != "message":
        return await nxt()
    if ctx.event.side == "clerk" and ctx.clerk is None:
        await ctx.reply("您还不是本品牌的导购账号，请联系门店管理员开通。 You are not registered as a clerk yet.")
        return None
    if ctx.event.side == "clerk" and ctx.clerk.status != "active":
        await ctx.reply("您的导购账号已停用。 Your clerk account is no longer active.")
        return None
    return await nxt()


MIDDLEWARES = [resolve_parties, record_inbound, unknown_clerk]
