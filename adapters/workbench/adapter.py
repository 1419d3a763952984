"""Workbench adapter: a clerk's web IM at /workbench/ — one conversation with the gateway, like a
DingTalk or WeCom robot chat, so the relay and command bots work unchanged."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from aiohttp import web

from adapters.webim import bearer, history_params, live, read_json, shared_js
from adapters.workbench import api, codec, crypto, events
from adapters.workbench.config import WorkbenchConfig
from gateway.adapter import Adapter, BadRequest, Capabilities, RouteDef, Unauthorized, register
from gateway.ingress import error_response
from gateway.model import Identity
from gateway.pages import page_response

PAGE = Path(__file__).parent / "static" / "index.html"


@register
class WorkbenchAdapter(Adapter):
    platform = "workbench"
    side = "clerk"
    # Our own pages: the rate only guards them against a runaway sender, no platform counts it.
    caps = Capabilities(segments=codec.SEGMENTS, rate_per_sec=5000, burst=500, platform_rate=False)
    config_class = WorkbenchConfig
    config: WorkbenchConfig

    def routes(self) -> list[RouteDef]:
        b = f"/{self.account}"
        return [
            RouteDef("GET", b, self._redirect_page),
            RouteDef("GET", f"{b}/", self._page),
            RouteDef("GET", f"{b}/webim.js", shared_js),
            RouteDef("GET", f"{b}/api/me", self._me),
            RouteDef("POST", f"{b}/api/messages", self._ingest),
            RouteDef("GET", f"{b}/api/messages", self._history),
            RouteDef("GET", f"{b}/api/customers", self._customers),
            RouteDef("GET", f"{b}/api/ws", self._ws),
        ]

    async def _ingest(self, request: web.Request) -> web.StreamResponse:
        return await self.host.ingest(self, request)

    async def verify(self, request: web.Request) -> events.WorkbenchRaw:
        clerk_id = await crypto.clerk_of(self.host, bearer(request))
        body = await read_json(request, self.host.max_body)
        return events.WorkbenchRaw(self.account, clerk_id, body, self.host.clock.now(), self.config.max_text)

    def parse(self, raw: events.WorkbenchRaw):
        return events.parse(raw)

    def ack(self, raw: events.WorkbenchRaw, results, duplicate: bool) -> web.Response:
        return web.json_response(
            {"client_msg_id": raw.body.get("client_msg_id"), "duplicate": duplicate, "status": "accepted"}, status=202
        )

    async def send(self, target, message, *, idem_key: str, kind: str = "reply"):
        return api.push(self.host.hub(), self.account, target.identity.external_id, message)

    async def _clerk(self, request: web.Request) -> int:
        return await crypto.clerk_of(self.host, bearer(request))

    async def _guard(self, request: web.Request, fn):
        try:
            return await fn(await self._clerk(request))
        except Unauthorized as e:
            return error_response(401, "unauthorized", str(e))
        except BadRequest as e:
            return error_response(e.status, e.code, str(e), e.field)

    async def _me(self, request: web.Request) -> web.StreamResponse:
        async def run(clerk_id: int):
            clerk = await self.host.state.clerk_profile(clerk_id)
            if clerk is None:
                raise Unauthorized("this clerk no longer exists")
            return web.json_response({"clerk": asdict(clerk)})

        return await self._guard(request, run)

    async def _history(self, request: web.Request) -> web.StreamResponse:
        async def run(clerk_id: int):
            after, limit = history_params(request)
            return web.json_response(await self.host.history(Identity(self.platform, self.account, str(clerk_id)), after, limit))

        return await self._guard(request, run)

    async def _customers(self, request: web.Request) -> web.StreamResponse:
        async def run(clerk_id: int):
            return web.json_response({"items": [asdict(c) for c in await self.host.state.clerk_customers(clerk_id)]})

        return await self._guard(request, run)

    async def _ws(self, request: web.Request) -> web.StreamResponse:
        async def run(clerk_id: int):
            token = bearer(request)

            async def still_valid() -> bool:  # cached by the host; a revocation clears that cache at once
                try:
                    return await crypto.clerk_of(self.host, token) == clerk_id
                except Unauthorized:
                    return False

            return await live(request, self.host.hub(), self.account, str(clerk_id), still_valid=still_valid)

        return await self._guard(request, run)

    async def _page(self, request: web.Request) -> web.StreamResponse:
        return page_response(request, PAGE)

    async def _redirect_page(self, request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound(f"/{self.account}/" + (f"?{request.query_string}" if request.query_string else ""))
