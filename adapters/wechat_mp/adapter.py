"""WeChat Official Account (公众号) adapter: customers chat and bind through the brand's account.

Inbound: signed callbacks in plain or safe (AES) mode, answered "success" once claimed. A follow
or scan of an advisor's QR code (scene "gw:<invite>") binds the customer. Outbound: the advisor's
replies and the welcome are customer-service messages, only inside the window the customer
opened (48 h / 5 after a message, 1 min / 3 after a follow, scan or menu tap) — outside it they
are held and handed to the fallback; pushes are mass sends within the per-user monthly / daily
cap, at most `mass_per_minute` calls, with a clientmsgid; notices are template messages.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from datetime import timedelta

from aiohttp import web

from adapters.media import MediaLinks, MediaRoute
from adapters.webim import read_body
from adapters.wechat_mp import codec, crypto, events
from adapters.wechat_mp.api import WeChatMpApi
from adapters.wechat_mp.config import WeChatMpConfig
from adapters.wxml import xml_fields
from gateway.adapter import (
    Adapter,
    BadRequest,
    Capabilities,
    Permanent,
    Receipt,
    Retryable,
    RouteDef,
    register,
)
from gateway.batch import Coalescer
from gateway.ingress import error_response
from gateway.ratelimit import TokenBucket

log = logging.getLogger("gateway.wechat_mp")

WINDOWS = {"message": (timedelta(hours=48), 5), "event": (timedelta(minutes=1), 3)}


@register
class WeChatMpAdapter(Adapter):
    platform = "wechat_mp"
    side = "customer"
    caps = Capabilities(segments=codec.SEGMENTS, rate_per_sec=50, burst=50, reply_window=timedelta(hours=48))
    config_class = WeChatMpConfig
    config: WeChatMpConfig

    def __init__(self, config, host):
        super().__init__(config, host)
        self.api = WeChatMpApi(config, host.clock)
        self.media_route = MediaRoute(self, config.app_secret, download=self.api.media)
        self.envelope = (crypto.Envelope(config.token, config.encoding_aes_key, config.app_id)
                         if config.encoding_aes_key else None)
        self.mass_calls = Coalescer(self._mass_call, limit=10_000, window=1.0)
        self.mass_rate = TokenBucket(config.mass_per_minute / 60, 1)
        self._tasks: set[asyncio.Task] = set()
        self._qr: dict[str, str] = {}  # invite -> QR URL, until the invite row remembers it

    def capabilities(self) -> Capabilities:
        caps = super().capabilities()
        cfg = self.config
        cap = (cfg.push_cap or ("month" if cfg.service_account else "day"),
               cfg.push_limit or (4 if cfg.service_account else 1))
        return Capabilities(**{**caps.__dict__, "push_cap": cap,
                               "notice_fallback": bool(cfg.fallback_template and cfg.service_account)})

    @property
    def media(self) -> MediaLinks:
        return self.media_route.links

    def routes(self) -> list[RouteDef]:
        return [self.media_route.route(),
                RouteDef("GET", f"/wechat_mp/{self.account}/qr/{{code}}", self._advisor_qr)]

    def contact_url(self, code: str) -> str | None:
        return f"{self.host.base_url}/wechat_mp/{self.account}/qr/{code}"

    async def start(self) -> None:
        await self.api.start()

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.api.close()

    # -- inbound --------------------------------------------------------------------------------

    async def verify(self, request: web.Request) -> events.WeChatMpRaw:
        q = request.query
        now = self.host.clock.now()
        ts, nonce = q.get("timestamp", ""), q.get("nonce", "")
        crypto.check(self.config.token, q.get("signature", ""), ts, nonce, now=int(now.timestamp()),
                     window=self.config.timestamp_window)
        if request.method == "GET":  # the URL check: echostr back as is, in both modes
            return events.WeChatMpRaw(self.account, "url_check", {}, now, echo=q.get("echostr", ""))
        if request.method != "POST":
            raise BadRequest("Official Account callbacks are GET or POST", status=405, code="method_not_allowed")
        body = xml_fields(await read_body(request, self.host.max_body), "body")
        if q.get("encrypt_type") == "aes" or "Encrypt" in body:
            if self.envelope is None:
                raise BadRequest("an encrypted callback, but no encoding_aes_key is configured", field="Encrypt")
            if not body.get("Encrypt"):
                raise BadRequest("Encrypt is missing", field="Encrypt")
            body = xml_fields(self.envelope.decrypt(q.get("msg_signature", ""), ts, nonce, body["Encrypt"]), "message")
        elif self.envelope is not None:
            raise BadRequest("safe mode is configured: a plain callback is refused", field="encrypt_type")
        return events.WeChatMpRaw(self.account, "callback", body, now, self.media)

    def parse(self, raw: events.WeChatMpRaw):
        return events.parse(raw)

    def ack(self, raw: events.WeChatMpRaw, results, duplicate: bool) -> web.Response:
        if raw.kind == "url_check":
            return web.Response(text=raw.echo, content_type="text/plain")
        if not duplicate and raw.data.get("Event") in ("subscribe", "SCAN"):
            self._spawn(self._fetch_profile(raw.data["FromUserName"]))
        return web.Response(text="success", content_type="text/plain")

    def _spawn(self, coro) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _report(self, data: dict) -> None:
        await self.host.submit(self, events.WeChatMpRaw(self.account, "poll", data, self.host.clock.now()))

    async def _fetch_profile(self, openid: str) -> None:
        """The unionid is not in the event: fetched after the ack, fed back in as an Event."""
        try:
            info = await self.api.user_info(openid)
            await self._report({"type": "profile", "openid": openid, "unionid": info.get("unionid")})
        except Exception as e:  # noqa: BLE001 - a nicety; binding never waits for it
            log.warning("wechat_mp %s: profile of %s not fetched: %s", self.account, openid, e)

    # -- outbound -------------------------------------------------------------------------------

    async def send(self, target, message, *, idem_key: str, kind: str = "reply") -> Receipt:
        openid = target.identity.external_id
        if kind == "push":
            if not self.config.service_account:  # mass/send by openid is a service-account API
                raise Permanent("a subscription account can only mass-send to all followers or a tag, "
                                "not to chosen customers", code="mass_not_allowed", hold=True)
            return await self.mass_calls.submit(json.dumps(codec.mass_text(message), ensure_ascii=False),
                                                (openid, idem_key))
        if kind == "template":
            tpl = self.config.fallback_template
            if tpl is None or not self.config.service_account:
                raise Permanent("no template message is configured for this account", code="no_template")
            data = await self.api.template_send(openid, codec.template_message(message, tpl, self.host.clock.now()))
            return Receipt(platform_msg_id=str(data.get("msgid", "")) or None)
        bodies = codec.custom_messages(message)
        await self._check_window(target, len(bodies))
        for body in bodies:
            await self.api.custom_send(openid, body)
        return Receipt(delivered=True)

    async def _check_window(self, target, parts: int) -> None:
        """The customer-service window, from what the gateway recorded: a send WeChat would refuse
        is held here instead (the platform's own 45015 / 45047 answers are handled the same way)."""
        info = await self.host.state.reply_window(target.identity)
        now = self.host.clock.now()
        if info is None:
            raise Permanent("the customer has not written to the Official Account yet", code="window_closed",
                            hold=True, fallback=True)
        span, quota = WINDOWS.get(info.kind, WINDOWS["message"])
        if now > info.opened_at + span:
            raise Permanent(f"the reply window closed at {(info.opened_at + span).isoformat()}",
                            code="window_closed", hold=True, fallback=True)
        if info.sent + parts > quota:
            raise Permanent(f"{quota} replies allowed in this window; {info.sent} sent", code="window_quota",
                            hold=True, fallback=True)

    async def _mass_call(self, content: str, items: list[tuple[str, str]]) -> list:
        openids = list(dict.fromkeys(openid for openid, _ in items))
        if len(openids) < 2:  # mass/send takes 2 to 10,000 users
            return [Permanent("a mass send needs at least 2 recipients at once; held for the next push",
                              code="mass_needs_two", hold=True)] * len(items)
        # The same batch retried carries the same clientmsgid, so WeChat sends it once.
        client_id = hashlib.sha256("|".join(sorted(k for _, k in items)).encode()).hexdigest()[:32]
        await self.mass_rate.acquire()
        data = await self.api.mass_send(openids, json.loads(content), client_id)
        return [Receipt(platform_msg_id=str(data.get("msg_id")))] * len(items)

    # -- routes ---------------------------------------------------------------------------------

    async def _advisor_qr(self, request: web.Request) -> web.StreamResponse:
        """The advisor's QR code for an invite: following or scanning it binds (scene "gw:<invite>")."""
        code = request.match_info["code"].lower()
        if code in self._qr:
            raise web.HTTPFound(self._qr[code])
        info = await self.host.state.invite_channel(code, self.account)
        if info is None:
            return error_response(404, "not_found", "no such invite")
        ref = info.ref or {}
        now = self.host.clock.now()
        if ref.get("qr_code") and (not ref.get("expires_at") or ref["expires_at"] > now.isoformat()):
            raise web.HTTPFound(ref["qr_code"])
        try:
            data = await self.api.qrcode(f"{events.SCENE_PREFIX}{code}", self.config.qr_expire_seconds)
        except (Retryable, Permanent) as e:  # the reason is logged, never sent (it may name URLs)
            log.warning("wechat_mp %s: QR for %s not made: %s", self.account, code, e)
            return error_response(502, "upstream", "WeChat did not make the QR code; try again later")
        url = f"{self.config.qr_base}/cgi-bin/showqrcode?ticket={data['ticket']}"
        expires = ((now + timedelta(seconds=int(data["expire_seconds"]) - 60)).isoformat()
                   if data.get("expire_seconds") else None)
        if expires is None:
            self._qr[code] = url
        try:
            await self._report({"type": "contact_way", "invite": code, "ticket": data["ticket"], "qr_code": url,
                                "expires_at": expires})
        except Exception as e:  # noqa: BLE001 - remembered next time; a lost write costs one more code
            log.warning("wechat_mp %s: QR for %s not remembered: %s", self.account, code, e)
        raise web.HTTPFound(url)
