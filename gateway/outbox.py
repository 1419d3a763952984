"""The durable outbox: every outbound message is a row first, then a send.

Claiming is atomic (`FOR UPDATE SKIP LOCKED` on PostgreSQL; SQLite's write lock does the same), a
claim is a lease: a worker that dies between claim and send leaves a row that another worker takes
once the lease runs out. Sends carry the row's idempotency key so a platform that dedupes by it
never shows a message twice. Retryable errors back off exponentially with jitter; Permanent ones
become dead letters (or held, with the platform's reason) visible through the admin API.
"""

from __future__ import annotations

import asyncio
import calendar
import contextlib
import logging
import random
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from sqlalchemy import bindparam, delete, func, insert, select, update

from gateway.adapter import Deferred, Permanent, Retryable
from gateway.batch import Batcher
from gateway.interactions import log_interaction
from gateway.model import Message, Target
from gateway.models import ChatMessage, Customer, Interaction, Outbox
from gateway.ratelimit import TokenBucket
from gateway.service import quiet_until
from gateway.sql import insert_ignore

if TYPE_CHECKING:
    from gateway.runtime import Gateway

log = logging.getLogger("gateway.outbox")

# Kinds that are marketing: opt-outs and (later) quiet hours and caps apply to them.
PUSH_KINDS = frozenset({"push"})
# Claim order (lower first): deadlines (WeCom's 20 s welcome), then conversation, then bulk.
PRIORITY = {"welcome": 0, "reply": 1, "relay": 1, "notice": 1, "transfer": 1, "intro": 1}  # relay: customer -> clerk
BULK = 2


def cap_period(cap: tuple[str, int | None], now: datetime, tz) -> tuple[datetime, int]:
    """The start of the current cap period in the configured zone, and the period's limit
    (a month's default limit is its number of days)."""
    period, limit = cap
    local = now.astimezone(tz).replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "month":
        start = local.replace(day=1)
        limit = limit or calendar.monthrange(local.year, local.month)[1]
    elif period == "week":
        start = local - timedelta(days=local.weekday())
    else:
        start = local
    return start, limit or 1


