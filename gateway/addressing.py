"""How a clerk addresses customers in a work-IM chat, in one place: the relay bot applies it and
the batch lookups read it ahead, to load the customers a batch of clerk messages will need.

- `#n text` (or `#n` alone) addresses the clerk's customer n;
- a quoted reply addresses the customer whose relayed message it quotes (`【name #n】…`);
- anything else is bare text, for the clerk's current customer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from gateway.model import Event

_ADDRESS = re.compile(r"^\s*#(\d{1,6})(?:\s+|$)(.*)$", re.S)
# The label a relay starts with (names are sanitised: no brackets or "#" inside), optionally
# after a reminder's mark: "【王女士 #3】…", "⏰【王女士 #3】的消息已等待…".
_LABEL = re.compile(r"^\s*(?:⏰\s*)?【[^】\n]{0,80}?#(\d{1,6})】")


@dataclass(frozen=True, slots=True)
class Address:
    handle: int | None  # the customer's #n, or None for bare text
    rest: str | None  # `#n text`: the text after the handle; None when the handle came from a quote
    quoted: bool = False


def address_of(event: Event) -> Address | None:
    """How a clerk's message event addresses a customer; None for commands and non-text."""
    msg = event.message
    if event.type != "message" or msg is None:
        return None
    first = msg.segments[0].data.get("text", "") if msg.segments and msg.segments[0].type == "text" else ""
    if first.lstrip().startswith("/"):
        return None
    m = _ADDRESS.match(first)
    if m:
        return Address(int(m.group(1)), m.group(2))
    quoted = quoted_handle(event.payload.get("quote"))
    if quoted is not None:
        return Address(quoted, None, quoted=True)
    return Address(None, None)


def quoted_handle(quote) -> int | None:
    """The handle in a quoted relay (`{"text": "【王女士 #3】…"}`), if the quote is one of ours."""
    if not isinstance(quote, dict) or not isinstance(quote.get("text"), str):
        return None
    m = _LABEL.match(quote["text"])
    return int(m.group(1)) if m else None
