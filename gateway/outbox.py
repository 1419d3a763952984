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
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import Integer, and_, bindparam, delete, func, insert, or_, select, update
from sqlalchemy.exc import DBAPIError

from gateway.adapter import Deferred, Permanent, Retryable
from gateway.batch import Batcher
from gateway.model import Message, Target
from gateway.models import ChatMessage, Customer, Interaction, Outbox
from gateway.quota import SharedPace
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
RECORDS_BEHIND = 4  # a lane's rows in hand (sending, or their record on the way), at most, × its concurrency
PACE_MARGIN = 0.075  # a platform's cap is paced at 92.5 %: jitter on the way must not make a second over it
LATE_OK = 0.013  # seconds a paced call may still go after its slot (see limiter)


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One send to write: where, what, its idempotency key and kind (a message to a clerk about a
    customer carries them as `target.about`, for the history and erasure)."""

    target: Target
    message: Message
    idem_key: str
    kind: str = "reply"
    campaign_id: int | None = None
    held: tuple[str, str] | None = None  # (code, reason): stored, not sent


_ob = Outbox.__table__
# Built once (building it for every group commit cost more CPU than running it).
_MARK_SENT = (update(_ob)
              .where(_ob.c.id.in_(bindparam("ids", expanding=True)), _ob.c.claimed_by == bindparam("me"),
                     _ob.c.status == "sending")
              .values(status="sent", lease_until=None, sent_at=bindparam("now", type_=_ob.c.sent_at.type),
                      last_error=None, error_code=None)
              .returning(_ob.c.id))


def _order_key(row) -> tuple:
    """Rows keep their order per peer and priority."""
    return row.account, row.peer, row.priority


async def _insert_in_order(session, table, rows: list[dict]) -> list[int]:
    """Multi-row INSERT returning the new ids in the order of `rows`. PostgreSQL sorts RETURNING by
    a sentinel in the same statement; SQLite would go row by row for that (100 statements for 100
    rows), but under its write lock one statement's rowids are given in VALUES order, so the ids
    sorted are the ids in order."""
    if session.bind.dialect.name == "postgresql":
        return list((await session.execute(table.insert().returning(table.c.id, sort_by_parameter_order=True),
                                           rows)).scalars().all())
    return sorted((await session.execute(table.insert().returning(table.c.id), rows)).scalars().all())


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
        self._inflight: set[asyncio.Task] = set()
        self._stopping = False
        self._lanes: dict[str, Lane] = {}
        self._tasks: list[asyncio.Task] = []
        self._limiters: dict[str, TokenBucket | SharedPace] = {}
        self._peer_locks: dict[tuple[str, str], list] = {}  # (account, peer) -> [lock, users]
        self._claimed: dict[int, tuple] = {}  # rows in this process's hands: id -> their order key
        self._behind: set[int] = set()  # claimed rows that must wait: an earlier row of their peer went back
        self._sent = Batcher(self._record_sent, name="outbox-sent")
        # kind -> coroutine(session, row, error) run in the transaction that records a dead or held row
        self.on_failed: dict[str, Callable[..., Awaitable[None]]] = {}
        self.on_unreachable: Callable[..., Awaitable[None]] | None = None  # (session, row, code, error)
        self.due: set[str] = set()  # accounts that got rows since the last kick
        self.bulk_due: set[str] = set()  # accounts that got bulk rows since their lane last looked
        self._bulk_written: set[str] = set()  # …written, their transaction not yet committed (kick moves them)
        self._claim_stmts: dict[tuple, Any] = {}  # (account, conversation) -> the claim, built once
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
        """Add a message to the outbox inside the caller's transaction; None if the key exists.
        A push the customer may not get now (opted out, the platform's cap) is stored as held."""
        adapter = self.gw.adapters.get(target.identity.account)
        if adapter is None:
            raise ValueError(f"no account named {target.identity.account!r} is configured")
        code = why = None
        if kind in PUSH_KINDS and target.customer_id is not None:
            code, why = await self._push_refusal(session, adapter, target, self.gw.clock.now())
        ids = await self.write_many(session, [Outgoing(target, message, idem_key, kind, campaign_id=campaign_id,
                                                       held=(code, why) if code else None)])
        return ids.get(idem_key)

    async def enqueue_many(self, session, items: list[tuple[Target, Message, str]], *, kind: str,
                           campaign_id: int | None = None, not_before: datetime | None = None) -> list[int]:
        """Bulk enqueue for campaign runs: policies were decided by the caller for the whole batch."""
        ids = await self.write_many(session, [Outgoing(t, m, key, kind, campaign_id=campaign_id) for t, m, key in items],
                                    not_before=not_before)
        return [ids[key] for _, _, key in items if key in ids]

    async def write_many(self, session, items: list[Outgoing], *, not_before: datetime | None = None) -> dict[str, int]:
        """The outbox's one writer: message rows and outbox rows for any number of sends, one
        multi-row INSERT each, in the order given (a peer's messages are sent in id order). An
        idempotency key seen before (or twice in `items`) is skipped. Returns key → outbox id."""
        seen: set[str] = set()
        items = [i for i in items if not (i.idem_key in seen or seen.add(i.idem_key))]
        if not items:
            return {}
        for i in items:
            if i.target.identity.account not in self.gw.adapters:
                raise ValueError(f"no account named {i.target.identity.account!r} is configured")
        now = self.gw.clock.now()
        msg, ob = ChatMessage.__table__, Outbox.__table__
        msg_ids = await _insert_in_order(session, msg, [
            {"direction": "out", "side": i.target.side, "platform": i.target.identity.platform,
             "account": i.target.identity.account, "peer_id": i.target.identity.external_id,
             "customer_id": i.target.concerns, "clerk_id": i.target.clerk_id,
             "segments": [sg.to_dict() for sg in i.message.segments], "text": i.message.plain_text,
             "sender_name": i.message.sender_name, "status": "held" if i.held else "queued", "created_at": now}
            for i in items])
        rows = [{"idem_key": i.idem_key, "platform": i.target.identity.platform, "account": i.target.identity.account,
                 "peer": i.target.identity.external_id, "target": i.target.to_dict(), "message": i.message.to_dict(), "kind": i.kind,
                 "priority": PRIORITY.get(i.kind, BULK), "status": "held" if i.held else "pending",
                 "error_code": i.held[0] if i.held else None, "last_error": i.held[1] if i.held else None,
                 "attempts": 0, "next_attempt_at": not_before or now, "customer_id": i.target.customer_id,
                 "clerk_id": i.target.clerk_id, "campaign_id": i.campaign_id, "message_id": mid, "created_at": now}
                for i, mid in zip(items, msg_ids, strict=True)]
        ids = dict((await session.execute(
            insert_ignore(session, Outbox, conflict=["idem_key"]).returning(ob.c.idem_key, ob.c.id), rows)).all())
        if len(ids) < len(items):  # keys enqueued before: their message rows go too
            await session.execute(delete(msg).where(msg.c.id.in_(
                [mid for i, mid in zip(items, msg_ids, strict=True) if i.idem_key not in ids])))
        pushes = [{"type": "push_held" if i.held else "push_queued", "occurred_at": now,
                   "customer_id": i.target.customer_id, "clerk_id": i.target.clerk_id, "store_id": None,
                   "campaign_id": i.campaign_id,
                   "payload": {"outbox_id": ids[i.idem_key], "channel": i.target.identity.platform,
                               **({"code": i.held[0], "reason": i.held[1]} if i.held else {})}}
                  for i in items if i.kind in PUSH_KINDS and i.idem_key in ids]
        if pushes:
            await session.execute(insert(Interaction.__table__), pushes)
        self.due.update(i.target.identity.account for i in items if i.idem_key in ids and not i.held)
        self._bulk_written.update(i.target.identity.account for i in items
                                  if i.idem_key in ids and not i.held and PRIORITY.get(i.kind, BULK) >= BULK)
        return ids

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

    def kick(self, account: str | None = None) -> None:
        """New rows are due: wake their accounts' lanes (those written since the last kick, else all)."""
        accounts = [account] if account else (self.due or list(self._lanes))
        self.due = set()
        # Callers kick after their commit: a lane that looked for bulk rows before it would not
        # have seen them, and would not look again for a poll interval.
        self.bulk_due |= self._bulk_written
        self._bulk_written = set()
        for a in accounts:
            lane = self._lanes.get(a)
            if lane is not None:
                lane.wake.set()

    # -- consuming -------------------------------------------------------------------------

    def limiter(self, account: str) -> TokenBucket | SharedPace:
        """The account's send pace: shared by every process on PostgreSQL when it is a platform's
        cap (N instances together stay under it), this process's own token bucket otherwise.

        A platform counts calls as they arrive, in any one second; a few milliseconds of jitter on
        the way turned exact 1/rate spacing into rate + 1 calls in some second, which the platform
        refuses (found by bench/caps.py). So a platform's cap is paced with PACE_MARGIN to spare.

        That margin also bounds how late a call may arrive after its slot: with calls each late by at
        most D, any one second holds at most pace × (1 + D) of them, under the cap while
        D < 1 / (1 − m) − 1. At 5 % (52 ms) two busy workers still put 21 calls into one sliding second
        of bench/caps.py's 20/s simulator now and then — the way from the pace to the platform takes
        longer than the 13 ms a call may start late; at 7.5 % that leaves 68 ms for the way."""
        if account not in self._limiters:
            caps = self.gw.adapters[account].capabilities()
            rate = caps.rate_per_sec * (1 - PACE_MARGIN) if caps.platform_rate else caps.rate_per_sec
            if caps.platform_rate and self.gw.engine.dialect.name == "postgresql":
                self._limiters[account] = SharedPace(self.gw.engine, account, rate, caps.burst, late_ok=LATE_OK)
            else:
                self._limiters[account] = TokenBucket(rate, caps.burst)
        return self._limiters[account]

    async def claim(self, limit: int, account: str | None = None, *, bulk: bool = True) -> list:
        """Take up to `limit` due rows (of one account's lane, or of any) for this worker:
        conversation first (welcomes, replies, relays, notices), then bulk (pushes, briefs) unless
        `bulk` is False (the lane knows none can be due yet)."""
        if self._task_less():  # no reclaim loop (tests, shutdown): hand back expired leases here
            await self.reclaim()
        rows = await self._claim(limit, account, conversation=True)
        if bulk and len(rows) < limit:
            try:
                rows += await self._claim(limit - len(rows), account, conversation=False)
            except Exception:  # the conversation rows are ours (committed): send them, bulk waits a round
                if not rows:
                    raise
                log.exception("outbox bulk claim for %s failed; sending the conversation rows", account or "all")
        self._claimed.update((r.id, _order_key(r)) for r in rows)  # in this worker's hands until done
        # RETURNING comes in no particular order; sends start (and take their peer's lock) in
        # enqueue order, so a peer's messages go out in the order they were made.
        return sorted(rows, key=lambda r: r.id)

    async def _claim(self, limit: int, account: str | None, *, conversation: bool) -> list:
        now = self.gw.clock.now()
        params = {"now": now, "lease": now + timedelta(seconds=self.cfg.lease_seconds), "lim": limit}
        async with self.gw.db() as s:
            rows = (await s.execute(self._claim_statement(account, conversation), params)).all()
            await s.commit()
        return list(rows)

    def _claim_statement(self, account: str | None, conversation: bool):
        """Per-peer order, across processes too: a row waits while an earlier row of its peer and
        priority is unsent — in another process's hands, waiting for a retry (those two keep it
        out of the pick, so nothing is locked for nothing), or not picked with it (a concurrent
        claim took it). This worker's own rows in flight hold nothing back: its peer lock keeps them
        in order. Without this, two workers sent one clerk's relays at once (the clerk saw them in
        another order than made), and a retried message was overtaken by the next.

        Conversation rows are picked by (priority, id), so a later row of a peer is never picked
        without the earlier ones of its priority (picking by due time, the limit left those out,
        and the rows picked, all waiting behind them, were picked again and again). Bulk rows
        (pushes, briefs: most of them scheduled ahead) are picked by due time, with the same
        waiting but without that last rule.

        Built once per lane and class, with the time and the limit as parameters: building it for
        every claim (CTEs, aliases and their columns) cost more CPU than running it."""
        key = (account, conversation)
        if key in self._claim_stmts:
            return self._claim_stmts[key]
        now = bindparam("now", type_=Outbox.__table__.c.next_attempt_at.type)
        o, e = Outbox.__table__, Outbox.__table__.alias("earlier")
        mine = o.c.account == account if account else o.c.account.in_(list(self.gw.adapters))
        klass = o.c.priority < BULK if conversation else o.c.priority >= BULK
        pg = self.gw.engine.dialect.name == "postgresql"
        # Rows in another worker's hands or waiting for a retry: from each one's id on, its peer and
        # priority wait. Few (in flight, or retried), found first and once — as a correlated check
        # per candidate row, a planner without fresh statistics walked every pending row of the
        # account for each one (seconds per claim on a fresh database). Bulk rows waiting for a
        # retry hold nothing back across processes (this process's `_behind` still does): pending
        # rows due later are mostly a campaign's scheduled pushes, and grouping all of them on
        # every bulk claim would cost a scan of the whole schedule.
        in_others_hands = and_(o.c.status == "sending", o.c.claimed_by != self.worker_id)
        retrying = and_(o.c.status == "pending", o.c.next_attempt_at > now)
        blockers = (
            select(o.c.account, o.c.peer, o.c.priority, func.min(o.c.id).label("from_id"))
            .where(mine, klass, o.c.peer.is_not(None), or_(in_others_hands, retrying) if conversation else in_others_hands)
            .group_by(o.c.account, o.c.peer, o.c.priority)
            .cte("blockers")
        )
        if pg:
            blockers = blockers.prefix_with("MATERIALIZED")
        blocked = (select(blockers.c.from_id)
                   .where(blockers.c.account == o.c.account, blockers.c.peer == o.c.peer,
                          blockers.c.priority == o.c.priority, blockers.c.from_id < o.c.id).exists())
        pick = (
            select(o.c.id, o.c.account, o.c.peer, o.c.priority)
            .where(o.c.status == "pending", o.c.next_attempt_at <= now, mine, klass, ~blocked)
            .order_by(*((o.c.priority, o.c.id) if conversation else (o.c.priority, o.c.next_attempt_at, o.c.id)))
            .limit(bindparam("lim", type_=Integer))
            .with_for_update(skip_locked=True)
            .cte("pick")
        )
        if pg:
            # Picked once. As `IN (subquery)` PostgreSQL may rescan the pick per outer row (its plan
            # when statistics say the outbox is empty), each rescan skipping the rows this statement
            # already took: one claim then took every due row, not `limit`, and rows waiting for the
            # rate limiter outlived their lease and were sent twice (found by `make chaos`).
            pick = pick.prefix_with("MATERIALIZED")
        free = select(pick.c.id)
        if conversation:  # an earlier row of the peer a concurrent claim took (or locked) first
            left_out = (select(e.c.id)
                        .where(e.c.account == pick.c.account, e.c.peer == pick.c.peer, e.c.priority == pick.c.priority,
                               e.c.status == "pending", e.c.id < pick.c.id, e.c.id.not_in(select(pick.c.id)))
                        .exists())
            free = free.where(or_(pick.c.peer.is_(None), ~left_out))
        stmt = (
            update(o)
            .where(o.c.id.in_(free))
            .values(
                status="sending",
                attempts=o.c.attempts + 1,
                lease_until=bindparam("lease", type_=o.c.lease_until.type),
                claimed_by=self.worker_id,
            )
            .returning(o.c.id, o.c.idem_key, o.c.account, o.c.target, o.c.message, o.c.attempts, o.c.message_id,
                       o.c.created_at, o.c.kind, o.c.customer_id, o.c.clerk_id, o.c.campaign_id, o.c.peer,
                       o.c.priority)
        )  # fmt: skip
        self._claim_stmts[key] = stmt
        return stmt

    async def reclaim(self) -> None:
        """Rows whose lease ran out (their worker died) go back to pending. Kept out of the pick so
        that stays one ordered scan of the (status, account, priority, next_attempt_at, id) index."""
        now = self.gw.clock.now()
        async with self.gw.db() as s:
            await s.execute(update(Outbox).where(Outbox.status == "sending", Outbox.lease_until < now)
                            .values(status="pending", lease_until=None)
                            .execution_options(synchronize_session=False))
            await s.commit()

    def _task_less(self) -> bool:
        return not self._tasks

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
            if row.id in self._behind:  # an earlier row of this peer went back to wait: so does this one
                self._behind.discard(row.id)
                return await self._retry(row, "waiting for an earlier message to this peer", 1.0, spend_attempt=False)
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
            # Until its record commits, the send counts in the peer's reply window from memory
            # (gateway/state.py): the peer's next send never waits for this commit, which gave one
            # busy peer one message per database round trip.
            peer = (row.account, target.identity.external_id)
            if row.message_id is not None:
                self.gw.state.unrecorded.setdefault(peer, set()).add(row.message_id)
            # The send's own time, not the later group commit's: reply windows count by it.
            recorded = asyncio.ensure_future(self._sent.submit((row, receipt, self.gw.clock.now())))
        self._slot_free(row)
        try:
            ok = await asyncio.shield(recorded)
        finally:
            self._recorded(peer, row.message_id)
        if not ok:
            return "lost_lease"  # another worker took the row over after our lease ran out
        self.sent += 1
        return "sent"

    def _recorded(self, peer: tuple[str, str], message_id: int | None) -> None:
        pending = self.gw.state.unrecorded.get(peer)
        if pending is not None:
            pending.discard(message_id)
            if not pending:
                del self.gw.state.unrecorded[peer]

    async def _record_sent(self, batch: list) -> list[bool]:
        """Group commit of successful sends: one guarded UPDATE for the batch, then the message
        rows and platform ids of the rows it took (executemany)."""
        try:
            return await self._write_sent(batch)
        except DBAPIError as e:
            if not e.connection_invalidated:
                raise
        # The connection broke under the write (a restart): if its commit landed, the rows read
        # "sent" by this worker now, and writing again would log their pushes twice; if not, write
        # again — a record that fails leaves the row to be sent again after its lease.
        async with self.gw.db() as s:
            ob = Outbox.__table__
            landed = set((await s.execute(
                select(ob.c.id).where(ob.c.id.in_([r.id for r, _, _ in batch]), ob.c.claimed_by == self.worker_id,
                                      ob.c.status == "sent"))).scalars())
        if landed:
            return [r.id in landed for r, _, _ in batch]
        return await self._write_sent(batch)

    async def _write_sent(self, batch: list) -> list[bool]:
        now = self.gw.clock.now()
        ob, msg = Outbox.__table__, ChatMessage.__table__
        async with self.gw.db() as s:
            done = set((await s.execute(_MARK_SENT, {"ids": [r.id for r, _, _ in batch], "me": self.worker_id,
                                                      "now": now})).scalars())
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
        self._hold_later(row)
        return "pending"

    def _hold_later(self, row) -> None:
        """`row` goes back to wait: rows of its peer this process claimed after it wait too, or they
        would overtake it (the claim keeps later claims in order; these were claimed already)."""
        key = _order_key(row)
        self._behind.update(i for i, k in self._claimed.items() if k == key and i > row.id)

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

    async def _run_one(self, row, lane: Lane | None = None) -> None:
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
            self._claimed.pop(row.id, None)
            self._behind.discard(row.id)
            if lane is not None:
                lane.held.discard(row.id)  # before the wake-up below, so the lane counts it gone
            self._slot_free(row)

    def _slot_free(self, row) -> None:
        """The platform call is over (its record may still be on the way): the lane may send another.
        Holding the slot until the group commit of the record bounded a lane at `concurrency` sends
        per commit round trip, whatever the platform allowed."""
        lane = self._lanes.get(row.account)
        if lane is not None:
            lane.sending.discard(row.id)
            lane.wake.set()

    def _spawn(self, row, lane: Lane | None = None) -> asyncio.Task:
        task = asyncio.create_task(self._run_one(row, lane), name=f"outbox-{row.id}")
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)
        if lane is not None:
            lane.sending.add(row.id)
            lane.held.add(row.id)
            lane.inflight.add(task)
            task.add_done_callback(lane.inflight.discard)
            # Normally freed by _run_one; also if the task is cancelled before it starts (stop).
            task.add_done_callback(lambda _t, i=row.id: (lane.sending.discard(i), lane.held.discard(i)))
        return task

    async def _reclaim_loop(self) -> None:
        """A dead worker's rows go back to pending once their lease runs out (every 5 s)."""
        while not self._stopping:
            try:
                await self.reclaim()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - the next round tries again
                log.exception("outbox: handing back expired leases failed")
            await asyncio.sleep(5)

    def start(self) -> None:
        self._stopping = False
        self._lanes = {a: Lane(self, a) for a in self.gw.adapters}
        self._tasks = [asyncio.create_task(lane.run(), name=f"outbox-{a}") for a, lane in self._lanes.items()]
        self._tasks.append(asyncio.create_task(self._reclaim_loop(), name="outbox-reclaim"))

    async def stop(self, grace: float) -> None:
        """Stop the loop, send what is due (the last replies the drained ingress produced) and let
        in-flight sends finish, all within `grace`; hand the rest back."""
        self._stopping = True
        for lane in self._lanes.values():
            lane.wake.set()
        if self._tasks:
            self._tasks[-1].cancel()  # the reclaim loop; the lanes finish their round and stop
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        deadline = asyncio.get_running_loop().time() + grace
        while asyncio.get_running_loop().time() < deadline:
            try:
                rows = await self.claim(self.cfg.batch)
            except Exception:  # noqa: BLE001 - the database is going away too: leave it to the next start
                break
            if not rows:
                break
            tasks = [self._spawn(r) for r in rows]
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