class OutboxWorker:
    def __init__(self, gw: Gateway):
        self.gw = gw
        self.cfg = gw.config.outbox
        self.worker_id = f"{gw.instance_id}:{uuid.uuid4().hex[:6]}"
        self._wake = asyncio.Event()
        self._inflight: set[asyncio.Task] = set()
        self._stopping = False
        self._task: asyncio.Task | None = None
        self._limiters: dict[str, TokenBucket] = {}
        self._peer_locks: dict[tuple[str, str], list] = {}
        self._reclaimed_at = None  # when expired leases were last handed back  # (account, peer) -> [lock, users]
        self._sent = Batcher(self._record_sent, name="outbox-sent")
        # kind -> coroutine(session, row, error) run in the transaction that records a dead or held row
        self.on_failed: dict[str, Callable[..., Awaitable[None]]] = {}
        self.on_unreachable: Callable[..., Awaitable[None]] | None = None  # (session, row, code, error)
        self.sent = 0  # counters for tests, metrics and benchmarks
        self.failed = 0

    # -- producing -------------------------------------------------------------------------

    async def enqueue(
        self,
        session,
        target: Target,
        message: Message,
        *,
        idem_key: str,
        kind: str = "reply",
        campaign_id: int | None = None,
    ) -> int | None:
        """Add a message to the outbox inside the caller's transaction; None if the key exists."""
        adapter = self.gw.adapters.get(target.identity.account)
        if adapter is None:
            raise ValueError(f"no account named {target.identity.account!r} is configured")
        now = self.gw.clock.now()
        status, code, why = "pending", None, None
        if kind in PUSH_KINDS and target.customer_id is not None:
            code, why = await self._push_refusal(session, adapter, target, now)
            status = "held" if code else "pending"
        # The message row first, so the outbox row is written once, already pointing at it.
        msg_id = (
            await session.execute(
                ChatMessage.__table__.insert()
                .values(
                    direction="out",
                    side=target.side,
                    platform=target.identity.platform,
                    account=target.identity.account,
                    peer_id=target.identity.external_id,
                    customer_id=target.concerns,
                    clerk_id=target.clerk_id,
                    segments=[s.to_dict() for s in message.segments],
                    text=message.plain_text,
                    sender_name=message.sender_name,
                    status="held" if status == "held" else "queued",
                    created_at=now,
                )
                .returning(ChatMessage.id)
            )
        ).scalar_one()
        res = await session.execute(
            insert_ignore(session, Outbox, conflict=["idem_key"])
            .values(
                idem_key=idem_key,
                platform=target.identity.platform,
                account=target.identity.account,
                target=target.to_dict(),
                message=message.to_dict(),
                kind=kind,
                priority=PRIORITY.get(kind, BULK),
                status=status,
                error_code=code,
                last_error=why,
                next_attempt_at=now,
                customer_id=target.customer_id,
                clerk_id=target.clerk_id,
                campaign_id=campaign_id,
                message_id=msg_id,
                created_at=now,
            )
            .returning(Outbox.id)
        )
        outbox_id = res.scalar()
        if outbox_id is None:  # the key exists: this message was enqueued before
            await session.execute(delete(ChatMessage).where(ChatMessage.id == msg_id))
            return None
        if kind in PUSH_KINDS:
            await log_interaction(session, "push_held" if code else "push_queued", occurred_at=now,
                                  customer_id=target.customer_id, clerk_id=target.clerk_id, campaign_id=campaign_id,
                                  payload={"outbox_id": outbox_id, "channel": target.identity.platform,
                                           **({"code": code, "reason": why} if code else {})})
        return outbox_id

    async def enqueue_many(self, session, items: list[tuple[Target, Message, str]], *, kind: str,
                           campaign_id: int | None = None, not_before: datetime | None = None) -> list[int]:
        """Bulk enqueue for campaign runs: policies were decided by the caller for the whole batch,
        so this is three multi-row INSERTs (messages, outbox rows, interactions), not 3 × N."""
        if not items:
            return []
        now = self.gw.clock.now()
        msg = ChatMessage.__table__
        msg_ids = (await session.execute(
            msg.insert().returning(msg.c.id, sort_by_parameter_order=True),
            [{"direction": "out", "side": t.side, "platform": t.identity.platform, "account": t.identity.account,
              "peer_id": t.identity.external_id, "customer_id": t.concerns, "clerk_id": t.clerk_id,
              "segments": [sg.to_dict() for sg in m.segments], "text": m.plain_text, "sender_name": m.sender_name,
              "status": "queued", "created_at": now} for t, m, _ in items])).scalars().all()
        ob = Outbox.__table__
        ids = (await session.execute(
            ob.insert().returning(ob.c.id, sort_by_parameter_order=True),
            [{"idem_key": key, "platform": t.identity.platform, "account": t.identity.account, "target": t.to_dict(),
              "message": m.to_dict(), "kind": kind, "priority": PRIORITY.get(kind, BULK), "status": "pending",
              "attempts": 0, "next_attempt_at": not_before or now, "customer_id": t.customer_id,
              "clerk_id": t.clerk_id, "campaign_id": campaign_id, "message_id": mid, "created_at": now}
             for (t, m, key), mid in zip(items, msg_ids, strict=True)])).scalars().all()
        await session.execute(insert(Interaction.__table__), [
            {"type": "push_queued", "occurred_at": now, "customer_id": t.customer_id, "clerk_id": t.clerk_id,
             "store_id": None, "campaign_id": campaign_id, "payload": {"outbox_id": oid, "channel": t.identity.platform}}
            for (t, _, _), oid in zip(items, ids, strict=True)])
        return list(ids)

    async def _push_refusal(self, session, adapter, target: Target, now) -> tuple[str | None, str | None]:
        """Why a push may not go to this customer now: opted out, or the platform's per-customer cap."""
        customer = await session.get(Customer, target.customer_id)
        if customer is not None and customer.opted_out_at is not None:
            return "opted_out", "customer opted out"
        cap = adapter.capabilities().push_cap
        if cap is None:
            return None, None
        start, limit = cap_period(cap, now, self.gw.tz)
        used = (await session.execute(
            select(func.count(Outbox.id)).where(
                Outbox.customer_id == target.customer_id, Outbox.account == target.identity.account,
                Outbox.kind.in_(PUSH_KINDS), Outbox.status.in_(("pending", "sending", "sent")),
                Outbox.created_at >= start)
        )).scalar_one()
        if used >= limit:
            return "platform_cap", (f"{adapter.platform} allows {limit} pushes per customer per {cap[0]}; "
                                    f"{used} already since {start.astimezone(self.gw.tz).date().isoformat()}")
        return None, None

    def kick(self) -> None:
        self._wake.set()

    # -- consuming -------------------------------------------------------------------------

    def limiter(self, account: str) -> TokenBucket:
        if account not in self._limiters:
            caps = self.gw.adapters[account].capabilities()
            self._limiters[account] = TokenBucket(caps.rate_per_sec, caps.burst)
        return self._limiters[account]

    async def claim(self, limit: int) -> list:
        now = self.gw.clock.now()
        # A dead worker's rows go back to pending once their lease runs out; kept out of the pick
        # below so that stays one ordered scan of the (status, priority, next_attempt_at, id) index.
        if self._reclaimed_at is None or (now - self._reclaimed_at).total_seconds() >= 5:  # not a write per poll
            self._reclaimed_at = now
            async with self.gw.db() as s:
                await s.execute(update(Outbox).where(Outbox.status == "sending", Outbox.lease_until < now)
                                .values(status="pending", lease_until=None)
                                .execution_options(synchronize_session=False))
                await s.commit()
        pick = (
            select(Outbox.id)
            .where(Outbox.status == "pending", Outbox.next_attempt_at <= now,
                   Outbox.account.in_(list(self.gw.adapters)))
            .order_by(Outbox.priority, Outbox.next_attempt_at, Outbox.id)
            .limit(limit)
            .with_for_update(skip_locked=True)
            .cte("pick")
        )
        if self.gw.engine.dialect.name == "postgresql":
            # Picked once. As `IN (subquery)` PostgreSQL may rescan the pick per outer row (its plan
            # when statistics say the outbox is empty), each rescan skipping the rows this statement
            # already took: one claim then took every due row, not `limit`, and rows waiting for the
            # rate limiter outlived their lease and were sent twice (found by `make chaos`).
            pick = pick.prefix_with("MATERIALIZED")
        stmt = (
            update(Outbox)
            .where(Outbox.id.in_(select(pick.c.id)))
            .values(
                status="sending",
                attempts=Outbox.attempts + 1,
                lease_until=now + timedelta(seconds=self.cfg.lease_seconds),
                claimed_by=self.worker_id,
            )
            .returning(Outbox.id, Outbox.idem_key, Outbox.account, Outbox.target, Outbox.message,
                       Outbox.attempts, Outbox.message_id, Outbox.created_at, Outbox.kind,
                       Outbox.customer_id, Outbox.clerk_id, Outbox.campaign_id)
            .execution_options(synchronize_session=False)
        )  # fmt: skip
        async with self.gw.db() as s:
            rows = (await s.execute(stmt)).all()
            await s.commit()
        # RETURNING comes in no particular order; sends start (and take their peer's lock) in
        # enqueue order, so a peer's messages go out in the order they were made.
        return sorted(rows, key=lambda r: r.id)

    async def deliver(self, row) -> str:
        """Send one claimed row and record the outcome. Returns the new status."""
        adapter = self.gw.adapters[row.account]
        message = Message.from_dict(row.message)
        message.ref = {"id": row.message_id, "created_at": row.created_at.isoformat()}
        target = Target.from_dict(row.target)
        if row.kind in PUSH_KINDS:  # a push due in quiet hours waits for their end, without spending an attempt
            end = quiet_until(self.gw.config.policies.quiet_hours, self.gw.clock.now().astimezone(self.gw.tz))
            if end is not None:
                wait = (end - self.gw.clock.now()).total_seconds()
                return await self._retry(row, f"quiet hours until {end:%H:%M}", wait, spend_attempt=False)
        async with self._peer_lock(row.account, target.identity.external_id):
            try:
                await self.limiter(row.account).acquire()  # spend the platform's cap on the send itself
                receipt = await adapter.send(target, message, idem_key=row.idem_key, kind=row.kind)
            except Deferred as e:
                return await self._retry(row, str(e), e.retry_after, spend_attempt=False)
            except Retryable as e:
                return await self._retry(row, str(e), e.retry_after)
            except Permanent as e:
                return await self._finish(row, "held" if e.hold else "dead", error=str(e), code=e.code,
                                          fallback=e.fallback)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # an adapter bug or a network fault we did not classify: retry, loudly
                log.exception("outbox send %s failed unexpectedly", row.id)
                return await self._retry(row, f"{type(e).__name__}: {e}", None)
            # The send's own time, not the later group commit's: reply windows count by it.
            recorded = asyncio.ensure_future(self._sent.submit((row, receipt, self.gw.clock.now())))
            if adapter.capabilities().reply_window is not None:
                # A platform that counts sends per window reads this record before the peer's next send.
                await asyncio.shield(recorded)
        # Elsewhere the peer's next send need not wait for this commit: one busy clerk would otherwise
        # get one message per database round trip.
        if not await asyncio.shield(recorded):
            return "lost_lease"  # another worker took the row over after our lease ran out
        self.sent += 1
        return "sent"

    async def _record_sent(self, batch: list) -> list[bool]:
        """Group commit of successful sends: one guarded UPDATE for the batch, then the message
        rows and platform ids of the rows it took (executemany)."""
        now = self.gw.clock.now()
        ob, msg = Outbox.__table__, ChatMessage.__table__
        async with self.gw.db() as s:
            done = set(
                (await s.execute(
                    update(ob)
                    .where(ob.c.id.in_([r.id for r, _, _ in batch]), ob.c.claimed_by == self.worker_id,
                           ob.c.status == "sending")
                    .values(status="sent", lease_until=None, sent_at=now, last_error=None, error_code=None)
                    .returning(ob.c.id)
                )).scalars()
            )
            ids = [{"mid": r.message_id, "st": "delivered" if rc.delivered else "sent", "pid": rc.platform_msg_id,
                    "at": at} for r, rc, at in batch if r.id in done and r.message_id is not None]
            if ids:
                await s.execute(
                    update(msg).where(msg.c.id == bindparam("mid"))
                    .values(status=bindparam("st"), platform_msg_id=bindparam("pid"), sent_at=bindparam("at")), ids)
            # A push the customer's page took at once has reached them (platforms that confirm
            # later do so through a delivery report: bots/delivery.py logs the same type then).
            reached = [{"type": "push_sent", "occurred_at": at, "customer_id": r.customer_id, "clerk_id": r.clerk_id,
                        "campaign_id": r.campaign_id,
                        "payload": {"outbox_id": r.id, "channel": self.gw.adapters[r.account].platform}}
                       for r, rc, at in batch if r.id in done and rc.delivered and r.kind in PUSH_KINDS]
            if reached:
                await s.execute(insert(Interaction), reached)
            pids = [{"oid": r.id, "pid": rc.platform_msg_id} for r, rc, _ in batch
                    if r.id in done and rc.platform_msg_id]
            if pids:
                await s.execute(update(ob).where(ob.c.id == bindparam("oid")).values(platform_msg_id=bindparam("pid")), pids)
            await s.commit()
        return [r.id in done for r, _, _ in batch]

    @contextlib.asynccontextmanager
    async def _peer_lock(self, account: str, peer: str):
        """One send at a time per peer, in claim (id) order: a clerk sees relays in the order they
        were made, so the "current customer" is the one shown last."""
        key = (account, peer)
        entry = self._peer_locks.setdefault(key, [asyncio.Lock(), 0])
        entry[1] += 1  # users of this lock, waiting or holding: drop it when the last one leaves
        try:
            async with entry[0]:
                yield
        finally:
            entry[1] -= 1
            if entry[1] == 0:
                del self._peer_locks[key]

    async def _retry(self, row, error: str, retry_after: float | None, *, spend_attempt: bool = True) -> str:
        if spend_attempt and row.attempts >= self.cfg.max_attempts:
            return await self._finish(row, "dead", error=f"gave up after {row.attempts} attempts: {error}")
        if spend_attempt:
            delay = min(self.cfg.backoff_max, self.cfg.backoff_base ** row.attempts) * (0.5 + random.random() / 2)
            delay = max(delay, retry_after or 0)
        else:
            delay = retry_after or 1.0
        async with self.gw.db() as s:
            await s.execute(
                update(Outbox)
                .where(Outbox.id == row.id, Outbox.claimed_by == self.worker_id, Outbox.status == "sending")
                .values(
                    status="pending",
                    lease_until=None,
                    next_attempt_at=self.gw.clock.now() + timedelta(seconds=delay),
                    last_error=error[:2000],
                    **({} if spend_attempt else {"attempts": Outbox.attempts - 1}),
                )
            )
            await s.commit()
        return "pending"

    async def _finish(self, row, status: str, *, error=None, code=None, fallback: bool = False) -> str:
        """Record a failure (dead or held); successes go through the group commit instead."""
        msg_status = "held" if status == "held" else "failed"
        async with self.gw.db() as s:
            await s.execute(
                update(Outbox)
                .where(Outbox.id == row.id, Outbox.claimed_by == self.worker_id, Outbox.status == "sending")
                .values(
                    status=status,
                    lease_until=None,
                    last_error=error[:2000] if error else None,
                    error_code=code,
                )
            )
            if row.message_id is not None:
                await s.execute(
                    update(ChatMessage)
                    .where(ChatMessage.id == row.message_id)
                    .values(status=msg_status)
                )
            if row.kind in self.on_failed:  # the domain's answer to an operation that will not happen
                await self.on_failed[row.kind](s, row, error)
            if fallback and self.on_unreachable is not None:  # other channels, and the clerk told
                await self.on_unreachable(s, row, code, error)
            await s.commit()
        self.failed += 1
        return status

    def limiters(self) -> dict[str, TokenBucket]:
        return dict(self._limiters)

    async def _run_one(self, row) -> None:
        try:
            result = await self.deliver(row)
            adapter = self.gw.adapters.get(row.account)
            self.gw.metrics.sends.labels(adapter.platform if adapter else row.account,
                                         "retry" if result == "pending" else result).inc()
        except asyncio.CancelledError:
            raise
        except Exception:  # the DB write failed: the lease will expire and the row is retried
            log.exception("outbox row %s: could not record the outcome", row.id)
        finally:
            self._wake.set()

    async def run(self) -> None:
        while not self._stopping:
            free = self.cfg.concurrency - len(self._inflight)
            rows = []
            if free > 0:
                try:
                    rows = await self.claim(min(free, self.cfg.batch))
                except Exception:
                    log.exception("outbox claim failed; retrying")
                    await asyncio.sleep(self.cfg.poll_interval)
                    continue
            for row in rows:
                task = asyncio.create_task(self._run_one(row), name=f"outbox-{row.id}")
                self._inflight.add(task)
                task.add_done_callback(self._inflight.discard)
            if not rows:
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), self.cfg.poll_interval)
                except TimeoutError:
                    pass

    def start(self) -> None:
        self._stopping = False
        self._task = asyncio.create_task(self.run(), name="outbox-worker")

    async def stop(self, grace: float) -> None:
        """Stop the loop, send what is due (the last replies the drained ingress produced) and let
        in-flight sends finish, all within `grace`; hand the rest back."""
        self._stopping = True
        self._wake.set()
        if self._task:
            await asyncio.gather(self._task, return_exceptions=True)
        deadline = asyncio.get_running_loop().time() + grace
        while asyncio.get_running_loop().time() < deadline:
            try:
                rows = await self.claim(self.cfg.batch)
            except Exception:  # noqa: BLE001 - the database is going away too: leave it to the next start
                break
            if not rows:
                break
            tasks = [asyncio.create_task(self._run_one(r)) for r in rows]
            for t in tasks:
                self._inflight.add(t)
                t.add_done_callback(self._inflight.discard)
            await asyncio.wait(tasks, timeout=max(0.01, deadline - asyncio.get_running_loop().time()))
        if self._inflight:
            _, pending = await asyncio.wait(set(self._inflight), timeout=max(0.1, deadline - asyncio.get_running_loop().time()))
            for t in pending:
                t.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        await self._sent.close()
        async with self.gw.db() as s:
            await s.execute(
                update(Outbox)
                .where(Outbox.claimed_by == self.worker_id, Outbox.status == "sending")
                .values(status="pending", lease_until=None)
            )
            await s.commit()
