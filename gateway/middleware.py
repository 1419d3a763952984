"""Middlewares every event passes through before the bots."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

from sqlalchemy import insert

from gateway import advisors
from gateway.models import ChatMessage
from gateway.router import Ctx

log = logging.getLogger("gateway.router")

Next = Callable[[], Awaitable[Any]]


async def resolve_parties(ctx: Ctx, nxt: Next) -> Any:
    """Customer side: the customer behind the sender and their advisor. Clerk side: the clerk.
    Known senders come from the batch's lookups; a new one (or a changed profile, which may merge
    two customers) is resolved in the session."""
    ev, look = ctx.event, ctx.look
    if ev.side == "customer":
        ident = look.identities.get(ev.sender)
        if ident is None or _profile_changed(ident, ev.profile):
            await _resolve_in_session(ctx)
        else:
            _resolve_known(ctx, ident)
    else:
        clerk_id = look.clerk_of.get(ev.sender)
        clerk = look.clerks.get(clerk_id) if clerk_id is not None else None
        if clerk is not None and clerk.last_work_account != ev.sender.account:
            ctx.writes.update_clerk(clerk.id, last_work_account=ev.sender.account)
            clerk = look.clerks[clerk.id] = replace(clerk, last_work_account=ev.sender.account)
        ctx.clerk = clerk
    return await nxt()


def _profile_changed(ident, profile: dict) -> bool:
    if profile.get("unionid") and ident.unionid != profile["unionid"]:
        return True
    return bool(profile) and any((ident.profile or {}).get(k) != v for k, v in profile.items())


def _resolve_known(ctx: Ctx, ident) -> None:
    ev, look, now = ctx.event, ctx.look, ctx.now()
    customer = look.customers[ident.customer_id]
    changes = {}
    if ident.last_seen_at is None or now - ident.last_seen_at > advisors.SEEN_RESOLUTION:
        changes["last_seen_at"] = now  # minute resolution: not a write on every message
    window = _window(ctx, ident) if ev.payload.get("window") else None
    if window is not None:
        changes["window_at"], changes["window_kind"] = window
    if changes:
        ident = look.set_identity(ident, **changes)
        ctx.writes.update_identity(ident.id, **changes)
    name = ev.profile.get("name")
    if name and not customer.name and customer.erased_at is None:
        customer = look.customers[customer.id] = replace(customer, name=name)
        ctx.writes.update_customer(customer.id, name=name)
    if customer.last_identity_id != ident.id:
        customer = look.set_channel(customer, ident)
        ctx.writes.update_customer(customer.id, last_identity_id=ident.id)
    ctx.customer, ctx.identity = customer, ident
    binding = look.bindings.get(customer.id)
    if binding is not None:
        ctx.binding, ctx.clerk = binding, look.clerks.get(binding.clerk_id)


async def _resolve_in_session(ctx: Ctx) -> None:
    ev = ctx.event
    await ctx.materialise()
    ctx.customer, ctx.identity = await advisors.resolve_customer(ctx.session, ev.sender, ev.profile, ctx.now())
    if ev.payload.get("window"):
        window = _window(ctx, ctx.identity)
        if window is not None:
            ctx.identity.window_at, ctx.identity.window_kind = window
    bound = await advisors.open_binding(ctx.session, ctx.customer.id)
    if bound is not None:
        ctx.binding, ctx.clerk = bound


def _window(ctx: Ctx, ident) -> tuple | None:
    """The reply window this event opens, or None when it must not move. A message opens the long
    window; a follow / scan / menu tap the short one, which must not cut short a long window still
    open (the platform keeps allowing those replies); an older event arriving late changes nothing."""
    ev, kind = ctx.event, ctx.event.payload["window"]
    if ident.window_at is not None and ev.occurred_at < ident.window_at:
        return None
    adapter = ctx.gw.adapters.get(ev.sender.account)
    long_window = adapter.capabilities().reply_window if adapter is not None else None
    if (kind != "message" and ident.window_kind == "message" and long_window is not None
            and ev.occurred_at < ident.window_at + long_window):
        return None
    return ev.occurred_at, kind


async def record_inbound(ctx: Ctx, nxt: Next) -> Any:
    """Every inbound message is stored (and logged as `message_in` on the customer side) first."""
    ev = ctx.event
    if ev.type == "message" and ev.message is not None:
        row = dict(
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
        ctx.data["message_row"] = row  # the relay marks it held when the sender floods
        if ctx.staged:
            ctx.writes.message_in(row)
        else:
            await ctx.session.execute(insert(ChatMessage).values(**row))
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
