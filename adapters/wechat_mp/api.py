"""Outbound calls to the Official Account API over aiohttp (wechatpy's client is synchronous).

errcode -1 (busy) and 45009 (frequency limit), 5xx, throttle pages and timeouts are Retryable; a
rejected token is dropped and retried. 45015 / 45047 / 43004 / 43101 mean the customer cannot be
reached this way now: Permanent, held, and handed to the fallback (never retried blindly).
Everything else is Permanent with WeChat's own code and message.
"""

from __future__ import annotations

import json

from adapters.http import ApiClient, TokenCache
from adapters.wechat_mp.config import WeChatMpConfig
from gateway.adapter import Permanent, Retryable

BUSY_ERRCODES = {-1, 45009}
TOKEN_ERRCODES = {40001, 40014, 42001, 41001}
UNREACHABLE = {  # errcode -> (our code, what it means)
    45015: ("window_closed", "the customer has not written for 48 hours"),
    45047: ("window_quota", "the replies allowed since the customer's last message are used up"),
    43004: ("not_following", "the customer does not follow the Official Account"),
    43101: ("no_subscription", "the customer refused or used up the subscription message"),
}


class WeChatMpApi(ApiClient):
    name = "WeChat"

    def __init__(self, cfg: WeChatMpConfig, clock):
        super().__init__(cfg.timeout)
        self.cfg = cfg
        self.token = TokenCache(clock, self._fetch_token)

    def _check(self, data: dict, token: str | None = None) -> dict:
        code = data.get("errcode", 0)
        if code == 0:
            return data
        message = str(data.get("errmsg", ""))
        if code in BUSY_ERRCODES:
            raise Retryable(f"WeChat busy or over its frequency limit: errcode {code}: {message}", retry_after=2)
        if code in TOKEN_ERRCODES and token is not None:
            self.token.invalidate(token)
            raise Retryable(f"access token rejected: errcode {code}: {message}")
        if code in UNREACHABLE:
            ours, meaning = UNREACHABLE[code]
            raise Permanent(f"{meaning} (WeChat errcode {code})", code=ours, hold=True, fallback=True)
        raise Permanent(f"WeChat errcode {code}: {message}", code=str(code))

    async def _fetch_token(self) -> tuple[str, int]:
        _, data = await self.request("GET", f"{self.cfg.api_base}/cgi-bin/token", params={
            "grant_type": "client_credential", "appid": self.cfg.app_id, "secret": self.cfg.app_secret})
        data = self._check(data)
        return data["access_token"], int(data.get("expires_in", 7200))

    async def call(self, method: str, path: str, *, body: dict | None = None, params: dict | None = None) -> dict:
        token = await self.token.get()
        kw = {"params": {"access_token": token, **(params or {})}}
        if body is not None:  # WeChat wants UTF-8 text as is, not \\u escapes
            kw |= {"data": json.dumps(body, ensure_ascii=False).encode(), "headers": {"Content-Type": "application/json"}}
        _, data = await self.request(method, f"{self.cfg.api_base}/cgi-bin/{path}", **kw)
        return self._check(data, token)

    async def custom_send(self, openid: str, payload: dict) -> dict:
        return await self.call("POST", "message/custom/send", body={"touser": openid, **payload})

    async def template_send(self, openid: str, payload: dict) -> dict:
        return await self.call("POST", "message/template/send", body={"touser": openid, **payload})

    async def mass_send(self, openids: list[str], payload: dict, clientmsgid: str) -> dict:
        return await self.call("POST", "message/mass/send",
                               body={"touser": openids, **payload, "clientmsgid": clientmsgid})

    async def qrcode(self, scene: str, expire_seconds: int | None) -> dict:
        body = ({"action_name": "QR_LIMIT_STR_SCENE"} if expire_seconds is None
                else {"action_name": "QR_STR_SCENE", "expire_seconds": expire_seconds})
        return await self.call("POST", "qrcode/create", body={**body, "action_info": {"scene": {"scene_str": scene}}})

    async def user_info(self, openid: str) -> dict:
        return await self.call("GET", "user/info", params={"openid": openid, "lang": "zh_CN"})

    async def media(self, media_id: str) -> tuple[bytes, str]:
        """A voice note or video a customer sent (media/get answers the bytes, or JSON with an errcode)."""
        token = await self.token.get()
        return await self.download(f"{self.cfg.api_base}/cgi-bin/media/get", {"access_token": token, "media_id": media_id},
                                   lambda data: self._check(data, token))
