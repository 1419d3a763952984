"""Fan-out of live messages to connected WebSocket clients, and of signals between instances.

Keyed by (account, external_id). `Hub` serves the connections of this process; `PgHub` also
carries each message to the other instances sharing the PostgreSQL database. Signals (a token
revoked) are NOTIFYs on their own channel, sent by whoever writes the change, in its
transaction; `listen` hands them to the instance's callback over the same listening connection.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import OrderedDict, defaultdict, deque
from collections.abc import Callable

log = logging.getLogger("gateway.hub")

# payload, or None after the listening connection was lost: signals may have been missed meanwhile
Signal = Callable[[str | None], None]


class Hub:
    """A new subscriber first gets what was published to its key in the last `replay_seconds`.

    Why: a page catches up from the history after its socket opens, and the history shows a
    message once its send is recorded — which the outbox does (in a batch) just after publishing
    it. A message published before the socket opened and recorded after the catch-up read was in
    neither: the page missed it until reloaded. The replay covers that gap (pages dedupe by id)."""

    def __init__(self, queue_size: int = 256, *, replay_seconds: float = 10.0, replay_max: int = 20_000):
        self._subs: dict[tuple[str, str], set[asyncio.Queue]] = defaultdict(set)
        self._queue_size = queue_size
        self._signals: dict[str, list[Signal]] = defaultdict(list)
        self._replay_seconds, self._replay_max = replay_seconds, replay_max
        # key -> (published at, payload), oldest key first; bounded in age and in total count
        self._recent: OrderedDict[tuple[str, str], deque[tuple[float, dict]]] = OrderedDict()
        self._recent_count = 0

    def listen(self, channel: str, callback: Signal) -> None:
        """Call `callback` for each signal on `channel` from other processes (none reach a
        process-local hub: a single process acts on its own changes directly)."""
        self._signals[channel].append(callback)

    def _signal(self, channel: str, payload: str | None) -> None:
        for callback in self._signals.get(channel, ()):
            try:
                callback(payload)
            except Exception:  # noqa: BLE001 - one listener's bug must not stop the others
                log.exception("hub: a %s listener failed", channel)

    def subscribe(self, account: str, external_id: str) -> asyncio.Queue:
        q: asyncio.Queue = asyncio.Queue(self._queue_size)
        key = (account, external_id)
        now = time.monotonic()
        self._expire(now)
        for at, payload in self._recent.get(key, ()):
            if at >= now - self._replay_seconds:
                q.put_nowait(payload)
        self._subs[key].add(q)
        return q

    def _remember(self, key: tuple[str, str], payload: dict) -> None:
        now = time.monotonic()
        self._expire(now)
        recent = self._recent.pop(key, None) or deque(maxlen=self._queue_size)
        if len(recent) == recent.maxlen:
            self._recent_count -= 1
        recent.append((now, payload))
        self._recent[key] = recent  # the most recently published key goes last
        self._recent_count += 1

    def _expire(self, now: float) -> None:
        """Drop what is older than the replay window, or the oldest beyond the count bound."""
        while self._recent:
            key, recent = next(iter(self._recent.items()))
            while recent and (recent[0][0] < now - self._replay_seconds or self._recent_count > self._replay_max):
                recent.popleft()
                self._recent_count -= 1
            if recent:
                # Keys are ordered by their last publish, not their first entry: stop at the first
                # key still holding something; the next publish or subscribe continues.
                return
            del self._recent[key]

    def unsubscribe(self, account: str, external_id: str, q: asyncio.Queue) -> None:
        subs = self._subs.get((account, external_id))
        if subs is not None:
            subs.discard(q)
            if not subs:
                del self._subs[(account, external_id)]

    def publish(self, account: str, external_id: str, payload: dict) -> int:
        """Returns how many live connections got it. A full queue (a stuck client) is skipped:
        the message is in the database and the client catches up with `?after=`."""
        self._remember((account, external_id), payload)
        n = 0
        for q in list(self._subs.get((account, external_id), ())):
            try:
                q.put_nowait(payload)
                n += 1
            except asyncio.QueueFull:
                pass
        return n

    def connected(self, account: str, external_id: str) -> bool:
        return bool(self._subs.get((account, external_id)))


class PgHub(Hub):
    """Several instances on one PostgreSQL: a message published on one reaches live connections
    on every other through LISTEN/NOTIFY. One connection per instance listens and notifies, so an
    instance's notifications arrive in the order it published them. A payload over NOTIFY's 8 kB
    limit travels in parts and is put together again on arrival.

    `publish` counts local deliveries only: a page on another instance cannot confirm receipt,
    so such a message reads "sent", and that page also finds it in the history."""

    CHANNEL = "gw_hub"
    PART = 1800  # characters: at most 7,200 bytes of UTF-8 with the header

    def __init__(self, dsn: str, origin: str, queue_size: int = 256):
        super().__init__(queue_size)
        self.dsn, self.origin = dsn, origin
        self._outbox: asyncio.Queue[str] = asyncio.Queue(10_000)
        self._parts: dict[tuple[str, int], list[str]] = {}
        self._seq = 0
        self._task: asyncio.Task | None = None
        self.connected_event = asyncio.Event()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="hub-notify")
        await asyncio.wait_for(self.connected_event.wait(), 10)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def publish(self, account: str, external_id: str, payload: dict) -> int:
        n = super().publish(account, external_id, payload)
        body = json.dumps([account, external_id, payload], ensure_ascii=False, separators=(",", ":"))
        self._seq += 1
        parts = [body[i:i + self.PART] for i in range(0, len(body), self.PART)] or [""]
        try:
            for i, part in enumerate(parts):
                self._outbox.put_nowait(f"{self.origin} {self._seq} {i} {len(parts)}\n{part}")
        except asyncio.QueueFull:  # the database is away for long: pages catch up from history
            log.warning("hub: notify queue full, live fan-out to other instances skipped")
        return n

    def _received(self, _conn, _pid, _channel, data: str) -> None:
        head, _, part = data.partition("\n")
        origin, seq, i, count = head.split(" ")
        if origin == self.origin:
            return
        key = (origin, int(seq))
        if key not in self._parts and len(self._parts) > 1000:  # parts of messages cut off by a reconnect
            self._parts.clear()
        parts = self._parts.setdefault(key, [])
        parts.append(part)
        if len(parts) < int(count):
            return
        del self._parts[key]
        try:
            account, external_id, payload = json.loads("".join(parts))
        except ValueError:
            log.warning("hub: dropped an unreadable notification from %s", origin)
            return
        super().publish(account, external_id, payload)

    async def _run(self) -> None:
        import asyncpg

        backoff = 0.5
        while True:
            conn = None
            try:
                conn = await asyncpg.connect(self.dsn, timeout=10)
                await conn.add_listener(self.CHANNEL, self._received)
                for channel in self._signals:
                    await conn.add_listener(channel, lambda _c, _p, ch, payload: self._signal(ch, payload))
                if self.connected_event.is_set():  # a reconnect: what was signalled meanwhile is lost
                    for channel in self._signals:
                        self._signal(channel, None)
                self.connected_event.set()
                backoff = 0.5
                while True:
                    items = [await self._outbox.get()]
                    while len(items) < 500 and not self._outbox.empty():  # whatever piled up: one round trip
                        items.append(self._outbox.get_nowait())
                    await conn.execute("SELECT pg_notify($1, p) FROM unnest($2::text[]) WITH ORDINALITY AS t(p, i) "
                                       "ORDER BY i", self.CHANNEL, items)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - reconnect; pages catch up from history meanwhile
                log.warning("hub: PostgreSQL notify connection lost (%s); reconnecting", e)
                self._parts.clear()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10)
            finally:
                if conn is not None:
                    await conn.close(timeout=2)
