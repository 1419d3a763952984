"""A simulated DingTalk (钉钉) open platform, for proving the DingTalk adapter in tests.

One aiohttp app serves the v1.0 API (api.dingtalk.com), the legacy oapi (oapi.dingtalk.com) and the
Stream gateway, so tests point api_base and oapi_base at the same server. Helpers produce inbound
traffic the way DingTalk sends it (signed robot callbacks, encrypted event callbacks, Stream frames).

Written from DingTalk's documentation, never from the adapter. Sources in comments:
  doc:   an open.dingtalk.com page (slug given)      probe: a recorded call against the real API
  sdk:   official SDK source (dingtalk-stream, the developerpedia Stream protocol page)
Where the docs are silent the choice is marked "unconfirmed".
"""

from __future__ import annotations

import asyncio
import base64
import collections
import hashlib
import hmac
import json
import random
import secrets
import string
import time
import uuid
from collections.abc import Callable
from typing import Any

from aiohttp import WSCloseCode, WSMsgType, web

from adapters.simkit import CallbackCipher, Faults

ROBOT_TOPIC = "/v1.0/im/bot/messages/get"  # sdk: robot messages arrive as CALLBACK frames on this topic
DEFAULT_AES_KEY = base64.b64encode(b"advisor-gateway-dingtalk-sim-key").decode().rstrip("=")  # 43 chars
# doc "消息发送与接收类型 · 接口方式": msgKey -> msgParam fields it needs.
MSG_KEYS = {
    "sampleText": ("content",),
    "sampleMarkdown": ("title", "text"),
    "sampleImageMsg": ("photoURL",),
    "sampleLink": ("text", "title", "picUrl", "messageUrl"),
    "sampleActionCard": ("title", "text", "singleTitle", "singleURL"),
}
API_PATHS = ("/v1.0/", "/topapi/", "/gettoken")  # what counts against the QPS limit (and random faults)
# set on a request the simulator failed on purpose ("qps": over the cap); RequestKey since aiohttp 3.12
SIM_FAULT = web.RequestKey("sim_fault", str) if hasattr(web, "RequestKey") else "sim_fault"
FAULT_KINDS = ("http429", "errcode90002", "errcode90018", "html_throttle", "http500", "timeout")
# doc how-to-process-api-throttling-on-the-dingtalk-server: per app per API -> 90018 (oapi) /
# Forbidden.AccessDenied.QpsLimitForAppkeyAndApi (v1.0); all apps on one API -> 90002 / ...QpsLimitForApi;
# per-IP throttling returns an HTML page with this content instead of an error code.
QPS_APP = (90018, "Forbidden.AccessDenied.QpsLimitForAppkeyAndApi", "应用调用该接口的频率超过限制")
QPS_API = (90002, "Forbidden.AccessDenied.QpsLimitForApi", "您的服务器调用钉钉开放平台当前接口的所有请求都被暂时禁用了")
HTML_THROTTLE = ('<!DOCTYPE html><html><head><meta charset="utf-8"><title>访问被拒绝</title></head><body>'
                 '{"status":1111,"wait":5,"source":"x5","punish":"deny","uuid":"%s"}</body></html>')
# doc getsendresult: forbidden_list codes - 143105 per-user daily quota, 143106 same content again.
FORBID_CODES = {"user_daily_limit": "143105", "duplicate_content_today": "143106"}
PNG_1PX = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==")


def robot_sign(secret: str, timestamp_ms: int | str) -> str:
    """doc receive-message: sign = Base64(HmacSHA256(key=appSecret, msg=timestamp + "\\n" + appSecret))."""
    digest = hmac.new(secret.encode(), f"{timestamp_ms}\n{secret}".encode(), hashlib.sha256).digest()
    return base64.b64encode(digest).decode()


EventCrypto = CallbackCipher  # adapters/simkit.py: written from the docs, not from the adapter



def _json_object(text: Any) -> dict | None:
    try:
        value = json.loads(text)
    except (TypeError, ValueError):
        return None
    return value if isinstance(value, dict) else None


