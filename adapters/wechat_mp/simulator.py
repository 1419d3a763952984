"""A simulated WeChat Official Account (公众号) server API, for proving the wechat_mp adapter in tests.

One aiohttp app serves api.weixin.qq.com's /cgi-bin/... paths (and mp.weixin.qq.com's showqrcode), so
tests set api_base to it. Helpers produce the callback traffic WeChat pushes to the account's URL (plain,
compatible or safe mode) and control calls play the people in the loop: the user who authorises a
subscription notification, the mass-send job that finishes later.

Written from WeChat's documentation, never from the adapter. Sources in comments:
  doc X:   developers.weixin.qq.com/doc/... page X (offiaccount/Message_Management/Service_Center_messages
           = "custom", .../Batch_Sends_and_Originality_Checks = "mass", .../Receiving_standard_messages and
           Receiving_event_pushes = "push", Account_Management/Generating_a_Parametric_QR_Code = "qrcode",
           service/api/usermanage/userinfo/api_userinfo = "userinfo", service/api/notify/notify/
           api_sendnewsubscribemsg = "bizsend", oplatform/developers/dev/AccessToken.html = "token",
           Getting_Started/Global_Return_Code.html = "codes", read through a transcription of it:
           WxOpenErrorMsgEnum, package com.github.niefy)
  issue:   a developers.weixin.qq.com community thread quoting a real answer
  rules:   /work/shared/PLATFORM_RULES.md
Where the docs are silent the choice is marked "unconfirmed".
"""

from __future__ import annotations

import asyncio
import base64
import collections
import hashlib
import io
import itertools
import json
import secrets
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta, timezone
from typing import Any

import segno
from aiohttp import web

from adapters.simkit import CallbackCipher, Faults, sha1_sign

CN_TZ = timezone(timedelta(hours=8))  # month/day quotas follow the Beijing calendar (unconfirmed)
FAULT_KINDS = ("http500", "timeout", "errcode-1", "errcode45009", "html")
# doc custom: the types message/custom/send takes. "link" is the Mini Program's type (wechatpy's send_link
# points at the Mini Program page) and is not in the Official Account list: 40008 here.
CUSTOM_MSGTYPES = ("text", "image", "voice", "video", "music", "news", "mpnews", "mpnewsarticle", "msgmenu",
                   "wxcard", "miniprogrampage")
MASS_MSGTYPES = ("text", "image", "voice", "mpvideo", "mpnews", "wxcard")  # doc mass
MASS_PATHS = ("/cgi-bin/message/mass/send", "/cgi-bin/message/mass/sendall")
QR_ACTIONS = ("QR_SCENE", "QR_STR_SCENE", "QR_LIMIT_SCENE", "QR_LIMIT_STR_SCENE")  # doc qrcode
# temporary media (media/upload): size caps and the errcode for each type (doc 新增临时素材; codes: codes)
MEDIA_LIMITS = {"image": (10 << 20, 40009), "voice": (2 << 20, 40010), "video": (10 << 20, 40011),
                "thumb": (64 << 10, 40012)}
PNG_1PX = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==")
AMR_SILENCE = b"#!AMR\n" + bytes([0x3C] + [0] * 31) * 5
HTML_502 = ("<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n<center><h1>502 Bad Gateway"
            "</h1></center>\r\n<hr><center>stgw</center>\r\n</body>\r\n</html>\r\n")
# errmsg texts: the English column of doc codes; where an issue quotes a live answer, that text.
ERRMSG = {
    -1: "system error", 40001: "invalid credential, access_token is invalid or not latest",
    40002: "invalid grant_type", 40003: "invalid openid", 40004: "invalid media type",
    40007: "invalid media_id", 40008: "invalid message type", 40009: "invalid image size",
    40010: "invalid voice size", 40011: "invalid video size", 40012: "invalid thumb size",
    40013: "invalid appid", 40031: "invalid openid list", 40032: "invalid openid list size", 40037: "invalid template_id",
    40052: "invalid action name", 40053: "invalid action info, please check document", 40097: "invalid args",
    40125: "invalid appsecret", 40130: "invalid openid list size, at least two openid",
    41001: "access_token missing", 41002: "appid missing", 41004: "appsecret missing",
    41005: "media data missing", 41006: "media_id missing", 41009: "missing openid",
    42001: "access_token expired", 43004: "require subscribe", 43101: "user refuse to accept the msg",
    44002: "empty post data", 44003: "empty news data", 44004: "empty content",
    45002: "content size out of limit", 45008: "article size out of limit",
    45009: "reach max api daily quota limit", 45015: "response out of time limit or subscription is canceled",
    45028: "has no masssend quota", 45029: "qrcode count out of limit", 45047: "out of response count limit",
    45065: "clientmsgid exist", 45067: "clientmsgid size out of limit", 47001: "data format error",
    47003: "argument invalid!", 48001: "api unauthorized",
}


class ApiError(Exception):
    """Raised by a handler; the middleware turns it into HTTP 200 {"errcode", "errmsg", ...}."""

    def __init__(self, code: int, **extra: Any):
        super().__init__(code)
        self.code, self.extra = code, extra


OACrypto = CallbackCipher  # adapters/simkit.py: written from the docs, not from the adapter
sign = sha1_sign  # doc 接入指南: sha1 of the sorted parts joined (token, timestamp, nonce[, encrypt])


def _nonce() -> str:
    return str(1_000_000_000 + secrets.randbelow(9_000_000_000))


def _cdata(value: str) -> str:
    return "<![CDATA[" + value.replace("]]>", "]]]]><![CDATA[>") + "]]>"


