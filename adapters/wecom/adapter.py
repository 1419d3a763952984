"""WeCom adapter: clerks talk to the brand's app; their WeChat customers are external contacts.

Inbound: encrypted XML callbacks (URL check, member messages, contact and org events) and the
adapter's own polls of mass-task and transfer results, both submitted through the ingress.
Outbound, by target and kind: clerks get app messages (≤ 30/min and 1,000/h per member — WeCom
drops the excess silently, so the excess waits here instead); customers get the welcome through
the event's WelcomeCode, everything else through a mass-message task the member confirms, and
handovers through the (resigned) transfer APIs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from datetime import datetime, timedelta

from aiohttp import web

from adapters.media import MediaLinks, MediaRoute
from adapters.webim import read_body
from adapters.wecom import codec, events
from adapters.wecom.api import WeComApi, WeComError
from adapters.wecom.config import WeComConfig
from adapters.wecom.crypto import CallbackCrypto
from adapters.wxml import xml_fields
from gateway.adapter import (
    Adapter,
    BadRequest,
    Capabilities,
    Deferred,
    Permanent,
    Receipt,
    Retryable,
    RouteDef,
    Unauthorized,
    register,
)
from gateway.batch import Coalescer
from gateway.ingress import error_response
from gateway.quota import Window

log = logging.getLogger("gateway.wecom")

WELCOME_DONE, WELCOME_BUSY = 41051, 41096  # already sent (done) / another app is sending (retry)
CUSTOMER_CAPS = {"month": ("month", None), "week": ("week", 7), "day": ("day", 1)}


@register
class WeComAdapter(Adapter):
    platform = "wecom"
    side = "clerk"  # the app's members are clerks; external contacts arrive as customer-side events
    # 10,000 calls per API per minute per corp (page 90454): ~166/s, kept a little under it.
    caps = Capabilities(segments=codec.APP_SEGMENTS, rate_per_sec=150, burst=150,
                        transfers_contacts=True,  # a handover moves the contact through WeCom
                        customer_send_note="微信客户的消息以群发任务送达，请在企业微信中确认发送。"
                                           " (WeChat contacts get it as a task: confirm it in WeCom.)")
    config_class = WeComConfig
    config: WeComConfig

    def __init__(self, config, host):
        super().__init__(config, host)
        self.api = WeComApi(config, host.clock)
        self.crypto = CallbackCrypto(config.token, config.encoding_aes_key, config.corp_id)
        self.media_route = MediaRoute(self, config.secret, download=self.api.media)
        self._tasks: set[asyncio.Task] = set()
        self._poller: asyncio.Task | None = None
        self._ways: dict[str, str] = {}  # invite -> contact QR, until the invite row remembers it
        # Sends that can share one call: a clerk's customers in one mass task (≤ 10,000, and the
        # clerk confirms once), a handover's customers in one transfer call (≤ 100).
        self.task_calls = Coalescer(self._task_call, limit=10_000)
        self.transfer_calls = Coalescer(self._transfer_call, limit=100)

    def capabilities(self) -> Capabilities:
        caps = super().capabilities()
        return Capabilities(**{**caps.__dict__, "push_cap": CUSTOMER_CAPS[self.config.push_cap]})

    @property
    def media(self) -> MediaLinks:
        return self.media_route.links

    def routes(self) -> list[RouteDef]:
        return [self.media_route.route(),
                RouteDef("GET", f"/wecom/{self.account}/contact/{{code}}", self._contact_qr)]

    def contact_url(self, code: str) -> str | None:
        return f"{self.host.base_url}/wecom/{self.account}/contact/{code}"

    async def start(self) -> None:
        await self.api.start()
        self._poller = asyncio.create_task(self._poll_loop(), name=f"wecom-poll-{self.account}")

    async def stop(self) -> None:
        for t in [self._poller, *self._tasks]:
            if t:
                t.cancel()
        await asyncio.gather(*(t for t in [self._poller, *self._tasks] if t), return_exceptions=True)
        await self.api.close()

    # -- inbound --------------------------------------------------------------------------------

    async def verify(self, request: web.Request) -> events.WeComRaw:
        q = request.query
        sig, ts, nonce = q.get("msg_signature", ""), q.get("timestamp", ""), q.get("nonce", "")
        now = self.host.clock.now()
        if request.method == "GET":  # the URL check when the callback is saved in the admin console
            echo = self.crypto.check_url(sig, ts, nonce, q.get("echostr", ""))
            return events.WeComRaw(self.account, "url_check", {}, now, echo=echo)
        if request.method != "POST":
            raise BadRequest("WeCom callbacks are GET or POST", status=405, code="method_not_allowed")
        if not (ts.isascii() and ts.isdigit()) or abs(now.timestamp() - int(ts)) > self.config.timestamp_window:
            raise Unauthorized("timestamp missing or outside the allowed window")  # a replayed callback
        envelope = xml_fields(await read_body(request, self.host.max_body), "envelope")
        if not envelope.get("Encrypt"):
            raise BadRequest("Encrypt is missing", field="Encrypt")
        plain = self.crypto.decrypt(sig, ts, nonce, envelope["Encrypt"])
        return events.WeComRaw(self.account, "callback", xml_fields(plain, "message"), now, self.media)

    def parse(self, raw: events.WeComRaw):
        return events.parse(raw)

    def ack(self, raw: events.WeComRaw, results, duplicate: bool) -> web.Response:
        if raw.kind == "url_check":  # the bare plaintext: no quotes, BOM or newline
            return web.Response(text=raw.echo, content_type="text/plain")
        if not duplicate and raw.data.get("ChangeType") in ("add_external_contact", "add_half_external_contact"):
            self._spawn(self._fetch_profile(raw.data["ExternalUserID"]))
        return web.Response(status=200)

    def _spawn(self, coro) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _submit_report(self, data: dict) -> None:
        await self.host.submit(self, events.WeComRaw(self.account, "poll", data, self.host.clock.now()))

    async def _fetch_profile(self, external_userid: str) -> None:
        """Name and unionid are not in the event: fetch them after the ack, feed them in as an Event."""
        try:
            data = await self.api.external_contact(external_userid)
            await self._submit_report({"type": "profile", "external_userid": external_userid,
                                       "external_contact": data.get("external_contact") or {}})
        except Exception as e:  # noqa: BLE001 - the profile is a nicety; the binding never waits for it
            log.warning("wecom %s: profile of %s not fetched: %s", self.account, external_userid, e)

    # -- polling results ------------------------------------------------------------------------

    async def _poll_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.poll_interval)
            try:
                await self.poll_once()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - try again next round
                log.exception("wecom %s: polling results failed", self.account)

    async def poll_once(self) -> int:
        """Mass-task results and transfer results into Events. Returns the reports submitted."""
        n = 0
        for task in await self.host.state.awaiting_delivery(self.account):
            sender = task.hints.get("advisor")
            if not sender:
                continue
            for row in await self.api.send_results(task.platform_msg_id, sender):
                if row.get("external_userid") and row.get("status") in (1, 2, 3):
                    await self._submit_report({"type": "delivery", "msgid": task.platform_msg_id, **row})
                    n += 1
        for t in await self.host.state.pending_transfers(self.account):
            wanted = set(t.external_ids)
            for row in await self.api.transfer_results(t.handover, t.takeover, resigned=t.resigned):
                if row.get("external_userid") in wanted and row.get("status") in (1, 3, 4):
                    await self._submit_report({"type": "transfer_result", "handover": t.handover,
                                               "takeover": t.takeover, **row})
                    n += 1
        return n

    # -- outbound -------------------------------------------------------------------------------

    async def send(self, target, message, *, idem_key: str, kind: str = "reply") -> Receipt:
        if target.side == "clerk":
            return await self._app_message(target.identity.external_id, message, markdown=kind == "brief")
        if kind == "welcome":
            return await self._welcome(target, message)
        if kind == "transfer":
            return await self._transfer(target, message)
        return await self._task(target, message)

    async def _app_message(self, user: str, message, *, markdown: bool = False) -> Receipt:
        bodies = codec.app_messages(message, markdown=markdown)
        # WeCom silently drops a member's app messages past 30 a minute or 1,000 an hour: count them
        # (in the database, so every instance counts together), every part up front — a split
        # message goes out whole or waits whole.
        now = self.host.clock.now()
        minute, hour = timedelta(minutes=1), timedelta(hours=1)
        full = await self.host.quota.take(f"wecom:{self.account}:member:{user}", [
            Window(now - minute, self.config.member_per_minute, minute),
            Window(now - hour, self.config.member_per_hour, hour)], n=len(bodies))
        if full is not None:
            wait = max(1.0, (full.frees_at - now).total_seconds())
            raise Deferred(f"member {user} is at WeCom's app-message cap; sending in {wait:.0f} s", retry_after=wait)
        msgid = None
        for body in bodies:
            data = await self.api.send_app_message(user, body)
            if user in (data.get("invaliduser") or "").split("|"):
                raise Permanent(f"WeCom refused member {user} (not in the app's visible range)",
                                code="invaliduser")
            msgid = data.get("msgid") or msgid
        return Receipt(platform_msg_id=msgid)

    async def _welcome(self, target, message) -> Receipt:
        h = target.hints
        if not h.get("reply_token"):
            raise Permanent("WeCom gave no WelcomeCode (an admin welcome is configured, or the chat had started)",
                            code="no_welcome_code", hold=True)
        if h.get("reply_by") and self.host.clock.now() > datetime.fromisoformat(h["reply_by"]):
            raise Permanent("the 20 s welcome window had passed", code="welcome_expired", hold=True)
        try:
            await self.api.send_welcome(h["reply_token"], self._content(message))
        except WeComError as e:
            if e.errcode == WELCOME_DONE:  # sent before (our first answer was lost): done
                return Receipt(delivered=True)
            if e.errcode == WELCOME_BUSY:
                raise Retryable("another app is sending this welcome", retry_after=1) from None
            raise
        return Receipt(delivered=True)

    def _content(self, message) -> dict:
        content = codec.customer_content(message)
        if len((content.get("text") or {}).get("content", "").encode()) > 4000:
            raise Permanent("text over WeCom's 4,000 bytes for customer messages", code="too_long")
        return content

    async def _task(self, target, message) -> Receipt:
        """A mass-message task: WeCom sends it once the member confirms."""
        sender = target.hints.get("advisor")
        if not sender:
            raise Permanent("no WeCom member to send as (the advisor has no identity on this account)",
                            code="no_sender")
        content = self._content(message)
        key = (sender, json.dumps(content, ensure_ascii=False, sort_keys=True))
        return await self.task_calls.submit(key, target.identity.external_id)

    async def _task_call(self, key: tuple[str, str], external_ids: list[str]) -> list:
        sender, content = key
        data = await self.api.add_msg_template(sender, list(dict.fromkeys(external_ids)), json.loads(content))
        failed = set(data.get("fail_list") or [])
        return [Permanent(f"{ext} is not a contact of {sender}", code="not_a_contact") if ext in failed
                else Receipt(platform_msg_id=data.get("msgid")) for ext in external_ids]

    async def _transfer(self, target, message) -> Receipt:
        h = target.hints
        resigned = bool(h.get("resigned"))
        text = None if resigned else (message.plain_text[: codec.TRANSFER_MSG_LIMIT] or None)
        return await self.transfer_calls.submit((h["handover"], h["takeover"], resigned, text),
                                                target.identity.external_id)

    async def _transfer_call(self, key: tuple, external_ids: list[str]) -> list:
        handover, takeover, resigned, text = key
        data = await self.api.transfer(handover, takeover, list(dict.fromkeys(external_ids)), resigned=resigned,
                                       message=text)
        refused = {row.get("external_userid"): row.get("errcode") for row in data.get("customer") or []
                   if row.get("errcode")}
        return [Permanent(f"WeCom refused the transfer of {ext}: errcode {refused[ext]}", code=str(refused[ext]))
                if ext in refused else Receipt(platform_msg_id=f"transfer:{handover}:{takeover}")
                for ext in external_ids]

    # -- routes ---------------------------------------------------------------------------------

    async def _contact_qr(self, request: web.Request) -> web.StreamResponse:
        """The advisor's WeCom contact QR for an invite (`state` ties the scan to it), made once."""
        code = request.match_info["code"].lower()
        if code in self._ways:
            raise web.HTTPFound(self._ways[code])
        info = await self.host.state.invite_channel(code, self.account)
        if info is None:
            return error_response(404, "not_found", "no such invite")
        if info.ref:
            raise web.HTTPFound(info.ref["qr_code"])
        if not info.user:
            return error_response(404, "not_found", "this advisor has no WeCom account here")
        try:
            data = await self.api.add_contact_way(info.user, f"{events.STATE_PREFIX}{code}", remark=f"invite {code}")
        except (Retryable, Permanent) as e:  # the reason is logged, never sent (it may name URLs)
            log.warning("wecom %s: contact QR for %s not made: %s", self.account, code, e)
            return error_response(502, "upstream", "WeCom did not make the contact QR code; try again later")
        self._ways[code] = data["qr_code"]
        with contextlib.suppress(Exception):  # remembered for next time; a lost write costs one more way
            await self._submit_report({"type": "contact_way", "invite": code, "user": info["user"],
                                       "config_id": data.get("config_id"),
                                       "qr_code": data.get("qr_code")})
        raise web.HTTPFound(data["qr_code"])
