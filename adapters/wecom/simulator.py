"""A simulated WeCom (企业微信) server API, for proving the WeCom adapter in tests.

One aiohttp app serves qyapi.weixin.qq.com's /cgi-bin/... paths, so tests set api_base to it. Helpers
produce the inbound callback traffic WeCom sends (encrypted XML, WeCom's own crypto) and control calls
play the humans in the loop: the clerk who confirms a mass-send task, the customer who accepts a
handover.

Written from WeCom's documentation, never from the adapter. Sources in comments:
  doc N:  developer.work.weixin.qq.com/document/path/N (90313 = the global error-code list, read through
          transcriptions of it in WxJava's WxCpErrorMsgEnum and a 2020-09-30 Python copy; 90236 through
          its apifox mirror; 92599 through zidingyi.apifox.cn)
  issue:  a GitHub issue quoting a real answer        rules: /work/shared/PLATFORM_RULES.md
Where the docs are silent the choice is marked "unconfirmed".
"""

from __future__ import annotations

import asyncio
import base64
import bisect
import calendar
import collections
import hashlib
import json
import secrets
import time
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta, timezone
from functools import partial
from typing import Any, Literal

from aiohttp import web

from adapters.simkit import CallbackCipher, Faults

CN_TZ = timezone(timedelta(hours=8))  # Asia/Shanghai has had no DST since 1991
FAULT_KINDS = ("http500", "timeout", "errcode-1", "errcode45009", "errcode45033", "errcode41096", "html")
APP_MSG_TYPES = ("text", "markdown", "textcard", "news", "image", "file", "voice", "video")  # doc 90236
ATTACHMENT_FIELDS = {  # doc 92599 / 92135: each attachment's body sits under its msgtype
    "image": (), "link": ("title", "url"), "miniprogram": ("title", "pic_media_id", "appid", "page"),
    "video": ("media_id",), "file": ("media_id",),
}
PNG_1PX = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==")
HTML_502 = ("<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n<center><h1>502 Bad Gateway"
            "</h1></center>\r\n<hr><center>stgw</center>\r\n</body>\r\n</html>\r\n")
# errmsg text: the English one where an issue quotes a real answer, else doc 90313's description.
ERRMSG = {
    -1: "system busy", 40001: "invalid credential", 40003: "invalid userid", 40007: "invalid media_id",
    40008: "invalid message type", 40013: "invalid corpid", 40014: "invalid access_token",
    40056: "invalid agentid", 40058: "invalid Request Parameter",  # issue zero205/JD_tencent_scf#278
    40096: "不合法的外部联系人userid", 40097: "该成员尚未离职",
    40128: "客户转接过于频繁（90天内只允许转接一次，同一个客户最多只能转接两次）", 40129: "当前客户正在转接中",
    40130: "原跟进人与接手人一样，不可继承", 40131: "handover_userid 并不是外部联系人的跟进人",
    41001: "access_token missing", 41002: "corpid missing", 41004: "corpsecret missing",
    41006: "media_id missing", 41009: "缺少userid参数", 41010: "缺少url参数", 41011: "agentid missing",
    41016: "缺少title参数", 41033: "缺少 description 参数", 41035: "缺少外部联系人userid参数",
    41037: "缺少「联系我」type参数", 41038: "缺少「联系我」scene参数", 41039: "无效的「联系我」type参数",
    41040: "无效的「联系我」scene参数", 41041: "「联系我」使用人数超过限制", 41046: "缺少企业群发消息id",
    41047: "无效的企业群发消息id", 41048: "无可发送的客户", 41049: "缺少欢迎语code参数", 41050: "无效的欢迎语code",
    41051: "externaluser has started chatting",  # doc 92599
    41096: "another app is sending the welcome message",  # rules; in no copy of doc 90313 (unconfirmed)
    42001: "access_token expired", 44004: "empty content",
    45002: "content size out of limit",  # issue apache/dolphinscheduler#621
    45008: "图文消息的文章数量不符合系统限制", 45009: "api freq out of limit", 45033: "api concurrent out of limit",
    48002: "api forbidden", 81013: "user & party & tag all invalid", 82001: "指定的成员/部门/标签全部为空",
    84061: "not external contact",
    301002: "not allow operate another agent with this accesstoken",  # issue GentleCP/corpwechatbot#3
    610004: "userid不在客户联系配置的使用范围内",
}


class ApiError(Exception):
    """Raised by a handler; the middleware turns it into HTTP 200 {"errcode", "errmsg", ...}."""

    def __init__(self, code: int, detail: str = "", **extra: Any):
        super().__init__(code, detail)
        self.code, self.detail, self.extra = code, detail, extra


WeComCrypto = CallbackCipher  # adapters/simkit.py: written from the docs, not from the adapter



class RateLimiter:
    """Sliding-window caps per key with WeCom's penalty (doc 90454): "按分钟拦截则被屏蔽60秒，按小时拦截
    则被屏蔽60分钟" - hitting a cap blocks the key for that cap's whole period. `caps` may be edited."""

    def __init__(self, **caps: tuple[int, float]):
        self.caps = dict(caps)  # name -> (limit, seconds)
        self._hits: dict[Any, list[float]] = collections.defaultdict(list)
        self._blocked: dict[Any, tuple[float, str]] = {}

    def check(self, key: Any, now: float) -> tuple[str, bool] | None:
        """None and count the hit if allowed; else (cap name, True if inside an earlier penalty)."""
        until, name = self._blocked.get(key, (0.0, ""))
        if now < until:
            return name, True
        hits = self._hits[key]
        del hits[:bisect.bisect_right(hits, now - max(span for _, span in self.caps.values()))]
        for name, (limit, span) in self.caps.items():
            if len(hits) - bisect.bisect_right(hits, now - span) >= limit:
                self._blocked[key] = (now + span, name)
                return name, False
        bisect.insort(hits, now)
        return None


