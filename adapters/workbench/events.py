"""Pure parsing of verified workbench requests into Events."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from adapters.webim import parse_message_body
from gateway.adapter import BadRequest
from gateway.model import Event, Identity, dedupe_key

PLATFORM = "workbench"


@dataclass
class WorkbenchRaw:
    account: str
    clerk_id: int
    body: dict
    received_at: datetime
    max_text: int = 4000


def parse(raw: WorkbenchRaw) -> list[Event]:
    message, client_msg_id = parse_message_body(raw.body, raw.max_text)
    sender = Identity(PLATFORM, raw.account, str(raw.clerk_id))
    payload = {"client_msg_id": client_msg_id}
    quote = raw.body.get("quote")  # a reply to a message shown in the workbench: {"text": what it showed}
    if quote is not None:
        if not isinstance(quote, dict) or not isinstance(quote.get("text"), str) or len(quote["text"]) > raw.max_text:
            raise BadRequest(f"quote must be {{\"text\": …}} with at most {raw.max_text} characters", field="quote")
        payload["quote"] = {"text": quote["text"]}
    return [Event("message", "clerk", sender, dedupe_key("msg", raw.clerk_id, client_msg_id), raw.received_at,
                  message=message, payload=payload)]
