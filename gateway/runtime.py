"""The running gateway: database, adapters, ingress, dispatcher, outbox — and the Host port that
adapters use to reach the gateway without touching the database themselves."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from bots import root_router
from gateway import advisors, attribution, fallback, focus, handover, scheduler, service
from gateway.adapter import Adapter, adapter_class
from gateway.caches import CHANNEL as CACHE_CHANNEL
from gateway.caches import KINDS, Caches
from gateway.clock import Clock
from gateway.config import Config
from gateway.db import make_engine, session_factory
from gateway.hub import Hub, PgHub
from gateway.ingress import Ingress
from gateway.leader import Leadership
from gateway.metrics import Metrics
from gateway.middleware import MIDDLEWARES
from gateway.model import Identity
from gateway.models import (
    ApiToken,
    ChatMessage,
    Clerk,
    ClerkIdentity,
)
from gateway.netaddr import client_address
from gateway.outbox import OutboxWorker
from gateway.quota import SendQuota
from gateway.ratelimit import SlidingCounter
from gateway.replay import SignatureBook
from gateway.router import Dispatcher
from gateway.state import GatewayState
from gateway.tokens import REVOKED_CHANNEL, Principal, hash_token, resolve_token

log = logging.getLogger("gateway")

_TOKEN_CACHE_SECONDS = 30.0


class Gateway:
    def __init__(self, config: Config, *, clock: Clock | None = None, engine: AsyncEngine | None = None):
        self.config = config
        self.clock = clock or Clock()
        self.tz = ZoneInfo(config.timezone)
        self.instance_id = f"{socket.gethostname()}:{os.getpid()}"
        self.engine = engine or make_engine(config.database.url, echo=config.database.echo,
                                            pool_size=config.database.pool_size)
        self._owns_engine = engine is None
        self.db = session_factory(self.engine)
        # Acks have their own connections on PostgreSQL: a claim never waits for a pool that
        # processing, sends and reports have taken. (SQLite has one writer whatever we do.)
        self._claim_engine = (make_engine(config.database.url, pool_size=2)
                              if self._owns_engine and not config.database.is_sqlite else None)
        self.claim_db = session_factory(self._claim_engine) if self._claim_engine else self.db
        self.signatures = SignatureBook(self.claim_db, self.clock)  # on the ack path, as claims
        postgres = self.engine.dialect.name == "postgresql"
        if config.server.fanout == "postgres" or (config.server.fanout == "auto" and postgres):
            self._hub: Hub = PgHub(self.engine.url.set(drivername="postgresql").render_as_string(hide_password=False),
                                   self.instance_id)
        else:
            self._hub = Hub()
        self.adapters: dict[str, Adapter] = {}
        for acc in config.accounts:
            cls = adapter_class(acc.platform)
            self.adapters[acc.name] = cls(acc, self)
        self.clerk_accounts = {n: a.platform for n, a in self.adapters.items() if a.side == "clerk"}
        self.state = GatewayState(self.db, self.clock, self.tz)  # what adapters may read (typed)
        self.quota = SendQuota(self.db, self.clock)  # the platforms' per-recipient caps, shared by all processes
        self.caches = Caches(max_age=None if isinstance(self._hub, PgHub) else 30.0)
        # A kind that changed elsewhere; None: the listening connection was lost, so anything may have.
        self._hub.listen(CACHE_CHANNEL, lambda kind: self.caches.invalidate(kind) if kind in KINDS else self.caches.clear())
        per_minute = config.policies.customer_messages_per_minute
        self.flood_gate = SlidingCounter(per_minute, 60.0) if per_minute else None
        self.dispatcher = Dispatcher(root_router(), MIDDLEWARES)
        self.ingress = Ingress(self)
        self.outbox = OutboxWorker(self)
        self.outbox.on_failed["transfer"] = lambda s, row, error: handover.transfer_not_sent(s, self, row, error)
        self.outbox.on_unreachable = lambda s, row, code, error: fallback.reroute(s, self, row, code, error)
        self._tokens: dict[str, tuple[float, Principal | None]] = {}
        self._tokens_gen = 0  # bumped by forget_tokens: a lookup that raced a revocation is not cached
        self._hub.listen(REVOKED_CHANNEL, lambda _ids: self.forget_tokens())
        self.leadership = Leadership(self.engine)
        self.metrics = Metrics(self)
        self.started = False
        self._sla: asyncio.Task | None = None
        self._scheduler: asyncio.Task | None = None

    @property
    def base_url(self) -> str:
        return self.config.server.base_url()

    @property
    def max_body(self) -> int:
        return self.config.server.max_body

    @property
    def media_settings(self):
        return self.config.media

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self, *, workers: bool = True) -> None:
        if isinstance(self._hub, PgHub):
            await self._hub.start()
        for adapter in self.adapters.values():
            await adapter.start()
        if workers:
            await self.ingress.start()
            self.outbox.start()
            self._sla = asyncio.create_task(self._sla_loop(), name="sla")
            self._scheduler = asyncio.create_task(scheduler.loop(self, self.config.campaigns.tick_seconds),
                                                  name="campaign-scheduler")
        self.started = True

    async def _sla_loop(self, every: float = 30.0) -> None:
        """Every `every` seconds: reminders and escalations for customers left waiting
        (gateway/service.py), and the ledger lines (bounties, clawbacks) that follow bindings."""
        since = self.clock.now() - timedelta(days=1)  # a restart re-checks the last day; appending is idempotent
        while True:
            await asyncio.sleep(every)
            now = self.clock.now()
            try:
                await service.tick(self)
                await attribution.sync_changed(self, since - timedelta(minutes=5))  # overlap: late commits
                since = now
                await self._purge(now)
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - the next round tries again
                log.exception("periodic service-level / ledger check failed")

    async def _purge(self, now) -> None:
        """Send counts older than any cap's window, and focus rows a day old (not each clerk's last)."""
        await self.quota.purge()
        async with self.db() as s:
            await focus.purge(s, now - timedelta(days=1))
            await s.commit()

    async def stop(self) -> None:
        """Drain: finish in-flight inbound work, then in-flight sends, then close."""
        grace = self.config.server.shutdown_grace
        for task in (self._sla, self._scheduler):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        await self.leadership.release()
        await self.signatures.close()
        await self.ingress.stop(grace)
        await self.outbox.stop(grace)
        for adapter in self.adapters.values():
            await adapter.stop()
        if isinstance(self._hub, PgHub):
            await self._hub.stop()
        if self._owns_engine:
            await self.engine.dispose()
        if self._claim_engine is not None:
            await self._claim_engine.dispose()
        self.started = False

    # -- the Host port ----------------------------------------------------------------------------

    async def ingest(self, adapter: Adapter, request):
        return await self.ingress.handle(adapter, request)

    async def submit(self, adapter: Adapter, raw) -> None:
        await self.ingress.submit(adapter, raw)

    def hub(self) -> Hub:
        return self._hub

    def client_address(self, request) -> str:
        """The client's IP: the peer, or what a trusted proxy (server.trusted_proxies) says it is."""
        return client_address(request, self.config.server.trusted_proxies)

    async def bind_signature(self, account: str, sign: str, msg_id: str, until: datetime) -> bool:
        """Bind a signature that covers no body to the message it first came with (False: another
        message used it first). Kept until `until`, when the platform's window refuses it anyway."""
        return await self.signatures.bind(account, sign, msg_id, until)

    async def principal(self, token: str) -> Principal | None:
        """Token → principal, cached briefly; a revocation clears the cache on every instance
        (gateway/tokens.py), else a revoked token stops working within 30 s."""
        now, gen = time.monotonic(), self._tokens_gen
        hit = self._tokens.get(token)
        if hit and hit[0] > now:
            return hit[1]
        async with self.db() as s:
            p = await resolve_token(s, token)
            if p is not None:
                await s.execute(
                    update(ApiToken).where(ApiToken.token_hash == hash_token(token)).values(last_used_at=self.clock.now())
                )
                await s.commit()
        if len(self._tokens) > 10_000:
            self._tokens.clear()
        if gen == self._tokens_gen:  # else it may have read the token just before it was revoked
            self._tokens[token] = (now + _TOKEN_CACHE_SECONDS, p)
        return p

    def forget_tokens(self) -> None:
        """Drop cached principals so a revocation takes effect at once on this instance."""
        self._tokens_gen += 1
        self._tokens.clear()

    async def history(self, identity: Identity, after: int, limit: int) -> dict:
        """A peer's visible messages after a cursor: {"items", "next"}.

        `next` never passes a message still in the outbox, so a poller cannot skip it once it is
        sent; items past it may come again (clients dedupe by id).
        """
        from adapters.webim import history_item

        m = ChatMessage
        peer = (m.platform == identity.platform, m.account == identity.account, m.peer_id == identity.external_id)
        q = (
            select(m.id, m.direction, m.segments, m.sender_name, m.status, m.client_msg_id, m.created_at)
            .where(*peer, m.id > after, m.status.not_in(("queued", "held", "failed")))
            .order_by(m.id)
            .limit(limit)
        )
        async with self.db() as s:
            rows = (await s.execute(q)).mappings().all()
            in_flight = (await s.execute(select(func.min(m.id)).where(*peer, m.id > after, m.status == "queued"))).scalar()
        items = [history_item({**r, "created_at": r["created_at"].astimezone(self.tz).isoformat()}) for r in rows]
        nxt = items[-1]["id"] if items else after
        if in_flight is not None:
            nxt = min(nxt, in_flight - 1)
        return {"items": items, "next": max(nxt, after)}

    # -- helpers for bots ----------------------------------------------------------------------

    async def clerk_target(self, session, clerk: Clerk):
        return await advisors.clerk_target(session, clerk, self.clerk_accounts)

    def invite_url(self, code: str) -> str:
        return f"{self.config.server.base_url()}/i/{code}"

    async def contact_urls(self, session, clerk_id: int, code: str) -> list[tuple[str, str]]:
        """(platform, URL) where a customer binds through this invite besides the web page: the
        customer-side platforms' QR codes (Official Account) and the clerk's own contact QR on
        platforms that hold contacts (WeCom)."""
        own = (await session.execute(select(ClerkIdentity.account).where(ClerkIdentity.clerk_id == clerk_id))).scalars()
        accounts = [n for n, a in self.adapters.items() if a.side == "customer"] + [a for a in own if a in self.adapters]
        urls = [(self.adapters[a].platform, self.adapters[a].contact_url(code)) for a in accounts]
        return [(p, u) for p, u in urls if u]