def _fields(fields: Iterable[tuple[str, Any]]) -> str:
    """Strings in CDATA, numbers bare, lists of pairs nested - as in the docs' samples."""
    out = []
    for k, v in fields:
        inner = (_fields(v) if isinstance(v, list) else str(v) if isinstance(v, int | float)
                 else _cdata(str(v)))
        out.append(f"<{k}>{inner}</{k}>")
    return "".join(out)


def _xml(fields: Iterable[tuple[str, Any]]) -> str:
    return "<xml>" + _fields(fields) + "</xml>"


class OfficialAccountSimulator:
    def __init__(self, *, app_id: str, app_secret: str, token: str, encoding_aes_key: str | None = None,
                 service_account: bool = True, now: Callable[[], float] = time.time,
                 templates: Iterable[str] = ()):
        self.app_id, self.app_secret, self.token, self.clock = app_id, app_secret, token, now
        self.service_account = service_account
        self.templates: set[str] = set(templates)  # template-message ids the account has added
        self.crypto = OACrypto(token, encoding_aes_key, app_id) if encoding_aes_key else None
        # "plain" without a key; "safe" (ciphertext only) or "compatible" (both) with one (doc 消息加解密说明)
        self.mode = "safe" if encoding_aes_key else "plain"
        self.original_id = "gh_" + hashlib.sha1(app_id.encode()).hexdigest()[:12]  # ToUserName of pushes
        # configuration tests may change
        self.token_ttl, self.token_overlap = 7200, 300  # doc token: 7200 s; the old token lives 5 more minutes
        # rules + doc custom: a user message opens 5 sends in 48 h; follow / QR scan / menu click, 3 in 1 min
        self.message_window, self.event_window = (5, 48 * 3600), (3, 60)
        self.custom_text_max_bytes = 2048  # issue: 45002 "content size out of limit"; the cap is unconfirmed
        self.custom_msgtypes = set(CUSTOM_MSGTYPES)
        # rules / codes: 43004 "require subscribe". Live 45015 texts read "...or subscription is canceled", so
        # a real server may answer 45015 instead (unconfirmed): set 45015 to test that.
        self.unfollowed_custom_code = 43004
        self.qr_default_expire, self.qr_max_expire, self.qr_permanent_max = 60, 2_592_000, 100_000  # doc qrcode
        self.mass_user_month_cap = 4  # doc mass: a service-account user receives at most 4 a month
        self.subscription_mass_per_day = 1  # doc mass: a subscription account's mass API succeeds once a day
        self.mass_minute_limit, self.mass_rate_code = 60, 45009  # doc mass: 60 requests/min; code: rules
        self.clientmsgid_ttl, self.clientmsgid_max = 86400, 64  # doc mass: 24 h dedupe, 64 bytes
        self.template_dedupe_ttl = 600  # doc template: client_msg_id dedupes per openid for 10 minutes
        self.media_ttl = 3 * 86400  # doc 临时素材: media_id valid 3 days
        self.timeout_delay = 5.0
        self.timeout_delivers = True  # a timed-out call still takes effect later, as a real one may
        # what happened, for assertions
        self.users: dict[str, dict] = {}
        self.windows: dict[str, dict] = {}  # openid -> {"quota", "until", "opened_by"}
        self.custom_sent: list[dict] = []
        self.refused: list[dict] = []
        self.template_sent: list[dict] = []
        self.subscribe_sent: list[dict] = []
        self.subscribe_auth: collections.Counter = collections.Counter()  # (openid, template_id) -> sends left
        self.subscribe_templates: set[str] = set()
        self.mass_jobs: dict[int, dict] = {}
        self.qrcodes: dict[str, dict] = {}
        self.media: dict[str, tuple[bytes, str, float]] = {}
        self.calls: collections.Counter = collections.Counter()
        self.tokens_issued = 0
        # internal state
        self._tokens: dict[str, dict] = {}  # token -> {"kind", "expires", "superseded"}; old ones kept
        self._faults = Faults(FAULT_KINDS)
        self._mass_hits: collections.deque = collections.deque()
        self._clientmsgids: dict[str, tuple[int, float]] = {}
        self._mass_received: collections.Counter = collections.Counter()  # (openid, "YYYY-MM") -> count
        self._mass_days: collections.Counter = collections.Counter()  # "YYYY-MM-DD" -> successful calls
        self._template_keys: dict[tuple[str, str], tuple[int, float]] = {}
        self._ids = itertools.count(1_000_000_000 + secrets.randbelow(10**9))
        self._msg_ids = itertools.count(22_000_000_000_000_000 + secrets.randbelow(10**15))
        self._late: set[asyncio.Task] = set()

    # ---- the HTTP app ------------------------------------------------------------------------------
    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware])
        for method, path, handler in [
            ("GET", "/cgi-bin/token", self._token), ("POST", "/cgi-bin/stable_token", self._stable_token),
            ("POST", "/cgi-bin/message/custom/send", self._custom_send),
            ("POST", "/cgi-bin/message/template/send", self._template_send),
            ("POST", "/cgi-bin/message/subscribe/bizsend", self._bizsend),
            ("POST", "/cgi-bin/qrcode/create", self._qrcode_create), ("GET", "/cgi-bin/showqrcode", self._showqrcode),
            ("GET", "/cgi-bin/user/info", self._user_info),
            ("POST", "/cgi-bin/message/mass/send", self._mass_send),
            ("POST", "/cgi-bin/message/mass/sendall", self._mass_sendall),
            ("GET", "/cgi-bin/media/get", self._media_get), ("POST", "/cgi-bin/media/upload", self._media_upload),
        ]:
            app.router.add_route(method, path, handler)
        app.on_shutdown.append(self._shutdown)
        return app

    @web.middleware
    async def _middleware(self, request: web.Request, handler):
        self.calls[request.path] += 1
        kind = self._faults.take(request.path)
        if kind == "timeout":
            await request.read()  # buffer the body: the late handler still needs it after the client left
            task = asyncio.ensure_future(self._after_delay(handler, request))
            self._late.add(task)
            task.add_done_callback(self._late.discard)
            return await asyncio.shield(task)
        if kind:
            return self._fault(kind)
        return await self._run(handler, request)

    async def _run(self, handler, request: web.Request) -> web.StreamResponse:
        try:
            if request.path in MASS_PATHS:  # doc mass: "群发接口每分钟限制请求60次，超过限制的请求会被拒绝"
                now, hits = self.clock(), self._mass_hits
                while hits and hits[0] <= now - 60:
                    hits.popleft()
                if len(hits) >= self.mass_minute_limit:
                    raise ApiError(self.mass_rate_code)
                hits.append(now)
            return await handler(request)
        except ApiError as exc:
            return self._err(exc.code, **exc.extra)

    async def _after_delay(self, handler, request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(self.timeout_delay)
        return await self._run(handler, request) if self.timeout_delivers else self._fault("http500")

    async def _shutdown(self, _app) -> None:
        for task in list(self._late):
            task.cancel()

    # ---- fault injection ---------------------------------------------------------------------------
    def fail_next(self, n: int, kind: str, path_prefix: str = "/") -> None:
        """The next n calls under path_prefix fail this way instead of being handled."""
        self._faults.add(n, kind, path_prefix)

    def _fault(self, kind: str) -> web.Response:
        if kind == "html":  # the stgw proxy in front of the API answering for it (unconfirmed page text)
            return web.Response(status=502, text=HTML_502, content_type="text/html")
        if kind == "http500":  # unconfirmed: what body, if any, comes with a 500
            return web.Response(status=500, text="<html><body>500 Internal Server Error</body></html>",
                                content_type="text/html")
        return self._err(int(kind.removeprefix("errcode")))

    # ---- shared helpers ----------------------------------------------------------------------------
    @staticmethod
    def _json(payload: dict) -> web.Response:
        # HTTP 200 and "application/json; encoding=utf-8", as in a recorded live answer (cloud.tencent.com
        # /developer/article/1333680)
        return web.Response(body=json.dumps(payload, ensure_ascii=False).encode(),
                            headers={"Content-Type": "application/json; encoding=utf-8"})

    def _err(self, code: int, **extra: Any) -> web.Response:
        rid = "-".join(secrets.token_hex(4) for _ in range(3))  # issue: errmsg ends " rid: 5f3ded7d-22929d02-…"
        return self._json({"errcode": code, "errmsg": f"{ERRMSG.get(code, 'error')} rid: {rid}", **extra})

    def _ok(self, errmsg: str = "ok", **fields: Any) -> web.Response:
        return self._json({"errcode": 0, "errmsg": errmsg, **fields})

    @staticmethod
    async def _body(request: web.Request) -> dict:
        text = await request.text()
        if not text.strip():
            raise ApiError(44002)
        try:
            value = json.loads(text)
        except ValueError:
            value = None
        if not isinstance(value, dict):
            raise ApiError(47001)  # codes: 解析 JSON/XML 内容错误
        return value

    def _user(self, openid: Any) -> dict:
        if not isinstance(openid, str) or openid not in self.users:
            raise ApiError(40003)
        return self.users[openid]

    def add_user(self, openid: str, *, unionid: str | None = None, following: bool = True,
                 tags: Iterable[int] = ()) -> dict:
        """A WeChat user the account knows (as if they had followed earlier, without a push)."""
        user = self.users.setdefault(openid, {"openid": openid, "unionid": None, "following": False,
                                              "subscribe_time": 0, "subscribe_scene": "ADD_SCENE_OTHERS",
                                              "qr_scene": 0, "qr_scene_str": "", "tags": [], "remark": ""})
        user["unionid"] = unionid or user["unionid"]
        user["tags"] = list(tags) or user["tags"]
        if following and not user["following"]:
            user["subscribe_time"] = int(self.clock())
        user["following"] = following
        return user

    def add_media(self, data: bytes, content_type: str = "image/png") -> str:
        """Register temporary media (as media/upload would); returns its media_id."""
        media_id = secrets.token_urlsafe(48)
        self.media[media_id] = (data, content_type, self.clock())
        return media_id

    def _media_ok(self, media_id: Any) -> bool:
        entry = self.media.get(media_id) if isinstance(media_id, str) else None
        return entry is not None and self.clock() - entry[2] < self.media_ttl

    # ---- access tokens (doc token) -----------------------------------------------------------------
    def _check_app(self, appid: Any, secret: Any) -> None:
        if not appid:
            raise ApiError(41002)
        if appid != self.app_id:
            raise ApiError(40013)
        if not secret:
            raise ApiError(41004)
        if secret != self.app_secret:
            raise ApiError(40125)  # issue: live answers to a wrong secret read 40125 "invalid appsecret"

    def _issue(self, kind: str) -> tuple[str, dict]:
        # doc token: "重复获取将导致上次获取的access_token失效 … 5分钟内，新老access_token都可用"
        now = self.clock()
        for rec in self._tokens.values():
            if rec["kind"] == kind and rec["superseded"] is None:
                rec["superseded"] = now
        token = secrets.token_urlsafe(96)  # real ones are ~136 characters; doc: keep 512 bytes of room
        rec = self._tokens[token] = {"kind": kind, "expires": now + self.token_ttl, "superseded": None}
        self.tokens_issued += 1
        return token, rec

    async def _token(self, request: web.Request) -> web.Response:
        q = request.query
        if q.get("grant_type") != "client_credential":
            raise ApiError(40002)
        self._check_app(q.get("appid"), q.get("secret"))
        token, _ = self._issue("normal")
        return self._json({"access_token": token, "expires_in": self.token_ttl})

    async def _stable_token(self, request: web.Request) -> web.Response:
        """getStableAccessToken: without force_refresh the valid token comes back again with what is left
        of its life; it and /cgi-bin/token do not supersede each other (doc; details unconfirmed)."""
        body = await self._body(request)
        if body.get("grant_type") != "client_credential":
            raise ApiError(40002)
        self._check_app(body.get("appid"), body.get("secret"))
        now = self.clock()
        live = [(t, r) for t, r in self._tokens.items()
                if r["kind"] == "stable" and r["superseded"] is None and now < r["expires"]]
        token, rec = live[0] if live and not body.get("force_refresh") else self._issue("stable")
        return self._json({"access_token": token, "expires_in": int(rec["expires"] - now)})

    def revoke_tokens(self) -> None:
        """Someone else (another server, the admin resetting the secret) invalidated every token: 40001."""
        self._tokens.clear()

    def _auth(self, request: web.Request) -> None:
        token = request.query.get("access_token")
        if not token:
            raise ApiError(41001)
        rec, now = self._tokens.get(token), self.clock()
        if rec is None or (rec["superseded"] is not None and now >= rec["superseded"] + self.token_overlap):
            raise ApiError(40001)  # "access_token is invalid or not latest"
        if now >= rec["expires"]:
            raise ApiError(42001)

    # ---- media (doc 获取临时素材 / 新增临时素材) -------------------------------------------------------
    async def _media_get(self, request: web.Request) -> web.Response:
        self._auth(request)
        media_id = request.query.get("media_id")
        if not media_id:
            raise ApiError(41006)
        if not self._media_ok(media_id):
            raise ApiError(40007)
        data, content_type, _ = self.media[media_id]
        name = f"{media_id[:12]}.{content_type.rsplit('/', 1)[-1]}"
        return web.Response(body=data, headers={"Content-Type": content_type,
                                                "Content-disposition": f'attachment; filename="{name}"'})

    async def _media_upload(self, request: web.Request) -> web.Response:
        self._auth(request)
        kind = request.query.get("type")
        if kind not in MEDIA_LIMITS:
            raise ApiError(40004)
        form = await request.post()
        part = form.get("media")
        if not isinstance(part, web.FileField):
            raise ApiError(41005)
        data = part.file.read()
        if not data:
            raise ApiError(41005)
        if len(data) > MEDIA_LIMITS[kind][0]:
            raise ApiError(MEDIA_LIMITS[kind][1])
        media_id = self.add_media(data, part.content_type or "application/octet-stream")
        key = "thumb_media_id" if kind == "thumb" else "media_id"
        return self._json({"type": kind, key: media_id, "created_at": int(self.clock())})

    # ---- customer-service messages (doc custom, rules) --------------------------------------------
    def _open_window(self, openid: str, quota: int, span: float, opened_by: str) -> None:
        """A user action grants sends. The Mini Program page states the rule for several actions: counts do
        not add up; the quota becomes the larger of what is left and the new action's, and the deadline the
        later of the two. Applied to Official Accounts (unconfirmed); a click opens no message quota
        (issue: a click "不会产生使用者传送讯息场景的客服讯息下发额度")."""
        now, w = self.clock(), self.windows.get(openid)
        if w is None or now >= w["until"]:
            self.windows[openid] = {"quota": quota, "until": now + span, "opened_by": opened_by}
        else:
            w["quota"], w["until"], w["opened_by"] = max(w["quota"], quota), max(w["until"], now + span), opened_by

    def _custom_payload(self, msgtype: Any, raw: Any) -> dict:
        if msgtype not in self.custom_msgtypes:
            raise ApiError(40008)
        if not isinstance(raw, dict):
            raise ApiError(44004 if msgtype == "text" else 47001)
        if msgtype == "text":
            content = raw.get("content")
            if not isinstance(content, str) or not content:
                raise ApiError(44004)
            if len(content.encode()) > self.custom_text_max_bytes:
                raise ApiError(45002)
        elif msgtype in ("image", "voice", "video"):
            if not raw.get("media_id"):
                raise ApiError(41006)
            if not self._media_ok(raw["media_id"]):
                raise ApiError(40007)
        elif msgtype == "news":
            articles = raw.get("articles")
            if not isinstance(articles, list) or not articles:
                raise ApiError(44003)
            if len(articles) > 1:  # doc custom: "图文消息条数限制在1条以内…如果图文数超过1，则将会返回错误码45008"
                raise ApiError(45008)
            if not all(isinstance(a, dict) and a.get("title") and a.get("url") for a in articles):
                raise ApiError(47003)  # required fields: unconfirmed
        elif msgtype == "mpnews" and not raw.get("media_id"):
            raise ApiError(41006)
        elif msgtype == "mpnewsarticle" and not raw.get("article_id"):
            raise ApiError(47003)
        return dict(raw)

    async def _custom_send(self, request: web.Request) -> web.Response:
        self._auth(request)
        body = await self._body(request)
        openid, msgtype, now = body.get("touser"), body.get("msgtype"), self.clock()
        try:
            payload = self._custom_payload(msgtype, body.get(msgtype))
            if not self._user(openid)["following"]:
                raise ApiError(self.unfollowed_custom_code)
            w = self.windows.get(openid)
            if w is None or now >= w["until"]:
                raise ApiError(45015)
            if w["quota"] <= 0:
                raise ApiError(45047)
        except ApiError as exc:
            self.refused.append({"openid": openid, "msgtype": msgtype, "payload": body.get(msgtype),
                                 "errcode": exc.code, "at": now})
            raise
        w["quota"] -= 1
        self.custom_sent.append({"openid": openid, "msgtype": msgtype, "payload": payload, "at": now,
                                 "kf_account": (body.get("customservice") or {}).get("kf_account")})
        return self._ok()

    # ---- template messages (doc 模板消息接口) ---------------------------------------------------------
    async def _template_send(self, request: web.Request) -> web.Response:
        self._auth(request)
        if not self.service_account:  # rules / doc: template messages are a (certified) service-account API
            raise ApiError(48001)
        body = await self._body(request)
        openid, template_id, now = body.get("touser"), body.get("template_id"), self.clock()
        if template_id not in self.templates:
            raise ApiError(40037)
        user = self._user(openid)
        if not user["following"]:
            raise ApiError(43004)  # issue: "require subscribe"
        if user.get("blocks_templates"):
            raise ApiError(43101)  # issue: a user who refused the account's template messages
        data = body.get("data")
        if not isinstance(data, dict) or not all(isinstance(v, dict) and "value" in v for v in data.values()):
            raise ApiError(47003)
        key = body.get("client_msg_id")
        if key:  # same openid + client_msg_id within 10 minutes: sent once; the same msgid back (unconfirmed)
            earlier = self._template_keys.get((openid, key))
            if earlier and now - earlier[1] < self.template_dedupe_ttl:
                return self._ok(msgid=earlier[0])
        msgid = next(self._ids)
        if key:
            self._template_keys[(openid, key)] = (msgid, now)
        self.template_sent.append({"openid": openid, "template_id": template_id, "url": body.get("url"),
                                   "miniprogram": body.get("miniprogram"), "data": data, "msgid": msgid, "at": now})
        return self._ok(msgid=msgid)

    # ---- subscription notifications: message/subscribe/bizsend (doc bizsend) -----------------------
    def authorize_subscribe(self, openid: str, template_id: str, n: int = 1) -> tuple[dict[str, str], bytes]:
        """The user accepts the template in a subscription popup n times (one acceptance = one send).
        Returns the subscribe_msg_popup_event push (Mini Program page's sample shape; unconfirmed for OAs)."""
        if openid not in self.users:
            self.add_user(openid, following=False)  # subscribing needs no follow
        self.subscribe_templates.add(template_id)
        self.subscribe_auth[(openid, template_id)] += n
        popup = [("List", [("TemplateId", template_id), ("SubscribeStatusString", "accept"), ("PopupScene", 0)])]
        return self._event(openid, "subscribe_msg_popup_event", [("SubscribeMsgPopupEvent", popup)])

    async def _bizsend(self, request: web.Request) -> web.Response:
        self._auth(request)
        body = await self._body(request)
        openid, template_id = body.get("touser"), body.get("template_id")
        self._user(openid)  # doc: 40003 touser字段openid为空或者不正确
        if template_id not in self.subscribe_templates:
            raise ApiError(40037)  # doc: 订阅模板id为空不正确
        data = body.get("data")
        if not isinstance(data, dict) or not data:
            raise ApiError(47003)  # doc: 模板参数不准确
        if self.subscribe_auth[(openid, template_id)] <= 0:
            raise ApiError(43101)  # doc: 用户拒绝接受消息 (rules: no authorisation left)
        self.subscribe_auth[(openid, template_id)] -= 1
        msgid = next(self._msg_ids)  # live answers carry a msgid (issue); the doc lists errcode/errmsg only
        self.subscribe_sent.append({"openid": openid, "template_id": template_id, "data": data,
                                    "page": body.get("page"), "miniprogram": body.get("miniprogram"),
                                    "msgid": msgid, "at": self.clock()})
        return self._ok(msgid=msgid)

    # ---- QR codes with a scene (doc qrcode) --------------------------------------------------------
    async def _qrcode_create(self, request: web.Request) -> web.Response:
        self._auth(request)
        body = await self._body(request)
        action = body.get("action_name")
        if action not in QR_ACTIONS:
            raise ApiError(40052)
        info = body.get("action_info")
        scene = info.get("scene") if isinstance(info, dict) else None
        scene = scene if isinstance(scene, dict) else {}
        permanent, now = action.startswith("QR_LIMIT"), self.clock()
        if action.endswith("STR_SCENE"):
            value = scene.get("scene_str")  # doc: "字符串类型，长度限制为1到64"
            if not isinstance(value, str) or not 1 <= len(value) <= 64:
                raise ApiError(40053)  # code unconfirmed
            key = "scene_str"
        else:
            value = scene.get("scene_id")  # doc: temporary "32位非0整型"; permanent "1--100000"
            top = 100_000 if permanent else 2**32 - 1
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= top:
                raise ApiError(40053)  # code unconfirmed
            key = "scene_id"
        expire = None
        if not permanent:  # doc: default 60 s, at most 2592000 (30 days); longer asks are cut down (unconfirmed)
            expire = body.get("expire_seconds", self.qr_default_expire)
            if isinstance(expire, bool) or not isinstance(expire, int) or expire < 1:
                raise ApiError(40097)
            expire = min(expire, self.qr_max_expire)
        else:  # the same permanent scene gives the same code again, not a new one (unconfirmed)
            same = [q for q in self.qrcodes.values() if q["permanent"] and q.get(key) == value]
            if same:
                return self._json({"ticket": same[0]["ticket"], "url": same[0]["url"]})
            if sum(q["permanent"] for q in self.qrcodes.values()) >= self.qr_permanent_max:
                raise ApiError(45029)  # doc: at most 100,000 permanent codes
        ticket = "gQ" + secrets.token_urlsafe(72).replace("-", "A").replace("_", "B") + "=="
        url = "http://weixin.qq.com/q/" + secrets.token_urlsafe(16)
        self.qrcodes[ticket] = {"ticket": ticket, "action_name": action, key: value, "scene": str(value),
                                "permanent": permanent, "expire_seconds": expire, "url": url, "created_at": now,
                                "expires_at": None if permanent else now + expire}
        return self._json({"ticket": ticket, "url": url} if permanent else
                          {"ticket": ticket, "expire_seconds": expire, "url": url})

    def _qr_live(self, qr: dict) -> bool:
        return qr["expires_at"] is None or self.clock() < qr["expires_at"]

    async def _showqrcode(self, request: web.Request) -> web.Response:
        """mp.weixin.qq.com/cgi-bin/showqrcode?ticket= (no token): the code's image. An unknown or
        expired ticket's answer is unconfirmed: 404."""
        qr = self.qrcodes.get(request.query.get("ticket", ""))
        if qr is None or not self._qr_live(qr):
            return web.Response(status=404, text="<html><body>invalid ticket</body></html>", content_type="text/html")
        buf = io.BytesIO()
        segno.make(qr["url"], error="m").save(buf, kind="png", scale=4)
        return web.Response(body=buf.getvalue(), content_type="image/png")  # the real type is unconfirmed

    # ---- users (doc userinfo) ----------------------------------------------------------------------
    async def _user_info(self, request: web.Request) -> web.Response:
        self._auth(request)
        openid = request.query.get("openid")
        if not openid:
            raise ApiError(41009)
        u = self._user(openid)
        if not u["following"]:  # doc: subscribe 0 - "拉取不到其余信息" (unionid kept: unconfirmed)
            return self._json({"subscribe": 0, "openid": openid, **({"unionid": u["unionid"]} if u["unionid"] else {})})
        # doc: no nickname/headimgurl since 2021-12-27; language "不再提供"; unionid only when bound
        info = {"subscribe": 1, "openid": openid, "subscribe_time": u["subscribe_time"],
                **({"unionid": u["unionid"]} if u["unionid"] else {}), "remark": u["remark"], "groupid": 0,
                "tagid_list": u["tags"], "subscribe_scene": u["subscribe_scene"], "qr_scene": u["qr_scene"],
                "qr_scene_str": u["qr_scene_str"]}
        return self._json(info)

    # ---- mass sending (doc mass) -------------------------------------------------------------------
    def _mass_payload(self, body: dict) -> tuple[str, dict]:
        msgtype = body.get("msgtype")
        if msgtype not in MASS_MSGTYPES:
            raise ApiError(40008)  # code unconfirmed (45052 "masssend msg use invalid type" also exists)
        raw = body.get(msgtype)
        if not isinstance(raw, dict):
            raise ApiError(44004 if msgtype == "text" else 47001)
        if msgtype == "text" and not raw.get("content"):
            raise ApiError(44004)
        if msgtype in ("image", "voice") and not self._media_ok(raw.get("media_id")):
            raise ApiError(41006 if not raw.get("media_id") else 40007)
        if msgtype in ("mpnews", "mpvideo") and not raw.get("media_id"):
            raise ApiError(41006)
        if msgtype == "wxcard" and not raw.get("card_id"):
            raise ApiError(47003)
        return msgtype, dict(raw)

    def _clientmsgid(self, body: dict) -> str | None:
        cmid = body.get("clientmsgid")
        if cmid is None:
            return None
        cmid = str(cmid)
        if len(cmid.encode()) > self.clientmsgid_max:
            raise ApiError(45067)
        earlier = self._clientmsgids.get(cmid)
        # doc mass: a clientmsgid seen in the last 24 h refuses the send and answers the existing msg_id.
        # (45066 "retry too fast, wait 1 minute" also exists; when it wins over 45065 is unconfirmed.)
        if earlier and self.clock() - earlier[1] < self.clientmsgid_ttl:
            raise ApiError(45065, msg_id=earlier[0])
        return cmid

    async def _mass_send(self, request: web.Request) -> web.Response:
        self._auth(request)
        if not self.service_account:  # doc mass: 根据OpenID列表群发【订阅号不可用，服务号认证后可用】
            raise ApiError(48001)
        body = await self._body(request)
        touser = body.get("touser")
        if not isinstance(touser, list) or not all(isinstance(o, str) for o in touser):
            raise ApiError(40031 if touser else 40130)
        targets = list(dict.fromkeys(touser))
        if len(targets) < 2:  # doc: "OpenID最少2个，最多10000个"; codes: 40130 "at least two openid"
            raise ApiError(40130)
        if len(targets) > 10_000:
            raise ApiError(40032)
        msgtype, payload = self._mass_payload(body)
        return self._submit(targets, msgtype, payload, self._clientmsgid(body), "openid")

    async def _mass_sendall(self, request: web.Request) -> web.Response:
        """By tag or to everyone (doc mass: filter {is_to_all, tag_id}): the subscription account's way."""
        self._auth(request)
        body = await self._body(request)
        flt = body.get("filter")
        if not isinstance(flt, dict) or (not flt.get("is_to_all") and not isinstance(flt.get("tag_id"), int)):
            raise ApiError(40097)
        msgtype, payload = self._mass_payload(body)
        cmid = self._clientmsgid(body)
        day = datetime.fromtimestamp(self.clock(), CN_TZ).date().isoformat()
        if not self.service_account and self._mass_days[day] >= self.subscription_mass_per_day:
            raise ApiError(45028)  # doc: "群发接口每天可成功调用1次"; rules: 1/day; the code is unconfirmed
        targets = [o for o, u in self.users.items()
                   if u["following"] and (flt.get("is_to_all") or flt.get("tag_id") in u["tags"])]
        return self._submit(targets, msgtype, payload, cmid, "all" if flt.get("is_to_all") else "tag")

    def _submit(self, targets: list[str], msgtype: str, payload: dict, cmid: str | None, kind: str) -> web.Response:
        now = self.clock()
        stamp = datetime.fromtimestamp(now, CN_TZ)
        month, day = f"{stamp.year}-{stamp.month:02d}", stamp.date().isoformat()
        outcomes: dict[str, str] = {}
        for openid in targets:
            user = self.users.get(openid)
            if user is None or not user["following"]:
                outcomes[openid] = "not_following"  # unknown openids too: the call still succeeds (unconfirmed)
            elif self.service_account and self._mass_received[(openid, month)] >= self.mass_user_month_cap:
                outcomes[openid] = "over_cap"  # doc: "多于4条的群发将对该用户发送失败" (natural month)
            else:
                if self.service_account:
                    self._mass_received[(openid, month)] += 1
                outcomes[openid] = "received"
        if not self.service_account:
            self._mass_days[day] += 1
        msg_id = next(self._ids)
        extra = {"msg_data_id": next(self._ids)} if msgtype == "mpnews" else {}  # doc: only for mpnews
        self.mass_jobs[msg_id] = {"msg_id": msg_id, **extra, "kind": kind, "msgtype": msgtype, "payload": payload,
                                  "clientmsgid": cmid, "at": now, "month": month, "outcomes": outcomes,
                                  "finished": False}
        if cmid is not None:
            self._clientmsgids[cmid] = (msg_id, now)
        return self._ok("send job submission success", msg_id=msg_id, **extra)

    def finish_mass(self, msg_id: int, *, failed: Iterable[str] = ()) -> tuple[dict[str, str], bytes]:
        """The job ends: returns the MASSSENDJOBFINISH push. `failed` openids (among those that would have
        received it) get "error" and do not count toward their monthly cap (unconfirmed). Counts per the doc:
        TotalCount = followers in the list; FilterCount = those left after filtering (users over the cap),
        = SentCount + ErrorCount."""
        job = self.mass_jobs[msg_id]
        for openid in failed:
            if job["outcomes"].get(openid) == "received":
                job["outcomes"][openid] = "error"
                if self.service_account:
                    self._mass_received[(openid, job["month"])] -= 1
        job["finished"] = True
        n = collections.Counter(job["outcomes"].values())
        total = n["received"] + n["over_cap"] + n["error"]
        fields = [("Event", "MASSSENDJOBFINISH"), ("MsgID", msg_id), ("Status", "send success"),
                  ("TotalCount", total), ("FilterCount", n["received"] + n["error"]),
                  ("SentCount", n["received"]), ("ErrorCount", n["error"])]
        if job["msgtype"] == "mpnews":  # doc: the originality check result; CheckState 1 = not a reprint
            fields.append(("CopyrightCheckResult", [("Count", 0), ("ResultList", []), ("CheckState", 1)]))
        # doc: FromUserName is the mass-send helper account "mphelper" (the doc's sample shows an openid)
        return self._event("mphelper", None, fields)

    def template_finish(self, msgid: int, status: str = "success") -> tuple[dict[str, str], bytes]:
        """TEMPLATESENDJOBFINISH push; status "success", "failed:user block" or "failed: system failed"."""
        sent = next(t for t in self.template_sent if t["msgid"] == msgid)
        return self._event(sent["openid"], None,
                           [("Event", "TEMPLATESENDJOBFINISH"), ("MsgID", msgid), ("Status", status)])

    # ---- inbound pushes (doc push; 接入指南; 消息加解密) ---------------------------------------------
    def url_check(self) -> tuple[dict[str, str], str]:
        """(query, expected answer) of the GET WeChat makes when the URL is saved: signature = sha1 of sorted
        (token, timestamp, nonce); answer echostr as is - in every mode (doc 接入指南)."""
        timestamp, nonce, echostr = str(int(self.clock())), _nonce(), str(secrets.randbits(63))
        return {"signature": sign(self.token, timestamp, nonce), "timestamp": timestamp, "nonce": nonce,
                "echostr": echostr}, echostr

    def push(self, xml_text: str, openid: str) -> tuple[dict[str, str], bytes]:
        """(query, body) of WeChat's POST to the URL. Query: signature, timestamp, nonce, openid; with a key
        also encrypt_type=aes and msg_signature. Body: plain XML; safe mode <xml><ToUserName/><Encrypt/>
        </xml>; compatible mode the plain fields and <Encrypt> side by side."""
        timestamp, nonce = str(int(self.clock())), _nonce()
        query = {"signature": sign(self.token, timestamp, nonce), "timestamp": timestamp, "nonce": nonce,
                 "openid": openid}
        if self.mode == "plain" or self.crypto is None:
            return query, xml_text.encode()
        encrypt = self.crypto.encrypt(xml_text)
        query.update(encrypt_type="aes", msg_signature=self.crypto.sign(timestamp, nonce, encrypt))
        if self.mode == "compatible":
            return query, (xml_text.removesuffix("</xml>") + _fields([("Encrypt", encrypt)]) + "</xml>").encode()
        return query, _xml([("ToUserName", self.original_id), ("Encrypt", encrypt)]).encode()

    def open_reply(self, text: str) -> str:
        """The plaintext of the gateway's passive reply: an encrypted one (<Encrypt/><MsgSignature/>
        <TimeStamp/><Nonce/>) is verified and decrypted; "success"/"" pass; plain XML only outside safe mode."""
        if self.crypto is None or "<Encrypt>" not in text:
            if self.mode == "safe" and text.strip() not in ("", "success"):
                raise ValueError("safe mode needs an encrypted reply")
            return text
        el = {e.tag: e.text or "" for e in ET.fromstring(text)}
        if el.get("MsgSignature") != self.crypto.sign(el.get("TimeStamp", ""), el.get("Nonce", ""), el["Encrypt"]):
            raise ValueError("reply MsgSignature mismatch")
        return self.crypto.decrypt(el["Encrypt"])

    def _head(self, openid: str, msgtype: str) -> list[tuple[str, Any]]:
        return [("ToUserName", self.original_id), ("FromUserName", openid), ("CreateTime", int(self.clock())),
                ("MsgType", msgtype)]

    def _event(self, openid: str, event: str | None, fields: list) -> tuple[dict[str, str], bytes]:
        head = self._head(openid, "event") + ([("Event", event)] if event else [])
        return self.push(_xml(head + fields), openid)

    def _message(self, openid: str, msgtype: str, fields: list, msg_id: int | str | None):
        """A user message: only followers can send one (an unknown openid becomes a follower); it opens the
        5-in-48-h window."""
        user = self.users.get(openid) or self.add_user(openid)
        if not user["following"]:
            raise ValueError(f"{openid} does not follow the account and cannot message it")
        self._open_window(openid, *self.message_window, "message")
        msg_id = int(msg_id) if msg_id is not None else next(self._msg_ids)  # 64-bit MsgId: the dedupe key
        return self.push(_xml(self._head(openid, msgtype) + fields + [("MsgId", msg_id)]), openid)

    def text(self, openid: str, content: str, *, msg_id: int | str | None = None):
        return self._message(openid, "text", [("Content", content)], msg_id)

    def image(self, openid: str, media_id: str | None = None, *, msg_id: int | str | None = None):
        media_id = media_id or self.add_media(PNG_1PX, "image/png")  # fetchable with media/get
        pic = f"http://mmbiz.qpic.cn/mmbiz_jpg/{secrets.token_urlsafe(30)}/0"
        return self._message(openid, "image", [("PicUrl", pic), ("MediaId", media_id)], msg_id)

    def voice(self, openid: str, media_id: str | None = None, recognition: str | None = None, *,
              msg_id: int | str | None = None):
        """Format amr; Recognition only when speech recognition is on (doc push)."""
        media_id = media_id or self.add_media(AMR_SILENCE, "audio/amr")
        extra = [("Recognition", recognition)] if recognition is not None else []
        return self._message(openid, "voice", [("MediaId", media_id), ("Format", "amr"), *extra], msg_id)

    def location(self, openid: str, lat: float, lng: float, label: str, *, msg_id: int | str | None = None):
        fields = [("Location_X", float(lat)), ("Location_Y", float(lng)), ("Scale", 15), ("Label", label)]
        return self._message(openid, "location", fields, msg_id)

    def _ticket_for(self, scene: str | int) -> tuple[str, dict | None]:
        """The newest code created for this scene; a scan of an expired one cannot happen (ValueError). A
        scene never created through the API gets a made-up ticket."""
        found = [q for q in self.qrcodes.values() if q["scene"] == str(scene)]
        if found:
            qr = max(found, key=lambda q: q["created_at"])
            if not self._qr_live(qr):
                raise ValueError(f"the QR code for scene {scene!r} has expired")
            return qr["ticket"], qr
        return "gQ" + secrets.token_urlsafe(60) + "==", None

    def subscribe(self, openid: str, *, scene: str | int | None = None, unionid: str | None = None):
        """The user follows (from a QR code when scene is given: EventKey qrscene_<scene> and Ticket). Opens
        the 3-in-1-minute window. An empty EventKey on a plain follow is what live pushes carry (unconfirmed)."""
        user = self.users.get(openid)
        if user and user["following"]:
            raise ValueError(f"{openid} already follows the account")
        fields: list = [("EventKey", "")]
        user = self.add_user(openid, unionid=unionid)
        user.update(subscribe_scene="ADD_SCENE_OTHERS", qr_scene=0, qr_scene_str="")
        if scene is not None:
            ticket, qr = self._ticket_for(scene)
            numeric = ("scene_id" in qr) if qr else isinstance(scene, int)
            user.update(subscribe_scene="ADD_SCENE_QR_CODE", qr_scene=int(scene) if numeric else 0,
                        qr_scene_str="" if numeric else str(scene))
            fields = [("EventKey", f"qrscene_{scene}"), ("Ticket", ticket)]
        self._open_window(openid, *self.event_window, "subscribe")
        return self._event(openid, "subscribe", fields)

    def scan(self, openid: str, scene: str | int):
        """A follower scans a scene code: SCAN with EventKey = the scene (no prefix) and Ticket."""
        user = self.users.get(openid)
        if not user or not user["following"]:
            raise ValueError(f"{openid} does not follow the account: a scan gives subscribe, use subscribe()")
        ticket, _ = self._ticket_for(scene)
        self._open_window(openid, *self.event_window, "scan")
        return self._event(openid, "SCAN", [("EventKey", str(scene)), ("Ticket", ticket)])

    def unsubscribe(self, openid: str):
        (self.users.get(openid) or self.add_user(openid))["following"] = False
        self.windows.pop(openid, None)  # nothing can be sent any more
        return self._event(openid, "unsubscribe", [("EventKey", "")])

    def click(self, openid: str, key: str):
        """A click-type menu item: opens the 3-in-1-minute window (doc custom: click menus do)."""
        self._open_window(openid, *self.event_window, "click")
        return self._event(openid, "CLICK", [("EventKey", key)])

    def view(self, openid: str, url: str):
        """A link menu item (EventKey = URL): opens no window (doc custom lists click and scan menus only)."""
        return self._event(openid, "VIEW", [("EventKey", url)])

    def location_event(self, openid: str, lat: float, lng: float, precision: float = 65.0):
        """The automatic LOCATION report: not a user action, opens no window (unconfirmed)."""
        fields = [("Latitude", float(lat)), ("Longitude", float(lng)), ("Precision", float(precision))]
        return self._event(openid, "LOCATION", fields)
