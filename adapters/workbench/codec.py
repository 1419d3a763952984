"""Message ↔ the workbench wire shape (the same as webchat's)."""

from adapters.webim import WEB_SEGMENTS, history_item, parse_message_body, wire_item

SEGMENTS = WEB_SEGMENTS
__all__ = ["SEGMENTS", "history_item", "parse_message_body", "wire_item"]
