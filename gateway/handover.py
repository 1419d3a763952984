"""Handing a clerk's customers to colleagues: the relationship belongs to the brand.

Each open binding of the leaving clerk goes to a receiver chosen by policy (a named successor,
the least-loaded active colleague in the store, or the store manager). Where the customer is a
contact held by a platform (a WeCom external contact), the platform must move the contact too:
a Transfer is requested and the binding moves only when the platform reports it done. Customers
nobody can take wait in the store's unassigned queue. History is never rewritten.
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from sqlalchemy import func
from sqlmodel import select

from gateway import advisors, tokens
from gateway.interactions import log_interaction
from gateway.model import Identity, Message, Target
from gateway.models import Binding, ChatMessage, Clerk, ClerkIdentity, Customer, Transfer
from gateway.models import Identity as IdentityRow

if TYPE_CHECKING:
    from gateway.runtime import Gateway

TRANSFER_WINDOW = timedelta(days=90)  # WeCom: an in-service transfer at most twice per customer in 90 days
TRANSFERS_PER_WINDOW = 2
INTRO = "您好，我是{name}，之后由我继续为您服务，有任何需要随时联系我。"


async def _load(session, store_id: int, exclude: int) -> Counter:
    """Open bindings per active colleague in the store (0 for those with none)."""
    rows = (await session.exec(
        select(Clerk.id, func.count(Binding.id))
        .join(Binding, (Binding.clerk_id == Clerk.id) & Binding.valid_to.is_(None), isouter=True)
        .where(Clerk.store_id == store_id, Clerk.status == "active", Clerk.id != exclude)
        .group_by(Clerk.id)
    )).all()
    return Counter({cid: n for cid, n in rows})


async def _manager(session, store_id: int, exclude: int) -> Clerk | None:
    q = select(Clerk).where(Clerk.store_id == store_id, Clerk.role == "manager", Clerk.status == "active",
                            Clerk.id != exclude).order_by(Clerk.id)
    return (await session.exec(q)).first()


async def _member_ids(session, clerk_ids: list[int], account: str) -> dict[int, str]:
    rows = (await session.exec(select(ClerkIdentity.clerk_id, ClerkIdentity.external_id)
                               .where(ClerkIdentity.clerk_id.in_(clerk_ids), ClerkIdentity.account == account))).all()
    return dict(rows)


async def _platform_contact(session, gw: Gateway, customer_id: int) -> IdentityRow | None:
    """The customer's identity on an account whose platform holds contacts per member."""
    accounts = [n for n, a in gw.adapters.items() if a.capabilities().transfers_contacts]
    if not accounts:
        return None
    q = select(IdentityRow).where(IdentityRow.customer_id == customer_id, IdentityRow.account.in_(accounts))
    return (await session.exec(q.order_by(IdentityRow.id))).first()


async def leave(session, gw: Gateway, clerk: Clerk, *, now: datetime, successor: Clerk | None = None,
                resigned: bool = True, reason: str = "left") -> Counter:
    """A clerk leaves (admin API, org event, import): marked left, every token of theirs revoked
    at once on every instance (a departed clerk must not read customers' messages any more), and
    their customers handed over. Runs inside the caller's transaction."""
    clerk.status, clerk.left_at = "left", now
    await tokens.revoke(session, now, clerk_id=clerk.id, forget=gw.forget_tokens)
    return await hand_over(session, gw, clerk, now=now, successor=successor, resigned=resigned, reason=reason)


async def hand_over(session, gw: Gateway, clerk: Clerk, *, now: datetime, successor: Clerk | None = None,
                    resigned: bool = True, reason: str = "left") -> Counter:
    """Reassign every open binding of `clerk`. Returns counts by outcome: moved, transfer_requested,
    queued. Runs inside the caller's transaction."""
    policy = gw.config.policies.handover
    load = await _load(session, clerk.store_id, clerk.id) if policy == "least_loaded" and successor is None else None
    manager = await _manager(session, clerk.store_id, clerk.id) if policy == "manager" and successor is None else None
    rows = (await session.exec(
        select(Binding, Customer).join(Customer, Customer.id == Binding.customer_id)
        .where(Binding.clerk_id == clerk.id, Binding.valid_to.is_(None)).order_by(Binding.id)
    )).all()
    counts: Counter = Counter()
    received: dict[int, list[Customer]] = {}
    for binding, customer in rows:
        receiver = successor if successor is not None and successor.status == "active" else manager
        if load:  # least loaded, counting what this handover already gave out
            cid = min(load, key=lambda c: (load[c], c))
            receiver = await session.get(Clerk, cid)
            load[cid] += 1
        outcome = await hand_one(session, gw, binding, customer, clerk, receiver, now=now, resigned=resigned,
                                 reason=reason)
        counts[outcome] += 1
        if receiver is not None and outcome in ("moved", "transfer_requested"):
            received.setdefault(receiver.id, []).append(customer)
    for receiver_id, customers in received.items():
        await brief_receiver(session, gw, await session.get(Clerk, receiver_id), clerk, customers, now)
    if counts["queued"]:
        await tell_manager(session, gw, clerk, counts["queued"], now)
    return counts


