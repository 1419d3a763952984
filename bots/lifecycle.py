"""Clerks leaving, contacts ending, platform transfers finishing: nobody is lost.

A clerk who leaves (an org event from DingTalk or WeCom, or the admin API) has their customers
handed over by the handover policy; those nobody can take wait in the store's queue. A binding
ends when either side removes the other on the platform; a platform transfer moves the binding
only once the platform reports it done.
"""

from __future__ import annotations

import logging

from sqlmodel import select

from gateway import advisors, handover
from gateway.caches import WORK_IDS
from gateway.model import Identity
from gateway.models import ClerkIdentity, Invite
from gateway.router import Ctx, Router

log = logging.getLogger("gateway.lifecycle")
router = Router("lifecycle")


@router.on("clerk_left", side="clerk")
async def clerk_left(ctx: Ctx):
    clerk = ctx.clerk
    if clerk is None or clerk.status == "left":
        return None  # unknown user or already handled: nothing to do
    reason = f"{ctx.event.payload.get('reason', 'left')} ({ctx.event.sender.platform})"
    await handover.leave(ctx.session, ctx.gw, clerk, now=ctx.now(), resigned=True, reason=reason)
    return None


@router.on("clerk_renamed", side="clerk")
async def clerk_renamed(ctx: Ctx):
    """The platform changed a clerk's user id (WeCom NewUserID): their identity row follows, or
    their next message (under the new id) would come from a stranger."""
    old, new = ctx.event.sender, ctx.event.payload["new_external_id"]
    if ctx.clerk is None:
        return None  # not one of our clerks
    same = (ClerkIdentity.platform == old.platform, ClerkIdentity.account == old.account)
    row = (await ctx.session.exec(select(ClerkIdentity).where(*same, ClerkIdentity.external_id == old.external_id))).first()
    holder = (await ctx.session.exec(select(ClerkIdentity).where(*same, ClerkIdentity.external_id == new))).first()
    if row is None or holder is not None:  # (one id per clerk and account, so the holder is someone else)
        if holder is not None:
            log.warning("%s %s: %s was renamed to %s, which is clerk %s's: not moved", old.platform, old.account,
                        old.external_id, new, holder.clerk_id)
        return None
    row.external_id = new
    await ctx.gw.caches.changed(ctx.session, WORK_IDS)
    return None


@router.on("unbind", side="customer")
async def contact_removed(ctx: Ctx):
    """The customer removed their advisor, or the advisor the customer (WeCom contact deleted)."""
    ev, p = ctx.event, ctx.event.payload
    if ctx.binding is None:
        return None
    member = await advisors.clerk_by_identity(ctx.session, Identity(ev.sender.platform, ev.sender.account, p["advisor"]))
    if member is None or member.id != ctx.binding.clerk_id:
        return None  # a contact with someone who is not their advisor: the binding is unaffected
    await advisors.close_binding(ctx.session, ctx.binding, ctx.now(), p["reason"])
    await ctx.log("unbound", customer_id=ctx.customer.id, clerk_id=member.id, store_id=ctx.binding.store_id,
                  payload={"reason": p["reason"], "binding_id": ctx.binding.id, "channel": ev.sender.platform})
    return None


@router.on("transfer_result", side="customer")
async def transfer_result(ctx: Ctx):
    p = ctx.event.payload
    await handover.transfer_finished(ctx.session, ctx.gw, ctx.customer, ctx.event.sender.account,
                                     ctx.event.sender.external_id, status=p["status"], takeover=p.get("takeover"),
                                     now=ctx.now())
    return None


@router.on("contact_way", side="clerk")
async def contact_way(ctx: Ctx):
    """Remember the platform QR made for an invite, so it is made once."""
    p = ctx.event.payload
    invite = (await ctx.session.exec(select(Invite).where(Invite.code == p["invite"]))).first()
    if invite is not None and p.get("qr_code"):
        refs = dict(invite.channel_refs or {})
        refs[ctx.event.sender.account] = {k: p[k] for k in ("config_id", "qr_code", "expires_at") if p.get(k)}
        invite.channel_refs = refs
    return None
