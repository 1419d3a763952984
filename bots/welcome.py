"""Binding through an invite (or a platform contact), with consent, and the advisor's welcome in
their personal name. Under `ask_customer` a bound customer who meets another clerk is asked, and
switches only if they say so (webchat: `switch: true`; other channels: a switch keyword)."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

from sqlalchemy import update
from sqlmodel import select

from gateway import advisors, campaigns
from gateway.model import Identity, Message, Segment, Target
from gateway.models import AdvisorRequest, Campaign, Clerk, Coupon, Invite, Product
from gateway.router import Ctx, Router

router = Router("welcome")

WELCOME = "您好，我是{advisor}，很高兴成为您的专属顾问。有任何需要，直接在这里留言，我会尽快回复您。"
ASK = "您当前的专属顾问是{current}。如希望改由{new}为您服务，请在{hours}小时内回复“{keyword}”。"


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
                                  now=ctx.now(), advisor=member, switch=bool(p.get("switch")))
    if outcome.status in ("invite_not_found", "clerk_unavailable"):
        return {"error": outcome.status, "message": "this invite is not valid any more"
                if outcome.status == "clerk_unavailable" else "no such invite"}
    clerk = outcome.clerk
    advisor = {"name": clerk.display_name}
    if outcome.status == "conflict":
        return {"error": "already_bound", "message": f"already served by {clerk.display_name}", "advisor": advisor}
    if outcome.status == "ask":
        return await _ask(ctx, outcome, p)
    if outcome.status == "already_bound":
        return {"status": "bound", "advisor": advisor, "binding_id": outcome.binding.id, "new": False}
    await welcome(ctx, outcome, hints={k: p[k] for k in ("reply_token", "reply_by", "advisor") if p.get(k)},
                  consent_how=p.get("consent_how", "consent_given"))
    return {"status": "bound", "advisor": advisor, "binding_id": outcome.binding.id, "new": True}


async def welcome(ctx: Ctx, outcome, *, hints: dict, consent_how: str) -> None:
    """Record the new binding, greet the customer in the advisor's name, tell the advisor."""
    ev, c, b, clerk = ctx.event, ctx.customer, outcome.binding, outcome.clerk
    if c.consent_at is None:
        c.consent_at, c.consent_version = ctx.now(), ctx.gw.config.policies.consent_version
    ctx.binding, ctx.clerk = b, clerk
    if ev.payload.get("invite"):
        await ctx.log("invite_scan", customer_id=c.id, clerk_id=clerk.id, store_id=clerk.store_id,
                      payload={"invite": ev.payload["invite"], "channel": ev.sender.platform})
    if outcome.previous is not None:
        await ctx.log("unbound", customer_id=c.id, clerk_id=outcome.previous.clerk_id,
                      store_id=outcome.previous.store_id,
                      payload={"reason": outcome.previous.end_reason or "rebound", "binding_id": outcome.previous.id})
    await ctx.log("bound", customer_id=c.id, clerk_id=clerk.id, store_id=clerk.store_id,
                  payload={"binding_id": b.id, "source": b.source, "channel": ev.sender.platform,
                           "consent_version": c.consent_version, "consent_how": consent_how})
    n = await advisors.handle_for(ctx.session, clerk.id, c.id)
    segments = [Segment.text(WELCOME.format(advisor=clerk.display_name))] + await _campaign_gifts(ctx, b)
    await ctx.send(Target(ev.sender, customer_id=c.id, clerk_id=clerk.id, hints=hints),
                   Message(segments, clerk.display_name), suffix="welcome", kind="welcome")
    target = await ctx.gw.clerk_target(ctx.session, clerk)
    if target is not None:
        name = advisors.customer_name(c, ctx.identity)
        await ctx.send(replace(target, about=c.id),
                       Message.of_text(f"新顾客绑定：【{name} #{n}】已成为您的会员顾客。回复 #{n} 加内容即可联系TA。"),
                       suffix="clerk-new-customer", kind="notice")