async def brief_receiver(session, gw: Gateway, receiver: Clerk, clerk: Clerk, customers: list[Customer],
                         now: datetime) -> None:
    """The new advisor learns who they took over: each customer's #n, tags and last message,
    ten to a message (a clerk's IM caps messages per minute)."""
    target = await gw.clerk_target(session, receiver)
    if target is None:
        return
    lines = []
    for c in customers:
        n = await advisors.handle_for(session, receiver.id, c.id)
        last = (await session.exec(select(ChatMessage.text).where(
            ChatMessage.customer_id == c.id, ChatMessage.side == "customer", ChatMessage.direction == "in",
            ChatMessage.text.is_not(None))
            .order_by(ChatMessage.id.desc()))).first()
        tags = f" [{' '.join(c.tags)}]" if c.tags else ""
        lines.append(f"【{advisors.customer_name(c)} #{n}】{tags} 最近：{(last or '—')[:40]}")
    for i in range(0, len(lines), 10):
        head = (f"您接手了 {clerk.display_name} 的 {len(lines)} 位顾客 (You took over {len(lines)} customers):\n"
                if i == 0 else "")
        await gw.outbox.enqueue(session, target, Message.of_text(head + "\n".join(lines[i:i + 10])),
                                idem_key=f"handover:{clerk.id}:{receiver.id}:{now.isoformat()}:{i}", kind="notice")


async def tell_manager(session, gw: Gateway, clerk: Clerk, n: int, now: datetime) -> None:
    manager = await _manager(session, clerk.store_id, clerk.id)
    target = await gw.clerk_target(session, manager) if manager else None
    if target is not None:
        await gw.outbox.enqueue(session, target, Message.of_text(
            f"{clerk.display_name} 的 {n} 位顾客没有可接手的顾问，正在门店待分配队列中，请尽快安排。"
            f" {n} customers of {clerk.display_name} wait in the store's queue."),
            idem_key=f"handover-queued:{clerk.id}:{now.isoformat()}", kind="notice")


async def hand_one(session, gw: Gateway, binding: Binding, customer: Customer, clerk: Clerk, receiver: Clerk | None,
                    *, now: datetime, resigned: bool, reason: str) -> str:
    base = {"from_clerk_id": clerk.id, "reason": reason, "binding_id": binding.id}
    if receiver is None:
        await advisors.enqueue_unassigned(session, customer, "advisor_left", now)
        await log_interaction(session, "handover", occurred_at=now, customer_id=customer.id, clerk_id=clerk.id,
                              store_id=binding.store_id, payload={**base, "status": "queued"})
        return "queued"
    contact = await _platform_contact(session, gw, customer.id)
    if contact is not None:
        ids = await _member_ids(session, [clerk.id, receiver.id], contact.account)
        if clerk.id in ids and receiver.id in ids:
            return await request_transfer(session, gw, customer, contact, clerk, receiver, ids, now=now,
                                          resigned=resigned, base=base, store_id=binding.store_id)
    new = await move_binding(session, binding, customer, receiver, now, "handover")
    await log_interaction(session, "handover", occurred_at=now, customer_id=customer.id, clerk_id=receiver.id,
                          store_id=receiver.store_id, payload={**base, "status": "done", "to_clerk_id": receiver.id})
    await introduce(session, gw, customer, receiver, new)
    return "moved"


async def introduce(session, gw: Gateway, customer: Customer, receiver: Clerk, binding: Binding) -> None:
    """The new advisor says hello on the customer's channel (policies.handover_intro)."""
    if not gw.config.policies.handover_intro or customer.erased_at is not None:
        return
    target = await advisors.customer_target(session, customer, receiver)
    if target is not None:
        await gw.outbox.enqueue(session, target, Message.of_text(INTRO.format(name=receiver.display_name),
                                                                 receiver.display_name),
                                idem_key=f"intro:{binding.id}", kind="intro")


