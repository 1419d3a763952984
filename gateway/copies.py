"""Where a customer's words and ids were copied beyond their own rows, for export and erasure.

- Relayed copies on the clerk's side. New ones carry the customer's id (`Target.about`); older
  ones (and copies written before that link existed) are the clerk-side rows that open with the
  label `【… #n】` of that clerk's handle for the customer — customers cannot write a line-leading
  `【` (gateway/labels.py), so only the relay made those.
- What the clerk typed to the customer (`#n …` or bare text): the clerk-side inbound row whose
  text the customer-side reply was made from, in the same transaction, just before it.
- Mentions in the clerk's other messages: confirmations (`→ 已发送给 王女士 #1`), `/customers`
  lists, handover briefs quoting the last message — redacted in place.
- Outbox rows carrying any of these, and inbound claims holding the customer's raw events
  (kept `ingress.claim_retention_hours`).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field

from sqlalchemy import Text, cast, or_
from sqlmodel import select

from gateway import labels
from gateway.models import ChatMessage, Customer, Handle, InboundClaim, Outbox
from gateway.models import Identity as IdentityRow

ERASED_TEXT = "（内容已按顾客要求删除 · erased）"
CHUNK = 1000  # ids per IN list: PostgreSQL takes at most 32,767 parameters a statement
_ADDRESS = re.compile(r"^\s*#(\d{1,6})(?:\s+|$)(.*)$", re.S)  # the relay's `#n text`
_REPLY_WINDOW = 20  # the clerk's inbound rows looked at before a reply for the one it was made from


@dataclass
class Copies:
    whole: dict[int, str] = field(default_factory=dict)  # clerk-side message id -> why (relayed, reply, notice)
    mentions: dict[int, int] = field(default_factory=dict)  # clerk-side message id -> the customer's #n there
    names: list[str] = field(default_factory=list)  # every name they were shown by, longest first
    claims: list[InboundClaim] = field(default_factory=list)

    def redact(self, message_id: int, text: str) -> str:
        return redact(text, self.mentions[message_id], self.names)


def chunks(ids) -> list[list[int]]:
    ids = sorted(ids)
    return [ids[i:i + CHUNK] for i in range(0, len(ids), CHUNK)]


async def rows_by(session, model, column, ids) -> list:
    """Rows whose `column` is one of `ids`, however many there are, in id order."""
    out = []
    for part in chunks(ids):
        out += (await session.exec(select(model).where(column.in_(part)))).all()
    return sorted(out, key=lambda r: r.id)


def erased_key(key: str) -> str:
    """A key that held platform ids, made anonymous but still unique."""
    return "erased:" + hashlib.sha256(key.encode()).hexdigest()[:40]


async def find(session, customer: Customer, idents: list[IdentityRow]) -> Copies:
    cid, out = customer.id, Copies()
    linked = (await session.exec(
        select(ChatMessage.id, ChatMessage.direction, Outbox.kind).join(Outbox, Outbox.message_id == ChatMessage.id,
                                                                        isouter=True)
        .where(ChatMessage.customer_id == cid, ChatMessage.side == "clerk"))).all()
    out.whole.update({mid: "reply" if d == "in" else "relayed" if kind == "relay" else "notice"
                      for mid, d, kind in linked})
    handles = (await session.exec(select(Handle.clerk_id, Handle.n).where(Handle.customer_id == cid))).all()
    for clerk_id, n in handles:
        rows = (await session.exec(select(ChatMessage.id, ChatMessage.text).where(
            ChatMessage.side == "clerk", ChatMessage.direction == "out", ChatMessage.clerk_id == clerk_id,
            ChatMessage.customer_id.is_(None), ChatMessage.text.like(f"【%#{n}】%")))).all()
        out.whole.update({mid: "relayed" for mid, text in rows if re.match(rf"^【[^】\n]* #{n}】", text)})
    await _replies(session, cid, out)
    out.names = _names(customer, idents)
    for clerk_id, n in handles:
        likes = [ChatMessage.text.like(f"%#{n}%")] + [ChatMessage.text.contains(x, autoescape=True) for x in out.names]
        rows = (await session.exec(select(ChatMessage.id, ChatMessage.text).where(
            ChatMessage.side == "clerk", ChatMessage.clerk_id == clerk_id, or_(*likes)))).all()
        for mid, text in rows:
            if mid not in out.whole and redact(text, n, out.names) != text:
                out.mentions[mid] = n
    out.claims = await _claims(session, idents)
    out.claims += [c for c in await _typed_claims(session, out) if c not in out.claims]
    return out


async def _replies(session, cid: int, out: Copies) -> None:
    """The clerk's own copy of each reply to the customer: the same text (less its `#n`)."""
    sent = (await session.exec(
        select(ChatMessage.id, ChatMessage.clerk_id, ChatMessage.text)
        .join(Outbox, Outbox.message_id == ChatMessage.id)
        .where(ChatMessage.customer_id == cid, ChatMessage.side == "customer", ChatMessage.direction == "out",
               ChatMessage.clerk_id.is_not(None), Outbox.kind == "reply"))).all()
    for oid, clerk_id, text in sent:
        typed = (await session.exec(
            select(ChatMessage.id, ChatMessage.text)
            .where(ChatMessage.side == "clerk", ChatMessage.direction == "in", ChatMessage.clerk_id == clerk_id,
                   ChatMessage.id < oid)
            .order_by(ChatMessage.id.desc()).limit(_REPLY_WINDOW))).all()
        for mid, t in typed:
            m = _ADDRESS.match(t or "")
            if t == text or (m and m.group(2).strip() == text):
                out.whole.setdefault(mid, "reply")
                break


