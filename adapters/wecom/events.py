"""Pure parsing of WeCom callbacks (and of the adapter's own poll reports) into Events.

Member → app messages are clerk-side Events; external-contact changes are customer-side Events
whose sender is the WeChat customer (external_userid). Dedupe keys follow PLATFORM_RULES.md:
messages by MsgId; `sys` events (FromUserName is always `sys`) by (Event, ChangeType, UserID,
ExternalUserID, CreateTime); other events by FromUserName + CreateTime.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from adapters.media import MediaLinks
from adapters.wxml import create_time, need
from adapters.wxml import segments as wxml_segments
from gateway.adapter import BadRequest
from gateway.model import Event, Identity, Message, dedupe_key

PLATFORM = "wecom"
STATE_PREFIX = "gw:"  # add_contact_way state = "gw:<invite code>"; other tools' states are left alone
WELCOME_SECONDS = 20  # a WelcomeCode is good for 20 s after the event (page 92599)
DELIVERY = {1: ("delivered", None, None), 2: ("failed", "not_a_contact", "the customer is not the sender's contact"),
            3: ("failed", "platform_cap", "the customer already received this period's mass messages")}
TRANSFER = {1: "done", 2: "waiting", 3: "refused", 4: "receiver_full"}
FAIL_REASONS = {"customer_refused": "refused", "customer_limit_exceed": "receiver_full"}


@dataclass
class WeComRaw:
    account: str
    kind: str  # url_check | callback | poll
    data: dict[str, Any]
    received_at: datetime
    media: MediaLinks = MediaLinks()  # signs links to the adapter's media route
    echo: str = ""  # url_check: the decrypted echostr to answer with
    extra: dict[str, Any] = field(default_factory=dict)


def _message(raw: WeComRaw) -> list[Event]:
    d = raw.data
    msg_id, user = need(d, "MsgId"), need(d, "FromUserName")
    segments = wxml_segments(raw.data, raw.media, raw.received_at, pic_first=False)
    if not segments:
        return []
    return [Event("message", "clerk", Identity(PLATFORM, raw.account, user), dedupe_key("msg", msg_id), create_time(d, raw.received_at),
                  message=Message(segments), payload={"platform_msg_id": msg_id})]


def _contact_event(raw: WeComRaw, at: datetime, key: str) -> list[Event]:
    d = raw.data
    change, member = d.get("ChangeType", ""), d.get("UserID", "")
    if change not in ("add_external_contact", "add_half_external_contact", "del_external_contact",
                      "del_follow_user", "transfer_fail"):
        return []  # edit_external_contact and friends: nothing the gateway keeps changes
    customer = Identity(PLATFORM, raw.account, need(d, "ExternalUserID"))
    if change in ("add_external_contact", "add_half_external_contact"):
        state = d.get("State", "")
        payload = {"invite": state[len(STATE_PREFIX):] if state.startswith(STATE_PREFIX) else None,
                   "advisor": need(d, "UserID"), "state": state or None, "consent": True,
                   "consent_how": "added the advisor as a WeChat contact"}
        if d.get("WelcomeCode"):
            payload |= {"reply_token": d["WelcomeCode"],
                        "reply_by": (at + timedelta(seconds=WELCOME_SECONDS)).isoformat()}
        return [Event("bind", "customer", customer, key, at, payload=payload)]
    if change == "transfer_fail":
        status = FAIL_REASONS.get(d.get("FailReason", ""), "failed")
        return [Event("transfer_result", "customer", customer, key, at,
                      payload={"status": status, "takeover": member, "fail_reason": d.get("FailReason")})]
    if change == "del_external_contact" and d.get("Source") == "DELETE_BY_TRANSFER":
        return []  # the old member's side of a completed transfer: the transfer result moves the binding
    reason = "advisor_removed_customer" if change == "del_external_contact" else "customer_removed_advisor"
    return [Event("unbind", "customer", customer, key, at, payload={"reason": reason, "advisor": member})]


def _event(raw: WeComRaw) -> list[Event]:
    d = raw.data
    at = create_time(d, raw.received_at)
    event, sender = d.get("Event", ""), d.get("FromUserName", "")
    if sender == "sys" or event == "change_external_contact":
        key = dedupe_key("evt", event, d.get("ChangeType", ""), d.get("UserID", ""), d.get("ExternalUserID", ""),
                         d.get("CreateTime", ""))
    else:
        key = dedupe_key("evt", sender, d.get("CreateTime", ""), event)
    if event == "change_external_contact":
        return _contact_event(raw, at, key)
    if event == "change_contact" and d.get("ChangeType") == "delete_user":
        return [Event("clerk_left", "clerk", Identity(PLATFORM, raw.account, need(d, "UserID")), key, at,
                      payload={"reason": "left_org"})]
    if event == "change_contact" and d.get("ChangeType") == "update_user" and d.get("NewUserID"):
        return _renamed(raw, key, at)
    return []  # enter_agent, menu clicks, other org changes: acknowledged, nothing to do


def _renamed(raw: WeComRaw, key: str, at: datetime) -> list[Event]:
    """An admin changed a member's UserID (page 90970 更新成员事件: NewUserID). The member's later
    messages carry the new id, so the clerk's identity must follow or they stop being the clerk."""
    old, new = need(raw.data, "UserID"), need(raw.data, "NewUserID")
    if new == old:
        return []
    return [Event("clerk_renamed", "clerk", Identity(PLATFORM, raw.account, old), key, at,
                  payload={"new_external_id": new})]


