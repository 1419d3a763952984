"""Plays a clerk at the workbench: sends like the web page does and reads what the gateway sent."""

from __future__ import annotations

import aiohttp

from adapters.websim import WebPeer


class ClerkClient(WebPeer):
    def __init__(self, http: aiohttp.ClientSession, server: str, token: str, account: str = "workbench"):
        super().__init__(http, f"{server.rstrip('/')}/{account}/api", token)

    async def me(self) -> tuple[int, dict]:
        async with self.http.get(f"{self.base}/me", headers=self.headers) as resp:
            return resp.status, await resp.json()

    async def customers(self) -> list[dict]:
        async with self.http.get(f"{self.base}/customers", headers=self.headers) as resp:
            return (await resp.json())["items"]
