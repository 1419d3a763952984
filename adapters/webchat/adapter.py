"""Webchat adapter: the HTTP + WebSocket API of CONTRACT.md for the brand's own app."""

from __future__ import annotations

import uuid
from dataclasses import asdict
from pathlib import Path

from aiohttp import web

from adapters.webchat import api, codec, crypto, events
from adapters.webchat.config import WebchatConfig
from adapters.webim import bearer, history_params, live, read_json, shared_js
from gateway.adapter import Adapter, BadRequest, Capabilities, RouteDef, Unauthorized, register
from gateway.ingress import error_response
from gateway.model import Identity
from gateway.pages import page_response

PAGE = Path(__file__).parent / "static" / "index.html"


@register
class WebchatAdapter(Adapter):
    platform = "webchat"
    side = "customer"
    # Our own pages: the rate only guards them against a runaway sender, no platform counts it.
    caps = Capabilities(segments=codec.SEGMENTS, rate_per_sec=5000, burst=500, platform_rate=False)
    config_class = WebchatConfig
    config: WebchatConfig

    @property
    def base(self) -> str:
        return f"/webchat/{self.account}"

    def routes(self) -> list[RouteDef]:
        b = self.base
        return [
            RouteDef("GET", f"{b}", self._redirect_page),
            RouteDef("GET", f"{b}/", self._page),
            RouteDef("GET", f"{b}/webim.js", shared_js),
            RouteDef("POST", f"{b}/session", self._session),
            RouteDef("POST", f"{b}/dev-session", self._dev_session),
            RouteDef("POST", f"{b}/bind", self._ingest),
            RouteDef("POST", f"{b}/messages", self._ingest),
            RouteDef("GET", f"{b}/messages", self._history),
            RouteDef("GET", f"{b}/advisor", self._advisor),
            RouteDef("GET", f"{b}/invites/{{code}}", self._invite),
            RouteDef("GET", f"{b}/ws", self._ws),
        ]

    # -- sessions -----------------------------------------------------------------------------

    def _now(self) -> int:
        return int(self.host.clock.now().timestamp())

    def _issue(self, user_id: str, name: str | None, unionid: str | None = None) -> web.Response:
        expires = self._now() + self.config.session_ttl
        token = crypto.issue_token(self.config.secret, user_id, name, expires, unionid)
        return web.json_response({"token": token, "expires_at": expires, "user_id": user_id})

    @staticmethod
    def _user(body: dict) -> tuple[str, str | None]:
        user_id, name = body.get("user_id"), body.get("name")
        if not isinstance(user_id, str) or not 1 <= len(user_id) <= 128:
            raise BadRequest("user_id must be a string of 1..128 characters", field="user_id")
        if name is not None and (not isinstance(name, str) or len(name) > 64):
            raise BadRequest("name must be a string of at most 64 characters", field="name")
        return user_id, (name.strip() or None) if name else None

    async def _session(self, request: web.Request) -> web.Response:
        try:
            body = await read_json(request, 4096)
            user_id, name = self._user(body)
            ts, sig = body.get("ts"), body.get("sig")
            if isinstance(ts, str) and ts.isascii() and ts.isdigit():  # "¹²³".isdigit() is true too
                ts = int(ts)
            if not isinstance(ts, int) or isinstance(ts, bool):
                raise BadRequest("ts must be a unix timestamp in seconds", field="ts")
            if not isinstance(sig, str):
                raise BadRequest("sig must be a hex string", field="sig")
            unionid = body.get("unionid")
            if unionid is not None and (not isinstance(unionid, str) or not 1 <= len(unionid) <= 128):
                raise BadRequest("unionid must be a string of 1..128 characters", field="unionid")
        except BadRequest as e:
            return error_response(e.status, e.code, str(e), e.field)
        if abs(self._now() - ts) > self.config.ts_window:
            return error_response(401, "unauthorized", "ts is outside the allowed window")
        refused = crypto.check_session(self.config.secret, user_id, ts, sig, version=body.get("v"), unionid=unionid,
                                       legacy=self.config.legacy_signature)
        if refused:
            return error_response(401, "unauthorized", refused)
        return self._issue(user_id, name, unionid)

    async def _dev_session(self, request: web.Request) -> web.Response:
        if not self.config.dev_login:
            return error_response(404, "not_found", "dev login is off for this account")
        try:
            user_id, name = self._user(await read_json(request, 4096))
        except BadRequest as e:
            return error_response(e.status, e.code, str(e), e.field)
        return self._issue(user_id, name)

    def _claims(self, request: web.Request) -> dict:
        claims = crypto.read_token(self.config.secret, bearer(request), self._now())
        if claims is None:
            raise Unauthorized("invalid or expired session token")
        return claims

    # -- the Adapter interface -----------------------------------------------------------------

    async def _ingest(self, request: web.Request) -> web.StreamResponse:
        return await self.host.ingest(self, request)

    async def verify(self, request: web.Request) -> events.WebchatRaw:
        claims = self._claims(request)
        body = await read_json(request, self.host.max_body)
        kind = "bind" if request.path.endswith("/bind") else "message"
        return events.WebchatRaw(self.account, kind, claims["u"], claims.get("n"), body,
                                 self.host.clock.now(), uuid.uuid4().hex, self.config.max_text, claims.get("x"))

    def parse(self, raw: events.WebchatRaw):
        return events.parse(raw)

    def ack(self, raw: events.WebchatRaw, results, duplicate: bool) -> web.Response:
        if raw.kind == "message":
            return web.json_response(
                {"client_msg_id": raw.body.get("client_msg_id"), "duplicate": duplicate, "status": "accepted"},
                status=202,
            )
        result = results[0] if results else None
        if not isinstance(result, dict):
            return error_response(500, "internal", "binding was not processed")
        if "error" in result:
            status = {"invite_not_found": 404, "clerk_unavailable": 409, "already_bound": 409,
                      "switch_available": 409, "consent_required": 422}.get(result["error"], 400)
            extra = {k: result[k] for k in ("advisor", "new_advisor") if k in result}
            return web.json_response({"error": {"code": result["error"], "message": result["message"]}, **extra},
                                     status=status)
        return web.json_response(result)

    async def send(self, target, message, *, idem_key: str, kind: str = "reply"):
        return api.push(self.host.hub(), self.account, target.identity.external_id, message)

    # -- reads and pages -------------------------------------------------------------------------

    async def _history(self, request: web.Request) -> web.Response:
        try:
            claims = self._claims(request)
            after, limit = history_params(request)
        except Unauthorized as e:
            return error_response(401, "unauthorized", str(e))
        except BadRequest as e:
            return error_response(e.status, e.code, str(e), e.field)
        return web.json_response(await self.host.history(Identity(self.platform, self.account, claims["u"]), after, limit))

    async def _advisor(self, request: web.Request) -> web.Response:
        try:
            claims = self._claims(request)
        except Unauthorized as e:
            return error_response(401, "unauthorized", str(e))
        advisor = await self.host.state.advisor_of(Identity(self.platform, self.account, claims["u"]))
        return web.json_response({"advisor": asdict(advisor) if advisor else None})

    async def _invite(self, request: web.Request) -> web.Response:
        """Who an invite binds to, so the consent text can name the advisor before binding."""
        try:
            self._claims(request)
        except Unauthorized as e:
            return error_response(401, "unauthorized", str(e))
        advisor = await self.host.state.invite_advisor(request.match_info["code"].lower()[:32])
        if advisor is None:
            return error_response(404, "invite_not_found", "no such invite")
        return web.json_response({"advisor": asdict(advisor)})

    async def _ws(self, request: web.Request) -> web.StreamResponse:
        try:
            claims = self._claims(request)
        except Unauthorized as e:
            return error_response(401, "unauthorized", str(e))
        return await live(request, self.host.hub(), self.account, claims["u"])

    async def _page(self, request: web.Request) -> web.StreamResponse:
        # The brand's H5 may frame the chat page; nobody else may (clickjacking the consent button).
        return page_response(request, PAGE, frame_ancestors=self.config.allowed_origins or ("'self'",))

    async def _redirect_page(self, request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound(f"{self.base}/" + (f"?{request.query_string}" if request.query_string else ""))
