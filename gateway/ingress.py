"""verify → parse → claim (DB dedupe) → ack → dispatch.

The claim row holds the parsed events, so nothing acknowledged is lost: processing runs in a
tracked background task, and claims still pending after `replay_after_seconds` (a crash, a
restart) are replayed. Processing marks the claim done inside the same transaction as the
handlers' writes, so an event is applied exactly once even when two instances race for it.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import traceback
import zlib
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from aiohttp import web
from sqlalchemy import bindparam, delete, select, tuple_, update
from sqlalchemy.exc import DBAPIError

from gateway.adapter import Adapter, BadRequest, Unauthorized
from gateway.batch import Batcher
from gateway.lookups import Lookups
from gateway.model import Event
from gateway.models import InboundClaim
from gateway.router import Ctx
from gateway.sql import insert_ignore
from gateway.writes import Writes

if TYPE_CHECKING:
    from gateway.runtime import Gateway

log = logging.getLogger("gateway.ingress")

MAX_ATTEMPTS = 5
_c = InboundClaim.__table__
# Built once: a batch marks its claims done with this (building it per batch cost more than running it).
_TAKE = (update(_c).where(_c.c.id.in_(bindparam("ids", expanding=True)), _c.c.status == "pending")
         .values(status="done", processed_at=bindparam("now", type_=_c.c.processed_at.type)).returning(_c.c.id))


def error_response(status: int, code: str, message: str, field: str | None = None) -> web.Response:
    err: dict[str, Any] = {"code": code, "message": message}
    if field:
        err["field"] = field
    return web.json_response({"error": err}, status=status)


def claim_key(events: list[Event]) -> str:
    if len(events) == 1 and len(events[0].dedupe_key) <= 255:
        return events[0].dedupe_key
    if len(events) == 1:  # too long for the column: a digest, never a prefix (two keys may share one)
        return "long:" + hashlib.sha256(events[0].dedupe_key.encode()).hexdigest()
    return "batch:" + hashlib.sha256("|".join(e.dedupe_key for e in events).encode()).hexdigest()


class Ingress:
    def __init__(self, gw: Gateway):
        self.gw = gw
        self._replayer: asyncio.Task | None = None
        self._claims = Batcher(self._insert_claims, name="ingress-claims")
        self._workers: list[asyncio.Task] = []
        cfg = gw.config.ingress
        self.n_workers = cfg.workers or 1
        # One queue per worker, chosen by sender: a peer's events are applied in order by one worker,
        # and workers never contend for the same customer's rows (which deadlocked on PostgreSQL).
        self._work: list[asyncio.Queue] = [asyncio.Queue() for _ in range(self.n_workers)]
        self.batch = cfg.batch
        self.processed = 0
        self.duplicates = 0
        self.statements = 0  # staged statements written, for benchmarks

    async def handle(self, adapter: Adapter, request: web.Request) -> web.StreamResponse:
        try:
            raw = await adapter.verify(request)
            events = adapter.parse(raw)
        except Unauthorized as e:
            self.gw.metrics.inbound.labels(adapter.platform, "unauthorized").inc()
            return error_response(401, "unauthorized", str(e) or "bad signature or token")
        except BadRequest as e:
            self.gw.metrics.inbound.labels(adapter.platform, "malformed" if e.status == 400 else str(e.status)).inc()
            return error_response(e.status, e.code, str(e), e.field)
        except web.HTTPRequestEntityTooLarge:
            self.gw.metrics.inbound.labels(adapter.platform, "too_large").inc()
            return error_response(413, "too_large", f"body over {self.gw.config.server.max_body} bytes")
        duplicate, results = await self.accept(adapter, events)
        return adapter.ack(raw, results, duplicate)

    async def submit(self, adapter: Adapter, raw: Any) -> None:
        """For transports that are not HTTP requests (DingTalk stream): parse, claim, process.
        Returns once the input is durably claimed (or was already), i.e. when it may be acked;
        raises BadRequest for malformed input and anything else when it could not be stored."""
        await self.accept(adapter, adapter.parse(raw))

    async def accept(self, adapter: Adapter, events: list[Event]) -> tuple[bool, list[Any]]:
        """Claim, then process: inline when the caller waits for the outcome, else after the ack."""
        if not events:
            return False, []
        key = claim_key(events)
        inline = any(e.reply_required for e in events)
        claim_id = await (self.claim(adapter, key, events) if inline else self._claims.submit((adapter, key, events)))
        if claim_id is None:
            self.duplicates += 1
            self.gw.metrics.inbound.labels(adapter.platform, "duplicate").inc()
            return True, []
        self.gw.metrics.inbound.labels(adapter.platform, "accepted").inc()
        if inline:
            return False, (await self.process(claim_id, key, events)) or []
        self._enqueue(claim_id, key, events)
        return False, []

    async def _insert_claims(self, batch: list[tuple[Adapter, str, list[Event]]]) -> list[int | None]:
        """One INSERT for every claim that arrived meanwhile; None marks a duplicate."""
        now = self.gw.clock.now()
        lease = now + timedelta(seconds=self.gw.config.ingress.replay_after_seconds)
        rows = [dict(platform=a.platform, account=a.account, dedupe_key=k, status="pending",
                     events=[e.to_dict() for e in evs], received_at=now, lease_until=lease, attempts=0)
                for a, k, evs in batch]
        c = InboundClaim.__table__
        for attempt in (1, 2):
            try:
                async with self.gw.claim_db() as s:
                    # executemany of one cached statement: `.values(rows)` compiled a new INSERT for
                    # every batch size (a few ms each, on the ack path).
                    res = await s.execute(
                        insert_ignore(s, c, conflict=["platform", "account", "dedupe_key"])
                        .returning(c.c.id, c.c.platform, c.c.account, c.c.dedupe_key), rows)
                    ids = {(p, a, k): i for i, p, a, k in res.all()}
                    if attempt == 2:
                        ids |= await self._landed(s, rows, ids)
                    await s.commit()
                break
            except DBAPIError as e:  # a connection the server dropped (restart): the pool is renewed, once more
                if attempt == 2 or not e.connection_invalidated:
                    raise
        out = []
        for a, k, _ in batch:  # the same key twice in one batch: the first wins, the rest are duplicates
            out.append(ids.pop((a.platform, a.account, k), None))
        return out

    @staticmethod
    async def _landed(s, rows: list[dict], ids: dict) -> dict:
        """After a retry: claims the broken first attempt committed (its answer was lost) are ours
        still — pending, with this attempt's own receipt time — not duplicates of someone else's
        (which would leave them to the replay, half a minute later)."""
        c = InboundClaim.__table__
        missing = [(r["platform"], r["account"], r["dedupe_key"]) for r in rows
                   if (r["platform"], r["account"], r["dedupe_key"]) not in ids]
        if not missing:
            return {}
        found = await s.execute(
            select(c.c.id, c.c.platform, c.c.account, c.c.dedupe_key)
            .where(tuple_(c.c.platform, c.c.account, c.c.dedupe_key).in_(missing), c.c.status == "pending",
                   c.c.received_at == rows[0]["received_at"]))
        return {(p, a, k): i for i, p, a, k in found.all()}

    def _enqueue(self, claim_id: int, key: str, events: list[Event]) -> None:
        s = events[0].sender
        lane = zlib.crc32(f"{s.platform}|{s.account}|{s.external_id}".encode()) % self.n_workers
        self._work[lane].put_nowait((claim_id, key, events))
        if not self._workers:
            self._workers = [asyncio.create_task(self._work_loop(q), name=f"ingress-{i}") for i, q in enumerate(self._work)]

    @property
    def backlog(self) -> int:
        """Acked claims waiting to be applied."""
        return sum(q.qsize() for q in self._work)

    async def _work_loop(self, work: asyncio.Queue) -> None:
        """A bounded pool: acked claims are processed in batches, one transaction per batch."""
        linger = self.gw.config.ingress.linger_ms / 1000
        while True:
            batch = [await work.get()]
            if linger and work.qsize() < self.batch:
                # A moment for more to arrive: a batch costs a handful of statements whatever its
                # size, and under load batches of a few claims each kept the loop too busy to ack.
                await asyncio.sleep(linger)
            while len(batch) < self.batch and not work.empty():
                batch.append(work.get_nowait())
            try:
                await self.process_batch(batch)
            except Exception:  # one bad event must not block the others: retry them one by one
                log.warning("batch of %d claims failed; processing them one at a time", len(batch), exc_info=True)
                for item in batch:
                    try:
                        await self.process(*item)
                    except Exception:  # noqa: BLE001 - recorded on the claim; replayed after backoff
                        pass
            finally:
                for _ in batch:
                    work.task_done()

    async def claim(self, adapter: Adapter, key: str, events: list[Event]) -> int | None:
        """Claim one input now (bypassing the group commit); None if it was claimed before."""
        return (await self._insert_claims([(adapter, key, events)]))[0]

    async def process(self, claim_id: int, key: str, events: list[Event]) -> list[Any] | None:
        """Apply one claim's events once. Returns the handlers' results, or None if already done."""
        try:
            return (await self.process_batch([(claim_id, key, events)])).get(claim_id)
        except Exception as e:
            log.exception("processing claim %s failed", claim_id)
            await self._failed(claim_id, e)
            raise

    async def process_batch(self, batch: list[tuple[int, str, list[Event]]]) -> dict[int, list[Any]]:
        """Mark the batch's pending claims done and apply their events, in one transaction, so
        an event is applied exactly once even when instances race. Returns results per claim.

        Set-wise: the events' lookups are loaded with one query per table before any handler
        runs, staged writes go out as one multi-row statement per table at the end (or before a
        handler that needs the session, after which the lookups are loaded again)."""
        results: dict[int, list[Any]] = {}
        now = self.gw.clock.now()
        writes = Writes(self.gw.outbox)
        async with self.gw.db() as s:
            taken = set((await s.execute(_TAKE, {"ids": [cid for cid, _, _ in batch], "now": now})).scalars())
            # claims another instance (or a replay) got first are skipped
            items = [(c, k, e) for c, k, events in batch if c in taken for e in events]
            look = None
            for i, (claim_id, key, event) in enumerate(items):
                if look is None or look.stale:
                    await writes.flush(s, now)  # what the fresh lookups must see
                    look = await Lookups.load(s, [e for _, _, e in items[i:]], self.gw.caches)
                ctx = Ctx(event=event, gw=self.gw, session=s, claim_key=key, look=look, writes=writes, at=now)
                results.setdefault(claim_id, []).append(await self.gw.dispatcher.dispatch(ctx))
                if i % 32 == 31:
                    await asyncio.sleep(0)  # let acks through while a long batch is applied
            await writes.flush(s, now)
            await s.commit()
        self.processed += len(results)
        self.statements += writes.statements
        self.gw.outbox.kick()
        return results

    async def _failed(self, claim_id: int, exc: Exception) -> None:
        try:
            async with self.gw.db() as s:
                claim = await s.get(InboundClaim, claim_id)
                if claim is None:
                    return
                claim.attempts += 1
                claim.last_error = "".join(traceback.format_exception_only(exc))[:2000]
                delay = 2 ** min(claim.attempts, 10)
                claim.lease_until = self.gw.clock.now() + timedelta(seconds=delay)
                if claim.attempts >= MAX_ATTEMPTS:
                    claim.status = "failed"
                await s.commit()
        except Exception:
            log.exception("could not record the failure of claim %s", claim_id)

    async def replay_pending(self, limit: int = 100) -> int:
        """Process claims whose processing never finished (crash, restart). Returns how many ran."""
        now = self.gw.clock.now()
        async with self.gw.db() as s:
            rows = (
                await s.execute(
                    select(InboundClaim.id, InboundClaim.dedupe_key, InboundClaim.events)
                    .where(InboundClaim.status == "pending", InboundClaim.lease_until < now)
                    .order_by(InboundClaim.id)
                    .limit(limit)
                )
            ).all()
        n = 0
        for claim_id, key, events in rows:
            async with self.gw.db() as s:  # take a lease so another instance does not start it too
                lease = now + timedelta(seconds=self.gw.config.ingress.replay_after_seconds)
                took = await s.execute(
                    update(InboundClaim)
                    .where(InboundClaim.id == claim_id, InboundClaim.status == "pending", InboundClaim.lease_until < now)
                    .values(lease_until=lease)
                )
                await s.commit()
            if took.rowcount != 1:
                continue
            try:
                if await self.process(claim_id, key, [Event.from_dict(e) for e in events]) is not None:
                    n += 1
            except Exception:
                pass  # recorded on the claim by process(); retried after its backoff
        return n

    async def purge(self) -> int:
        cutoff = self.gw.clock.now() - timedelta(hours=self.gw.config.ingress.claim_retention_hours)
        async with self.gw.db() as s:
            res = await s.execute(
                delete(InboundClaim).where(InboundClaim.status == "done", InboundClaim.processed_at < cutoff)
            )
            await s.commit()
        return res.rowcount or 0

    async def _replay_loop(self) -> None:
        interval = max(1.0, self.gw.config.ingress.replay_after_seconds / 3)
        while True:
            try:
                await self.replay_pending()
                await self.purge()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("replaying pending claims failed")
            await asyncio.sleep(interval)

    async def start(self) -> None:
        await self.replay_pending_all()
        self._replayer = asyncio.create_task(self._replay_loop(), name="ingress-replay")

    async def replay_pending_all(self) -> None:
        """At start-up, claims left pending by a previous process are ours to finish now."""
        async with self.gw.db() as s:
            await s.execute(
                update(InboundClaim)
                .where(InboundClaim.status == "pending", InboundClaim.attempts < MAX_ATTEMPTS)
                .values(lease_until=self.gw.clock.now() - timedelta(seconds=1))
            )
            await s.commit()
        while await self.replay_pending() > 0:
            pass

    async def stop(self, grace: float) -> None:
        if self._replayer:
            self._replayer.cancel()
            await asyncio.gather(self._replayer, return_exceptions=True)
        await self._claims.close()
        # Drain: let acked claims be processed; whatever is cut off stays pending and is replayed.
        try:
            await asyncio.wait_for(asyncio.gather(*(q.join() for q in self._work)), grace)
        except TimeoutError:
            log.warning("%d acked claims left for replay at the next start", self.backlog)
        for t in self._workers:
            t.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        self._workers = []
