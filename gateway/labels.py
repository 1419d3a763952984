"""What a clerk reads as the gateway's own: the `【name #n】` label in front of a relayed message.

Customers choose their names and write their texts; neither may pass for a label or a system
line. A nickname `Alice #1】` made the label read `【Alice #1】 #3】` (the workbench took the
bubble for customer #1's), and a line `【小林 system】verified` in a message looked like one of
ours. Names are cleaned wherever they are stored or shown; in relayed text a line-leading `【`
becomes `[` (and the `】` closing it `]`), so the only label a clerk sees is the gateway's.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import replace

from gateway.model import Message, Segment, Target

MAX_NAME = 20
ERASED_NAME = "已删除顾客"
# The marks our labels, handles and tags are made of (`【name #n】`, `#n text`, `[vip]`), in
# every width and the look-alike lenticular brackets.
_LABEL_MARKS = dict.fromkeys(map(ord, "【】〖〗〔〕[]［］#＃﹟"))
_SPACE = re.compile(r"\s+")
# Explicit bidi embeddings, overrides and isolates reorder what follows on screen: a line can be
# made to read as something else (the "Trojan Source" trick). Chat text has no use for them.
_BIDI = dict.fromkeys([*range(0x202A, 0x202F), *range(0x2066, 0x206A)])
# What may stand before a line's `【` and still leave it at the visible start of the line.
_INVISIBLE = re.compile(r"^[\s\u00ad\u034f\u061c\u115f\u1160\u180e\u200b-\u200f\u2060-\u2064\u3164\ufeff]*")
# Segment fields a customer writes that the clerk's IM shows as text (the rest are URLs, codes).
_TEXT_FIELDS = ("text", "title", "name", "label", "alt", "description")


def clean_name(raw: object) -> str | None:
    """A customer-chosen name fit for a label: no label marks, no line breaks, control, format
    (bidi, zero-width) or private characters, whitespace collapsed, at most MAX_NAME characters
    (cut with "…"). None when nothing is left."""
    if not isinstance(raw, str):
        return None
    kept = []
    for ch in raw.translate(_LABEL_MARKS):
        cat = unicodedata.category(ch)
        if ch.isspace() or cat in ("Zl", "Zp"):
            kept.append(" ")
        elif cat not in ("Cc", "Cf", "Cs", "Co") and not _nonchar(ch):  # control, format, surrogate, private
            kept.append(ch)  # (unassigned code points stay: emoji newer than this Python's tables)
    name = _SPACE.sub(" ", "".join(kept)).strip()
    if len(name) > MAX_NAME:
        name = name[:MAX_NAME - 1].rstrip() + "…"
    return name or None


def _nonchar(ch: str) -> bool:
    o = ord(ch)
    return 0xFDD0 <= o <= 0xFDEF or (o & 0xFFFE) == 0xFFFE


def neutralise(text: str) -> str:
    """Customer text as a clerk reads it: no line of it starts like a label (`【` → `[` and the
    `】` that closes it → `]`), and no explicit bidi controls."""
    if not text:
        return text
    text = text.translate(_BIDI)
    if "【" not in text:
        return text
    lines = text.splitlines(keepends=True)  # every line break a screen honours, not only "\n"
    for i, line in enumerate(lines):
        lead = _INVISIBLE.match(line).end()
        if line.startswith("【", lead):
            rest = line[lead + 1:]
            lines[i] = line[:lead] + "[" + rest.replace("】", "]", 1)
    return "".join(lines)


def _neutralised(seg: Segment) -> Segment:
    data = {k: neutralise(v) if k in _TEXT_FIELDS and isinstance(v, str) else v for k, v in seg.data.items()}
    return Segment(seg.type, data) if data != seg.data else seg


def label_of(name: str, handle: int) -> str:
    """The label's text, `王女士 #3` (shown as `【王女士 #3】`)."""
    return f"{name} #{handle}"


def relayed(target: Target, name: str, handle: int, customer_id: int, message: Message) -> tuple[Target, Message]:
    """A customer's message as it goes to their advisor: the label in front of the (neutralised)
    text for IMs that show text only, the label itself as `sender_name` for pages that show it
    apart (the workbench), and the customer it is about on the target, so erasure finds the copy."""
    label = label_of(name, handle)
    segs = [_neutralised(s) for s in message.segments]
    if segs and segs[0].type == "text":
        segs[0] = Segment("text", {**segs[0].data, "text": f"【{label}】" + segs[0].data.get("text", "")})
    else:
        segs.insert(0, Segment.text(f"【{label}】"))
    return replace(target, about=customer_id), Message(segs, sender_name=label)
