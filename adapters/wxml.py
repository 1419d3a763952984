"""The flat <xml> documents Tencent's platforms (WeCom, the Official Account) send."""

from __future__ import annotations

from datetime import UTC, datetime

import xmltodict

from gateway.adapter import BadRequest


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
        cut = len(text.encode()[:limit].decode("utf-8", "ignore"))
        nl = text.rfind("\n", 0, cut)
        cut = nl + 1 if nl > cut // 2 else cut
        out.append(text[:cut])
        text = text[cut:]
    return [*out, text] if text else out
