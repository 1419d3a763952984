"""Routers, filters and middlewares (in the spirit of aiogram and slack-bolt).

A filter returns bool, or a dict whose items are put into `ctx.data` for the handler. A handler
returning `SKIP` lets the next matching handler try. Middlewares form one flat chain with `nxt()`.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from gateway.model import Event, Message, Target

if TYPE_CHECKING:
    from sqlmodel.ext.asyncio.session import AsyncSession

    from gateway.models import Binding, Clerk, Customer
    from gateway.models import Identity as IdentityRow
    from gateway.runtime import Gateway

SKIP = object()

Filter = Callable[["Ctx"], "bool | dict | Awaitable[bool | dict]"]
Handler = Callable[["Ctx"], Awaitable[Any]]
Middleware = Callable[["Ctx", Callable[[], Awaitable[Any]]], Awaitable[Any]]


@dataclass
class Ctx:
    """One event being handled, inside one database transaction."""

    event: Event
    gw: Gateway
    session: AsyncSession
    claim_key: str
    customer: Customer | None = None
    identity: IdentityRow | None = None
    binding: Binding | None = None
    clerk: Clerk | None = None
    data: dict[str, Any] = field(default_factory=dict)
    after_commit: list[Callable[[], Any]] = field(default_factory=list)

    def now(self):
        return self.gw.clock.now()

    def idem(self, suffix: str) -> str:
        """A deterministic outbound key: the same inbound event never enqueues a message twice."""
        return f"{self.event.sender.platform}:{self.event.sender.account}:{self.claim_key}:{suffix}"

    async def send(self, target: Target, message: Message, *, suffix: str, kind: str = "reply") -> int | None:
        return await self.gw.outbox.enqueue(self.session, target, message, idem_key=self.idem(suffix), kind=kind)

    def reply_target(self) -> Target:
        """The sender, on the channel the event came from."""
        return Target(
            self.event.sender,
            customer_id=self.customer.id if self.customer else None,
            clerk_id=self.clerk.id if self.clerk else None,
        )

    async def reply(self, text: str, *, suffix: str = "reply") -> int | None:
        kind = "notice" if self.event.side == "clerk" else "reply"
        # Customers hear their advisor's name only while that advisor is active; else the brand's voice.
        active = self.clerk is not None and self.clerk.status == "active"
        sender = self.clerk.display_name if self.event.side == "customer" and active else None
        return await self.send(self.reply_target(), Message.of_text(text, sender), suffix=suffix, kind=kind)

    async def log(self, type_: str, **fields: Any) -> None:
        from gateway.interactions import log_interaction

        await log_interaction(self.session, type_, occurred_at=self.now(), **fields)


def text_in(words: list[str]) -> Filter:
    lowered = {w.strip().lower() for w in words}
    return lambda ctx: ctx.event.text.strip().lower() in lowered


def text_match(pattern: str) -> Filter:
    rx = re.compile(pattern, re.S)

    def f(ctx: Ctx):
        m = rx.match(ctx.event.text)
        return {"match": m} if m else False

    return f


@dataclass
class _Rule:
    event_type: str
    side: str | None
    filters: tuple[Filter, ...]
    handler: Handler


class Router:
    def __init__(self, name: str):
        self.name = name
        self._rules: list[_Rule] = []
        self._children: list[Router] = []

    def on(self, event_type: str, *filters: Filter, side: str | None = None):
        def deco(fn: Handler) -> Handler:
            self._rules.append(_Rule(event_type, side, filters, fn))
            return fn

        return deco

    def include(self, *routers: Router) -> Router:
        self._children.extend(routers)
        return self

    async def route(self, ctx: Ctx) -> tuple[bool, Any]:
        for rule in self._rules:
            if rule.event_type != ctx.event.type or (rule.side and rule.side != ctx.event.side):
                continue
            injected: dict = {}
            for flt in rule.filters:
                res = flt(ctx)
                if isinstance(res, Awaitable):
                    res = await res
                if not res:
                    break
                if isinstance(res, dict):
                    injected.update(res)
            else:
                ctx.data.update(injected)
                result = await rule.handler(ctx)
                if result is not SKIP:
                    return True, result
        for child in self._children:
            handled, result = await child.route(ctx)
            if handled:
                return True, result
        return False, None


class Dispatcher:
    def __init__(self, root: Router, middlewares: list[Middleware] | None = None):
        self.root = root
        self.middlewares = list(middlewares or [])

    async def dispatch(self, ctx: Ctx) -> Any:
        async def final() -> Any:
            return (await self.root.route(ctx))[1]

        call = final
        for mw in reversed(self.middlewares):
            call = (lambda m, n: lambda: m(ctx, n))(mw, call)
        return await call()