async def _campaign_gifts(ctx: Ctx, binding) -> list[Segment]:
    """An invite made for a campaign welcomes with its product card and a coupon code of the pool."""
    invite = await ctx.session.get(Invite, binding.invite_id) if binding.invite_id else None
    campaign = await ctx.session.get(Campaign, invite.campaign_id) if invite and invite.campaign_id else None
    if campaign is None:
        return []
    out = []
    product = await ctx.session.get(Product, campaign.content["product_id"]) if campaign.content.get("product_id") \
        else None
    if product is not None and product.url:
        out.append(Segment("product", {"name": product.name, "price": f"{product.price:.2f}", "url": product.url,
                                       "image_url": product.image_url or ""}))
    if campaign.coupon_id:
        code = (await campaigns.issue_codes(ctx.session, campaign.coupon_id, [ctx.customer.id], ctx.now())
                ).get(ctx.customer.id)
        coupon = await ctx.session.get(Coupon, campaign.coupon_id)
        if code:
            out.append(Segment("coupon", {"name": coupon.name, "code": code, "value": f"{coupon.value:.2f}"}))
            await ctx.log("coupon_issued", customer_id=ctx.customer.id, clerk_id=binding.clerk_id,
                          campaign_id=campaign.id, payload={"coupon_id": coupon.id, "via": "welcome"})
    return out


async def _ask(ctx: Ctx, outcome, p: dict):
    current = await ctx.session.get(Clerk, outcome.binding.clerk_id)
    new = {"name": outcome.clerk.display_name}
    if ctx.event.reply_required:  # webchat: the page asks, then binds again with switch: true
        return {"error": "switch_available", "advisor": {"name": current.display_name}, "new_advisor": new,
                "message": f"already served by {current.display_name}; bind again with switch: true to change"}
    invite = (await ctx.session.exec(select(Invite.id).where(Invite.code == p["invite"]))).first() \
        if p.get("invite") else None
    ctx.session.add(AdvisorRequest(customer_id=ctx.customer.id, clerk_id=outcome.clerk.id, invite_id=invite,
                                   created_at=ctx.now()))
    pol = ctx.gw.config.policies
    await ctx.send(ctx.reply_target(), Message.of_text(ASK.format(
        current=current.display_name, new=outcome.clerk.display_name, hours=pol.switch_hours,
        keyword=pol.switch_keywords[0])), suffix="ask-switch", kind="reply")
    return {"status": "asked", "advisor": {"name": current.display_name}, "new_advisor": new}


def _switch_words(ctx: Ctx) -> bool:
    words = {w.strip().lower() for w in ctx.gw.config.policies.switch_keywords}
    return ctx.event.text.strip().lower() in words


@router.on("message", _switch_words, side="customer")
async def switch_reply(ctx: Ctx):
    """The customer said yes to the advisor they were offered (if the offer is still open)."""
    since = ctx.now() - timedelta(hours=ctx.gw.config.policies.switch_hours)
    req = (await ctx.session.exec(select(AdvisorRequest).where(
        AdvisorRequest.customer_id == ctx.customer.id, AdvisorRequest.resolved_at.is_(None),
        AdvisorRequest.created_at >= since).order_by(AdvisorRequest.id.desc()))).first()
    if req is None:
        from gateway.router import SKIP

        return SKIP  # just a message that happens to be the word: relay it as usual
    await ctx.session.execute(update(AdvisorRequest).where(AdvisorRequest.customer_id == ctx.customer.id,
                                                           AdvisorRequest.resolved_at.is_(None))
                              .values(resolved_at=ctx.now(), outcome="superseded"))
    req.resolved_at, req.outcome = ctx.now(), "switched"
    code = (await ctx.session.get(Invite, req.invite_id)).code if req.invite_id else None
    clerk = await ctx.session.get(Clerk, req.clerk_id)
    outcome = await advisors.bind(ctx.session, ctx.customer, code, policy="ask_customer", now=ctx.now(),
                                  advisor=clerk, switch=True)
    if outcome.status != "bound":
        await ctx.reply("抱歉，这位顾问暂时无法为您服务。 Sorry, that advisor is not available.")
        return None
    await welcome(ctx, outcome, hints={}, consent_how="asked to change advisor")
    return None
