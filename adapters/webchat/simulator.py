"""Plays the brand's app backend and a customer's phone against a webchat account.

The brand backend holds the shared secret and signs sessions exactly as CONTRACT.md says; the
customer client then talks to the gateway over HTTP and the WebSocket like the real page does.
Used by tests, `gateway demo` and the benchmarks.
"""

from __future__ import annotations

import time

import aiohttp

from adapters.webchat.crypto import sign_v2
from adapters.websim import WebPeer


class CustomerClient(WebPeer):
    def __init__(self, http: aiohttp.ClientSession, base: str, token: str, user_id: str):
        super().__init__(http, base, token)
        self.user_id = user_id

    async def _json(self, resp: aiohttp.ClientResponse) -> tuple[int, dict]:
        async with resp:
            return resp.status, await resp.json()

    async def bind(self, invite: str, consent: bool = True) -> tuple[int, dict]:
        return await self._json(
            await self.http.post(f"{self.base}/bind", json={"invite": invite, "consent": consent}, headers=self.headers)
        )

    async def advisor(self) -> dict | None:
        return (await self._json(await self.http.get(f"{self.base}/advisor", headers=self.headers)))[1]["advisor"]


class BrandApp:
    def __init__(self, http: aiohttp.ClientSession, server: str, account: str, secret: str):
        self.http, self.base, self.secret = http, f"{server.rstrip('/')}/webchat/{account}", secret

    def signed(self, user_id: str, ts: int | None = None, unionid: str | None = None) -> dict:
        ts = int(time.time()) if ts is None else ts
        extra = {"unionid": unionid} if unionid else {}
        return {"v": 2, "user_id": user_id, "ts": ts, "sig": sign_v2(self.secret, user_id, ts, unionid), **extra}

    async def login(self, user_id: str, name: str | None = None, *, unionid: str | None = None,
                    ts: int | None = None) -> CustomerClient:
        body = {**self.signed(user_id, ts, unionid=unionid), **({"name": name} if name else {})}
        async with self.http.post(f"{self.base}/session", json=body) as resp:
            data = await resp.json()
            if resp.status != 200:
                raise RuntimeError(f"session refused: {resp.status} {data}")
        return CustomerClient(self.http, self.base, data["token"], user_id)
