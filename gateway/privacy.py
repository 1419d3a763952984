"""PIPL: what the brand holds about one customer, all of it on request, and erasure that removes
the person (names, phone, message text, platform ids) while the anonymous record — bindings,
interaction counts, what the ledger is built from — stays so totals do not change.

Both cover every copy: the customer's messages both ways, the clerk's side of the conversation
(relayed copies, what the clerk typed to them, mentions of their name), outbox payloads and keys,
and inbound claims holding their raw events (gateway/copies.py finds them).
"""

from __future__ import annotations

import hashlib
import re
from datetime import datetime

from sqlalchemy import or_, update
from sqlmodel import select

from gateway import advisors, copies, labels
from gateway.interactions import log_interaction
from gateway.models import (
    AdvisorRequest,
    ChatMessage,
    ClerkFocus,
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

    idents = (await session.exec(select(IdentityRow).where(IdentityRow.customer_id == customer.id))).all()
    found = await copies.find(session, customer, idents)
    clerk_side = sorted({*found.whole, *found.mentions})
    clerk_rows = await copies.rows_by(session, ChatMessage, ChatMessage.id, clerk_side)
    outbox = await _outbox_rows(session, customer.id, clerk_side)
    out = {
        "customer": rows([customer])[0],
        "identities": rows(idents),
        # The person's: bindings stay on the record they were made for (see advisors.merge_customers).
        "merged_records": rows([await session.get(Customer, i) for i in await advisors.merged_ids(session, customer.id)]),
        "bindings": rows(await advisors.binding_history(session, customer.id)),
        "messages": rows((await session.exec(select(ChatMessage).where(
            ChatMessage.customer_id == customer.id, ChatMessage.side == "customer").order_by(ChatMessage.id))).all()),
        # The clerk's side: what was relayed to them, what they typed to this customer, and their
        # other messages that name the customer (held: the text as it is now).
        "clerk_copies": [{**r, "copy": found.whole.get(r["id"], "mention")} for r in rows(clerk_rows)],
        "interactions": await of(Interaction, Interaction.id),
        "conversations": await of(Conversation, Conversation.id),
        "transfers": await of(Transfer, Transfer.id),
        "advisor_requests": await of(AdvisorRequest, AdvisorRequest.id),
        "outbox": rows(outbox),
        "inbound_claims": rows(found.claims),
    }
    out["where"] = {k: len(v) for k, v in out.items() if isinstance(v, list)}  # what is held, table by table
    return out


async def _outbox_rows(session, cid: int, message_ids: list[int]) -> list[Outbox]:
    """The customer's outbox rows and those carrying a clerk-side copy."""
    rows = {r.id: r for r in (await session.exec(select(Outbox).where(Outbox.customer_id == cid))).all()}
    rows.update({r.id: r for r in await copies.rows_by(session, Outbox, Outbox.message_id, message_ids)})
    return [rows[k] for k in sorted(rows)]


async def erase(session, customer: Customer, now: datetime, by: str) -> dict:
    """Remove the person, keep the anonymous record. Idempotent."""
    cid = customer.id
    idents = (await session.exec(select(IdentityRow).where(IdentityRow.customer_id == cid))).all()
    found = await copies.find(session, customer, idents)  # before the ids and names it matches by go
    platform_ids = {i.external_id for i in idents if not i.external_id.startswith("erased:")}
    await _erase_copies(session, cid, found, platform_ids, now)
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
    await session.execute(update(ChatMessage).where(ChatMessage.customer_id == cid, ChatMessage.side == "customer")
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
    for i in await advisors.merged_ids(session, cid):  # merged records still hold the name and phone they had
        old = await session.get(Customer, i)
        old.name = old.phone_hash = old.tags = None
        old.erased_at = old.erased_at or now
    customer.opted_out_at = customer.opted_out_at or now
    await log_interaction(session, "erased", occurred_at=now, customer_id=cid, payload={"by": by})
    return {"customer_id": cid, "erased_at": customer.erased_at, "identities": len(idents),
            "clerk_copies": len(found.whole) + len(found.mentions), "inbound_claims": len(found.claims)}


async def _erase_copies(session, cid: int, found: copies.Copies, platform_ids: set[str], now: datetime) -> None:
    """The clerk's copies (whole rows emptied and linked to the customer, mentions redacted), the
    outbox rows carrying them and the customer's (keys made from their platform ids anonymised),
    and their inbound claims (raw events dropped, keys anonymised)."""
    gone = [{"type": "text", "text": copies.ERASED_TEXT}]
    for part in copies.chunks(found.whole):
        await session.execute(update(ChatMessage).where(ChatMessage.id.in_(part))
                              .values(text=copies.ERASED_TEXT, segments=gone, customer_id=cid,
                                      sender_name=labels.ERASED_NAME))
    redacted = {m.id: m for m in await copies.rows_by(session, ChatMessage, ChatMessage.id, found.mentions)}
    for row in redacted.values():
        row.text = found.redact(row.id, row.text)
        row.segments = [{**s, "text": found.redact(row.id, s["text"])} if s.get("type") == "text" else s
                        for s in row.segments]
    for ob in await _outbox_rows(session, cid, [*found.whole, *found.mentions]):
        if ob.message_id in found.whole:
            ob.message = {"segments": gone, "erased": True}
            if ob.status in ("pending", "held"):
                ob.status, ob.last_error = "cancelled", "customer erased"
        elif ob.message_id in redacted:
            ob.message = {**ob.message, "segments": redacted[ob.message_id].segments}
        if any(x in ob.idem_key for x in platform_ids):
            erased = copies.erased_key(ob.idem_key)
            # A clerk's focus remembers its relays by key (gateway/focus.py): it follows.
            await session.execute(update(ClerkFocus).where(ClerkFocus.relay_key == ob.idem_key)
                                  .values(relay_key=erased))
            ob.idem_key = erased
        if ob.peer in platform_ids:  # the outbox's own copy of the address (per-peer order)
            ob.peer = copies.erased_key(ob.peer)
        for x in (x for x in platform_ids if len(x) >= 4):  # a platform's error may quote the address
            if ob.last_error and x in ob.last_error:
                ob.last_error = ob.last_error.replace(x, "[erased]")
    # A question a clerk has not answered may hold what they typed for this customer.
    await session.execute(update(ClerkFocus).where(
        or_(ClerkFocus.customer_id == cid, ClerkFocus.previous_customer_id == cid), ClerkFocus.held.is_not(None))
        .values(held=None))
    for claim in found.claims:
        claim.events = []
        if any(x in claim.dedupe_key for x in platform_ids):
            claim.dedupe_key = copies.erased_key(claim.dedupe_key)
        if claim.status == "pending":  # never to be applied now: it would bring the person back
            claim.status, claim.processed_at = "done", now
    await session.flush()