class Lane:
    """One account's sends: its own claims, concurrency and pace, so a platform's rate cap (DingTalk's
    20/s) only ever holds that platform's rows back, never another account's."""

    def __init__(self, worker: OutboxWorker, account: str):
        self.worker, self.account = worker, account
        self.concurrency = worker.cfg.concurrency
        self.wake = asyncio.Event()
        self.inflight: set[asyncio.Task] = set()  # this lane's tasks (for tests and stop)
        self.held: set[int] = set()  # rows in this lane's hands: sending, or their record on the way
        self.sending: set[int] = set()  # rows whose platform call is not over: at most `concurrency`
        self._bulk_looked = float("-inf")

    def _bulk_may_be_due(self) -> bool:
        """Bulk rows come from campaigns and briefs, mostly scheduled ahead: look for them when this
        process wrote some, else once per poll interval (as for rows other processes write) —
        not on every wake-up, which under a stream of relays doubled the claims."""
        now = asyncio.get_running_loop().time()
        if self.account in self.worker.bulk_due or now - self._bulk_looked >= self.worker.cfg.poll_interval:
            self.worker.bulk_due.discard(self.account)
            self._bulk_looked = now
            return True
        return False

    async def run(self) -> None:
        w = self.worker
        while not w._stopping:
            self.wake.clear()
            free = self.concurrency - len(self.sending)
            if len(self.held) >= RECORDS_BEHIND * self.concurrency:
                free = 0  # the records fall behind (a slow database): send no more until they catch up
            rows = []
            # Under load, claim in batches: wait until a quarter of the slots are free again rather
            # than spend a claim (a database round trip) on every slot that frees.
            if free > 0 and (free >= max(1, self.concurrency // 4) or not self.sending):
                if w.cfg.linger_ms:  # a moment for more rows: one claim per row costs a round trip each
                    await asyncio.sleep(w.cfg.linger_ms / 1000)
                bulk = self._bulk_may_be_due()
                try:
                    rows = await w.claim(min(free, w.cfg.batch), self.account, bulk=bulk)
                    if bulk and (len(rows) == min(free, w.cfg.batch) or any(r.priority >= BULK for r in rows)):
                        self._bulk_looked = float("-inf")  # more may be due: look again next round
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("outbox claim for %s failed; retrying", self.account)
                    if bulk:
                        self._bulk_looked = float("-inf")
            for row in rows:
                w._spawn(row, self)
            if rows and len(rows) == min(free, w.cfg.batch):
                continue  # more may be due right away
            try:
                await asyncio.wait_for(self.wake.wait(), w.cfg.poll_interval)
            except TimeoutError:
                pass