def _names(customer: Customer, idents: list[IdentityRow]) -> list[str]:
    """Every name the customer was shown by, raw (older labels) and cleaned; longest first."""
    raw = [customer.name] + [(i.profile or {}).get("name") for i in idents]
    names = {x for r in raw if isinstance(r, str) for x in (r.strip(), labels.clean_name(r)) if x}
    names.add(f"顾客{customer.id}")
    return sorted(names, key=len, reverse=True)


def redact(text: str, n: int, names: list[str]) -> str:
    """A clerk's message with this customer (their `#n` with that clerk) no longer named: a line
    led by their label goes whole (a handover brief quotes their last message there); elsewhere
    their label and name give way to `已删除顾客`."""
    gone = labels.ERASED_NAME
    label = rf"【[^】\n]* #{n}】"
    text = re.sub(rf"(?m)^(\s*){label}.*$", rf"\g<1>【{gone} #{n}】", text)
    text = re.sub(label, f"【{gone} #{n}】", text)
    for name in names:
        x = re.escape(name)
        text = re.sub(rf"【{x}】", f"【{gone}】", text)
        text = re.sub(rf"{x} #{n}(?!\d)", f"{gone} #{n}", text)
        text = re.sub(rf"(?<![\d#])#{n} {x}", f"#{n} {gone}", text)
    return text


async def _claims(session, idents: list[IdentityRow]) -> list[InboundClaim]:
    """Inbound claims holding one of the customer's platform ids in their raw events."""
    found: list[InboundClaim] = []
    for i in idents:
        if not i.external_id.startswith("erased:"):
            found += [c for c in await _holding(session, i.platform, i.account, i.external_id) if c not in found]
    return found


async def _typed_claims(session, out: Copies) -> list[InboundClaim]:
    """The clerk's own inbound claims of what they typed to the customer, by the message's id."""
    typed = await rows_by(session, ChatMessage, ChatMessage.id, [m for m, why in out.whole.items() if why == "reply"])
    found: list[InboundClaim] = []
    for m in (m for m in typed if m.direction == "in"):
        for ref in {m.client_msg_id, m.platform_msg_id} - {None}:
            found += [c for c in await _holding(session, m.platform, m.account, ref)
                      if _holds(c.events, m.peer_id) and c not in found]
    return found


async def _holding(session, platform: str, account: str, value: str) -> list[InboundClaim]:
    """Claims on an account whose raw events hold `value` as a string (LIKE narrows, JSON decides)."""
    forms = {json.dumps(value), json.dumps(value, ensure_ascii=False)}
    rows = (await session.exec(select(InboundClaim).where(
        InboundClaim.platform == platform, InboundClaim.account == account,
        or_(*(cast(InboundClaim.events, Text).contains(f, autoescape=True) for f in forms))))).all()
    return [c for c in rows if _holds(c.events, value)]


def _holds(value, needle: str) -> bool:
    if isinstance(value, str):
        return value == needle
    if isinstance(value, dict):
        return any(_holds(v, needle) for v in value.values())
    if isinstance(value, list):
        return any(_holds(v, needle) for v in value)
    return False
