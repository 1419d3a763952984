"""Outbound calls to DingTalk over aiohttp (the SDK's own HTTP helpers block the loop).

Access tokens are cached until shortly before expiry and refreshed once under a lock. Errors are
classified for the outbox: throttling (HTTP 429, errcode 90002 / 90018–90020, HTML throttle pages),
5xx, timeouts and expired tokens are Retryable; everything else is Permanent with the platform's
own code and message.
"""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import dataclass
from datetime import datetime, timedelta

import aiohttp

from adapters.dingtalk.config import DingTalkConfig
from gateway.adapter import Permanent, Retryable

_WAIT = re.compile(r'"wait"\s*:\s*(\d+)')
THROTTLE_ERRCODES = {90002, 90018, 90019, 90020, -1}  # -1: "system busy"
TOKEN_ERRCODES = {40001, 40014, 42001, 88}


@dataclass
class _Token:
    value: str | None = None
    expires: datetime | None = None


class TokenCache:
    """One refresh at a time; everyone else waits for it instead of fetching their own."""

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


class DingTalkApi:
    def __init__(self, cfg: DingTalkConfig, clock):
        self.cfg = cfg
        self._http: aiohttp.ClientSession | None = None
        self.token = TokenCache(clock, self._fetch_token)
        self.oapi_token = TokenCache(clock, self._fetch_oapi_token)

    async def start(self) -> None:
        if self._http is None:
            self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.cfg.timeout))

    @property
    def http(self) -> aiohttp.ClientSession:
        return self._http

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None

    # -- transport and error classification ---------------------------------------------------

    async def _call(self, method: str, url: str, **kw) -> tuple[int, dict]:
        await self.start()
        try:
            async with self._http.request(method, url, **kw) as resp:
                body = await resp.read()
                if "html" in resp.content_type:  # the per-IP throttle page says how long to wait
                    m = _WAIT.search(body.decode("utf-8", "replace"))
                    raise Retryable(f"throttled: HTML page with HTTP {resp.status}",
                                    retry_after=float(m.group(1)) if m else 60.0)
                if resp.status == 429:
                    raise Retryable("throttled: HTTP 429", retry_after=_retry_after(resp))
                if resp.status >= 500:
                    raise Retryable(f"DingTalk HTTP {resp.status}")
                try:
                    data = json.loads(body or b"{}")
                except ValueError:
                    raise Retryable(f"unreadable answer with HTTP {resp.status}") from None
                return resp.status, data if isinstance(data, dict) else {}
        except (TimeoutError, aiohttp.ClientError) as e:
            raise Retryable(f"network: {type(e).__name__}: {e}") from None

    def _v1(self, status: int, data: dict, token: str | None = None) -> dict:
        """v1.0 API: errors are non-2xx with {"code", "message"}."""
        if status < 300:
            return data
        code, message = str(data.get("code", status)), str(data.get("message", "no message"))
        if status == 401 or code in ("InvalidAuthentication", "invalidAuthentication"):
            if token:
                self.token.invalidate(token)
            raise Retryable(f"access token rejected: {message}")
        if any(w in code.lower() for w in ("qpslimit", "throttl", "flowcontrol")):
            raise Retryable(f"throttled: {code}: {message}", retry_after=1)
        raise Permanent(f"{code}: {message}", code=code)

    def _oapi(self, data: dict, token: str | None = None) -> dict:
        """oapi: HTTP 200 with {"errcode", "errmsg"}."""
        code = data.get("errcode", 0)
        if code == 0:
            return data
        message = str(data.get("errmsg", ""))
        if code in THROTTLE_ERRCODES:
            raise Retryable(f"throttled: errcode {code}: {message}", retry_after=1)
        if code in TOKEN_ERRCODES:
            if token:
                self.oapi_token.invalidate(token)
            raise Retryable(f"access token rejected: errcode {code}: {message}")
        raise Permanent(f"errcode {code}: {message}", code=str(code))

    # -- tokens ---------------------------------------------------------------------------------

    async def _fetch_token(self) -> tuple[str, int]:
        status, data = await self._call("POST", f"{self.cfg.api_base}/v1.0/oauth2/accessToken",
                                        json={"appKey": self.cfg.app_key, "appSecret": self.cfg.app_secret})
        data = self._v1(status, data)
        return data["accessToken"], int(data.get("expireIn", 7200))

    async def _fetch_oapi_token(self) -> tuple[str, int]:
        _, data = await self._call("GET", f"{self.cfg.oapi_base}/gettoken",
                                   params={"appkey": self.cfg.app_key, "appsecret": self.cfg.app_secret})
        data = self._oapi(data)
        return data["access_token"], int(data.get("expires_in", 7200))

    # -- calls ----------------------------------------------------------------------------------

    async def batch_send(self, user_ids: list[str], msg_key: str, msg_param: str) -> dict:
        """1:1 robot message to up to 20 users. Users the platform refuses are reported back."""
        if not 1 <= len(user_ids) <= 20:
            raise ValueError("batchSend takes 1 to 20 users")
        token = await self.token.get()
        status, data = await self._call(
            "POST", f"{self.cfg.api_base}/v1.0/robot/oToMessages/batchSend",
            headers={"x-acs-dingtalk-access-token": token},
            json={"robotCode": self.cfg.robot_code, "userIds": user_ids, "msgKey": msg_key, "msgParam": msg_param},
        )
        return self._v1(status, data, token)

    async def send_work_notice(self, user_ids: list[str], msg: dict) -> str:
        if not self.cfg.agent_id:
            raise Permanent("work notifications need agent_id in the account config", code="no_agent_id")
        token = await self.oapi_token.get()
        _, data = await self._call(
            "POST", f"{self.cfg.oapi_base}/topapi/message/corpconversation/asyncsend_v2",
            params={"access_token": token},
            json={"agent_id": self.cfg.agent_id, "userid_list": ",".join(user_ids), "msg": msg},
        )
        return str(self._oapi(data, token).get("task_id"))

    async def download_url(self, download_code: str) -> str:
        token = await self.token.get()
        status, data = await self._call(
            "POST", f"{self.cfg.api_base}/v1.0/robot/messageFiles/download",
            headers={"x-acs-dingtalk-access-token": token},
            json={"downloadCode": download_code, "robotCode": self.cfg.robot_code},
        )
        return self._v1(status, data, token)["downloadUrl"]

    async def open_stream(self, subscriptions: list[dict]) -> dict:
        """Stream mode: ask for a WebSocket endpoint and ticket (what the SDK does with `requests`)."""
        status, data = await self._call(
            "POST", f"{self.cfg.api_base}/v1.0/gateway/connections/open",
            headers={"Accept": "application/json"},  # without it the gateway answers in XML
            json={"clientId": self.cfg.app_key, "clientSecret": self.cfg.app_secret,
                  "subscriptions": subscriptions, "ua": "advisor-gateway", "localIp": "127.0.0.1"},
        )
        return self._v1(status, data)


def _retry_after(resp: aiohttp.ClientResponse) -> float:
    try:
        return float(resp.headers.get("Retry-After", "1"))
    except ValueError:
        return 1.0
