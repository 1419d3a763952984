"""What the webchat and workbench simulators share: a peer that sends like the web pages do and
reads the history the way they do (cursor, dedupe by id)."""

from __future__ import annotations

import asyncio
import time
import uuid

import aiohttp


class WebPeer:
    def __init__(self, http: aiohttp.ClientSession, base: str, token: str):
        self.http, self.base, self.token = http, base, token
        self.cursor = 0
        self._seen: set[int] = set()

    @property
    def headers(self) -> dict:
        return {"Authorization": f"Bearer {self.token}"}

    async def say(self, text: str, client_msg_id: str | None = None) -> tuple[int, dict]:
        body = {"text": text, "client_msg_id": client_msg_id or uuid.uuid4().hex}
        async with self.http.post(f"{self.base}/messages", json=body, headers=self.headers) as resp:
            return resp.status, await resp.json()

    async def fetch(self) -> list[dict]:
        """Messages not seen before. The cursor may repeat items (it never skips one in flight)."""
        async with self.http.get(f"{self.base}/messages", params={"after": self.cursor}, headers=self.headers) as resp:
            body = await resp.json()
        self.cursor = body["next"]
        new = [i for i in body["items"] if i["id"] not in self._seen]
        self._seen.update(i["id"] for i in new)
        return new

    async def wait_for(self, predicate, timeout: float = 5.0) -> dict:
        """Poll until a message from the gateway (direction out) matches."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for item in await self.fetch():
                if item["direction"] == "out" and predicate(item):
                    return item
            await asyncio.sleep(0.05)
        raise TimeoutError("no matching message arrived")

    def ws(self):
        return self.http.ws_connect(f"{self.base}/ws", params={"token": self.token})
