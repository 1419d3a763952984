"""The flat <xml> documents Tencent's platforms (WeCom, the Official Account) send."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import xmltodict

from adapters.media import MediaLinks
from gateway.adapter import BadRequest
from gateway.model import Segment


def xml_fields(text: str | bytes, what: str = "body") -> dict[str, str]:
    """A flat <xml> document to a dict of its text fields. Entities are refused (no expansion)."""
    try:
        doc = xmltodict.parse(text, disable_entities=True)
    except Exception:  # noqa: BLE001 - ExpatError, entity declarations, bad encodings: all malformed
        raise BadRequest(f"{what} is not well-formed XML") from None
    root = doc.get("xml") if isinstance(doc, dict) else None
    if not isinstance(root, dict):
        raise BadRequest(f"{what} has no <xml> root")
    return {k: v for k, v in root.items() if isinstance(v, str)}


def create_time(d: dict, fallback: datetime) -> datetime:
    """CreateTime (epoch seconds) as an aware datetime; `fallback` when absent or impossible."""
    ts = d.get("CreateTime", "")
    try:
        return datetime.fromtimestamp(int(ts), UTC) if ts.isascii() and ts.isdigit() else fallback
    except (OverflowError, OSError, ValueError):  # a timestamp no clock can show: use our own
        return fallback


def split_text(text: str, limit: int = 2048) -> list[str]:
    """Chunks of at most `limit` UTF-8 bytes, cut at line ends where possible, never inside a character."""
    out: list[str] = []
    while len(text.encode()) > limit:
        # max(1, …): a limit below one character's UTF-8 length must still make progress (it looped forever)
        cut = max(1, len(text.encode()[:limit].decode("utf-8", "ignore")))
        nl = text.rfind("\n", 0, cut)
        cut = nl + 1 if nl > cut // 2 else cut
        out.append(text[:cut])
        text = text[cut:]
    return [*out, text] if text else out


MAX_ID = 128  # ids are stored in VARCHAR(128) columns (identity.external_id, message.platform_msg_id)


def need(d: dict, key: str) -> str:
    v = d.get(key)
    if not v:
        raise BadRequest(f"{key} is missing", field=key)
    if len(v) > MAX_ID:  # would fail the insert on PostgreSQL after the ack: refuse it up front
        raise BadRequest(f"{key} is longer than {MAX_ID} characters", field=key)
    return v


def _num(v: str | None) -> float | None:
    """A coordinate; None when absent or not a finite number ("nan", "inf", "1e999" would make the
    event JSON that PostgreSQL's json type refuses)."""
    try:
        f = float(v) if v is not None else None
    except ValueError:
        return None
    return f if f is not None and math.isfinite(f) else None


def segments(d: dict, media: MediaLinks, at: datetime, *, pic_first: bool) -> list[Segment]:
    """The message types WeCom apps and the Official Account share (same XML): media are signed
    links to the adapter's media route. `pic_first`: use the platform's public PicUrl for images."""
    media = media.url(d.get("MediaId", ""), at)
    match d.get("MsgType"):
        case "text":
            text = d.get("Content", "").strip()
            return [Segment.text(text)] if text else []
        case "image":
            url = d.get("PicUrl") if pic_first or not d.get("MediaId") else media
            return [Segment("image", {"url": url or media})]
        case "voice":  # WeChat's own transcription rides along when the account enabled it
            out = [Segment("voice", {"url": media, "format": d.get("Format", "")})]
            return out + ([Segment.text(f"(语音) {d['Recognition']}")] if d.get("Recognition") else [])
        case "video" | "shortvideo":
            return [Segment("file", {"name": "视频", "url": media})]
        case "file":  # not in the documented receive lists; accepted should one arrive
            return [Segment("file", {"name": d.get("FileName") or d.get("Title") or "文件", "url": media})]
        case "location":
            return [Segment("location", {"lat": _num(d.get("Location_X")), "lng": _num(d.get("Location_Y")),
                                         "label": d.get("Label", "")})]
        case "link":
            return [Segment("link", {"title": d.get("Title", ""), "url": d.get("Url", ""),
                                     "description": d.get("Description", "")})]
    return []
