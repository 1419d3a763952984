"""Service levels: no customer goes unanswered. Outside the store's opening hours the customer is
told when their advisor is back; a message left waiting reminds the clerk after N minutes and
escalates to the store manager after M; the advisor's first reply closes the wait and its time
is recorded (reports read first-reply times from here)."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, time, timedelta
from typing import TYPE_CHECKING

from sqlalchemy import update
from sqlalchemy.exc import IntegrityError
from sqlmodel import select

from gateway import advisors
from gateway.interactions import log_interaction
from gateway.model import Message
from gateway.models import Clerk, Conversation, Customer, Store

if TYPE_CHECKING:
    from gateway.runtime import Gateway

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
WEEKDAY_ZH = "一二三四五六日"


def parse_hours(spec: dict | None) -> dict[int, tuple[time, time] | None] | None:
    """{"mon": "10:00-22:00", "sun": "closed", "daily": "10:00-22:00"} → weekday → (open, close).
    None: no hours set (always open). Malformed specs are refused by the API before they get here."""
    if not spec:
        return None
    out: dict[int, tuple[time, time] | None] = {}
    for i, day in enumerate(DAYS):
        v = spec.get(day, spec.get("daily"))
        if v is None or v == "closed":
            out[i] = None
        else:
            a, b = v.split("-")
            out[i] = (time.fromisoformat(a), time.fromisoformat(b))
    return out


def is_open(hours, local: datetime) -> bool:
    if hours is None:
        return True
    span = hours.get(local.weekday())
    return span is not None and span[0] <= local.time() < span[1]


def next_open(hours, local: datetime) -> datetime | None:
    """The next opening after `local` (in its zone), within a week; None if never."""
    for d in range(8):
        day = local.date() + timedelta(days=d)
        span = hours.get(day.weekday()) if hours else None
        if span is None:
            continue
        start = datetime.combine(day, span[0], local.tzinfo)
        if start > local:
            return start
    return None


def when(local_next: datetime, local_now: datetime) -> str:
    if local_next.date() == local_now.date():
        return f"今天 {local_next:%H:%M}"
    if local_next.date() == local_now.date() + timedelta(days=1):
        return f"明天 {local_next:%H:%M}"
    return f"周{WEEKDAY_ZH[local_next.weekday()]} {local_next:%H:%M}"


async def offhours_reply(ctx, store_id: int | None) -> None:
    """Once per closed period: the customer hears when their advisor is back."""
    if store_id is None or not ctx.gw.config.policies.offhours_reply:
        return
    hours = (await ctx.gw.caches.hours(ctx.session, [store_id]))[store_id]
    local = ctx.now().astimezone(ctx.gw.tz)
    if is_open(hours, local):
        return
    back = next_open(hours, local)
    if back is None:
        return
    text = f"{ctx.clerk.display_name}现在不在店里，{when(back, local)}上班后会第一时间回复您。"
    await ctx.send(ctx.reply_target(), Message.of_text(text, ctx.clerk.display_name),
                   idem_key=f"offhours:{ctx.customer.id}:{back.isoformat()}", kind="reply")


async def waiting(ctx, customer, clerk, store_id: int | None) -> None:
    """A customer message opens a wait unless one is open (staged, or in the session)."""
    if not ctx.staged:
        await customer_waiting(ctx.session, customer, clerk, store_id, ctx.now())
    elif ctx.look.waits.get(customer.id) is None:
        from gateway.lookups import WaitView

        ctx.writes.open_wait(customer.id, clerk.id if clerk else None, store_id, ctx.now())
        ctx.look.set_wait(customer.id, WaitView(None, clerk.id if clerk else None, store_id, ctx.now()))


async def replied(ctx, customer_id: int, clerk) -> None:
    """The advisor's reply closes the customer's wait (staged, or in the session)."""
    if not ctx.staged:
        await advisor_replied(ctx.session, customer_id, clerk, ctx.now())
    elif ctx.look.waits.get(customer_id) is not None:
        ctx.writes.answer_wait(customer_id, clerk.id)
        ctx.look.set_wait(customer_id, None)


async def customer_waiting(session, customer: Customer, clerk: Clerk | None, store_id: int | None, now: datetime) -> None:
    """A customer message: opens a wait unless one is open already (the partial unique index decides)."""
    q = select(Conversation.id).where(Conversation.customer_id == customer.id, Conversation.first_reply_at.is_(None))
    if (await session.exec(q)).first() is not None:
        return
    try:
        async with session.begin_nested():
            session.add(Conversation(customer_id=customer.id, clerk_id=clerk.id if clerk else None, store_id=store_id,
                                     started_at=now))
            await session.flush()
    except IntegrityError:
        pass  # opened by a concurrent message


async def advisor_replied(session, customer_id: int, clerk: Clerk, now: datetime) -> None:
    """The first reply closes the wait; its time is the conversation's first-reply time."""
    conv = (await session.exec(select(Conversation).where(Conversation.customer_id == customer_id,
                                                          Conversation.first_reply_at.is_(None)))).first()
    if conv is None:
        return
    conv.first_reply_at = now
    await log_interaction(session, "first_reply", occurred_at=now, customer_id=customer_id, clerk_id=clerk.id,
                          store_id=conv.store_id, payload={"conversation_id": conv.id,
                                                           "seconds": int((now - conv.started_at).total_seconds())})


