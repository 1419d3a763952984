"""Outbound calls to WeCom over aiohttp (wechatpy's client is synchronous).

Two tokens: the app secret's (message/send, media) and the customer-contact secret's
(externalcontact/*), each cached and refreshed once under a lock. errcode -1 (busy) and the
frequency limits 45009 / 45033, 5xx, throttle pages and timeouts are Retryable; a rejected token
is dropped and retried; everything else is Permanent with WeCom's own code and message.
"""

from __future__ import annotations

from adapters.http import ApiClient, TokenCache
from adapters.wecom.config import WeComConfig
from gateway.adapter import Permanent, Retryable

BUSY_ERRCODES = {-1, 45009, 45033}
TOKEN_ERRCODES = {40014, 42001, 41001}


class WeComError(Permanent):
    def __init__(self, errcode: int, errmsg: str):
        super().__init__(f"WeCom errcode {errcode}: {errmsg}", code=str(errcode))
        self.errcode = errcode


class WeComApi(ApiClient):
    name = "WeCom"

    def __init__(self, cfg: WeComConfig, clock):
        super().__init__(cfg.timeout)
        self.cfg = cfg
        self.app_token = TokenCache(clock, lambda: self._fetch_token(cfg.secret))
        self.contact_token = (TokenCache(clock, lambda: self._fetch_token(cfg.contact_secret))
                              if cfg.contact_secret else self.app_token)

    def _check(self, data: dict, cache: TokenCache | None = None, token: str | None = None) -> dict:
        code = data.get("errcode", 0)
        if code == 0:
            return data
        message = str(data.get("errmsg", ""))
        if code in BUSY_ERRCODES:
            raise Retryable(f"WeCom busy or over its frequency limit: errcode {code}: {message}", retry_after=2)
        if code in TOKEN_ERRCODES and cache is not None:
            cache.invalidate(token)
            raise Retryable(f"access token rejected: errcode {code}: {message}")
        raise WeComError(code, message)

    async def _fetch_token(self, secret: str) -> tuple[str, int]:
        _, data = await self.request("GET", f"{self.cfg.api_base}/cgi-bin/gettoken",
                                     params={"corpid": self.cfg.corp_id, "corpsecret": secret})
        data = self._check(data)
        return data["access_token"], int(data.get("expires_in", 7200))

    async def post(self, path: str, body: dict, *, contact: bool = False) -> dict:
        cache = self.contact_token if contact else self.app_token
        token = await cache.get()
        _, data = await self.request("POST", f"{self.cfg.api_base}/cgi-bin/{path}",
                                     params={"access_token": token}, json=body)
        return self._check(data, cache, token)

    async def media(self, media_id: str) -> tuple[bytes, str]:
        """A file a clerk sent (media/get answers the bytes, or JSON with an errcode)."""
        token = await self.app_token.get()
        return await self.download(f"{self.cfg.api_base}/cgi-bin/media/get", {"access_token": token, "media_id": media_id},
                                   lambda data: self._check(data, self.app_token, token))

    # -- the calls the adapter makes -------------------------------------------------------------

    async def send_app_message(self, user: str, payload: dict) -> dict:
        return await self.post("message/send", {"touser": user, "agentid": int(self.cfg.agent_id), **payload})

    async def external_contact(self, external_userid: str) -> dict:
        token = await self.contact_token.get()
        _, data = await self.request("GET", f"{self.cfg.api_base}/cgi-bin/externalcontact/get",
                                     params={"access_token": token, "external_userid": external_userid})
        return self._check(data, self.contact_token, token)

    async def add_contact_way(self, user: str, state: str, remark: str | None = None) -> dict:
        body = {"type": 1, "scene": 2, "user": [user], "state": state, "skip_verify": True}
        if remark:
            body["remark"] = remark[:30]
        return await self.post("externalcontact/add_contact_way", body, contact=True)

    async def send_welcome(self, welcome_code: str, content: dict) -> dict:
        return await self.post("externalcontact/send_welcome_msg", {"welcome_code": welcome_code, **content},
                               contact=True)

    async def add_msg_template(self, sender: str, external_ids: list[str], content: dict) -> dict:
        return await self.post("externalcontact/add_msg_template",
                               {"chat_type": "single", "external_userid": external_ids, "sender": sender, **content},
                               contact=True)

    async def send_results(self, msgid: str, user: str) -> list[dict]:
        out, cursor = [], ""
        while True:
            body = {"msgid": msgid, "userid": user, "limit": 1000}
            if cursor:
                body["cursor"] = cursor
            data = await self.post("externalcontact/get_groupmsg_send_result", body, contact=True)
            out += data.get("send_list") or []
            cursor = data.get("next_cursor") or ""
            if not cursor:
                return out

    async def transfer(self, handover: str, takeover: str, external_ids: list[str], *, resigned: bool,
                       message: str | None = None) -> dict:
        path = "externalcontact/resigned/transfer_customer" if resigned else "externalcontact/transfer_customer"
        body = {"handover_userid": handover, "takeover_userid": takeover, "external_userid": external_ids}
        if message and not resigned:
            body["transfer_success_msg"] = message
        return await self.post(path, body, contact=True)

    async def transfer_results(self, handover: str, takeover: str, *, resigned: bool) -> list[dict]:
        path = "externalcontact/resigned/transfer_result" if resigned else "externalcontact/transfer_result"
        out, cursor = [], ""
        while True:
            body = {"handover_userid": handover, "takeover_userid": takeover}
            if cursor:
                body["cursor"] = cursor
            data = await self.post(path, body, contact=True)
            out += data.get("customer") or []
            cursor = data.get("next_cursor") or ""
            if not cursor:
                return out