def _poll(raw: WeComRaw) -> list[Event]:
    """Reports the adapter's pollers produce from get_groupmsg_send_result / transfer_result."""
    d = raw.data
    at = raw.received_at
    customer = Identity(PLATFORM, raw.account, d["external_userid"])
    if d["type"] == "delivery":
        status, code, reason = DELIVERY.get(d["status"], (None, None, None))
        if status is None:
            return []  # 0: the member has not confirmed the task yet
        return [Event("delivery", "customer", customer, dedupe_key("delivery", d["msgid"], d["external_userid"]), at,
                      payload={"platform_msg_id": d["msgid"], "status": status, "code": code, "reason": reason})]
    if d["type"] == "transfer_result":
        status = TRANSFER.get(d["status"])
        if status in (None, "waiting"):
            return []
        key = dedupe_key("transfer", d["handover"], d["takeover"], d["external_userid"], d.get("takeover_time", ""), status)
        return [Event("transfer_result", "customer", customer, key, at,
                      payload={"status": status, "handover": d["handover"], "takeover": d["takeover"],
                               "takeover_time": d.get("takeover_time")})]
    if d["type"] == "contact_way":
        return [Event("contact_way", "clerk", Identity(PLATFORM, raw.account, d["user"]),
                      dedupe_key("contact_way", d["invite"], d.get("config_id")), at,
                      payload={"invite": d["invite"], "config_id": d.get("config_id"), "qr_code": d.get("qr_code")})]
    if d["type"] == "profile":
        c = d.get("external_contact") or {}
        profile = {k: c[k] for k in ("name", "unionid", "avatar", "corp_name") if c.get(k)}
        digest = "|".join(f"{k}={v}" for k, v in sorted(profile.items()))
        return [Event("profile", "customer", customer, dedupe_key("profile", d["external_userid"], hash_text(digest)), at,
                      profile=profile)]
    return []


def hash_text(s: str) -> str:
    return hashlib.sha256(s.encode()).hexdigest()[:16]


def parse(raw: WeComRaw) -> list[Event]:
    if raw.kind == "url_check":
        return []
    if raw.kind == "poll":
        return _poll(raw)
    kind = raw.data.get("MsgType")
    if not kind:
        raise BadRequest("MsgType is missing", field="MsgType")
    return _event(raw) if kind == "event" else _message(raw)