class DingTalkSimulator:
    def __init__(self, *, app_key: str, app_secret: str, robot_code: str, agent_id: str,
                 corp_id: str = "dingcorp0001", token: str = "sim-token", aes_key: str = DEFAULT_AES_KEY,
                 token_ttl: int = 7200, clock: Callable[[], float] = time.time):
        self.app_key, self.app_secret, self.robot_code = app_key, app_secret, robot_code
        self.agent_id, self.corp_id, self.token_ttl, self.clock = str(agent_id), corp_id, token_ttl, clock
        self.crypto = EventCrypto(token, aes_key, corp_id)  # ReceiveId = corp_id (suite key for ISV apps)
        # configuration tests may change
        self.known_users: set[str] | None = None  # None: every userId exists in the org
        self.flow_controlled_users: set[str] = set()  # batchSend reports these in flowControlledStaffIdList
        self.batch_max_users = 20  # doc chatbots-send-one-on-one-chat-messages-in-batches: "每次最多传20个"
        self.notice_max_users = 100  # doc asyncsend_v2: userid_list at most 100
        self.notice_max_bytes = 2048  # doc asyncsend_v2: msg at most 2048 bytes
        self.notice_daily_limit = 500  # doc asyncsend_v2: internal apps, 500 per user per day
        # probe (fake token against api.dingtalk.com, 2026-09) and several issue reports: HTTP *400*
        # {"code":"InvalidAuthentication","message":"不合法的access_token","requestid"}; set 401 if you must.
        self.invalid_token_status = 400
        self.qps_limit: float | None = None
        self.qps_scope = "app"  # "app": one window per app (PLATFORM_RULES); "api": per app per path (doc)
        self.qps_clock: Callable[[], float] = time.monotonic  # real time: adapters pace with real sleeps
        self.timeout_delay = 5.0
        self.timeout_delivers = True  # a timed-out call still takes effect later, as a real one may
        self.html_throttle_status = 200  # the IP throttle page may come with 200; 503 is also seen
        # random faults (chaos runs): this share of API calls fails with a kind drawn from fault_kinds;
        # seed fault_random to replay a run
        self.fault_rate = 0.0
        self.fault_kinds: tuple[str, ...] = ("http500", "http429", "html_throttle", "timeout")
        self.fault_random = random.Random(0)
        self.injected: collections.Counter = collections.Counter()  # fault kind -> calls failed on purpose
        self.throttled = 0  # calls refused by qps_limit: the caller went over the cap (nothing injected)
        # what happened, for assertions
        self.robot_inbox: dict[str, list[dict]] = collections.defaultdict(list)
        self.work_notices: dict[str, list[dict]] = collections.defaultdict(list)
        self.dropped_notices: list[dict] = []
        self.calls: collections.Counter = collections.Counter()
        self.tokens_issued = 0
        self.stream_acks: dict[str, dict] = {}
        self.stream_pongs: set[str] = set()  # pings answered with their opaque echoed
        self.stream_bad_frames: list[str] = []  # upstream frames that are not valid acks
        self.files: dict[str, tuple[bytes, str]] = {}  # downloadCode -> (bytes, content type)
        # internal state
        self._token, self._token_exp, self._next_task, self._rr = None, 0.0, 256271667526, 0
        self._faults = Faults(FAULT_KINDS)
        self._windows: dict[str, collections.deque] = collections.defaultdict(collections.deque)
        self._oto: dict[str, dict] = {}  # processQueryKey -> {"users", "read"}
        self._tasks: dict[int, dict] = {}  # work-notice task_id -> result lists
        self._notice_days: dict[tuple, dict] = collections.defaultdict(lambda: {"count": 0, "contents": set()})
        self._tickets: dict[str, dict] = {}
        self._conns: dict[str, dict] = {}
        self._pings: dict[str, str] = {}  # messageId -> opaque
        self._late: set[asyncio.Task] = set()
        self._app_uuid = str(uuid.uuid4())

    # ---- the HTTP app ------------------------------------------------------------------------------
    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware])
        app.router.add_post("/v1.0/oauth2/accessToken", self._access_token)
        app.router.add_post("/v1.0/robot/oToMessages/batchSend", self._batch_send)
        app.router.add_get("/v1.0/robot/oToMessages/readStatus", self._read_status)
        app.router.add_post("/v1.0/robot/messageFiles/download", self._file_download)
        app.router.add_post("/v1.0/gateway/connections/open", self._open_connection)
        app.router.add_get("/connect", self._stream_socket)  # sdk: endpoint wss://…/connect?ticket=
        app.router.add_get("/gettoken", self._gettoken)
        app.router.add_post("/topapi/message/corpconversation/asyncsend_v2", self._asyncsend)
        app.router.add_post("/topapi/message/corpconversation/getsendresult", self._getsendresult)
        app.router.add_get("/sim-files/{code}", self._file_body)
        app.on_shutdown.append(self._shutdown)
        return app

    @web.middleware
    async def _middleware(self, request: web.Request, handler):
        path = request.path
        self.calls[path] += 1
        v1 = path.startswith("/v1.0/")
        kind = self._faults.take(path) or self._random_fault(path)
        if kind:  # marked on the request, so an outer middleware can tell injected faults from real ones
            request[SIM_FAULT] = kind
            self.injected[kind] += 1
        if kind == "timeout":
            await request.read()  # buffer the body: the late handler still needs it after the client left
            task = asyncio.ensure_future(self._after_delay(handler, request))
            self._late.add(task)
            task.add_done_callback(self._late.discard)
            return await asyncio.shield(task)
        if kind:
            return self._fault(kind, v1)
        if self.qps_limit is not None and path.startswith(API_PATHS):
            window = self._windows["*" if self.qps_scope == "app" else path]
            now = self.qps_clock()
            while window and window[0] <= now - 1.0:
                window.popleft()
            if len(window) >= self.qps_limit:
                request[SIM_FAULT] = "qps"
                self.throttled += 1
                return self._throttle(v1, QPS_APP)
            window.append(now)
        return await handler(request)

    async def _after_delay(self, handler, request):
        await asyncio.sleep(self.timeout_delay)
        if not self.timeout_delivers:
            return self._fault("http500", request.path.startswith("/v1.0/"))
        return await handler(request)

    async def _shutdown(self, _app) -> None:
        for task in list(self._late):
            task.cancel()
        for conn in list(self._conns.values()):
            await conn["ws"].close(code=WSCloseCode.GOING_AWAY)

    # ---- fault injection ---------------------------------------------------------------------------
    def _random_fault(self, path: str) -> str | None:
        if self.fault_rate and path.startswith(API_PATHS) and self.fault_random.random() < self.fault_rate:
            return self.fault_random.choice(self.fault_kinds)
        return None

    def fail_next(self, n: int, kind: str, path_prefix: str = "/") -> None:
        """The next n calls under path_prefix fail this way instead of being handled."""
        self._faults.add(n, kind, path_prefix)

    def _fault(self, kind: str, v1: bool) -> web.Response:
        if kind == "http429":
            return self._throttle(v1, QPS_APP, status=429)
        if kind in ("errcode90002", "errcode90018"):
            return self._throttle(v1, QPS_API if kind == "errcode90002" else QPS_APP)
        if kind == "html_throttle":
            return web.Response(status=self.html_throttle_status, text=HTML_THROTTLE % uuid.uuid4(),
                                content_type="text/html")
        if v1:  # probe: the v1.0 gateway's unknown error is 500 {"code":"unknownError","message":"未知错误"}
            return self._v1_err(500, "unknownError", "未知错误")
        return web.json_response({"errcode": -1, "errmsg": "系统繁忙"}, status=500)

    def _throttle(self, v1: bool, which: tuple, status: int | None = None) -> web.Response:
        # v1.0 throttling comes as HTTP 403 with a code; oapi as HTTP 200 with an errcode
        if v1:
            return self._v1_err(status or 403, which[1], which[2])
        return web.json_response({"errcode": which[0], "errmsg": which[2]}, status=status or 200)

    # ---- shared helpers ----------------------------------------------------------------------------
    def _v1_err(self, status: int, code: str, message: str) -> web.Response:
        # v1.0 error shape (doc 全局错误码, probe): {"code", "message", "requestid"}
        body = {"code": code, "message": message, "requestid": str(uuid.uuid4()).upper()}
        return web.json_response(body, status=status)

    def _top_err(self, errcode: int, errmsg: str, **extra) -> web.Response:
        # topapi errors (probe): HTTP 200 {"errcode", "errmsg", ..., "request_id"}
        return web.json_response({"errcode": errcode, "errmsg": errmsg, **extra, "request_id": secrets.token_hex(6)})

    def _known(self, user_id: str) -> bool:
        return self.known_users is None or user_id in self.known_users

    def _day(self) -> str:  # "the same day" taken as the China Standard Time calendar day (unconfirmed)
        return time.strftime("%Y-%m-%d", time.gmtime(self.clock() + 8 * 3600))

    @staticmethod
    async def _body(request: web.Request) -> dict:  # topapi: JSON, or a form as in the docs' curl examples
        if request.content_type == "application/json":
            return _json_object(await request.text()) or {}
        return dict(await request.post())

    @staticmethod
    async def _v1_body(request: web.Request) -> dict:
        # v1.0 takes JSON only: a form body gets 400 "body is mandatory" (alibabacloud-php-sdk issue #36)
        body = _json_object(await request.text()) if request.content_type == "application/json" else None
        if body is None:
            error = {"code": "Missingbody", "message": "body is mandatory for this action.", "requestid": str(uuid.uuid4())}
            raise web.HTTPBadRequest(text=json.dumps(error), content_type="application/json")
        return body

    # ---- tokens ------------------------------------------------------------------------------------
    def _issue_token(self) -> str:
        # doc obtain-orgapp-token: 7200 s; "有效期内重复获取会返回相同结果并自动续期，过期后获取会返回新的"
        now = self.clock()
        if self._token is None or now >= self._token_exp:
            self._token = "simtok" + secrets.token_hex(12)
        self._token_exp = now + self.token_ttl
        self.tokens_issued += 1
        return self._token

    def _token_ok(self, token: str | None) -> bool:
        return bool(token) and token == self._token and self.clock() < self._token_exp

    def _v1_auth(self, request: web.Request) -> web.Response | None:
        token = request.headers.get("x-acs-dingtalk-access-token")
        if not token:  # probe: a query ?access_token= or a Bearer header is not read
            return self._v1_err(400, "AuthenticationFailed.MissingParameter", "缺少参数：x-acs-dingtalk-access-token")
        if not self._token_ok(token):  # expired tokens look the same as invalid ones (unconfirmed)
            return self._v1_err(self.invalid_token_status, "InvalidAuthentication", "不合法的access_token")
        return None

    def _oapi_auth(self, request: web.Request) -> web.Response | None:
        # probe: topapi answers a bad token with errcode 88 + sub_code 40014, a missing one with 40000
        token = request.query.get("access_token")
        if self._token_ok(token):
            return None
        sub, msg = ("40014", "不合法的access_token") if token else ("40000", "access_token is blank")
        return self._top_err(88, f"ding talk error[subcode={sub},submsg={msg}]", sub_code=sub, sub_msg=msg)

    async def _access_token(self, request: web.Request) -> web.Response:
        body = await self._v1_body(request)
        if body.get("appKey") != self.app_key or body.get("appSecret") != self.app_secret:
            # doc + probe: HTTP 400 {"code":"invalidClientIdOrSecret","message":"无效的clientId或者clientSecret"}
            return self._v1_err(400, "invalidClientIdOrSecret", "无效的clientId或者clientSecret")
        return web.json_response({"accessToken": self._issue_token(), "expireIn": self.token_ttl})

    async def _gettoken(self, request: web.Request) -> web.Response:
        key, secret = request.query.get("appkey"), request.query.get("appsecret")
        if not key:  # probe: {"errcode":40035,"errmsg":"缺少参数 corpid or appkey"}
            return web.json_response({"errcode": 40035, "errmsg": "缺少参数 corpid or appkey"})
        if (key, secret) != (self.app_key, self.app_secret):  # probe: 40096, still HTTP 200
            return web.json_response({"errcode": 40096, "errmsg": "不合法的appKey或appSecret"})
        token = self._issue_token()
        return web.json_response({"errcode": 0, "errmsg": "ok", "access_token": token, "expires_in": self.token_ttl})

    # ---- robot 1:1 messages (v1.0) -----------------------------------------------------------------
    async def _batch_send(self, request: web.Request) -> web.Response:
        if denied := self._v1_auth(request):
            return denied
        body = await self._v1_body(request)
        robot, users, key, param = (body.get(k) for k in ("robotCode", "userIds", "msgKey", "msgParam"))
        parsed = _json_object(param) if isinstance(param, str) else None  # msgParam is a JSON *string*
        # error codes: doc chatbots-send-one-on-one-chat-messages-in-batches (all HTTP 400)
        problem = (
            ("invalidParameter.robotCode.empty", "机器人robotCode为空") if not robot else
            ("invalidParameter.robotCode.auth", "该应用appkey与机器人robotCode不匹配") if robot != self.robot_code else
            ("invalidParameter.userIds.empty", "用户userId列表为空") if not users or not isinstance(users, list) else
            ("invalidParameter.userIds.overMax", "用户userId列表超过最大限制") if len(users) > self.batch_max_users else
            ("invalidParameter.msgKey.empty", "缺少msgKey") if not key else
            ("invalidParameter.msgKey.invalid", "msgKey无效") if key not in MSG_KEYS else
            ("invalidParameter.msgParam.invalid", "msgParam必须是json格式") if parsed is None else
            # a template field missing: the docs name no code for it (unconfirmed)
            ("invalidParameter.param.invalid", "参数不合法") if any(not parsed.get(f) for f in MSG_KEYS[key]) else
            None
        )
        if problem:
            return self._v1_err(400, *problem)
        users = list(dict.fromkeys(users))
        invalid = [u for u in users if not self._known(u)]
        flow = [u for u in users if u not in invalid and u in self.flow_controlled_users]
        pqk = base64.b64encode(secrets.token_bytes(24)).decode()
        delivered = [u for u in users if u not in invalid and u not in flow]
        for user in delivered:
            self.robot_inbox[user].append({"msgKey": key, "msgParam": parsed, "at": self.clock(), "processQueryKey": pqk})
        self._oto[pqk] = {"users": delivered, "read": {}}
        return web.json_response({"processQueryKey": pqk, "invalidStaffIdList": invalid,
                                  "flowControlledStaffIdList": flow})

    def mark_read(self, process_query_key: str, user_id: str) -> None:
        self._oto[process_query_key]["read"][user_id] = int(self.clock() * 1000)

    async def _read_status(self, request: web.Request) -> web.Response:
        if denied := self._v1_auth(request):
            return denied
        pqk = request.query.get("processQueryKey")
        if not pqk:  # codes from the readStatus doc's error table
            return self._v1_err(400, "invalidParameter.processQueryKey.missing", "缺少processQueryKey")
        if request.query.get("robotCode") != self.robot_code:
            return self._v1_err(400, "invalidParameter.robotCode.invalid", "无效的robotCode")
        if pqk not in self._oto:
            return self._v1_err(400, "invalid.processQueryKey", "无效的processQueryKey")
        rec = self._oto[pqk]
        infos = [{"name": u, "userId": u, "readStatus": "READ" if u in rec["read"] else "UNREAD",
                  **({"readTimestamp": rec["read"][u]} if u in rec["read"] else {})} for u in rec["users"]]
        return web.json_response({"sendStatus": "SUCCESS", "messageReadInfoList": infos})

    def add_file(self, data: bytes, content_type: str = "image/png", code: str | None = None) -> str:
        """Register media a robot message refers to; returns its downloadCode."""
        code = code or "dc" + secrets.token_hex(16)
        self.files[code] = (data, content_type)
        return code

    async def _file_download(self, request: web.Request) -> web.Response:
        if denied := self._v1_auth(request):
            return denied
        body = await self._v1_body(request)
        if body.get("robotCode") != self.robot_code:  # must be the robot that received the message
            return self._v1_err(400, "invalidParameter.robotCode.invalid", "无效的robotCode")
        code = body.get("downloadCode")
        if code not in self.files:  # code name unconfirmed
            return self._v1_err(400, "invalidParameter.downloadCode.invalid", "无效的downloadCode")
        url = request.url.with_path(f"/sim-files/{code}").with_query(None)
        return web.json_response({"downloadUrl": str(url)})

    async def _file_body(self, request: web.Request) -> web.Response:
        data, content_type = self.files.get(request.match_info["code"], (None, ""))
        return web.Response(body=data, content_type=content_type) if data is not None else web.Response(status=404)

    # ---- work notifications (oapi topapi) ----------------------------------------------------------
    async def _asyncsend(self, request: web.Request) -> web.Response:
        if denied := self._oapi_auth(request):
            return denied
        body = await self._body(request)
        if str(body.get("agent_id", "")) != self.agent_id:
            return self._top_err(40056, "不合法的agentid")  # global code list
        raw_users, raw_msg = body.get("userid_list"), body.get("msg")
        msg_text = raw_msg if isinstance(raw_msg, str) else json.dumps(raw_msg, ensure_ascii=False, separators=(",", ":"))
        msg = _json_object(msg_text)
        users = list(dict.fromkeys(u.strip() for u in raw_users.split(",") if u.strip())) \
            if isinstance(raw_users, str) else []
        # doc: userid_list is a comma-separated String (not an array), <= 100; msg <= 2048 bytes, one
        # msgtype. The errcode for each violation is unconfirmed: 40035 (不合法的参数) is used.
        problem = (
            "userid_list 必须是逗号分隔的字符串" if not users else
            f"userid_list 最多 {self.notice_max_users} 个" if len(users) > self.notice_max_users else
            "msg 格式不正确" if msg is None or msg.get("msgtype") not in msg else
            f"msg 超过 {self.notice_max_bytes} 字节" if len(msg_text.encode()) > self.notice_max_bytes else None
        )
        if problem:
            return self._top_err(40035, f"不合法的参数: {problem}")
        task_id, self._next_task = self._next_task, self._next_task + 1
        task = self._tasks[task_id] = {"invalid": [], "delivered": [], "forbidden": []}
        day, content, now = self._day(), json.dumps(msg, sort_keys=True, ensure_ascii=False), self.clock()
        for user in users:
            if not self._known(user):
                task["invalid"].append(user)
                continue
            # doc: "同一员工一天只能收一条内容相同的消息", 500/user/day; past either it still returns
            # success but the user never receives it - hence the silent drop.
            sent = self._notice_days[(user, day)]
            reason = ("duplicate_content_today" if content in sent["contents"] else
                      "user_daily_limit" if sent["count"] >= self.notice_daily_limit else None)
            if reason:
                self.dropped_notices.append({"userid": user, "msg": msg, "reason": reason, "task_id": task_id, "at": now})
                task["forbidden"].append((user, FORBID_CODES[reason]))
                continue
            sent["contents"].add(content)
            sent["count"] += 1
            self.work_notices[user].append({"msg": msg, "at": now, "task_id": task_id})
            task["delivered"].append(user)
        return web.json_response({"errcode": 0, "errmsg": "ok", "task_id": task_id, "request_id": secrets.token_hex(6)})

    async def _getsendresult(self, request: web.Request) -> web.Response:
        if denied := self._oapi_auth(request):
            return denied
        body = await self._body(request)
        if str(body.get("agent_id", "")) != self.agent_id:
            return self._top_err(40056, "不合法的agentid")
        try:
            task = self._tasks[int(body.get("task_id"))]
        except (KeyError, TypeError, ValueError):
            return self._top_err(40035, "不合法的参数: task_id")  # unconfirmed code
        # doc getsendresult: send_result lists; forbidden = filtered by flow control, never sent
        result = {
            "invalid_user_id_list": task["invalid"], "failed_user_id_list": [], "read_user_id_list": [],
            "unread_user_id_list": task["delivered"], "invalid_dept_id_list": [],
            "forbidden_user_id_list": [u for u, _ in task["forbidden"]],
            "forbidden_list": [{"code": c, "count": 1, "userid": u} for u, c in task["forbidden"]],
        }
        return web.json_response({"errcode": 0, "errmsg": "ok", "send_result": result,
                                  "request_id": secrets.token_hex(6)})

    # ---- inbound: robot HTTP callbacks and encrypted event callbacks -------------------------------
    def _robot_message(self, user_id: str, text: str | None = None, *, nick: str = "张三", msgtype: str = "text",
                       content: dict | None = None, msg_id: str | None = None,
                       timestamp_ms: int | None = None) -> dict:
        # fields as in doc receive-message and the Stream SDK's captured frames
        ts = int(self.clock() * 1000) if timestamp_ms is None else timestamp_ms
        uid_hash = hashlib.sha256(f"{self.corp_id}/{user_id}".encode()).digest()
        msg = {
            "conversationId": "cid" + base64.b64encode(uid_hash[:16]).decode(),
            "chatbotCorpId": self.corp_id, "chatbotUserId": "$:LWCP_v1:$" + self.robot_code,
            "msgId": msg_id or "msg" + base64.b64encode(secrets.token_bytes(16)).decode(),
            "senderNick": nick, "isAdmin": False, "senderStaffId": user_id,
            "senderId": "$:LWCP_v1:$" + base64.b64encode(uid_hash[16:]).decode(),
            "senderCorpId": self.corp_id, "conversationType": "1",  # "1" = 1:1 chat, "2" = group
            "createAt": ts, "sessionWebhookExpiredTime": ts + 90 * 60 * 1000,  # protocol page sample: +90 min
            "sessionWebhook": "https://oapi.dingtalk.com/robot/sendBySession?session=" + secrets.token_hex(16),
            "robotCode": self.robot_code, "msgtype": msgtype,
        }
        if msgtype == "text":
            msg["text"] = {"content": text or ""}
        elif content is not None:
            msg["content"] = content
        elif msgtype == "richText":
            msg["content"] = {"richText": [{"text": text or ""}]}
        elif msgtype in ("picture", "file", "audio", "video"):
            code = self.add_file(PNG_1PX) if msgtype == "picture" else self.add_file(b"sim", "application/octet-stream")
            msg["content"] = {"downloadCode": code, **({"pictureDownloadCode": code} if msgtype == "picture" else
                                                       {"fileName": "file.bin"} if msgtype == "file" else {})}
        return msg

    def robot_callback(self, user_id: str, text: str | None = None, *, nick: str = "张三", msgtype: str = "text",
                       content: dict | None = None, msg_id: str | None = None, timestamp_ms: int | None = None,
                       secret: str | None = None) -> tuple[dict, bytes]:
        """(headers, body) of the POST DingTalk makes to the robot's HTTP callback URL. The signature
        covers only the timestamp header, never the body; `secret` forges it."""
        msg = self._robot_message(user_id, text, nick=nick, msgtype=msgtype, content=content, msg_id=msg_id,
                                  timestamp_ms=timestamp_ms)
        ts = msg["createAt"]
        headers = {"Content-Type": "application/json; charset=utf-8", "timestamp": str(ts),
                   "sign": robot_sign(secret or self.app_secret, ts)}
        return headers, json.dumps(msg, ensure_ascii=False).encode()

    def event_callback(self, event: dict, *, timestamp: str | None = None,
                       nonce: str | None = None) -> tuple[dict, bytes]:
        """(query params, body) of an encrypted event push: POST url?signature=&timestamp=&nonce= with
        {"encrypt": …}. DingTalk sends the signature as both `signature` and `msg_signature`."""
        timestamp = timestamp or str(int(self.clock() * 1000))
        nonce = nonce or "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(8))
        encrypt = self.crypto.encrypt(json.dumps(event, ensure_ascii=False, separators=(",", ":")))
        sig = self.crypto.sign(timestamp, nonce, encrypt)
        query = {"signature": sig, "msg_signature": sig, "timestamp": timestamp, "nonce": nonce}
        return query, json.dumps({"encrypt": encrypt}).encode()

    def url_check_callback(self) -> tuple[dict, bytes]:
        """Sent when a callback URL is registered; the answer must be an encrypted "success" (1.5 s)."""
        return self.event_callback({"EventType": "check_url"})

    def decrypt_reply(self, body: bytes | str | dict) -> str:
        """Check the gateway's {"msg_signature","timeStamp","nonce","encrypt"} and return its plaintext."""
        data = body if isinstance(body, dict) else json.loads(body)
        missing = {"msg_signature", "timeStamp", "nonce", "encrypt"} - set(data)
        if missing:
            raise ValueError(f"reply lacks {sorted(missing)}")
        expected = self.crypto.sign(str(data["timeStamp"]), data["nonce"], data["encrypt"])
        if not hmac.compare_digest(expected, data["msg_signature"]):
            raise ValueError("msg_signature does not match")
        return self.crypto.decrypt(data["encrypt"])

    # ---- Stream mode -------------------------------------------------------------------------------
    async def _open_connection(self, request: web.Request) -> web.Response:
        body = await self._v1_body(request)
        if body.get("clientId") != self.app_key or body.get("clientSecret") != self.app_secret:
            return self._v1_err(400, "invalidClientIdOrSecret", "无效的clientId或者clientSecret")  # unconfirmed
        subs = body.get("subscriptions")
        # sdk protocol page: type EVENT or CALLBACK; EVENT topics support only "*"
        if not isinstance(subs, list) or not subs or not all(
                isinstance(s, dict) and s.get("type") in ("EVENT", "CALLBACK") and s.get("topic")
                and (s["type"] == "CALLBACK" or s["topic"] == "*") for s in subs):
            return self._v1_err(400, "invalidParameter.subscriptions", "subscriptions不合法")  # unconfirmed
        ticket = str(uuid.uuid4())
        self._tickets[ticket] = {"at": self.clock(), "subs": {(s["type"], s["topic"]) for s in subs}}
        endpoint = f"{'wss' if request.secure else 'ws'}://{request.host}/connect"
        if "application/json" not in request.headers.get("Accept", ""):
            # sdk (nodejs client.ts): "这个接口得加个[Accept: application/json]，否则默认返回的会是xml"
            xml = f"<OpenConnectionResponse><endpoint>{endpoint}</endpoint><ticket>{ticket}</ticket></OpenConnectionResponse>"
            return web.Response(text=xml, content_type="application/xml")
        return web.json_response({"endpoint": endpoint, "ticket": ticket})

    async def _stream_socket(self, request: web.Request) -> web.StreamResponse:
        # sdk protocol page: a ticket is valid for 90 s and opens exactly one connection
        ticket = self._tickets.pop(request.query.get("ticket", ""), None)
        if ticket is None or self.clock() - ticket["at"] > 90:
            return web.Response(status=401, text="invalid ticket")
        ws = web.WebSocketResponse(timeout=2.0)
        await ws.prepare(request)
        conn_id = str(uuid.uuid4())
        self._conns[conn_id] = {"ws": ws, "id": conn_id, "subs": ticket["subs"]}
        try:
            async for frame in ws:
                if frame.type == WSMsgType.TEXT:
                    self._upstream(frame.data)
        finally:
            self._conns.pop(conn_id, None)
        return ws

    def _upstream(self, text: str) -> None:
        # sdk: ack = {"code": 200, "headers": {"contentType", "messageId"}, "message": "OK", "data": "<json>"}
        frame = _json_object(text)
        headers = frame.get("headers") if frame else None
        if not (isinstance(headers, dict) and headers.get("messageId") and isinstance(frame.get("code"), int)
                and isinstance(frame.get("data", ""), str)):
            self.stream_bad_frames.append(text)
            return
        mid = headers["messageId"]
        self.stream_acks[mid] = frame
        if mid in self._pings and (_json_object(frame.get("data")) or {}).get("opaque") == self._pings[mid]:
            self.stream_pongs.add(mid)

    @property
    def stream_connections(self) -> int:
        return len(self._conns)

    def _message_id(self) -> str:  # shaped like the protocol page's "213d841d_972_1898bb26334_70a7"
        return f"{secrets.token_hex(4)}_{secrets.randbelow(999)}_{int(self.clock() * 1000):x}_{secrets.token_hex(2)}"

    async def _send(self, conn: dict, kind: str, topic: str, data: dict, **headers) -> str:
        mid = self._message_id()
        ids = {} if kind == "SYSTEM" else {"appId": self._app_uuid, "connectionId": conn["id"]}
        frame = {"specVersion": "1.0", "type": kind, "headers": {
            **ids, "contentType": "application/json", "messageId": mid, "time": str(int(self.clock() * 1000)),
            "topic": topic, **headers}, "data": json.dumps(data, ensure_ascii=False)}  # data: a JSON *string*
        await conn["ws"].send_str(json.dumps(frame, ensure_ascii=False))
        return mid

    def _pick(self, kind: str, topic: str) -> dict:
        # the server pushes each message to ONE of the subscribed connections (protocol page FAQ)
        conns = [c for c in self._conns.values() if (kind, topic) in c["subs"]]
        if not conns:
            raise LookupError(f"no Stream client subscribed to {kind} {topic}")
        self._rr += 1
        return conns[self._rr % len(conns)]

    async def push_stream(self, user_id: str, text: str, **kw) -> str:
        """Deliver a robot message as a CALLBACK frame (fire-and-forget: not re-sent without an ack)."""
        return await self._send(self._pick("CALLBACK", ROBOT_TOPIC), "CALLBACK", ROBOT_TOPIC,
                                self._robot_message(user_id, text, **kw))

    async def push_stream_event(self, event_type: str, data: dict) -> str:
        """Deliver an org event (e.g. user_leave_org) as an EVENT frame; the ack's data carries status."""
        now = str(int(self.clock() * 1000))
        return await self._send(self._pick("EVENT", "*"), "EVENT", "*", data, eventType=event_type,
                                eventId=uuid.uuid4().hex, eventCorpId=self.corp_id, eventBornTime=now,
                                eventUnifiedAppId=self._app_uuid)

    async def ping_stream(self) -> list[str]:
        """SYSTEM ping to every connection; a client must answer with the same opaque (stream_pongs)."""
        mids = []
        for conn in list(self._conns.values()):
            opaque = str(uuid.uuid4())
            mid = await self._send(conn, "SYSTEM", "ping", {"opaque": opaque})
            self._pings[mid] = opaque
            mids.append(mid)
        return mids

    async def drop_stream(self) -> None:
        """SYSTEM disconnect, then close every socket (the real server waits 10 s; this does not)."""
        for conn in list(self._conns.values()):
            self._conns.pop(conn["id"], None)
            try:
                await self._send(conn, "SYSTEM", "disconnect", {"reason": "persistent connection is timeout"})
            finally:
                await conn["ws"].close(code=WSCloseCode.GOING_AWAY)
