"""The adapter interface, its capabilities, errors and the platform registry.

An adapter speaks one platform: verify, parse (pure), ack, send, start/stop. It never touches the
database and never routes; what it needs from the gateway comes through the narrow `Host` port.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from gateway.model import Event, Identity, Message, Target
    from gateway.quota import SendQuota
    from gateway.state import GatewayState

BUILTIN_ADAPTERS = ("adapters.webchat", "adapters.workbench", "adapters.dingtalk", "adapters.wecom",
                    "adapters.wechat_mp")


class Unauthorized(Exception):
    """Bad signature or token: 401, nothing stored."""


class BadRequest(Exception):
    """Malformed input: 400 (or `status`), nothing stored."""

    def __init__(self, message: str, *, field: str | None = None, status: int = 400, code: str = "bad_request"):
        super().__init__(message)
        self.field, self.status, self.code = field, status, code


class Retryable(Exception):
    """A send that may succeed later (timeouts, 5xx, throttling)."""

    def __init__(self, message: str, *, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class Deferred(Retryable):
    """Not a failure: a platform cap says "not yet" (WeCom's 30 a minute per member). The outbox
    sends it again after `retry_after` without spending one of the row's attempts."""


class Permanent(Exception):
    """A send that will never succeed as is; `code` keeps the platform's own error code."""

    def __init__(self, message: str, *, code: str | None = None, hold: bool = False, fallback: bool = False):
        super().__init__(message)
        # fallback: the customer cannot be reached here now (a closed reply window, unfollowed):
        # the gateway tries their other channels and tells the clerk.
        self.code, self.hold, self.fallback = code, hold, fallback


@dataclass
class Receipt:
    platform_msg_id: str | None = None
    delivered: bool = False  # True when the platform confirms delivery synchronously


@dataclass
class Capabilities:
    """Each platform's rules, read by the outbox and the policies."""

    segments: frozenset[str] = frozenset({"text"})
    rate_per_sec: float = 20.0  # outbound calls per second per account
    burst: int = 20
    platform_rate: bool = True  # the rate is the platform's cap: shared by every process (gateway/quota.py)
    reply_window: timedelta | None = None  # e.g. 48 h on the Official Account
    # Per-customer cap on pushes the platform enforces: (period, limit) with period month | week |
    # day; limit None = as many as the month has days (WeCom's default). Checked before enqueueing.
    push_cap: tuple[str, int | None] | None = None
    transfers_contacts: bool = False  # contacts belong to members: a handover moves them through the platform
    notice_fallback: bool = False  # a notice form (template message) may carry a reply the window refuses
    customer_send_note: str | None = None  # told to the clerk after each reply they send this way


@dataclass
class RouteDef:
    method: str
    path: str
    handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    name: str | None = None


class AccountConfig(BaseModel):
    """Keys every account has; each platform's config class adds its own."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,31}$")
    platform: str
    rate_per_sec: float | None = Field(None, gt=0)  # override the platform's default cap


class Principal(Protocol):
    role: str
    clerk_id: int | None
    store_id: int | None


class Host(Protocol):
    """What the gateway offers adapters. Adapters call it; it never calls into platform code."""

    clock: Any
    tz: Any  # the configured zone, for day boundaries
    max_body: int
    base_url: str  # the gateway's public URL
    quota: SendQuota  # per-recipient platform caps, counted by every process together
    state: GatewayState  # what an adapter may read of the gateway's state, question by question

    async def ingest(self, adapter: Adapter, request: web.Request) -> web.StreamResponse: ...

    async def submit(self, adapter: Adapter, raw: Any) -> None: ...

    async def principal(self, token: str) -> Principal | None: ...

    async def history(self, identity: Identity, after: int, limit: int) -> dict: ...

    def hub(self) -> Any: ...

    # Security: who is asking, replay protection, and the media route's settings (config `media`).
    media_settings: Any

    def client_address(self, request: web.Request) -> str: ...

    async def bind_signature(self, account: str, sign: str, msg_id: str, until: datetime) -> bool: ...


class Adapter(ABC):
    platform: ClassVar[str]
    side: ClassVar[Literal["customer", "clerk"]]
    caps: ClassVar[Capabilities]
    config_class: ClassVar[type[AccountConfig]]

    def __init__(self, config: AccountConfig, host: Host):
        self.config = config
        self.host = host
        self.account = config.name

    def capabilities(self) -> Capabilities:
        if self.config.rate_per_sec:
            return Capabilities(**{**self.caps.__dict__, "rate_per_sec": self.config.rate_per_sec})
        return self.caps

    def routes(self) -> list[RouteDef]:
        return []

    def contact_url(self, code: str) -> str | None:
        """Where a customer adds the invite's clerk as a contact on this platform (pure; None: n/a)."""
        return None

    def connected(self) -> bool:
        """For /readyz: False while a long-lived connection to the platform is down (stream mode)."""
        return True

    async def start(self) -> None:  # noqa: B027 - optional hook
        pass

    async def stop(self) -> None:  # noqa: B027 - optional hook
        pass

    @abstractmethod
    async def verify(self, request: web.Request) -> Any:
        """Check signature / token and decode the body; raise Unauthorized or BadRequest."""

    @abstractmethod
    def parse(self, raw: Any) -> list[Event]:
        """Pure: a verified payload to normalised Events. Raise BadRequest for malformed input."""

    @abstractmethod
    def ack(self, raw: Any, results: list[Any], duplicate: bool) -> web.StreamResponse:
        """What the platform expects back once the input is durably claimed."""

    @abstractmethod
    async def send(self, target: Target, message: Message, *, idem_key: str, kind: str = "reply") -> Receipt:
        """Deliver; raise Retryable or Permanent. `kind` is the outbox row's (reply, notice, brief, push…)."""


_registry: dict[str, type[Adapter]] = {}
_loaded = False


def register(cls: type[Adapter]) -> type[Adapter]:
    _registry[cls.platform] = cls
    return cls


def _load_builtin() -> None:
    global _loaded
    if not _loaded:
        _loaded = True
        for mod in BUILTIN_ADAPTERS:
            importlib.import_module(f"{mod}.adapter")


def platforms() -> list[str]:
    _load_builtin()
    return sorted(_registry)


def adapter_class(platform: str) -> type[Adapter] | None:
    _load_builtin()
    return _registry.get(platform)


def account_config_class(platform: str) -> type[AccountConfig] | None:
    cls = adapter_class(platform)
    return cls.config_class if cls else None
