"""What every platform API client shares: cached access tokens and one classification of transport
failures for the outbox (throttle pages, 429, 5xx, timeouts are Retryable)."""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import dataclass
from datetime import datetime, timedelta

import aiohttp

from gateway.adapter import Retryable
from gateway.redact import redact_secrets

_WAIT = re.compile(r'"wait"\s*:\s*(\d+)')


@dataclass
class _Token:
    value: str | None = None
    expires: datetime | None = None


class TokenCache:
    """Cached until shortly before expiry; one refresh at a time, everyone else waits for it."""

    MARGIN = timedelta(seconds=300)

    def __init__(self, clock, fetch):
        self._clock, self._fetch = clock, fetch
        self._tok = _Token()
        self._lock = asyncio.Lock()
        self.refreshes = 0

    async def get(self) -> str:
        if self._valid():
            return self._tok.value
        async with self._lock:
            if not self._valid():
                value, ttl = await self._fetch()
                self._tok = _Token(value, self._clock.now() + timedelta(seconds=ttl))
                self.refreshes += 1
        return self._tok.value

    def _valid(self) -> bool:
        return bool(self._tok.value) and self._clock.now() < self._tok.expires - self.MARGIN

    def invalidate(self, value: str) -> None:
        if self._tok.value == value:
            self._tok = _Token()


class ApiClient:
    """An aiohttp session opened lazily, and `request` answering (HTTP status, JSON object)."""

    name = "platform"

    def __init__(self, timeout: float):
        self._timeout = timeout
        self._http: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        if self._http is None:
            self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self._timeout))

    @property
    def http(self) -> aiohttp.ClientSession:
        return self._http

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None

    async def request(self, method: str, url: str, **kw) -> tuple[int, dict]:
        await self.start()
        try:
            async with self._http.request(method, url, **kw) as resp:
                body = await resp.read()
                if "html" in resp.content_type:  # a throttle or proxy page; some say how long to wait
                    m = _WAIT.search(body.decode("utf-8", "replace"))
                    raise Retryable(f"throttled: HTML page with HTTP {resp.status}",
                                    retry_after=float(m.group(1)) if m else 60.0)
                if resp.status == 429:
                    raise Retryable("throttled: HTTP 429", retry_after=_retry_after(resp))
                if resp.status >= 500:
                    raise Retryable(f"{self.name} HTTP {resp.status}")
                try:
                    data = json.loads(body or b"{}")
                except ValueError:
                    raise Retryable(f"unreadable answer with HTTP {resp.status}") from None
                return resp.status, data if isinstance(data, dict) else {}
        except (TimeoutError, aiohttp.ClientError) as e:
            raise Retryable(_network_error(e)) from None


    async def download(self, url: str, params: dict, check) -> tuple[bytes, str]:
        """A file the platform serves as bytes; a JSON answer is an error, handed to `check`."""
        await self.start()
        try:
            async with self._http.get(url, params=params) as resp:
                body = await resp.read()
                if resp.status >= 500:
                    raise Retryable(f"{self.name} HTTP {resp.status}")
                if resp.content_type in ("application/json", "text/plain"):
                    check(json.loads(body or b"{}"))
                return body, resp.content_type
        except (TimeoutError, aiohttp.ClientError) as e:
            raise Retryable(_network_error(e)) from None


def _network_error(e: BaseException) -> str:
    """aiohttp names the URL in some errors (ConnectionTimeoutError: "Connection timeout to host
    https://…/gettoken?corpsecret=…"); the message goes to the outbox row, logs and answers."""
    return redact_secrets(f"network: {type(e).__name__}: {e}")


def _retry_after(resp: aiohttp.ClientResponse) -> float:
    try:
        return float(resp.headers.get("Retry-After", "1"))
    except ValueError:
        return 1.0
