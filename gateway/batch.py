"""Group commit: many callers, one write.

Callers `submit` an item and wait for its result; one task writes everything queued so far in a
single statement and transaction. While a write is in flight new items pile up, so batches grow
with load and no artificial delay is needed. A caller's await returns only after the commit, so
"persist before ack" still holds for each of them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any


class Batcher:
    def __init__(self, write: Callable[[list[Any]], Awaitable[list[Any]]], *, max_batch: int = 500, name: str = "batch"):
        self._write = write
        self._max = max_batch
        self._name = name
        self._items: list[tuple[Any, asyncio.Future]] = []
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
                try:
                    results = await self._write([item for item, _ in batch])
                except Exception as e:  # noqa: BLE001 - every caller of this batch sees the failure
                    for _, fut in batch:
                        if not fut.done():
                            fut.set_exception(e)
                    continue
                self.batches += 1
                self.items += len(batch)
                for (_, fut), result in zip(batch, results, strict=True):
                    if not fut.done():
                        fut.set_result(result)

    async def close(self) -> None:
        """Finish what was submitted, then stop."""
        if self._items and self._task and not self._task.done():
            await asyncio.gather(*(fut for _, fut in list(self._items)), return_exceptions=True)
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
