"""A customer a platform will not let us reach right now (the Official Account's 48-hour window
closed or its replies used up, the customer unfollowed): the message stays held there, goes out
on the customer's other channel or the platform's notice form when there is one, and the clerk
is told what happened in their IM. Pushes are never rerouted: marketing respects the channel."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from sqlmodel import select

from gateway import advisors
from gateway.model import Message, Target
from gateway.models import Clerk, Customer
from gateway.models import Identity as IdentityRow

if TYPE_CHECKING:
    from gateway.runtime import Gateway

REROUTED_KINDS = frozenset({"reply", "welcome"})
WHY = {
    "window_closed": "顾客超过48小时未互动，公众号不能再发客服消息 (the 48-hour reply window has closed)",
    "window_quota": "本轮互动可发的客服消息已用完 (the replies allowed since the customer's last message are used up)",
    "not_following": "顾客已取消关注公众号 (the customer unfollowed the Official Account)",
    "no_subscription": "顾客没有可用的订阅消息授权 (no one-time subscription left)",
}


async def reroute(session, gw: Gateway, row, code: str | None, error: str | None) -> None:
    target = Target.from_dict(row.target)
    if target.customer_id is None or row.kind not in REROUTED_KINDS:
        return
    message = Message.from_dict(row.message)
    customer = await session.get(Customer, target.customer_id)
    clerk = await session.get(Clerk, target.clerk_id) if target.clerk_id else None
    via = await _other_channel(session, gw, row, customer, clerk, message)
    if via is None and row.kind == "reply" and gw.adapters[row.account].capabilities().notice_fallback:
        if await gw.outbox.enqueue(session, target, message, idem_key=f"{row.idem_key}:notice", kind="template"):
            via = "服务通知 (template message)"
    if clerk is None or row.kind != "reply":
        return
    clerk_target = await gw.clerk_target(session, clerk)
    if clerk_target is None:
        return
    n = await advisors.handle_for(session, clerk.id, customer.id)
    outcome = f"已改用{via}发送。 Sent via {via} instead." if via else \
        "暂时无法联系该顾客，顾客再次留言后即可回复。 Not reachable until the customer writes again."
    text = f"消息未送达【{advisors.customer_name(customer)} #{n}】：{WHY.get(code or '', error or code)}。{outcome}"
    await gw.outbox.enqueue(session, replace(clerk_target, about=customer.id), Message.of_text(text),
                            idem_key=f"{row.idem_key}:told", kind="notice")


async def _other_channel(session, gw: Gateway, row, customer: Customer, clerk: Clerk | None,
                         message: Message) -> str | None:
    """The customer's most recently seen identity on another configured account, if any."""
    q = (select(IdentityRow)
         .where(IdentityRow.customer_id == customer.id, IdentityRow.account != row.account,
                IdentityRow.account.in_(list(gw.adapters)))
         .order_by(IdentityRow.last_seen_at.desc().nulls_last(), IdentityRow.id.desc()))
    ident = (await session.exec(q)).first()
    if ident is None:
        return None
    target = await advisors.target_for(session, customer, ident, clerk)
    await gw.outbox.enqueue(session, target, message, idem_key=f"{row.idem_key}:via:{ident.account}", kind=row.kind)
    return gw.adapters[ident.account].platform
