"""Fan-out of live messages to connected WebSocket clients of this process.

Keyed by (account, external_id). Multi-instance delivery replaces this with a pub/sub backed hub
exposing the same two methods.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict


class Hub:
    def __init__(self, queue_size: int = 256):
        self._subs: dict[tuple[str, str], set[asyncio.Queue]] = defaultdict(set)
        self._queue_size = queue_size

    def subscribe(self, account: str, external_id: str) -> asyncio.Queue:
        q: asyncio.Queue = asyncio.Queue(self._queue_size)
        self._subs[(account, external_id)].add(q)
        return q

    def unsubscribe(self, account: str, external_id: str, q: asyncio.Queue) -> None:
        subs = self._subs.get((account, external_id))
        if subs is not None:
            subs.discard(q)
            if not subs:
                del self._subs[(account, external_id)]

    def publish(self, account: str, external_id: str, payload: dict) -> int:
        """Returns how many live connections got it. A full queue (a stuck client) is skipped:
        the message is in the database and the client catches up with `?after=`."""
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
