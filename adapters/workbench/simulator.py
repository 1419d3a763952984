"""Plays a clerk at the workbench: sends like the web page does and reads what the gateway sent."""

from __future__ import annotations

import asyncio
import time
import uuid

import aiohttp


class ClerkClient:
    def __init__(self, http: aiohttp.ClientSession, server: str, token: str, account: str = "workbench"):
        self.http, self.base, self.token = http, f"{server.rstrip('/')}/{account}/api", token
        self.cursor = 0

    @property
    def headers(self) -> dict:
        return {"Authorization": f"Bearer {self.token}"}

    async def say(self, text: str, client_msg_id: str | None = None) -> tuple[int, dict]:
        body = {"text": text, "client_msg_id": client_msg_id or uuid.uuid4().hex}
        async with self.http.post(f"{self.base}/messages", json=body, headers=self.headers) as resp:
            return resp.status, await resp.json()

    async def me(self) -> tuple[int, dict]:
        async with self.http.get(f"{self.base}/me", headers=self.headers) as resp:
            return resp.status, await resp.json()

    async def customers(self) -> list[dict]:
        async with self.http.get(f"{self.base}/customers", headers=self.headers) as resp:
            return (await resp.json())["items"]

    async def fetch(self) -> list[dict]:
        async with self.http.get(f"{self.base}/messages", params={"after": self.cursor}, headers=self.headers) as resp:
            body = await resp.json()
        self.cursor = body["next"]
        return body["items"]

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
