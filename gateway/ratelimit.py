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
