"""Message → DingTalk robot message (msgKey + msgParam) and work notification bodies."""

from __future__ import annotations

import json

from gateway.model import Message

SEGMENTS = frozenset({"text", "image", "link", "product"})


def _markdown(message: Message) -> str:
    lines = []
    for s in message.render(SEGMENTS):
        d = s.data
        if s.type == "text":
            lines.append(d["text"].replace("\n", "  \n"))
        elif s.type == "image":
            lines.append(f"![{d.get('alt', '')}]({d['url']})")
        elif s.type == "link":
            lines.append(f"[{d.get('title') or d['url']}]({d['url']})")
        elif s.type == "product":
            lines.append(f"**{d.get('name', '')}** ¥{d.get('price', '')}  \n[查看]({d.get('url', '')})")
    return "\n\n".join(lines)


def robot_message(message: Message) -> tuple[str, str]:
    """Pick the richest robot template the message needs; msgParam is a JSON *string*."""
    segs = message.render(SEGMENTS)
    if all(s.type == "text" for s in segs):
        return "sampleText", json.dumps({"content": message.plain_text}, ensure_ascii=False)
    if len(segs) == 1 and segs[0].type == "image":
        return "sampleImageMsg", json.dumps({"photoURL": segs[0].data["url"]}, ensure_ascii=False)
    card = next((s for s in segs if s.type in ("product", "link") and s.data.get("url")), None)
    title = (message.plain_text.splitlines() or ["消息"])[0][:40]
    if card is not None:
        return "sampleActionCard", json.dumps(
            {"title": title, "text": _markdown(message), "singleTitle": "查看详情", "singleURL": card.data["url"]},
            ensure_ascii=False)
    return "sampleMarkdown", json.dumps({"title": title, "text": _markdown(message)}, ensure_ascii=False)


def work_notice(message: Message) -> dict:
    """A work notification (briefs): markdown, as asyncsend_v2 takes it."""
    title = (message.plain_text.splitlines() or ["通知"])[0][:40]
    return {"msgtype": "markdown", "markdown": {"title": title, "text": _markdown(message)}}
