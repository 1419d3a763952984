"""Message ↔ Official Account payloads: customer-service messages (text, or a news card for a
product or link), template notices, and mass-send text."""

from __future__ import annotations

from datetime import datetime

from adapters.wechat_mp.config import FallbackTemplate
from adapters.wxml import split_text
from gateway.model import Message

SEGMENTS = frozenset({"text", "link", "product"})
TEXT_LIMIT = 2048  # bytes per customer-service text (unconfirmed upper bound; WeChat cuts longer ones)


def custom_messages(message: Message) -> list[dict]:
    """One or more message/custom/send bodies (without touser). Each counts against the window."""
    card = next((s for s in message.segments if s.type in ("link", "product") and s.data.get("url")), None)
    if card is not None:
        d = card.data
        text = " ".join(s.fallback_text() for s in message.segments if s is not card).strip()
        article = {"title": d.get("title") or d.get("name") or d["url"], "url": d["url"],
                   "description": text or d.get("description") or (f"¥{d['price']}" if d.get("price") else ""),
                   "picurl": d.get("image_url", "")}
        return [{"msgtype": "news", "news": {"articles": [article]}}]
    return [{"msgtype": "text", "text": {"content": part}} for part in split_text(message.plain_text, TEXT_LIMIT)]


def template_message(message: Message, tpl: FallbackTemplate, at: datetime) -> dict:
    values = {"advisor": message.sender_name or "", "text": message.plain_text[:200], "time": at.strftime("%m-%d %H:%M")}
    body = {"template_id": tpl.template_id, "data": {k: {"value": v.format_map(values)} for k, v in tpl.data.items()}}
    return {**body, "url": tpl.url} if tpl.url else body


def mass_text(message: Message) -> dict:
    return {"msgtype": "text", "text": {"content": message.plain_text}}
