"""Pure parsing of Official Account callbacks (and the adapter's own reports) into Events.

Every customer-side Event says whether it opened the customer-service window: a message opens
48 h / 5 replies ("message"); a follow, a QR scan or a menu tap opens 1 min / 3 ("event").
Dedupe: messages by MsgId, events by FromUserName + CreateTime (+ Event).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from adapters.media import MediaLinks
from adapters.wxml import create_time, need
from adapters.wxml import segments as wxml_segments
from gateway.model import Event, Identity, Message, dedupe_key

PLATFORM = "wechat_mp"
SCENE_PREFIX = "gw:"  # qrcode/create scene_str = "gw:<invite>"; other codes of the brand are left alone
# Taps that let the account answer (customer-service message doc): follow, scan, and the menu types
# that push an event — a VIEW (link) tap opens no window.
WINDOW_EVENTS = {"subscribe", "SCAN", "CLICK", "scancode_push", "scancode_waitmsg"}


@dataclass
class WeChatMpRaw:
    account: str
    kind: str  # url_check | callback | poll
    data: dict[str, Any]
    received_at: datetime
    media: MediaLinks = MediaLinks()  # signs links to the adapter's media route
    echo: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def _scene(d: dict) -> str | None:
    """Our invite in a QR scan: subscribe carries "qrscene_<scene>", SCAN the bare scene."""
    key = d.get("EventKey", "")
    key = key.removeprefix("qrscene_")
    return key[len(SCENE_PREFIX):] if key.startswith(SCENE_PREFIX) else None


def _event(raw: WeChatMpRaw, sender: Identity, at: datetime) -> list[Event]:
    d = raw.data
    event = d.get("Event", "")
    key = dedupe_key("evt", sender.external_id, d.get("CreateTime", ""), event)
    window = {"window": "event"} if event in WINDOW_EVENTS else {}
    if event in ("subscribe", "SCAN"):
        invite = _scene(d)
        if invite:
            how = ("followed the Official Account through the advisor's QR code" if event == "subscribe"
                   else "scanned the advisor's QR code")
            return [Event("bind", "customer", sender, key, at, payload={
                "invite": invite, "consent": True, "consent_how": how, **window})]
        return [Event("follow", "customer", sender, key, at, payload=window)]
    if event == "unsubscribe":
        return [Event("unfollow", "customer", sender, key, at)]
    if event in ("CLICK", "VIEW", "scancode_push", "scancode_waitmsg"):
        return [Event("menu", "customer", sender, key, at, payload={"key": d.get("EventKey", ""), **window})]
    return []  # LOCATION reports, mass / template job reports, others: acknowledged, nothing to do


def _poll(raw: WeChatMpRaw) -> list[Event]:
    d = raw.data
    if d["type"] == "profile":
        profile = {k: d[k] for k in ("unionid",) if d.get(k)}
        if not profile:
            return []
        return [Event("profile", "customer", Identity(PLATFORM, raw.account, d["openid"]),
                      dedupe_key("profile", d["openid"], profile["unionid"]), raw.received_at, profile=profile)]
    if d["type"] == "contact_way":
        return [Event("contact_way", "clerk", Identity(PLATFORM, raw.account, "-"), dedupe_key("contact_way", d["invite"], d["ticket"]), raw.received_at, payload={"invite": d["invite"], "qr_code": d["qr_code"],
                                                                   "expires_at": d.get("expires_at")})]
    return []


def parse(raw: WeChatMpRaw) -> list[Event]:
    if raw.kind == "url_check":
        return []
    if raw.kind == "poll":
        return _poll(raw)
    d = raw.data
    kind = need(d, "MsgType")
    sender = Identity(PLATFORM, raw.account, need(d, "FromUserName"))
    at = create_time(d, raw.received_at)
    if kind == "event":
        return _event(raw, sender, at)
    msg_id = need(d, "MsgId")
    segments = wxml_segments(raw.data, raw.media, raw.received_at, pic_first=True)
    if not segments:
        return []
    return [Event("message", "customer", sender, dedupe_key("msg", msg_id), at, message=Message(segments),
                  payload={"platform_msg_id": msg_id, "window": "message"})]
