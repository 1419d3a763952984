"""Clerk commands in the work IM: /help, /customers, /qr, /tag, /untag, /campaigns, /forward, /stats."""

from __future__ import annotations

import re
from datetime import timedelta

from sqlmodel import select

from gateway import advisors, campaigns, focus, reports
from gateway.model import Message, Segment
from gateway.models import Invite
from gateway.router import Ctx, Router, text_match

router = Router("commands")

HELP = """可用指令 Commands:
/customers  我的顾客及编号 your customers and their #n
/qr         我的专属邀请码与二维码 your invite link and QR code
/tag #n vip   给顾客加标签 tag a customer (/untag #n vip removes it)
/campaigns  可转发的活动 campaigns you can forward
/stats      近30天业绩 your last 30 days
/forward 12 把活动12以您的名义发给您的顾客 send campaign 12 to your customers
/help       本帮助 this help
回复顾客：#编号 内容，例如 “#1 您好”；直接发文字则发给当前顾客。
Reply with “#n text”; bare text goes to your current customer."""


@router.on("message", text_match(r"^\s*/help\b"), side="clerk")
async def help_(ctx: Ctx):
    await ctx.reply(HELP)


@router.on("message", text_match(r"^\s*/customers\b"), side="clerk")
async def customers(ctx: Ctx):
    clerk, s = ctx.clerk, ctx.session
    rows = await advisors.clerk_customers(s, clerk.id, limit=50)
    if not rows:
        await ctx.reply("您还没有绑定的顾客。发送 /qr 获取您的专属邀请码。 No customers yet: send /qr.")
        return
    tz = ctx.gw.tz
    current = await focus.current(s, clerk.id, ctx.now())
    lines = []
    for customer, n, at in rows:
        n = n or await advisors.handle_for(s, clerk.id, customer.id)
        when = at.astimezone(tz).strftime("%m-%d %H:%M") if at else "—"
        mark = " ←" if customer.id == current else ""
        tags = f" [{' '.join(customer.tags)}]" if customer.tags else ""
        lines.append(f"#{n} {advisors.customer_name(customer)}{tags} · {when}{mark}")
    await ctx.reply("我的顾客 My customers:\n" + "\n".join(lines))


@router.on("message", text_match(r"^\s*/qr\b"), side="clerk")
async def qr(ctx: Ctx):
    clerk, s = ctx.clerk, ctx.session
    invite = (
        await s.exec(select(Invite).where(Invite.clerk_id == clerk.id, Invite.source == "qr", Invite.campaign_id.is_(None))
                     .order_by(Invite.id))
    ).first() or await advisors.create_invite(s, clerk.id, source="qr")
    url = ctx.gw.invite_url(invite.code)
    labels = {"wecom": "微信扫码加您为好友并绑定 (WeChat contact QR)", "wechat_mp": "微信扫码关注公众号并绑定 (Official Account QR)"}
    extra = "".join(f"\n{labels.get(p, p)}：\n{u}" for p, u in await ctx.gw.contact_urls(s, clerk.id, invite.code))
    await ctx.send(
        ctx.reply_target(),
        Message([Segment.text(f"您的专属邀请码 {invite.code}\n顾客扫码或打开链接即可绑定您为专属顾问：\n{url}{extra}"),
                 Segment("image", {"url": f"{url}/qr.png", "alt": f"QR {invite.code}"})]),
        suffix="qr", kind="notice",
    )


@router.on("message", text_match(r"^\s*/stats\b"), side="clerk")
async def stats(ctx: Ctx):
    """The clerk's own figures for the last 30 days (the clerks report, one row)."""
    now = ctx.now()
    rows = await reports.clerks(ctx.session, now - timedelta(days=30), now, ctx.clerk.store_id)
    me = next((r for r in rows if r["clerk_id"] == ctx.clerk.id), None)
    if me is None:
        await ctx.reply("暂无数据。 No figures yet.")
        return
    reply = "—" if me["first_reply_median_s"] is None else f"{me['first_reply_median_s'] // 60} 分钟"
    await ctx.reply(f"近30天 Last 30 days:\n新会员 members {me['members_recruited']} · 服务顾客 customers "
                    f"{me['active_customers']} · 消息 messages {me['messages']}\n首次回复中位 first reply {reply} · "
                    f"转发 forwards {me['forwards']}\n成交 orders {me['orders']} · 业绩 GMV ¥{me['gmv']} · "
                    f"佣金 commission ¥{me['commission']}")


@router.on("message", text_match(r"^\s*/campaigns\b"), side="clerk")
async def campaigns_(ctx: Ctx):
    rows = await campaigns.clerk_campaigns(ctx.session, ctx.clerk, ctx.now())
    if not rows:
        await ctx.reply("目前没有可转发的活动。 No campaigns to forward right now.")
        return
    await ctx.reply("可转发的活动 Campaigns:\n" + "\n".join(f"/forward {c.id}  {c.name}" for c in rows))


@router.on("message", text_match(r"^\s*/forward\b\s*(\d*)"), side="clerk")
async def forward(ctx: Ctx):
    num = ctx.data["match"].group(1)
    if not num:
        await ctx.reply("用法：/forward 活动编号（发送 /campaigns 查看）。 Usage: /forward <campaign id>.")
        return
    out = await campaigns.forward(ctx.gw, ctx.session, int(num), ctx.clerk)
    if isinstance(out, str):
        await ctx.reply(out)
        return
    why = "，".join(f"{k} {v}" for k, v in out["excluded"].items())
    await ctx.reply(f"已以您的名义发送给 {out['sent']} 位顾客" + (f"（未发送：{why}）" if why else "") +
                    f"。 Sent to {out['sent']} customers.")


@router.on("message", text_match(r"^\s*/(un)?tag\b(.*)$"), side="clerk")
async def tag(ctx: Ctx):
    """Tags drive audiences later: `/tag #3 vip 高端`, `/untag #3 vip`."""
    match = ctx.data["match"]
    m = re.match(r"^\s*#(\d{1,6})\s+(.+)$", match.group(2) or "")
    if not m:
        await ctx.reply("用法：/tag #编号 标签 … 例如 “/tag #3 vip”。 Usage: /tag #n tag …")
        return
    customer = await advisors.customer_by_handle(ctx.session, ctx.clerk.id, int(m.group(1)))
    bound = await advisors.open_binding(ctx.session, customer.id) if customer else None
    if customer is None or bound is None or bound[1].id != ctx.clerk.id:
        await ctx.reply(f"#{m.group(1)} 不是您当前的顾客。 Not your customer.")
        return
    words = {w[:32] for w in m.group(2).split()}
    old = set(customer.tags or [])
    new = old - words if match.group(1) else old | words
    customer.tags = sorted(new) or None
    await ctx.log("tagged", customer_id=customer.id, clerk_id=ctx.clerk.id, store_id=customer.store_id,
                  payload={"added": sorted(new - old), "removed": sorted(old - new)})
    await ctx.reply(f"#{m.group(1)} {advisors.customer_name(customer)}：{' '.join(customer.tags or []) or '（无标签）'}")


@router.on("message", text_match(r"^\s*/"), side="clerk")
async def unknown(ctx: Ctx):
    await ctx.reply("未知指令。发送 /help 查看可用指令。 Unknown command: send /help.")
