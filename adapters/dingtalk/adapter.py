"""DingTalk adapter: clerks chat with the brand's robot 1:1; briefs go out as work notifications."""

from __future__ import annotations

import asyncio
import hashlib
import json
from datetime import UTC, datetime, timedelta

from aiohttp import web

from adapters.dingtalk import codec, crypto, events
from adapters.dingtalk.api import DingTalkApi
from adapters.dingtalk.config import DingTalkConfig
from adapters.dingtalk.stream import StreamClient
from adapters.media import MediaLinks, MediaRoute
from adapters.webim import loads_json, read_json
from gateway.adapter import (
    Adapter,
    BadRequest,
    Capabilities,
    Permanent,
    Receipt,
    Retryable,
    RouteDef,
    Unauthorized,
    register,
)
from gateway.netaddr import networks, within
from gateway.quota import Window


@register
class DingTalkAdapter(Adapter):
    platform = "dingtalk"
    side = "clerk"
    # burst 1: DingTalk refuses a 21st call within a second; a bucket of 20 on top of 20/s let 40 through
    caps = Capabilities(segments=codec.SEGMENTS, rate_per_sec=20, burst=1)
    config_class = DingTalkConfig
    config: DingTalkConfig

    def __init__(self, config, host):
        super().__init__(config, host)
        self.api = DingTalkApi(config, host.clock)
        self.events = (crypto.EventCrypto(config.event_token, config.event_aes_key, config.corp_id)
                       if config.event_token else None)
        self.stream = StreamClient(self) if config.mode == "stream" else None
        self.media_route = MediaRoute(self, config.app_secret, locate=self.api.download_url)
        self._sources = networks(config.allowed_sources)
        # Work notifications fail silently past these limits, so they are counted here:
        # (user, day) -> sent count, and (user, day, content hash) already sent.

    @property
    def media(self) -> MediaLinks:
        return self.media_route.links

    def routes(self) -> list[RouteDef]:
        return [self.media_route.route()]

    def connected(self) -> bool:
        return self.stream is None or self.stream.connected

    async def start(self) -> None:
        await self.api.start()
        if self.stream:
            self.stream.start()

    async def stop(self) -> None:
        if self.stream:
            await self.stream.stop()
        await self.api.close()

    # -- inbound --------------------------------------------------------------------------------

    async def verify(self, request: web.Request) -> events.DingTalkRaw:
        if request.method != "POST":
            raise BadRequest("DingTalk callbacks are POSTs", status=405, code="method_not_allowed")
        if self._sources and not within(self.host.client_address(request), self._sources):
            raise Unauthorized("callback from an address outside allowed_sources")
        q = request.query
        if "signature" in q or "msg_signature" in q:  # event subscription: an encrypted envelope
            if self.events is None:
                raise Unauthorized("event subscription is not configured for this account")
            body = await read_json(request, self.host.max_body)
            if not isinstance(body.get("encrypt"), str):
                raise BadRequest("encrypt is missing", field="encrypt")
            plain = self.events.decrypt(q.get("signature") or q.get("msg_signature"), q.get("timestamp", ""),
                                        q.get("nonce", ""), body["encrypt"])
            data = loads_json(plain, "event plaintext")
            return events.DingTalkRaw(self.account, "event", data if isinstance(data, dict) else {}, self.host.clock.now())
        now = self.host.clock.now()
        timestamp, sign = request.headers.get("timestamp", ""), request.headers.get("sign", "")
        crypto.check_robot_sign(self.config.app_secret, timestamp, sign, int(now.timestamp() * 1000),
                                self.config.timestamp_window)
        body = await read_json(request, self.host.max_body)
        msg_id = body.get("msgId")  # parse refuses a missing or overlong one (400)
        if isinstance(msg_id, str) and 0 < len(msg_id) <= events.MAX_ID and \
                not await self._sign_fits(sign, int(timestamp), msg_id):
            raise Unauthorized("this sign was already used for another message")
        return events.DingTalkRaw(self.account, "robot", body, now, self.media)

    async def _sign_fits(self, sign: str, timestamp_ms: int, msg_id: str) -> bool:
        """The sign covers only the timestamp, so a captured timestamp/sign pair would carry any body
        for the whole window. It is bound to the first msgId it came with (a retry of that message
        still passes). DingTalk's docs do not rule out two callbacks signed in the same millisecond,
        so while the timestamp is at most `sign_share_seconds` old another msgId may share it."""
        signed_at = datetime.fromtimestamp(timestamp_ms / 1000, UTC)
        until = signed_at + timedelta(seconds=self.config.timestamp_window)  # refused by the window after
        if await self.host.bind_signature(self.account, sign, msg_id, until):
            return True
        return abs((self.host.clock.now() - signed_at).total_seconds()) <= self.config.sign_share_seconds

    def parse(self, raw: events.DingTalkRaw):
        return events.parse(raw)

    def ack(self, raw: events.DingTalkRaw, results, duplicate: bool) -> web.Response:
        if raw.kind == "event":  # DingTalk wants the encrypted word "success" back
            return web.json_response(self.events.encrypt("success"))
        return web.Response(status=200)

    # -- outbound -------------------------------------------------------------------------------

    async def send(self, target, message, *, idem_key: str, kind: str = "reply") -> Receipt:
        user = target.identity.external_id
        if kind == "brief":
            return await self._work_notice(user, message)
        msg_key, msg_param = codec.robot_message(message)
        result = await self.api.batch_send([user], msg_key, msg_param)
        if user in (result.get("invalidStaffIdList") or []):
            raise Permanent(f"DingTalk refused user {user} (not in the org or not visible to the robot)",
                            code="invalidStaffId")
        if user in (result.get("flowControlledStaffIdList") or []):
            raise Retryable(f"DingTalk flow-controlled user {user}", retry_after=60)
        return Receipt(platform_msg_id=result.get("processQueryKey"))

    async def _work_notice(self, user: str, message) -> Receipt:
        msg = codec.work_notice(message)
        body = json.dumps(msg, ensure_ascii=False, sort_keys=True)
        if len(body.encode()) > 2048:
            raise Permanent("work notification over 2048 bytes", code="too_long")
        # DingTalk silently drops the same content to a user twice a day and anything past the daily
        # limit: count both (in the database, so every instance counts together) before the call,
        # so concurrent sends of one brief cannot both pass; a call that fails gives its place back.
        today = self.host.clock.now().astimezone(self.host.tz).replace(hour=0, minute=0, second=0, microsecond=0)
        digest = hashlib.sha256(body.encode()).hexdigest()
        same, daily = f"dingtalk:{self.account}:notice:{user}:{digest}", f"dingtalk:{self.account}:notice:{user}"
        if await self.host.quota.take(same, [Window(today, 1)]) is not None:
            raise Permanent("same content already sent to this user today (DingTalk would drop it silently)",
                            code="same_content_today", hold=True)
        if await self.host.quota.take(daily, [Window(today, self.config.notice_daily_limit)]) is not None:
            await self.host.quota.give_back(same)
            raise Permanent(f"{self.config.notice_daily_limit} work notifications to this user today",
                            code="daily_limit", hold=True)
        try:
            task_id = await self.api.send_work_notice([user], msg)
        except BaseException:
            await asyncio.shield(self._give_back(same, daily))
            raise
        return Receipt(platform_msg_id=task_id)

    async def _give_back(self, *keys: str) -> None:
        for key in keys:
            await self.host.quota.give_back(key)

