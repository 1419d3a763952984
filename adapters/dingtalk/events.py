"""Pure parsing of DingTalk robot messages and org events into Events (what the vectors exercise)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from adapters.media import MediaLinks
from gateway.adapter import BadRequest
from gateway.model import Event, Identity, Message, Segment, dedupe_key

PLATFORM = "dingtalk"
ROBOT_TOPIC = "/v1.0/im/bot/messages/get"
MAX_ID = 128  # ids are stored in VARCHAR(128) columns (message.platform_msg_id, identities)


@dataclass
class DingTalkRaw:
    account: str
    kind: str  # robot | event
    body: dict[str, Any]
    received_at: datetime
    media: MediaLinks = MediaLinks()  # signs links to the adapter's media route, which resolves a downloadCode
    extra: dict[str, Any] = field(default_factory=dict)


def _media(raw: DingTalkRaw, code: str) -> str:
    return raw.media.url(code, raw.received_at)


def _segments(raw: DingTalkRaw) -> list[Segment]:
    b = raw.body
    kind = b.get("msgtype")
    content = b.get("content") if isinstance(b.get("content"), dict) else {}
    if kind == "text":
        text = b.get("text") or {}
        if not isinstance(text, dict):
            raise BadRequest("text must be an object", field="text")
        content_text = text.get("content", "")
        if not isinstance(content_text, str):
            raise BadRequest("text.content must be a string", field="text.content")
        return [Segment.text(content_text.strip())] if content_text.strip() else []
    if kind == "richText":
        parts = content.get("richText") or []
        if not isinstance(parts, list):
            raise BadRequest("content.richText must be a list", field="content.richText")
        out = []
        for part in parts:
            if not isinstance(part, dict):
                continue
            if isinstance(part.get("text"), str) and part["text"].strip():  # "\n" between pictures is layout
                out.append(Segment.text(part["text"]))
            elif part.get("type") == "picture" and isinstance(part.get("downloadCode"), str) and part["downloadCode"]:
                out.append(Segment("image", {"url": _media(raw, part["downloadCode"]), "download_code": part["downloadCode"]}))
        return out
    if not isinstance(content.get("downloadCode", ""), str):
        raise BadRequest("content.downloadCode must be a string", field="content.downloadCode")
    if kind == "picture" and content.get("downloadCode"):
        return [Segment("image", {"url": _media(raw, content["downloadCode"]), "download_code": content["downloadCode"]})]
    if kind == "file" and content.get("downloadCode"):
        return [Segment("file", {"name": str(content.get("fileName", "file")), "url": _media(raw, content["downloadCode"]),
                                 "download_code": content["downloadCode"]})]
    if kind == "audio" and content.get("recognition"):
        return [Segment.text(str(content["recognition"]))]  # DingTalk transcribes voice messages
    code = content.get("downloadCode")
    if kind == "audio" and code:  # not transcribed: the recording itself, or the clerk's message vanishes
        return [Segment("voice", {"url": _media(raw, code), "download_code": code, **_duration(content)})]
    if kind == "video" and code:  # relayed as a file to open, like WeCom's video
        ext = content.get("videoType")
        name = f"视频.{ext}" if isinstance(ext, str) and ext.isalnum() else "视频"
        return [Segment("file", {"name": name, "url": _media(raw, code), "download_code": code, **_duration(content)})]
    return []


def _duration(content: dict) -> dict:
    """`duration` as DingTalk gives it (a string or a number; the docs give no unit), when it is one."""
    d = content.get("duration")
    return {"duration": str(d)} if isinstance(d, str | int) and not isinstance(d, bool) and str(d).isdigit() else {}


def parse_robot(raw: DingTalkRaw) -> list[Event]:
    b = raw.body
    msg_id, staff = b.get("msgId"), b.get("senderStaffId")
    if not isinstance(msg_id, str) or not msg_id:
        raise BadRequest("msgId is missing", field="msgId")
    if len(msg_id) > MAX_ID:
        raise BadRequest(f"msgId is longer than {MAX_ID} characters", field="msgId")
    if str(b.get("conversationType", "1")) != "1":
        return []  # group chats are not an advisor's conversation
    if not isinstance(staff, str) or not staff or len(staff) > MAX_ID:
        raise BadRequest("senderStaffId is missing or too long", field="senderStaffId")
    segments = _segments(raw)
    if not segments:
        return []  # a kind we do not relay (e.g. an empty text): acknowledged, nothing to do
    payload: dict[str, Any] = {"platform_msg_id": msg_id}
    quoted = _quoted_text(b)
    if quoted is not None:
        payload["quote"] = {"text": quoted}
    return [Event("message", "clerk", Identity(PLATFORM, raw.account, staff), dedupe_key("msg", msg_id), _created(b, raw),
                  message=Message(segments), payload=payload,
                  profile={"name": b["senderNick"]} if isinstance(b.get("senderNick"), str) and b["senderNick"] else {})]


def _quoted_text(b: dict) -> str | None:
    """The text of the message a clerk's reply quotes (引用): `text.isReplyMsg` with `text.repliedMsg`,
    whose `content` holds `text` (or `content`, as DingTalk delivers a quoted plain text). Other kinds
    of quote carry no text we can use: None."""
    text = b.get("text")
    replied = text.get("repliedMsg") if isinstance(text, dict) and text.get("isReplyMsg") else None
    content = replied.get("content") if isinstance(replied, dict) else None
    if isinstance(content, dict):
        for key in ("text", "content"):
            if isinstance(content.get(key), str) and content[key]:
                return content[key][:4000]
    return None


def _created(b: dict, raw: DingTalkRaw) -> datetime:
    """createAt (epoch ms); our own receive time when absent or a time no clock can show (1e300, NaN)."""
    created = b.get("createAt")
    if isinstance(created, int | float) and not isinstance(created, bool):
        try:
            return datetime.fromtimestamp(created / 1000, UTC)
        except (OverflowError, OSError, ValueError):
            pass
    return raw.received_at


def event_type(raw: DingTalkRaw) -> str | None:
    """The HTTP envelope names it in the body (EventType); a stream EVENT frame in its headers."""
    kind = raw.body.get("EventType") or raw.body.get("eventType") or raw.extra.get("eventType")
    return kind if isinstance(kind, str) and kind else None


def parse_event(raw: DingTalkRaw) -> list[Event]:
    """Org events from the event subscription (HTTP envelope or stream EVENT frames)."""
    b = raw.body
    if event_type(raw) == "user_leave_org":
        users = b.get("UserId") or b.get("userId") or []
        stamp = str(b.get("TimeStamp") or b.get("timeStamp") or raw.extra.get("eventBornTime") or "")
        users = [users] if isinstance(users, str) else users
        if not isinstance(users, list) or not all(isinstance(u, str | int) and not isinstance(u, bool)
                                                  and len(str(u)) <= MAX_ID for u in users):
            raise BadRequest("UserId must be a user id or a list of them", field="UserId")
        return [Event("clerk_left", "clerk", Identity(PLATFORM, raw.account, str(u)), dedupe_key("evt", "user_leave_org", u, stamp),
                      raw.received_at, payload={"reason": "left_org"}) for u in users if u]
    return []  # check_url and events we do not use: acknowledged


def parse(raw: DingTalkRaw) -> list[Event]:
    return parse_robot(raw) if raw.kind == "robot" else parse_event(raw)
