"""Clerk commands in the work IM: /help, /customers, /qr."""

from __future__ import annotations

from sqlmodel import select

from gateway import advisors
from gateway.model import Message, Segment
from gateway.models import Invite
from gateway.router import Ctx, Router, text_match

router = Router("commands")

HELP = """可用指令 Commands:
/customers  我的顾客及编号 your customers and their #n
/qr         我的专属邀请码与二维码 your invite link and QR code
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
    lines = []
    for customer, n, at in rows:
        n = n or await advisors.handle_for(s, clerk.id, customer.id)
        when = at.astimezone(tz).strftime("%m-%d %H:%M") if at else "—"
        mark = " ←" if customer.id == clerk.current_customer_id else ""
        lines.append(f"#{n} {advisors.customer_name(customer)} · {when}{mark}")
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


@router.on("message", text_match(r"^\s*/"), side="clerk")
async def unknown(ctx: Ctx):
    await ctx.reply("未知指令。发送 /help 查看可用指令。 Unknown command: send /help.")
