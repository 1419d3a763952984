"""Binding through an invite, with consent, and the advisor's welcome in their personal name."""

from __future__ import annotations

from gateway import advisors
from gateway.model import Identity, Message, Target
from gateway.router import Ctx, Router

router = Router("welcome")

WELCOME = "您好，我是{advisor}，很高兴成为您的专属顾问。有任何需要，直接在这里留言，我会尽快回复您。"


@router.on("bind", side="customer")
async def bind(ctx: Ctx):
    ev, c = ctx.event, ctx.customer
    p = ev.payload
    if not p.get("consent"):
        return {"error": "consent_required", "message": "the customer must consent to become a member"}
    # A WeCom contact names the member the customer added; without our invite in its state, that
    # member (if they are a clerk) becomes the advisor.
    member = (await advisors.clerk_by_identity(ctx.session, Identity(ev.sender.platform, ev.sender.account, p["advisor"]))
              if p.get("advisor") else None)
    outcome = await advisors.bind(ctx.session, c, p.get("invite"), policy=ctx.gw.config.policies.binding,
                                  now=ctx.now(), advisor=member)
    if outcome.status in ("invite_not_found", "clerk_unavailable"):
        return {"error": outcome.status, "message": "this invite is not valid any more"
                if outcome.status == "clerk_unavailable" else "no such invite"}
    clerk = outcome.clerk
    advisor = {"name": clerk.display_name}
    if outcome.status == "conflict":
        return {"error": "already_bound", "message": f"already served by {clerk.display_name}", "advisor": advisor}
    if outcome.status == "already_bound":
        return {"status": "bound", "advisor": advisor, "binding_id": outcome.binding.id, "new": False}

    b = outcome.binding
    c.consent_at, c.consent_version = ctx.now(), ctx.gw.config.policies.consent_version
    ctx.binding, ctx.clerk = b, clerk
    if p.get("invite"):
        await ctx.log("invite_scan", customer_id=c.id, clerk_id=clerk.id, store_id=clerk.store_id,
                      payload={"invite": p["invite"], "channel": ev.sender.platform})
    if outcome.previous is not None:
        await ctx.log("unbound", customer_id=c.id, clerk_id=outcome.previous.clerk_id,
                      store_id=outcome.previous.store_id, payload={"reason": "rebound", "binding_id": outcome.previous.id})
    await ctx.log("bound", customer_id=c.id, clerk_id=clerk.id, store_id=clerk.store_id,
                  payload={"binding_id": b.id, "source": b.source, "channel": ev.sender.platform,
                           "consent_version": c.consent_version, "consent_how": p.get("consent_how", "consent_given")})
    n = await advisors.handle_for(ctx.session, clerk.id, c.id)
    hints = {k: p[k] for k in ("reply_token", "reply_by", "advisor") if p.get(k)}
    await ctx.send(Target(ev.sender, customer_id=c.id, clerk_id=clerk.id, hints=hints),
                   Message.of_text(WELCOME.format(advisor=clerk.display_name), clerk.display_name),
                   suffix="welcome", kind="welcome")
    target = await ctx.gw.clerk_target(ctx.session, clerk)
    if target is not None:
        name = advisors.customer_name(c, ctx.identity)
        await ctx.send(target, Message.of_text(f"新顾客绑定：【{name} #{n}】已成为您的会员顾客。回复 #{n} 加内容即可联系TA。"),
                       suffix="clerk-new-customer", kind="notice")
    return {"status": "bound", "advisor": advisor, "binding_id": b.id, "new": True}
