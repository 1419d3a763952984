"""Message ↔ WeCom payloads.

Clerks get app messages (`message/send`): text (split at WeCom's 2,048-byte limit, never cut),
`textcard` for links and `news` for product cards. Customers (external contacts) get text plus
link attachments in welcome messages and mass-message tasks; what WeCom cannot show becomes text.
"""

from __future__ import annotations

from adapters.wxml import split_text
from gateway.model import Message, Segment

APP_SEGMENTS = frozenset({"text", "link", "product"})
TEXT_LIMIT = 2048  # bytes, message/send text.content (page 90236)
TRANSFER_MSG_LIMIT = 200  # characters, transfer_success_msg (page 94081)
MAX_ATTACHMENTS = 9  # add_msg_template / send_welcome_msg


def _article(seg: Segment) -> dict:
    d = seg.data
    if seg.type == "product":
        return {"title": d.get("name", ""), "description": f"¥{d.get('price', '')}", "url": d.get("url", ""),
                "picurl": d.get("image_url", "")}
    return {"title": d.get("title", ""), "description": d.get("description", ""), "url": d.get("url", ""),
            "picurl": d.get("image_url", "")}


def _markdown(seg: Segment) -> str:
    d = seg.data
    if seg.type in ("link", "product") and d.get("url"):
        title = d.get("title") or d.get("name") or d["url"]
        price = f" ¥{d['price']}" if d.get("price") else ""
        return f"[{title}]({d['url']}){price}"
    return seg.fallback_text()


def app_messages(message: Message, *, markdown: bool = False) -> list[dict]:
    """A clerk-bound message as one or more message/send bodies (without touser / agentid).
    Briefs go as one markdown message (links inline); the rest as text, cards and news."""
    if markdown:
        text = "\n\n".join(_markdown(seg) for seg in message.segments)
        return [{"msgtype": "markdown", "markdown": {"content": part}} for part in split_text(text)]
    out: list[dict] = []
    for seg in message.render(APP_SEGMENTS):
        if seg.type == "text":
            out += [{"msgtype": "text", "text": {"content": part}} for part in split_text(seg.data["text"])]
        elif seg.type == "link" and seg.data.get("url"):
            d = seg.data
            out.append({"msgtype": "textcard", "textcard": {
                "title": d.get("title") or d["url"], "description": d.get("description") or d["url"],
                "url": d["url"], "btntxt": "详情"}})
        elif seg.data.get("url"):
            out.append({"msgtype": "news", "news": {"articles": [_article(seg)]}})
        else:
            out.append({"msgtype": "text", "text": {"content": seg.fallback_text()}})
    return out


def customer_content(message: Message) -> dict:
    """Welcome / mass-message content for an external contact: one text and link attachments."""
    texts: list[str] = []
    attachments: list[dict] = []
    for seg in message.segments:
        if seg.type in ("link", "product") and seg.data.get("url") and len(attachments) < MAX_ATTACHMENTS:
            a = _article(seg)
            link = {"title": a["title"] or a["url"], "url": a["url"]}
            if a["description"]:
                link["desc"] = a["description"]
            if a["picurl"]:
                link["picurl"] = a["picurl"]
            attachments.append({"msgtype": "link", "link": link})
        else:
            texts.append(seg.fallback_text())
    body: dict = {}
    text = "\n".join(t for t in texts if t)
    if text:
        body["text"] = {"content": text}
    if attachments:
        body["attachments"] = attachments
    return body
