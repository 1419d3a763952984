"""A token bucket per account: send at the platform's cap and no faster."""

from __future__ import annotations

import asyncio
import time


class TokenBucket:
    def __init__(self, rate: float, burst: int, *, monotonic=time.monotonic):
        self.rate = float(rate)
        self.capacity = max(1.0, float(burst))
        self._tokens = self.capacity
        self._monotonic = monotonic
        self._last = monotonic()
        self._lock = asyncio.Lock()
        self.waited = 0.0  # total seconds spent waiting, for metrics
        self.waits = 0

    def _refill(self) -> None:
        now = self._monotonic()
        self._tokens = min(self.capacity, self._tokens + (now - self._last) * self.rate)
        self._last = now

    async def acquire(self) -> None:
        async with self._lock:  # FIFO: waiters are served in order
            self._refill()
            if self._tokens < 1:
                wait = (1 - self._tokens) / self.rate
                self.waited += wait
                self.waits += 1
                await asyncio.sleep(wait)
                self._refill()
            self._tokens -= 1


class SlidingCounter:
    """At most `limit` events per key in any `span` seconds (this process): the flood gate that
    keeps one customer's burst from burying their advisor."""

    OK, REFUSED, FIRST_REFUSED = "ok", "refused", "first_refused"

    def __init__(self, limit: int, span: float = 60.0, *, monotonic=time.monotonic):
        self.limit, self.span, self._monotonic = limit, span, monotonic
        self._seen: dict[object, list[float]] = {}
        self._told: dict[object, float] = {}  # when a burst's first refusal was reported

    def take(self, key: object) -> str:
        """OK and counted; or REFUSED, FIRST_REFUSED for the first refusal of a window (tell once)."""
        now = self._monotonic()
        q = [t for t in self._seen.get(key, ()) if now - t < self.span]
        self._seen[key] = q
        if len(self._seen) > 100_000:  # forget keys whose window has passed
            self._seen = {k: v for k, v in self._seen.items() if v and now - v[-1] < self.span}
            self._told = {k: t for k, t in self._told.items() if now - t < self.span}
        if len(q) < self.limit:
            q.append(now)
            return self.OK
        if now - self._told.get(key, -self.span) >= self.span:
            self._told[key] = now
            return self.FIRST_REFUSED
        return self.REFUSED
