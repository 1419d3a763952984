"""退订 / TD: the customer opts out of marketing; every later push is held for them."""

from __future__ import annotations

from gateway.router import Ctx, Router

router = Router("opt_out")


def _keyword(words_attr: str):
    def f(ctx: Ctx) -> bool:
        words = getattr(ctx.gw.config.policies, words_attr)
        return ctx.event.text.strip().lower() in {w.strip().lower() for w in words}

    return f


@router.on("message", _keyword("opt_out_keywords"), side="customer")
async def opt_out(ctx: Ctx):
    c = ctx.customer
    if c.opted_out_at is None:
        c.opted_out_at = ctx.now()
        await ctx.log("opt_out", customer_id=c.id, clerk_id=ctx.clerk.id if ctx.clerk else None,
                      payload={"keyword": ctx.event.text.strip()})
    await ctx.reply("已为您退订营销消息，回复“订阅”可恢复；您仍可随时在这里联系您的顾问。"
                    " You are unsubscribed from promotions; reply 订阅 to resubscribe.")


@router.on("message", _keyword("opt_in_keywords"), side="customer")
async def opt_in(ctx: Ctx):
    c = ctx.customer
    if c.opted_out_at is not None:
        c.opted_out_at = None
        await ctx.log("opt_in", customer_id=c.id, clerk_id=ctx.clerk.id if ctx.clerk else None)
    await ctx.reply("已为您恢复订阅。 You are subscribed again.")
