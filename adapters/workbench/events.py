"""Pure parsing of verified workbench requests into Events."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from adapters.webim import parse_message_body
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
    return [Event("message", "clerk", sender, dedupe_key("msg", raw.clerk_id, client_msg_id), raw.received_at,
                  message=message, payload={"client_msg_id": client_msg_id})]
