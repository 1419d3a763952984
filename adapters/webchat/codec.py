"""Message ↔ the webchat wire shape (shared with the workbench)."""

from adapters.webim import WEB_SEGMENTS, history_item, parse_message_body, wire_item

SEGMENTS = WEB_SEGMENTS
__all__ = ["SEGMENTS", "history_item", "parse_message_body", "wire_item"]