async def request_transfer(session, gw: Gateway, customer: Customer, contact: IdentityRow, clerk: Clerk,
                           receiver: Clerk, ids: dict[int, str], *, now: datetime, resigned: bool, base: dict,
                           store_id: int | None) -> str:
    if not resigned:
        recent = (await session.exec(select(func.count(Transfer.id)).where(
            Transfer.customer_id == customer.id, Transfer.resigned.is_(False),
            Transfer.status.in_(("requested", "done")), Transfer.requested_at > now - TRANSFER_WINDOW))).one()
        if recent >= TRANSFERS_PER_WINDOW:
            await advisors.enqueue_unassigned(session, customer, "transfer_limit", now)
            await log_interaction(session, "handover", occurred_at=now, customer_id=customer.id, clerk_id=clerk.id,
                                  store_id=store_id, payload={**base, "status": "refused", "to_clerk_id": receiver.id,
                                                              "why": "transferred twice in 90 days already"})
            return "queued"
    t = Transfer(customer_id=customer.id, from_clerk_id=clerk.id, to_clerk_id=receiver.id, platform=contact.platform,
                 account=contact.account, external_id=contact.external_id, handover_user=ids[clerk.id],
                 takeover_user=ids[receiver.id], resigned=resigned, requested_at=now)
    session.add(t)
    await session.flush()
    target = Target(Identity(contact.platform, contact.account, contact.external_id), customer_id=customer.id,
                    clerk_id=receiver.id, hints={"handover": t.handover_user, "takeover": t.takeover_user,
                                                 "resigned": resigned})
    await gw.outbox.enqueue(session, target, Message.of_text(INTRO.format(name=receiver.display_name)),
                            idem_key=f"transfer:{t.id}", kind="transfer")
    await log_interaction(session, "handover", occurred_at=now, customer_id=customer.id, clerk_id=clerk.id,
                          store_id=store_id, payload={**base, "status": "transfer_requested", "to_clerk_id": receiver.id,
                                                      "transfer_id": t.id, "platform": contact.platform})
    return "transfer_requested"


async def move_binding(session, binding: Binding, customer: Customer, receiver: Clerk, at: datetime,
                       source: str) -> Binding:
    await advisors.close_binding(session, binding, at, "handover")
    return await advisors.open_new_binding(session, customer, receiver, at, source)


async def transfer_finished(session, gw: Gateway, customer: Customer, account: str, external_id: str, *,
                            status: str, takeover: str | None, now: datetime) -> Transfer | None:
    """A platform's verdict on a requested transfer; the binding moves only on "done"."""
    q = select(Transfer).where(Transfer.account == account, Transfer.external_id == external_id,
                               Transfer.status == "requested")
    if takeover:
        q = q.where(Transfer.takeover_user == takeover)
    t = (await session.exec(q.order_by(Transfer.id.desc()))).first()
    if t is None:
        return None
    t.status, t.finished_at = status, now
    payload = {"status": status, "transfer_id": t.id, "from_clerk_id": t.from_clerk_id, "to_clerk_id": t.to_clerk_id}
    if status == "done":
        current = await advisors.open_binding(session, customer.id)
        receiver = await session.get(Clerk, t.to_clerk_id)
        if current is not None and current[0].clerk_id == t.from_clerk_id:
            await move_binding(session, current[0], customer, receiver, now, f"handover:{t.platform}")
        await log_interaction(session, "handover", occurred_at=now, customer_id=customer.id, clerk_id=receiver.id,
                              store_id=receiver.store_id, payload=payload)
        return t
    t.reason = {"refused": "the customer refused", "receiver_full": "the receiver is at the customer limit"}.get(
        status, status)
    await advisors.enqueue_unassigned(session, customer, f"transfer_{status}", now)
    await log_interaction(session, "handover", occurred_at=now, customer_id=customer.id, clerk_id=t.from_clerk_id,
                          payload={**payload, "why": t.reason})
    return t


async def transfer_not_sent(session, gw: Gateway, row, error: str | None) -> None:
    """The outbox gave up on a transfer request (the platform refused it): the customer must not
    wait on a transfer that will never finish."""
    transfer_id = int(row.idem_key.split(":", 1)[1])
    t = await session.get(Transfer, transfer_id)
    if t is None or t.status != "requested":
        return
    now = gw.clock.now()
    t.status, t.reason, t.finished_at = "failed", (error or "not sent")[:200], now
    customer = await session.get(Customer, t.customer_id)
    await advisors.enqueue_unassigned(session, customer, "transfer_failed", now)
    await log_interaction(session, "handover", occurred_at=now, customer_id=t.customer_id, clerk_id=t.from_clerk_id,
                          payload={"status": "failed", "transfer_id": t.id, "to_clerk_id": t.to_clerk_id,
                                   "why": t.reason})
