"""Outbound calls to DingTalk over aiohttp (the SDK's own HTTP helpers block the loop).

Access tokens are cached until shortly before expiry and refreshed once under a lock. Errors are
classified for the outbox: throttling (HTTP 429, errcode 90002 / 90018–90020, HTML throttle pages),
5xx, timeouts and expired tokens are Retryable; everything else is Permanent with the platform's
own code and message.
"""

from __future__ import annotations

from adapters.dingtalk.config import DingTalkConfig
from adapters.http import ApiClient, TokenCache
from gateway.adapter import Permanent, Retryable

THROTTLE_ERRCODES = {90002, 90018, 90019, 90020, -1}  # -1: "system busy"
TOKEN_ERRCODES = {40001, 40014, 42001, 88}


class DingTalkApi(ApiClient):
    name = "DingTalk"

    def __init__(self, cfg: DingTalkConfig, clock):
        super().__init__(cfg.timeout)
        self.cfg = cfg
        self.token = TokenCache(clock, self._fetch_token)
        self.oapi_token = TokenCache(clock, self._fetch_oapi_token)

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
        status, data = await self.request("POST", f"{self.cfg.api_base}/v1.0/oauth2/accessToken",
                                        json={"appKey": self.cfg.app_key, "appSecret": self.cfg.app_secret})
        data = self._v1(status, data)
        return data["accessToken"], int(data.get("expireIn", 7200))

    async def _fetch_oapi_token(self) -> tuple[str, int]:
        _, data = await self.request("GET", f"{self.cfg.oapi_base}/gettoken",
                                   params={"appkey": self.cfg.app_key, "appsecret": self.cfg.app_secret})
        data = self._oapi(data)
        return data["access_token"], int(data.get("expires_in", 7200))

    # -- calls ----------------------------------------------------------------------------------

    async def batch_send(self, user_ids: list[str], msg_key: str, msg_param: str) -> dict:
        """1:1 robot message to up to 20 users. Users the platform refuses are reported back."""
        if not 1 <= len(user_ids) <= 20:
            raise ValueError("batchSend takes 1 to 20 users")
        token = await self.token.get()
        status, data = await self.request(
            "POST", f"{self.cfg.api_base}/v1.0/robot/oToMessages/batchSend",
            headers={"x-acs-dingtalk-access-token": token},
            json={"robotCode": self.cfg.robot_code, "userIds": user_ids, "msgKey": msg_key, "msgParam": msg_param},
        )
        return self._v1(status, data, token)

    async def send_work_notice(self, user_ids: list[str], msg: dict) -> str:
        if not self.cfg.agent_id:
            raise Permanent("work notifications need agent_id in the account config", code="no_agent_id")
        token = await self.oapi_token.get()
        _, data = await self.request(
            "POST", f"{self.cfg.oapi_base}/topapi/message/corpconversation/asyncsend_v2",
            params={"access_token": token},
            json={"agent_id": self.cfg.agent_id, "userid_list": ",".join(user_ids), "msg": msg},
        )
        return str(self._oapi(data, token).get("task_id"))

    async def download_url(self, download_code: str) -> str:
        token = await self.token.get()
        status, data = await self.request(
            "POST", f"{self.cfg.api_base}/v1.0/robot/messageFiles/download",
            headers={"x-acs-dingtalk-access-token": token},
            json={"downloadCode": download_code, "robotCode": self.cfg.robot_code},
        )
        return self._v1(status, data, token)["downloadUrl"]

    async def open_stream(self, subscriptions: list[dict]) -> dict:
        """Stream mode: ask for a WebSocket endpoint and ticket (what the SDK does with `requests`)."""
        status, data = await self.request(
            "POST", f"{self.cfg.api_base}/v1.0/gateway/connections/open",
            headers={"Accept": "application/json"},  # without it the gateway answers in XML
            json={"clientId": self.cfg.app_key, "clientSecret": self.cfg.app_secret,
                  "subscriptions": subscriptions, "ua": "advisor-gateway", "localIp": "127.0.0.1"},
        )
        return self._v1(status, data)

