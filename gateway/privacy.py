"""PIPL: what the brand holds about one customer, all of it on request, and erasure that removes
the person (names, phone, message text, platform ids) while the anonymous record — bindings,
interaction counts, what the ledger is built from — stays so totals do not change."""

from __future__ import annotations

import hashlib
import re
from datetime import datetime

from sqlalchemy import update
from sqlmodel import select

from gateway import advisors
from gateway.interactions import log_interaction
from gateway.models import (
    AdvisorRequest,
    Binding,
    ChatMessage,
    Conversation,
    Customer,
    Interaction,
    Outbox,
    QueueEntry,
    Transfer,
)
from gateway.models import Identity as IdentityRow

# Interaction payload kept after erasure: enumerations, and ids and counts — never free text.
ENUM_KEYS = {"channel", "account", "status", "reason", "source", "code", "platform", "consent_version"}
NUMBER_KEYS = {"binding_id", "outbox_id", "transfer_id", "from_clerk_id", "to_clerk_id", "chars", "seconds",
               "conversation_id", "merged_customer_id"}
_PHONE = re.compile(r"(?<![\d+])((?:\+?86)?1[3-9]\d)\d{4}(\d{4})(?!\d)")


def mask_phones(text: str) -> str:
    """138****1234: mainland mobile numbers in logs and views that do not need them."""
    return _PHONE.sub(r"\1****\2", text)


def erased_id(platform: str, account: str, external_id: str) -> str:
    return "erased:" + hashlib.sha256(f"{platform}|{account}|{external_id}".encode()).hexdigest()[:24]


async def export(session, customer: Customer, tz) -> dict:
    def rows(items):
        return [{k: (v.astimezone(tz).isoformat() if isinstance(v, datetime) else v)
                 for k, v in i.model_dump().items()} for i in items]

    async def of(model, *order):
        return rows((await session.exec(select(model).where(model.customer_id == customer.id).order_by(*order))).all())

    return {
        "customer": rows([customer])[0],
        "identities": await of(IdentityRow, IdentityRow.id),
        "bindings": await of(Binding, Binding.valid_from),
        "messages": await of(ChatMessage, ChatMessage.id),
        "interactions": await of(Interaction, Interaction.id),
        "conversations": await of(Conversation, Conversation.id),
        "transfers": await of(Transfer, Transfer.id),
        "advisor_requests": await of(AdvisorRequest, AdvisorRequest.id),
        "outbox": await of(Outbox, Outbox.id),
    }


async def erase(session, customer: Customer, now: datetime, by: str) -> dict:
    """Remove the person, keep the anonymous record. Idempotent."""
    cid = customer.id
    idents = (await session.exec(select(IdentityRow).where(IdentityRow.customer_id == cid))).all()
    peers = {}
    for i in idents:
        if not i.external_id.startswith("erased:"):
            peers[(i.account, i.external_id)] = erased_id(i.platform, i.account, i.external_id)
            i.external_id = peers[(i.account, i.external_id)]
        i.unionid, i.profile = None, {}
    for (account, old), new in peers.items():
        await session.execute(update(ChatMessage).where(ChatMessage.account == account, ChatMessage.peer_id == old)
                              .values(peer_id=new))
        await session.execute(update(Transfer).where(Transfer.account == account, Transfer.external_id == old)
                              .values(external_id=new))
    await session.execute(update(ChatMessage).where(ChatMessage.customer_id == cid)
                          .values(text="", segments=[], sender_name=None))
    await session.execute(update(Outbox).where(Outbox.customer_id == cid, Outbox.status.in_(("pending", "held")))
                          .values(status="cancelled", last_error="customer erased"))
    await session.execute(update(Outbox).where(Outbox.customer_id == cid)
                          .values(message={"segments": [], "erased": True}, target={"erased": True}))
    for it in (await session.exec(select(Interaction).where(Interaction.customer_id == cid))).all():
        it.payload = {k: v for k, v in (it.payload or {}).items()
                      if k in ENUM_KEYS or (k in NUMBER_KEYS and isinstance(v, int | float))}
    current = await advisors.open_binding(session, cid)
    if current is not None:
        await advisors.close_binding(session, current[0], now, "erased")
    await session.execute(update(QueueEntry).where(QueueEntry.customer_id == cid, QueueEntry.resolved_at.is_(None))
                          .values(resolved_at=now))
    await session.execute(update(Conversation).where(Conversation.customer_id == cid,
                                                     Conversation.first_reply_at.is_(None)).values(first_reply_at=now))
    customer.name = customer.phone_hash = customer.tags = None
    customer.erased_at = customer.erased_at or now
    customer.opted_out_at = customer.opted_out_at or now
    await log_interaction(session, "erased", occurred_at=now, customer_id=cid, payload={"by": by})
    return {"customer_id": cid, "erased_at": customer.erased_at, "identities": len(idents)}
