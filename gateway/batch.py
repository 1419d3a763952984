"""Group commit: many callers, one write.

Callers `submit` an item and wait for its result; one task writes everything queued so far in a
single statement and transaction. While a write is in flight new items pile up, so batches grow
with load and no artificial delay is needed. A caller's await returns only after the commit, so
"persist before ack" still holds for each of them.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any


class Batcher:
    def __init__(self, write: Callable[[list[Any]], Awaitable[list[Any]]], *, max_batch: int = 500, name: str = "batch"):
        self._write = write
        self._max = max_batch
        self._name = name
        self._items: list[tuple[Any, asyncio.Future]] = []
        self._writing: list[tuple[Any, asyncio.Future]] = []  # the batch being written now
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self.batches = 0  # for benchmarks: items / batches is the mean batch size
        self.items = 0

    async def submit(self, item: Any) -> Any:
        fut = asyncio.get_running_loop().create_future()
        self._items.append((item, fut))
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name=self._name)
        self._wake.set()
        return await fut

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._items:
                batch, self._items = self._items[: self._max], self._items[self._max :]
                self._writing = batch
                try:
                    results = await self._write([item for item, _ in batch])
                except Exception as e:  # noqa: BLE001 - every caller of this batch sees the failure
                    for _, fut in batch:
                        if not fut.done():
                            fut.set_exception(e)
                    continue
                finally:
                    self._writing = []
                self.batches += 1
                self.items += len(batch)
                for (_, fut), result in zip(batch, results, strict=True):
                    if not fut.done():
                        fut.set_result(result)

    async def close(self) -> None:
        """Finish what was submitted — the batch being written too (cancelling it mid-write lost
        the outbox's "sent" records, so those sends went out again) — then stop."""
        pending = [fut for _, fut in [*self._writing, *self._items]]
        if pending and self._task and not self._task.done():
            await asyncio.gather(*pending, return_exceptions=True)
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None


class Coalescer:
    """Concurrent calls with the same key become one platform call of up to `limit` items (an API
    that takes many recipients at once). The first caller waits up to `window` seconds for others
    to join, then makes the call; each caller gets its own item's result, or its exception."""

    def __init__(self, call: Callable[[Any, list[Any]], Awaitable[list[Any]]], *, limit: int, window: float = 0.2):
        self._call, self._limit, self._window = call, limit, window
        self._open: dict[Any, tuple[list[tuple[Any, asyncio.Future]], asyncio.Event]] = {}
        self.calls = 0

    async def submit(self, key: Any, item: Any) -> Any:
        if key in self._open:
            group, full = self._open[key]
            fut = asyncio.get_running_loop().create_future()
            group.append((item, fut))
            if len(group) >= self._limit:
                del self._open[key]
                full.set()
            return self._unwrap(await fut)
        group, full = [(item, None)], asyncio.Event()
        self._open[key] = (group, full)
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(full.wait(), self._window)
        finally:
            if self._open.get(key, (None,))[0] is group:
                del self._open[key]
        followers = [f for _, f in group[1:]]
        try:
            self.calls += 1
            results = await self._call(key, [i for i, _ in group])
        except asyncio.CancelledError:
            for f in followers:
                f.cancel()
            raise
        except Exception as e:  # noqa: BLE001 - every item of the call shares its failure
            for f in followers:
                if not f.done():
                    f.set_exception(e)
            raise
        for f, r in zip(followers, results[1:], strict=True):
            if not f.done():
                f.set_result(r)
        return self._unwrap(results[0])

    @staticmethod
    def _unwrap(result: Any) -> Any:
        if isinstance(result, BaseException):
            raise result
        return result