def _truncate(text: str, max_bytes: int) -> str:
    return text.encode()[:max_bytes].decode(errors="ignore")


def _cdata(value: str) -> str:
    return "<![CDATA[" + value.replace("]]>", "]]]]><![CDATA[>") + "]]>"


def _xml(fields: Iterable[tuple[str, Any]]) -> str:
    """Strings go in CDATA, numbers bare - as in the docs' samples."""
    return "<xml>" + "".join(f"<{k}>{v if isinstance(v, int | float) else _cdata(str(v))}</{k}>"
                             for k, v in fields) + "</xml>"


class WeComSimulator:
    def __init__(self, *, corp_id: str, agent_id: str, secret: str, token: str, encoding_aes_key: str,
                 contact_secret: str | None = None, now: Callable[[], float] = time.time,
                 members: Iterable[str] = (), push_cap: Literal["month", "week", "day"] = "month",
                 customer_limit: int = 50_000):
        if push_cap not in ("month", "week", "day"):
            raise ValueError("push_cap is month, week or day")
        self.corp_id, self.agent_id, self.clock = corp_id, str(agent_id), now
        self.secret, self.contact_secret = secret, contact_secret
        self.push_cap, self.customer_limit = push_cap, customer_limit
        self.crypto = WeComCrypto(token, encoding_aes_key, corp_id)
        self.members: dict[str, str] = {}  # lower case -> userid; userids are case-insensitive (doc 90236)
        for userid in members:
            self.add_member(userid)
        self.resigned: set[str] = set()
        # configuration tests may change
        self.token_ttl = 7200  # doc 91039
        # doc 90454: per corp per API 10,000/min and 150,000/h; "发消息频率不计入基础频率"
        self.api_limits = RateLimiter(minute=(10_000, 60), hour=(150_000, 3600))
        # doc 90454: per app per member 30/min and 1,000/h, "超过部分会被丢弃不下发"
        self.member_limits = RateLimiter(minute=(30, 60), hour=(1_000, 3600))
        self.other_agent_ids: set[str] = set()  # agentids of the corp's other apps -> 301002, not 40056
        self.welcome_ttl = 20  # doc 92599: "仅可在收到相关事件后20秒内调用，且只可调用一次"
        self.transfer_window, self.transfer_max = 90 * 86400, 2  # rules: 2 in-service transfers in 90 days
        self.page_size = 1000  # transfer_result page size (unconfirmed: the docs give none)
        self.timeout_delay = 5.0
        self.timeout_delivers = True  # a timed-out call still takes effect later, as a real one may
        # what happened, for assertions
        self.delivered: list[dict] = []
        self.dropped: list[dict] = []
        self.welcomes: dict[str, list[dict]] = collections.defaultdict(list)
        self.tasks: dict[str, dict] = {}
        self.mass_received: dict[str, list[dict]] = collections.defaultdict(list)
        self.transfers: list[dict] = []
        self.contacts: dict[str, dict] = {}
        self.contact_ways: dict[str, dict] = {}
        self.media: dict[str, tuple[bytes, str, str]] = {}
        self.calls: collections.Counter = collections.Counter()
        self.tokens_issued = 0
        self.last_welcome_code: str | None = None
        # internal state
        self._tokens: dict[str, tuple[str, float]] = {}  # token -> (scope, expires at); expired ones kept
        self._current: dict[str, str] = {}  # scope -> newest token
        self._faults = Faults(FAULT_KINDS)
        self._last_sent: dict[tuple[str, str], float] = {}  # (userid, content hash) -> delivered at
        self._welcome_codes: dict[str, dict] = {}
        self._received: collections.Counter = collections.Counter()  # (external_userid, period) -> count
        self._msg_id = 7_000_000_000_000_000_000 + secrets.randbelow(10**18)  # 64-bit MsgIds, never reused
        self._late: set[asyncio.Task] = set()

    # ---- the HTTP app ------------------------------------------------------------------------------
    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware])
        routes = [
            ("GET", "/cgi-bin/gettoken", self._gettoken),
            ("POST", "/cgi-bin/message/send", self._message_send),
            ("GET", "/cgi-bin/media/get", self._media_get),
            ("POST", "/cgi-bin/externalcontact/add_contact_way", self._add_contact_way),
            ("GET", "/cgi-bin/externalcontact/get", self._external_get),
            ("POST", "/cgi-bin/externalcontact/send_welcome_msg", self._send_welcome_msg),
            ("POST", "/cgi-bin/externalcontact/add_msg_template", self._add_msg_template),
            ("POST", "/cgi-bin/externalcontact/get_groupmsg_send_result", self._groupmsg_send_result),
            ("POST", "/cgi-bin/externalcontact/transfer_customer", partial(self._transfer, resigned=False)),
            ("POST", "/cgi-bin/externalcontact/resigned/transfer_customer", partial(self._transfer, resigned=True)),
            ("POST", "/cgi-bin/externalcontact/transfer_result", partial(self._transfer_result, kind="in_service")),
            ("POST", "/cgi-bin/externalcontact/resigned/transfer_result",
             partial(self._transfer_result, kind="resigned")),
        ]
        for method, path, handler in routes:
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
            return self._fault(request, kind)
        return await self._run(handler, request)

    async def _run(self, handler, request: web.Request) -> web.StreamResponse:
        try:
            if request.path != "/cgi-bin/message/send" and self.api_limits.check(request.path, self.clock()):
                raise ApiError(45009)
            return await handler(request)
        except ApiError as exc:
            return self._err(request, exc.code, exc.detail, **exc.extra)

    async def _after_delay(self, handler, request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(self.timeout_delay)
        if not self.timeout_delivers:
            return self._fault(request, "http500")
        return await self._run(handler, request)

    async def _shutdown(self, _app) -> None:
        for task in list(self._late):
            task.cancel()

    # ---- fault injection ---------------------------------------------------------------------------
    def fail_next(self, n: int, kind: str, path_prefix: str = "/") -> None:
        """The next n calls under path_prefix fail this way instead of being handled."""
        self._faults.add(n, kind, path_prefix)

    def _fault(self, request: web.Request, kind: str) -> web.Response:
        if kind == "html":  # a proxy in front of the API answering for it (unconfirmed page text)
            return web.Response(status=502, text=HTML_502, content_type="text/html")
        if kind == "http500":  # unconfirmed: what body, if any, qyapi sends with a 500
            return web.json_response({"errcode": -1, "errmsg": ERRMSG[-1]}, status=500)
        return self._err(request, int(kind.removeprefix("errcode")))

    # ---- shared helpers ----------------------------------------------------------------------------
    def _err(self, request: web.Request, code: int, detail: str = "", **extra: Any) -> web.Response:
        # errors come with HTTP 200; errmsg shape from issue apache/dolphinscheduler#621:
        # "content size out of limit, hint: [1563869667_1_f6b1…], from ip: …, more info at …?e=45002"
        text = ERRMSG.get(code, "error") + (f", {detail}" if detail else "")
        hint = f"{int(self.clock())}_{secrets.randbelow(100)}_{secrets.token_hex(16)}"
        errmsg = (f"{text}, hint: [{hint}], from ip: {request.remote}, "
                  f"more info at https://open.work.weixin.qq.com/devtool/query?e={code}")
        return web.json_response({"errcode": code, "errmsg": errmsg, **extra})

    @staticmethod
    def _ok(**fields: Any) -> web.Response:
        return web.json_response({"errcode": 0, "errmsg": "ok", **fields})

    @staticmethod
    async def _body(request: web.Request) -> dict:
        # WeCom reads the body as JSON whatever the Content-Type; doc 90313's preamble: broken JSON gives
        # "Warning: wrong json format." in errmsg (the errcode is unconfirmed: 40058 used)
        try:
            value = json.loads(await request.text() or "null")
        except ValueError:
            value = None
        if not isinstance(value, dict):
            raise ApiError(40058, "Warning: wrong json format.")
        return value

    def add_member(self, userid: str) -> None:
        self.members[userid.lower()] = userid

    def resign(self, userid: str) -> None:
        """The member leaves the corp: no more app messages; their customers await a resigned transfer."""
        self.resigned.add(self._member(userid) or userid)

    def _member(self, userid: Any) -> str | None:
        return self.members.get(userid.lower()) if isinstance(userid, str) else None

    def _active(self, userid: Any) -> str | None:
        member = self._member(userid)
        return member if member and member not in self.resigned else None

    def _follows(self, userid: str | None, external_userid: str) -> bool:
        contact = self.contacts.get(external_userid)
        return bool(contact and userid in contact["follow_user"])

    def _customer_count(self, userid: str) -> int:
        return sum(1 for c in self.contacts.values() if userid in c["follow_user"])

    @staticmethod
    def _page(rows: list, cursor: Any, size: int) -> tuple[list, str]:
        """Opaque cursors (unconfirmed format): base64 of the next offset; "" on the last page."""
        try:
            start = int(base64.urlsafe_b64decode(cursor).decode()) if cursor else 0
        except (TypeError, ValueError):
            raise ApiError(40058, "invalid cursor") from None
        end = start + size
        return rows[start:end], base64.urlsafe_b64encode(str(end).encode()).decode() if end < len(rows) else ""

    # ---- tokens (doc 91039) ------------------------------------------------------------------------
    async def _gettoken(self, request: web.Request) -> web.Response:
        corpid, secret = request.query.get("corpid"), request.query.get("corpsecret")
        if not corpid:
            raise ApiError(41002)
        if corpid != self.corp_id:
            raise ApiError(40013)
        if not secret:
            raise ApiError(41004)
        scope = "app" if secret == self.secret else "contact" if secret == self.contact_secret else None
        if scope is None:
            raise ApiError(40001)
        # doc 91039: "有效期内重复获取返回相同结果，过期后获取会返回新的access_token"; the expiry is not
        # renewed and expires_in is what is left (unconfirmed)
        now, token = self.clock(), self._current.get(scope)
        if token is None or now >= self._tokens[token][1]:
            token = secrets.token_urlsafe(48)
            self._tokens[token] = (scope, now + self.token_ttl)
            self._current[scope] = token
        self.tokens_issued += 1
        return self._ok(access_token=token, expires_in=int(self._tokens[token][1] - now))

    def _auth(self, request: web.Request, need: Literal["app", "contact"]) -> None:
        token = request.query.get("access_token")
        if not token:
            raise ApiError(41001)
        if token not in self._tokens:
            raise ApiError(40014)
        scope, expires = self._tokens[token]
        if self.clock() >= expires:
            raise ApiError(42001)
        # two secrets: the app's sends messages and reads media; the 客户联系 secret calls externalcontact/*.
        # Without a contact secret the app is in 「可调用应用」 and its token may call both.
        if scope != need and not (need == "contact" and self.contact_secret is None):
            raise ApiError(48002)

    # ---- app messages (doc 90236) ------------------------------------------------------------------
    def add_media(self, data: bytes, content_type: str = "image/png", filename: str | None = None) -> str:
        """Register media (as media/upload would); returns its media_id."""
        media_id = secrets.token_urlsafe(40)
        ext = content_type.rsplit("/", 1)[-1]
        self.media[media_id] = (data, content_type, filename or f"{media_id[:8]}.{ext}")
        return media_id

    async def _media_get(self, request: web.Request) -> web.Response:
        self._auth(request, "app")
        media_id = request.query.get("media_id")
        if not media_id:
            raise ApiError(41006)
        if media_id not in self.media:
            raise ApiError(40007)
        data, content_type, name = self.media[media_id]
        return web.Response(body=data, headers={"Content-Type": content_type,
                                                "Content-disposition": f'attachment; filename="{name}"'})

    def _app_payload(self, msgtype: str, raw: Any) -> dict:
        """Check one msgtype's fields (doc 90236); returns them as delivered (over-long parts truncated)."""
        p = dict(raw) if isinstance(raw, dict) else {}
        if msgtype in ("text", "markdown"):
            content = p.get("content")
            if not isinstance(content, str) or not content:
                raise ApiError(44004)
            size = len(content.encode())
            if msgtype == "text":
                if size > 5120:  # issue zero205/JD_tencent_scf#278: 40058 "text.content exceed max length 5120"
                    raise ApiError(40058, "text.content exceed max length 5120")
                p["content"] = _truncate(content, 2048)  # doc: "最长不超过2048个字节，超过将截断"
            elif size > 2048:  # doc: markdown "最长不超过2048个字节" (no truncation said; code unconfirmed)
                raise ApiError(45002)
        elif msgtype == "textcard":
            for field, code in (("title", 41016), ("description", 41033), ("url", 41010)):
                if not p.get(field):  # codes: doc 90313 (41033 names textcard's description)
                    raise ApiError(code)
            p["title"], p["description"] = _truncate(str(p["title"]), 128), _truncate(str(p["description"]), 512)
            if "btntxt" in p:
                p["btntxt"] = str(p["btntxt"])[:4]  # doc: "不超过4个文字，超过自动截断"
        elif msgtype == "news":
            articles = p.get("articles")
            if not isinstance(articles, list) or not 1 <= len(articles) <= 8:  # doc: 1 to 8 articles
                raise ApiError(45008)
            for art in articles:
                if not isinstance(art, dict) or not art.get("title"):
                    raise ApiError(41016)
                if not (art.get("url") or art.get("appid")):  # doc: "小程序或者url必须填写一个"
                    raise ApiError(41010)
            p["articles"] = [{**a, "title": _truncate(str(a["title"]), 128),
                              "description": _truncate(str(a.get("description", "")), 512)} for a in articles]
        else:  # image, voice, video, file: a media_id from media/upload
            if not p.get("media_id"):
                raise ApiError(41006)
            if p["media_id"] not in self.media:
                raise ApiError(40007)
        return p

    async def _message_send(self, request: web.Request) -> web.Response:
        self._auth(request, "app")
        body = await self._body(request)
        agent = body.get("agentid")
        if agent in (None, ""):
            raise ApiError(41011)
        if str(agent) != self.agent_id:  # another app's agentid: issue GentleCP/corpwechatbot#3
            raise ApiError(301002 if str(agent) in self.other_agent_ids else 40056)
        msgtype = body.get("msgtype")
        if msgtype not in APP_MSG_TYPES:
            raise ApiError(40008)
        payload = self._app_payload(msgtype, body.get(msgtype))
        touser = body.get("touser") if isinstance(body.get("touser"), str) else ""
        names = list(dict.fromkeys(u.strip() for u in touser.split("|") if u.strip()))
        if not names and not body.get("toparty") and not body.get("totag"):
            raise ApiError(82001)
        if names == ["@all"]:
            names = [m for m in self.members.values() if m not in self.resigned]
        valid = list(dict.fromkeys(m for m in map(self._active, names) if m))
        invalid = [n.lower() for n in names if not self._active(n)]  # doc: returned userids are lower case
        # no departments or tags are modelled: any given are all invalid
        extra = {f"invalid{k[2:]}": body[k] for k in ("toparty", "totag") if body.get(k)}
        if not valid:  # doc 90236: "如果全部接收人无权限或不存在，则本次调用返回失败，errcode为81013"
            raise ApiError(81013, invaliduser="|".join(invalid), **extra)
        msgid = secrets.token_urlsafe(24)
        now = self.clock()
        content = hashlib.sha256(json.dumps([msgtype, payload], sort_keys=True).encode()).hexdigest()
        # doc 90236: enable_duplicate_check - the same content is not received twice within the interval
        # (default 1800 s, at most 4 h); the call still succeeds
        dedupe = body.get("enable_duplicate_check") in (1, "1", True)
        try:
            interval = min(int(body.get("duplicate_check_interval") or 1800), 4 * 3600)
        except (TypeError, ValueError):
            raise ApiError(40058, "duplicate_check_interval") from None
        for user in valid:
            entry = {"user": user, "msgtype": msgtype, "payload": payload, "at": now, "msgid": msgid}
            last = self._last_sent.get((user, content))
            if dedupe and last is not None and now - last < interval:
                self.dropped.append({**entry, "cap": "duplicate", "blocked": False})
                continue
            capped = self.member_limits.check(user, now)
            if capped:  # silently dropped: the answer is still errcode 0 (doc 90454)
                self.dropped.append({**entry, "cap": capped[0], "blocked": capped[1]})
                continue
            self._last_sent[(user, content)] = now
            self.delivered.append(entry)
        return self._ok(invaliduser="|".join(invalid), msgid=msgid, **extra)

    # ---- 联系我 and customer details (doc 92228, 92114) --------------------------------------------
    async def _add_contact_way(self, request: web.Request) -> web.Response:
        self._auth(request, "contact")
        body = await self._body(request)
        kind, scene, users = body.get("type"), body.get("scene"), body.get("user") or []
        if kind is None:
            raise ApiError(41037)
        if kind not in (1, 2):  # 1 single member, 2 several
            raise ApiError(41039)
        if scene is None:
            raise ApiError(41038)
        if scene not in (1, 2):  # 1 mini-program, 2 QR code
            raise ApiError(41040)
        if not isinstance(users, list) or (kind == 1 and len(users) != 1):
            raise ApiError(40058, "user")  # doc: type 1 takes exactly one user (code unconfirmed)
        if len(users) > 100:  # rules / doc: at most 100 members a way
            raise ApiError(41041)
        for field in ("state", "remark"):  # doc: each "不超过30个字符" (code unconfirmed: 40058)
            if len(str(body.get(field) or "")) > 30:
                raise ApiError(40058, field)
        members = [self._active(u) for u in users]
        if not all(members):  # doc 90313 610004; which code an unknown userid gets is unconfirmed
            raise ApiError(610004)
        config_id = secrets.token_hex(16)
        self.contact_ways[config_id] = {"config_id": config_id, "type": kind, "scene": scene, "user": members,
                                        "state": body.get("state"), "remark": body.get("remark"),
                                        "skip_verify": body.get("skip_verify", True)}
        if scene != 2:  # doc: qr_code only for scene 2
            return self._ok(config_id=config_id)
        qr = f"https://p.qpic.cn/wwhead/{secrets.token_urlsafe(30)}/0"  # shaped like the doc's sample
        self.contact_ways[config_id]["qr_code"] = qr
        return self._ok(config_id=config_id, qr_code=qr)

    async def _external_get(self, request: web.Request) -> web.Response:
        self._auth(request, "contact")
        external_userid = request.query.get("external_userid")
        if not external_userid:
            raise ApiError(41035)
        contact = self.contacts.get(external_userid)
        if contact is None or not contact["follow_user"]:
            raise ApiError(84061)  # doc 90313: 不存在外部联系人的关系
        return self._ok(external_contact=contact["external_contact"],
                        follow_user=list(contact["follow_user"].values()), next_cursor="")

    # ---- welcome message (doc 92599) ---------------------------------------------------------------
    @staticmethod
    def _check_content(text: Any, attachments: Any, max_text: int) -> tuple[dict | None, list]:
        """text + attachments as doc 92599 / 92135 define them; codes unconfirmed unless noted."""
        content = text.get("content") if isinstance(text, dict) else None
        attachments = attachments or []
        if not isinstance(attachments, list) or len(attachments) > 9:  # doc: at most 9 attachments
            raise ApiError(40058, "attachments")
        if not content and not attachments:
            raise ApiError(44004)
        if content and len(str(content).encode()) > max_text:
            raise ApiError(45002)
        for att in attachments:
            kind = att.get("msgtype") if isinstance(att, dict) else None
            part = att.get(kind) if kind in ATTACHMENT_FIELDS else None
            # doc 92599: "attachments中每个附件信息必须与msgtype一致…否则会报错"; image: media_id or pic_url
            if not isinstance(part, dict) or any(not part.get(f) for f in ATTACHMENT_FIELDS[kind]) or (
                    kind == "image" and not (part.get("media_id") or part.get("pic_url"))):
                raise ApiError(40058, "attachments")
        return ({"content": content} if content else None), attachments

    async def _send_welcome_msg(self, request: web.Request) -> web.Response:
        self._auth(request, "contact")
        body = await self._body(request)
        code = body.get("welcome_code")
        if not code:
            raise ApiError(41049)
        entry = self._welcome_codes.get(code)
        if entry is None:
            raise ApiError(41050)
        if entry["used"]:  # doc 92599: later calls get 41051 (rules: done, do not retry)
            raise ApiError(41051)
        if self.clock() - entry["at"] > self.welcome_ttl:  # an expired code's errcode is unconfirmed
            raise ApiError(41050, "welcome_code expired")
        text, attachments = self._check_content(body.get("text"), body.get("attachments"), 4000)
        entry["used"] = True
        self.welcomes[entry["external_userid"]].append({
            "userid": entry["userid"], "text": text, "attachments": attachments, "at": self.clock(),
            "welcome_code": code})
        return self._ok()

    # ---- mass sending (doc 92135, 93338) -----------------------------------------------------------
    def _push_period(self, now: float) -> tuple[str, int]:
        """The per-customer cap's period and size (rules): days-in-month a calendar month by default, or
        7 a week / 1 a day, on the Asia/Shanghai calendar (weeks from Monday: unconfirmed)."""
        day = datetime.fromtimestamp(now, CN_TZ)
        if self.push_cap == "day":
            return day.date().isoformat(), 1
        if self.push_cap == "week":
            year, week, _ = day.isocalendar()
            return f"{year}-W{week:02d}", 7
        return f"{day.year}-{day.month:02d}", calendar.monthrange(day.year, day.month)[1]

    async def _add_msg_template(self, request: web.Request) -> web.Response:
        self._auth(request, "contact")
        body = await self._body(request)
        if body.get("chat_type", "single") != "single":
            raise ApiError(40058, "the simulator models chat_type single only")
        text, attachments = self._check_content(body.get("text"), body.get("attachments"), 4000)
        sender = body.get("sender")
        if sender is not None and not self._active(sender):
            raise ApiError(40003)  # unconfirmed
        sender = self._active(sender)
        targets = body.get("external_userid")
        if targets is None and sender:  # only a sender: all of the sender's customers (unconfirmed)
            targets = [e for e, c in self.contacts.items() if sender in c["follow_user"]]
        if not isinstance(targets, list) or len(targets) > 10_000:  # doc: at most 10,000 customers
            raise ApiError(40058, "external_userid")
        results, fail_list = {}, []
        for ext in dict.fromkeys(targets):
            who = sender or self._last_follower(ext)
            if who and self._follows(who, ext):
                results[ext] = {"external_userid": ext, "chat_id": "", "userid": who, "status": 0}
            else:
                fail_list.append(ext)
        if not results:
            raise ApiError(41048, fail_list=fail_list)  # doc 90313: 无可发送的客户
        msgid = "msg" + secrets.token_urlsafe(21)
        self.tasks[msgid] = {"msgid": msgid, "sender": sender, "text": text, "attachments": attachments,
                             "allow_select": bool(body.get("allow_select")), "created_at": self.clock(),
                             "fail_list": fail_list, "results": results}
        return self._ok(fail_list=fail_list, msgid=msgid)

    def _last_follower(self, external_userid: str) -> str | None:
        # rules: without a sender the task goes to the member who last chatted; approximated here by the
        # member who added the customer last (unconfirmed)
        contact = self.contacts.get(external_userid)
        follow = sorted(contact["follow_user"].values(), key=lambda f: f["createtime"]) if contact else []
        return follow[-1]["userid"] if follow else None

    def confirm_task(self, msgid: str, userid: str | None = None) -> None:
        """The member (or every member with a share of the task) confirms it in WeCom: only now is
        anything sent. Each customer ends 1 (sent), 2 (no longer the member's contact) or 3 (this
        period's quota used, counted per customer across tasks)."""
        task, now = self.tasks[msgid], self.clock()
        period, cap = self._push_period(now)
        for row in task["results"].values():
            if row["status"] != 0 or (userid is not None and row["userid"] != self._member(userid)):
                continue
            ext = row["external_userid"]
            if not self._follows(row["userid"], ext):
                row["status"] = 2
            elif self._received[(ext, period)] >= cap:
                row["status"] = 3
            else:
                self._received[(ext, period)] += 1
                row["status"], row["send_time"] = 1, int(now)
                self.mass_received[ext].append({"msgid": msgid, "userid": row["userid"], "text": task["text"],
                                                "attachments": task["attachments"], "at": now})

    async def _groupmsg_send_result(self, request: web.Request) -> web.Response:
        self._auth(request, "contact")
        body = await self._body(request)
        if not body.get("msgid"):
            raise ApiError(41046)
        task = self.tasks.get(body["msgid"])
        if task is None:
            raise ApiError(41047)
        userid = self._member(body.get("userid"))
        if not body.get("userid"):
            raise ApiError(41009)
        limit = body.get("limit") or 500  # doc 93338: default 500, at most 1000
        if not isinstance(limit, int) or not 1 <= limit <= 1000:
            raise ApiError(40058, "limit")
        rows = [r for r in task["results"].values() if r["userid"] == userid]
        page, next_cursor = self._page(rows, body.get("cursor"), limit)
        return self._ok(send_list=[dict(r) for r in page], next_cursor=next_cursor)

    # ---- handover: in-service and resigned transfers (doc 96325 / 96331, rules) -------------------
    async def _transfer(self, request: web.Request, resigned: bool) -> web.Response:
        self._auth(request, "contact")
        body = await self._body(request)
        if not body.get("handover_userid") or not body.get("takeover_userid"):
            raise ApiError(41009)
        ids = body.get("external_userid")
        if not isinstance(ids, list) or not ids:
            raise ApiError(41035)
        if len(ids) > 100:  # doc: "最多一次转移100个客户" (code unconfirmed)
            raise ApiError(40058, "external_userid")
        success_msg = body.get("transfer_success_msg")
        if not resigned and success_msg is not None and len(str(success_msg)) > 200:  # doc: ≤ 200 chars
            raise ApiError(40058, "transfer_success_msg")
        handover, takeover = self._member(body["handover_userid"]), self._active(body["takeover_userid"])
        if handover is None or takeover is None:
            raise ApiError(40003)  # unconfirmed
        if resigned and handover not in self.resigned:
            raise ApiError(40097)  # doc 90313: 该成员尚未离职
        now, kind = self.clock(), "resigned" if resigned else "in_service"
        customers = []
        for ext in ids:
            code = self._transfer_check(ext, handover, takeover, resigned, now)
            if code == 0:
                full = self._customer_count(takeover) >= self.customer_limit  # -> status 4 at once
                self.transfers.append({
                    "kind": kind, "handover_userid": handover, "takeover_userid": takeover,
                    "external_userid": ext, "status": 4 if full else 2, "started_at": now,
                    # doc: takeover_time - for a waiting customer, the automatic takeover 24 h later
                    "takeover_time": int(now) if full else int(now) + 86400,
                    "transfer_success_msg": None if resigned else success_msg})
            customers.append({"external_userid": ext, "errcode": code})
        return self._ok(customer=customers)

    def _transfer_check(self, ext: Any, handover: str, takeover: str, resigned: bool, now: float) -> int:
        """Per-customer errcode (doc 90313 codes; doc 96331's sample shows 40096 for a bad id)."""
        if not isinstance(ext, str) or ext not in self.contacts:
            return 40096
        if handover == takeover:
            return 40130
        if handover not in self.contacts[ext]["follow_user"]:
            return 40131
        mine = [t for t in self.transfers if t["external_userid"] == ext]
        if any(t["status"] == 2 for t in mine):
            return 40129
        recent = [t for t in mine if t["kind"] == "in_service" and now - t["started_at"] < self.transfer_window]
        if not resigned and len(recent) >= self.transfer_max:  # which transfers count: unconfirmed
            return 40128
        return 0

    async def _transfer_result(self, request: web.Request, kind: str) -> web.Response:
        self._auth(request, "contact")
        body = await self._body(request)
        handover, takeover = self._member(body.get("handover_userid")), self._member(body.get("takeover_userid"))
        if not body.get("handover_userid") or not body.get("takeover_userid"):
            raise ApiError(41009)
        latest: dict[str, dict] = {}  # one row per customer: the pair's newest transfer of them
        for t in self.transfers:
            if (t["kind"], t["handover_userid"], t["takeover_userid"]) == (kind, handover, takeover):
                latest[t["external_userid"]] = t
        rows = [{"external_userid": e, "status": t["status"], "takeover_time": t["takeover_time"]}
                for e, t in latest.items()]
        page, next_cursor = self._page(rows, body.get("cursor"), self.page_size)
        return self._ok(customer=page, next_cursor=next_cursor)

    def settle_transfer(self, external_userid: str, status: int = 1) -> dict:
        """Settle the customer's waiting transfer: 1 taken over, 3 customer refused, 4 receiver full
        (1 turns into 4 if the takeover member is full by now). On 1 the customer moves from the handover
        member to the takeover member. No callback is produced: use del_external_contact /
        transfer_fail for those."""
        if status not in (1, 3, 4):
            raise ValueError("status is 1, 3 or 4")
        record = next((t for t in reversed(self.transfers)
                       if t["external_userid"] == external_userid and t["status"] == 2), None)
        if record is None:
            raise LookupError(f"no waiting transfer of {external_userid}")
        now, takeover = self.clock(), record["takeover_userid"]
        if status == 1 and self._customer_count(takeover) >= self.customer_limit:
            status = 4
        record["status"], record["takeover_time"] = status, int(now)
        if status == 1:
            follow = self.contacts[external_userid]["follow_user"]
            old = follow.pop(record["handover_userid"], {})
            # add_way 202 = 管理员/负责人分配 (doc 92114); keeping remark and state is unconfirmed
            follow[takeover] = {**old, "userid": takeover, "createtime": int(now), "add_way": 202,
                                "oper_userid": record["handover_userid"]}
        return record

    def settle_all(self, status: int = 1) -> int:
        """Settle every waiting transfer; returns how many there were."""
        waiting = [t["external_userid"] for t in self.transfers if t["status"] == 2]
        for ext in waiting:
            self.settle_transfer(ext, status)
        return len(waiting)

    # ---- inbound callbacks (doc 90930 envelope, 90239 messages, 92130/92137 customer events) ------
    def encrypt_event(self, xml_text: str, *, timestamp: str | None = None,
                      nonce: str | None = None) -> tuple[dict[str, str], bytes]:
        """(query, body) of WeCom's POST to the callback URL: ?msg_signature=&timestamp=&nonce= and
        <xml><ToUserName/><AgentID/><Encrypt/></xml> (doc 90930)."""
        timestamp = timestamp or str(int(self.clock()))
        nonce = nonce or self._nonce()
        encrypt = self.crypto.encrypt(xml_text)
        query = {"msg_signature": self.crypto.sign(timestamp, nonce, encrypt), "timestamp": timestamp,
                 "nonce": nonce}
        body = _xml([("ToUserName", self.corp_id), ("AgentID", self.agent_id), ("Encrypt", encrypt)])
        return query, body.encode()

    def url_check(self) -> tuple[dict[str, str], str]:
        """(query, expected answer) of the GET WeCom makes when the URL is saved: the gateway must answer
        the decrypted echostr, bare, within 1 s (rules)."""
        plain = str(10**18 + secrets.randbelow(9 * 10**18))  # like the vector's 5927782489442352469
        timestamp, nonce, echostr = str(int(self.clock())), self._nonce(), self.crypto.encrypt(plain)
        return {"msg_signature": self.crypto.sign(timestamp, nonce, echostr), "timestamp": timestamp,
                "nonce": nonce, "echostr": echostr}, plain

    @staticmethod
    def _nonce() -> str:
        return str(1_000_000_000 + secrets.randbelow(9_000_000_000))

    def _next_msg_id(self) -> str:
        self._msg_id += 1
        return str(self._msg_id)

    def message_callback(self, userid: str, text: str | None = None, *, msgtype: str = "text",
                         msg_id: str | None = None, create_time: int | None = None,
                         **fields: Any) -> tuple[dict[str, str], bytes]:
        """A message a member sends to the app (doc 90239); `fields` override the type's fields."""
        defaults: dict[str, dict[str, Any]] = {
            "text": {"Content": text or ""},
            "image": {"PicUrl": "https://wework.qpic.cn/wwpic/sim/0", "MediaId": None},
            "voice": {"MediaId": None, "Format": "amr"},
            "video": {"MediaId": None, "ThumbMediaId": None},
            "location": {"Location_X": 23.134521, "Location_Y": 113.358803, "Scale": 15, "Label": "广州市海珠区",
                         "AppType": "wxwork"},
            "link": {"Title": "title", "Description": "description", "Url": "https://example.com/",
                     "PicUrl": "https://wework.qpic.cn/wwpic/sim/0"},
        }
        if msgtype not in defaults:
            raise ValueError(f"msgtype is one of {sorted(defaults)}")
        media = {"MediaId": (PNG_1PX, "image/png") if msgtype == "image" else
                 (b"#!AMR\n" + bytes(32), "audio/amr") if msgtype == "voice" else (bytes(64), "video/mp4"),
                 "ThumbMediaId": (PNG_1PX, "image/png")}
        body = {**defaults[msgtype], **fields}
        for key, value in body.items():
            if value is None and key in media:  # media the adapter can fetch with media/get
                body[key] = self.add_media(*media[key])
        head = [("ToUserName", self.corp_id), ("FromUserName", userid),
                ("CreateTime", int(self.clock()) if create_time is None else create_time), ("MsgType", msgtype)]
        tail = [("MsgId", int(msg_id or self._next_msg_id())), ("AgentID", int(self.agent_id))]
        return self.encrypt_event(_xml(head + list(body.items()) + tail))

    def _contact_event(self, change_type: str, userid: str, external_userid: str,
                       before: list | None = None, after: list | None = None) -> tuple[dict[str, str], bytes]:
        fields = [("ToUserName", self.corp_id), ("FromUserName", "sys"), ("CreateTime", int(self.clock())),
                  ("MsgType", "event"), ("Event", "change_external_contact"), ("ChangeType", change_type),
                  *(before or []), ("UserID", userid), ("ExternalUserID", external_userid), *(after or [])]
        return self.encrypt_event(_xml(fields))

    def add_external_contact(self, userid: str, external_userid: str, *, state: str | None = None,
                             name: str = "顾客", unionid: str | None = None,
                             welcome_code: bool = True) -> tuple[dict[str, str], bytes]:
        """A WeChat user adds the member through a 联系我 way: records the relation, issues a WelcomeCode
        valid 20 s (doc 92599) unless welcome_code=False (an admin welcome is set, or they already chatted),
        and returns the change_external_contact / add_external_contact event (doc 92130 sample)."""
        member = self._active(userid)
        if member is None:
            raise ValueError(f"{userid} is not an active member")
        now = int(self.clock())
        contact = self.contacts.setdefault(external_userid, {"external_contact": {
            "external_userid": external_userid, "name": name, "type": 1,  # 1 = a WeChat user (doc 92114)
            "avatar": f"http://wx.qlogo.cn/mmhead/{secrets.token_urlsafe(24)}/0", "gender": 0,
            **({"unionid": unionid} if unionid else {})}, "follow_user": {}})
        # add_way 1 = 扫描二维码; oper_userid = the customer when the customer added the member (doc 92114)
        contact["follow_user"][member] = {"userid": member, "remark": "", "description": "", "createtime": now,
                                          "tags": [], "remark_mobiles": [], "add_way": 1,
                                          "oper_userid": external_userid, **({"state": state} if state else {})}
        after = [("State", state)] if state else []
        if welcome_code:
            code = secrets.token_urlsafe(32)
            self._welcome_codes[code] = {"at": self.clock(), "userid": member, "external_userid": external_userid,
                                         "used": False}
            self.last_welcome_code = code
            after.append(("WelcomeCode", code))
        return self._contact_event("add_external_contact", member, external_userid, after=after)

    def del_external_contact(self, userid: str, external_userid: str, *,
                             source: str = "") -> tuple[dict[str, str], bytes]:
        """The member deleted the customer. Source "DELETE_BY_TRANSFER" when an in-service transfer removed
        them (doc 92130); an empty Source is left out (unconfirmed)."""
        member = self._member(userid) or userid
        self.contacts.get(external_userid, {"follow_user": {}})["follow_user"].pop(member, None)
        return self._contact_event("del_external_contact", member, external_userid,
                                   after=[("Source", source)] if source else [])

    def del_follow_user(self, userid: str, external_userid: str) -> tuple[dict[str, str], bytes]:
        """The customer deleted the member (doc 92130: no Source field)."""
        member = self._member(userid) or userid
        self.contacts.get(external_userid, {"follow_user": {}})["follow_user"].pop(member, None)
        return self._contact_event("del_follow_user", member, external_userid)

    def transfer_fail(self, userid: str, external_userid: str,
                      reason: str = "customer_refused") -> tuple[dict[str, str], bytes]:
        """Takeover failed (doc 92130: FailReason customer_refused | customer_limit_exceed; UserID is the
        takeover member). Only the event: settle_transfer records the outcome."""
        if reason not in ("customer_refused", "customer_limit_exceed"):
            raise ValueError("reason is customer_refused or customer_limit_exceed")
        return self._contact_event("transfer_fail", self._member(userid) or userid, external_userid,
                                   before=[("FailReason", reason)])

    def delete_user(self, userid: str) -> tuple[dict[str, str], bytes]:
        """The member left: a change_contact / delete_user event (doc 90970); they are now resigned."""
        self.resign(userid)
        fields = [("ToUserName", self.corp_id), ("FromUserName", "sys"), ("CreateTime", int(self.clock())),
                  ("MsgType", "event"), ("Event", "change_contact"), ("ChangeType", "delete_user"),
                  ("UserID", self._member(userid) or userid)]
        return self.encrypt_event(_xml(fields))

    def rename_user(self, userid: str, new_userid: str) -> tuple[dict[str, str], bytes]:
        """An admin changed the member's UserID (doc 90970 更新成员事件: NewUserID, "变更时推送"); their
        customers stay theirs, now under the new id."""
        old = self._member(userid) or userid
        self.members.pop(old.lower(), None)
        self.add_member(new_userid)
        for contact in self.contacts.values():
            if old in contact["follow_user"]:
                contact["follow_user"][new_userid] = {**contact["follow_user"].pop(old), "userid": new_userid}
        fields = [("ToUserName", self.corp_id), ("FromUserName", "sys"), ("CreateTime", int(self.clock())),
                  ("MsgType", "event"), ("Event", "change_contact"), ("ChangeType", "update_user"),
                  ("UserID", old), ("NewUserID", new_userid)]
        return self.encrypt_event(_xml(fields))
