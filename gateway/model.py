"""The normalised model every adapter speaks: pure data, no I/O.

Segment / Message / Identity / Target / Event. Adapters turn platform payloads into Events and
Messages into platform payloads; everything between them sees only these types.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

Side = Literal["customer", "clerk"]

# Segment types the core knows; an adapter renders what it can and falls back to text for the rest.
SEGMENT_TYPES = ("text", "image", "file", "link", "product", "coupon", "voice", "location")


@dataclass(frozen=True)
class Segment:
    type: str
    data: dict[str, Any] = field(default_factory=dict)

    @staticmethod
    def text(s: str) -> Segment:
        return Segment("text", {"text": s})

    def fallback_text(self) -> str:
        """How a platform that cannot render this segment shows it."""
        d = self.data
        match self.type:
            case "text":
                return d.get("text", "")
            case "image":
                return f"[图片] {d.get('url', '')}".strip()
            case "file":
                return f"[文件] {d.get('name', '')} {d.get('url', '')}".strip()
            case "voice":
                return f"[语音] {d.get('url', '')}".strip()
            case "link":
                return f"{d.get('title', '')} {d.get('url', '')}".strip()
            case "product":
                return f"【{d.get('name', '')}】¥{d.get('price', '')} {d.get('url', '')}".strip()
            case "coupon":
                return f"[券] {d.get('name', '')} {d.get('code', '')}".strip()
            case "location":
                return f"[位置] {d.get('label', '')} ({d.get('lat')}, {d.get('lng')})"
            case _:
                return d.get("text", f"[{self.type}]")

    def to_dict(self) -> dict:
        return {"type": self.type, **self.data}

    @staticmethod
    def from_dict(d: dict) -> Segment:
        d = dict(d)
        return Segment(str(d.pop("type")), d)


@dataclass
class Message:
    segments: list[Segment]
    sender_name: str | None = None  # the clerk's personal display name on the customer side
    ref: dict[str, Any] | None = None  # the gateway's record of it (id, created_at), set by the outbox

    @staticmethod
    def of_text(s: str, sender_name: str | None = None) -> Message:
        return Message([Segment.text(s)], sender_name)

    @property
    def plain_text(self) -> str:
        out = ""
        for s in self.segments:
            if s.type == "text":
                out += s.fallback_text()
            else:
                out += ("\n" if out and not out.endswith("\n") else "") + s.fallback_text() + "\n"
        return out.strip()

    def render(self, supported: frozenset[str]) -> list[Segment]:
        """Segments a platform can show: unsupported ones become text, adjacent texts merge."""
        out: list[Segment] = []
        for s in self.segments:
            seg = s if s.type in supported else Segment.text(s.fallback_text())
            if seg.type == "text" and out and out[-1].type == "text":
                sep = "" if out[-1].data["text"].endswith("\n") else "\n"
                out[-1] = Segment.text(out[-1].data["text"] + sep + seg.data["text"])
            else:
                out.append(seg)
        return out

    def to_dict(self) -> dict:
        return {"segments": [s.to_dict() for s in self.segments], "sender_name": self.sender_name}

    @staticmethod
    def from_dict(d: dict) -> Message:
        return Message([Segment.from_dict(s) for s in d.get("segments", [])], d.get("sender_name"))


@dataclass(frozen=True)
class Identity:
    platform: str
    account: str
    external_id: str

    def to_dict(self) -> dict:
        return {"platform": self.platform, "account": self.account, "external_id": self.external_id}

    @staticmethod
    def from_dict(d: dict) -> Identity:
        return Identity(d["platform"], d["account"], d["external_id"])


@dataclass(frozen=True)
class Target:
    """Where an outbound message goes, and on whose behalf (for logging and policies).

    A target with a customer_id addresses that customer; without one, a clerk. `hints` carry what a
    platform needs beyond the address, taken from the event or the binding (WeCom: the member who
    sends to an external contact, a WelcomeCode and its deadline, the two members of a transfer).
    """

    identity: Identity
    customer_id: int | None = None
    clerk_id: int | None = None
    hints: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)
    # On a message to a clerk: the customer it quotes or names (a relayed message, a notice), so
    # the clerk's copy is found when that customer's data is exported or erased.
    about: int | None = None

    @property
    def side(self) -> Side:
        return "customer" if self.customer_id is not None else "clerk"

    @property
    def concerns(self) -> int | None:
        """The customer whose data this message is: its recipient, or the one it is about."""
        return self.customer_id if self.customer_id is not None else self.about

    def to_dict(self) -> dict:
        d = {"identity": self.identity.to_dict(), "customer_id": self.customer_id, "clerk_id": self.clerk_id}
        if self.about is not None:
            d["about"] = self.about
        return {**d, "hints": self.hints} if self.hints else d

    @staticmethod
    def from_dict(d: dict) -> Target:
        return Target(Identity.from_dict(d["identity"]), d.get("customer_id"), d.get("clerk_id"), d.get("hints") or {},
                      about=d.get("about"))


def dedupe_key(kind: str, *parts: object) -> str:
    """An Event's dedupe key: `kind:part:part…` with ":" and "%" escaped inside each part, so two
    different tuples never make the same key (user `gina`, message `vip:m-1` and user `gina:vip`,
    message `m-1` both read `msg:gina:vip:m-1` when joined bare, and the second was dropped as a
    duplicate). Parts without those characters come out as before, so keys claimed by an older
    release still match their retries."""
    return ":".join([kind, *(str(p).replace("%", "%25").replace(":", "%3A") for p in parts)])


@dataclass
class Event:
    """One thing that happened on a platform, already verified and parsed.

    type: "message" | "bind" | "follow" | "unfollow" | platform-specific extras.
    reply_required: the caller waits for the handler's result (webchat bind), so the ingress runs
    it before answering; everything else is acknowledged first and processed after.
    """

    type: str
    side: Side
    sender: Identity
    dedupe_key: str
    occurred_at: datetime
    message: Message | None = None
    payload: dict[str, Any] = field(default_factory=dict)
    profile: dict[str, Any] = field(default_factory=dict)  # name, unionid, avatar … as the platform gives them
    reply_required: bool = False

    @property
    def text(self) -> str:
        return self.message.plain_text if self.message else ""

    def to_dict(self) -> dict:
        return {
            "type": self.type,
            "side": self.side,
            "sender": self.sender.to_dict(),
            "dedupe_key": self.dedupe_key,
            "occurred_at": self.occurred_at.isoformat(),
            "message": self.message.to_dict() if self.message else None,
            "payload": self.payload,
            "profile": self.profile,
            "reply_required": self.reply_required,
        }

    @staticmethod
    def from_dict(d: dict) -> Event:
        return Event(
            type=d["type"],
            side=d["side"],
            sender=Identity.from_dict(d["sender"]),
            dedupe_key=d["dedupe_key"],
            occurred_at=datetime.fromisoformat(d["occurred_at"]),
            message=Message.from_dict(d["message"]) if d.get("message") else None,
            payload=d.get("payload") or {},
            profile=d.get("profile") or {},
            reply_required=bool(d.get("reply_required")),
        )
