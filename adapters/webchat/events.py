"""Pure parsing of verified webchat requests into Events."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from adapters.webim import parse_message_body
from gateway.adapter import BadRequest
from gateway.model import Event, Identity, dedupe_key

PLATFORM = "webchat"


@dataclass
class WebchatRaw:
    account: str
    kind: str  # message | bind
    user_id: str
    name: str | None
    body: dict
    received_at: datetime
    request_id: str
    max_text: int = 4000
    unionid: str | None = None  # vouched for by the brand's backend in the signed session


def parse(raw: WebchatRaw) -> list[Event]:
    sender = Identity(PLATFORM, raw.account, raw.user_id)
    profile = {k: v for k, v in (("name", raw.name), ("unionid", raw.unionid)) if v}
    if raw.kind == "message":
        message, client_msg_id = parse_message_body(raw.body, raw.max_text)
        return [Event("message", "customer", sender, dedupe_key("msg", raw.user_id, client_msg_id), raw.received_at,
                      message=message, payload={"client_msg_id": client_msg_id}, profile=profile)]
    if raw.kind == "bind":
        invite = raw.body.get("invite")
        if not isinstance(invite, str) or not 1 <= len(invite) <= 32:
            raise BadRequest("invite must be the invite code", field="invite")
        consent = raw.body.get("consent")
        if not isinstance(consent, bool):
            raise BadRequest("consent must be true or false", field="consent")
        switch = raw.body.get("switch", False)
        if not isinstance(switch, bool):
            raise BadRequest("switch must be true or false", field="switch")
        return [Event("bind", "customer", sender, dedupe_key("bind", raw.request_id), raw.received_at,
                      payload={"invite": invite.strip().lower(), "consent": consent, "switch": switch},
                      profile=profile,
                      reply_required=True)]
    raise BadRequest(f"unknown request kind {raw.kind!r}")
