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
    from datetime import datetime

    from sqlmodel.ext.asyncio.session import AsyncSession

    from gateway.lookups import Lookups
    from gateway.runtime import Gateway
    from gateway.writes import Writes

SKIP = object()

Filter = Callable[["Ctx"], "bool | dict | Awaitable[bool | dict]"]
Handler = Callable[["Ctx"], Awaitable[Any]]
Middleware = Callable[["Ctx", Callable[[], Awaitable[Any]]], Awaitable[Any]]


@dataclass
class Ctx:
    """One event being handled, inside its batch's database transaction.

    While `staged`, the parties (`customer`, `identity`, `binding`, `clerk`) are the batch's frozen
    snapshots (gateway/lookups.py) and sends, logs and focus changes are staged (gateway/writes.py),
    written set-wise at the end of the batch. A handler that needs the session is dispatched after
    `materialise()`: what was staged is written first, the parties become ORM objects, and its own
    writes go straight to the session, in order."""

    event: Event
    gw: Gateway
    session: AsyncSession
    claim_key: str
    look: Lookups | None = None
    writes: Writes | None = None
    at: datetime | None = None  # the batch's clock reading: one instant for all its events
    customer: Any = None  # Customer | CustomerView
    identity: Any = None  # IdentityRow | IdentityView
    binding: Any = None  # Binding | BindingView
    clerk: Any = None  # Clerk | ClerkView
    data: dict[str, Any] = field(default_factory=dict)
    staged: bool = True

    def now(self):
        return self.at or self.gw.clock.now()

    async def materialise(self) -> None:
        """Leave staged mode for this event: write what is staged, load the parties as ORM
        objects, and mark the batch's lookups stale (this handler may change what they show)."""
        if not self.staged:
            return
        from gateway.models import Binding, Clerk, Customer
        from gateway.models import Identity as IdentityRow

        self.staged = False
        if self.writes is not None:
            await self.writes.flush(self.session, self.now())
        if self.look is not None:
            self.look.stale = True
        s = self.session
        for attr, model in (("customer", Customer), ("identity", IdentityRow), ("binding", Binding), ("clerk", Clerk)):
            value = getattr(self, attr)
            if value is not None and not isinstance(value, model):
                setattr(self, attr, await s.get(model, value.id, populate_existing=True))

    def idem(self, suffix: str) -> str:
        """A deterministic outbound key: the same inbound event never enqueues a message twice."""
        return f"{self.event.sender.platform}:{self.event.sender.account}:{self.claim_key}:{suffix}"

    async def send(self, target: Target, message: Message, *, suffix: str | None = None, kind: str = "reply",
                   idem_key: str | None = None) -> None:
        from gateway.outbox import PUSH_KINDS, Outgoing

        item = Outgoing(target, message, idem_key or self.idem(suffix or "reply"), kind)
        if kind in PUSH_KINDS:  # pushes go through the send policy's checks
            await self.materialise()
            await self.gw.outbox.enqueue(self.session, target, message, idem_key=item.idem_key, kind=kind)
        elif self.staged:
            self.writes.send(item)
        else:
            await self.gw.outbox.write_many(self.session, [item])

    def reply_target(self) -> Target:
        """The sender, on the channel the event came from."""
        return Target(
            self.event.sender,
            customer_id=self.customer.id if self.customer else None,
            clerk_id=self.clerk.id if self.clerk else None,
        )

    async def reply(self, text: str, *, suffix: str = "reply") -> None:
        kind = "notice" if self.event.side == "clerk" else "reply"
        # Customers hear their advisor's name only while that advisor is active; else the brand's voice.
        active = self.clerk is not None and self.clerk.status == "active"
        sender = self.clerk.display_name if self.event.side == "customer" and active else None
        await self.send(self.reply_target(), Message.of_text(text, sender), suffix=suffix, kind=kind)

    async def log(self, type_: str, **fields: Any) -> None:
        if self.staged:
            self.writes.log(type_, occurred_at=self.now(), **fields)
        else:
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
    staged: bool  # the handler reads only the batch's lookups and stages its writes


class Router:
    def __init__(self, name: str):
        self.name = name
        self._rules: list[_Rule] = []
        self._children: list[Router] = []

    def on(self, event_type: str, *filters: Filter, side: str | None = None, staged: bool = False):
        """Register a handler. Filters run on the batch's lookups (they must not use the session);
        a handler that is not `staged` gets a materialised context (see Ctx)."""

        def deco(fn: Handler) -> Handler:
            self._rules.append(_Rule(event_type, side, filters, fn, staged))
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
                if not rule.staged:
                    await ctx.materialise()
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