async def tick(gw: Gateway) -> int:
    """Remind and escalate waits past their time (only while the store is open). Returns the
    notices queued. Safe on several instances: each step is claimed by a guarded UPDATE."""
    pol = gw.config.policies
    now = gw.clock.now()
    sent = 0
    async with gw.db() as s:
        for step, minutes, column in (("remind", pol.remind_after_minutes, Conversation.reminded_at),
                                      ("escalate", pol.escalate_after_minutes, Conversation.escalated_at)):
            if minutes is None:
                continue
            due = (await s.exec(
                select(Conversation).where(Conversation.first_reply_at.is_(None), column.is_(None),
                                           Conversation.started_at <= now - timedelta(minutes=minutes))
                .order_by(Conversation.id).limit(500)
            )).all()
            for conv in due:
                store = await s.get(Store, conv.store_id) if conv.store_id else None
                if store is not None and not is_open(parse_hours(store.opening_hours), now.astimezone(gw.tz)):
                    continue  # nobody is there to answer: the wait resumes when the store opens
                took = (await s.execute(update(Conversation).where(Conversation.id == conv.id, column.is_(None))
                                        .values({column.key: now}).returning(Conversation.id))).first()
                if took is not None:
                    sent += await _notify(s, gw, conv, step, now)
        await s.commit()
    if sent:
        gw.outbox.kick()
    return sent


async def _notify(s, gw: Gateway, conv: Conversation, step: str, now: datetime) -> int:
    customer = await s.get(Customer, conv.customer_id)
    minutes = int((now - conv.started_at).total_seconds() // 60)
    clerk = await s.get(Clerk, conv.clerk_id) if conv.clerk_id else None
    name = advisors.customer_name(customer)
    if step == "remind" and clerk is not None:
        n = await advisors.handle_for(s, clerk.id, customer.id)
        to, text = clerk, f"⏰【{name} #{n}】的消息已等待 {minutes} 分钟，请尽快回复。 Waiting {minutes} min."
    else:
        to = (await s.exec(select(Clerk).where(Clerk.store_id == conv.store_id, Clerk.role == "manager",
                                               Clerk.status == "active").order_by(Clerk.id))).first()
        who = clerk.display_name if clerk else "（无顾问）"
        text = (f"⚠️ 顾客【{name}】等待回复已 {minutes} 分钟（顾问：{who}），请协助处理。"
                f" A customer has waited {minutes} min.")
    if to is None:
        return 0
    target = await gw.clerk_target(s, to)
    if target is None:
        return 0
    await gw.outbox.enqueue(s, replace(target, about=customer.id), Message.of_text(text), idem_key=f"sla:{step}:{conv.id}",
                            kind="notice")
    return 1


def quiet_until(spec: str | None, local: datetime) -> datetime | None:
    """The end of the quiet window `local` falls in ("22:00-08:00" may span midnight), else None."""
    if not spec:
        return None
    a, b = (time.fromisoformat(x) for x in spec.split("-"))
    t = local.time()
    inside = a <= t < b if a < b else (t >= a or t < b)
    if not inside:
        return None
    end = datetime.combine(local.date(), b, local.tzinfo)
    return end if end > local else end + timedelta(days=1)
