"""Stream mode: a WebSocket to DingTalk instead of a public callback URL.

Speaks the dingtalk-stream protocol and reuses its frame classes, but opens the connection with
aiohttp: the SDK's `open_connection` uses blocking `requests`. Each message is acked only once it
is durably claimed; a failure to claim leaves it un-acked so DingTalk delivers it again.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from urllib.parse import quote

import aiohttp
from dingtalk_stream.chatbot import ChatbotMessage
from dingtalk_stream.frames import AckMessage, Headers

from adapters.dingtalk.events import ROBOT_TOPIC, DingTalkRaw, event_type
from adapters.webim import loads_json
from gateway.adapter import BadRequest

log = logging.getLogger("gateway.dingtalk.stream")

SUBSCRIPTIONS = [{"type": "CALLBACK", "topic": ChatbotMessage.TOPIC}, {"type": "EVENT", "topic": "*"}]
# An EVENT frame carries its type and id in the frame headers (dingtalk-stream frames.Headers:
# eventType, eventId, eventBornTime, eventCorpId); `data` holds only the event's own fields.
EVENT_HEADERS = ("eventType", "eventId", "eventBornTime", "eventCorpId")


def ack(message_id: str, code: int = AckMessage.STATUS_OK, message: str = "OK", data=None) -> dict:
    a = AckMessage()
    a.code, a.message = code, message
    a.headers.message_id, a.headers.content_type = message_id, Headers.CONTENT_TYPE_APPLICATION_JSON
    a.data = data if data is not None else {"response": None}
    return a.to_dict()


class StreamClient:
    def __init__(self, adapter, *, max_backoff: float = 60.0):
        self.adapter = adapter
        self.max_backoff = max_backoff
        self.connected = False
        self.connections = 0  # successful connects, for tests and readiness
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self.run(), name=f"dingtalk-stream-{self.adapter.account}")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self.connected = False

    async def run(self) -> None:
        backoff = 1.0
        while True:
            try:
                conn = await self.adapter.api.open_stream(SUBSCRIPTIONS)
                url = f"{conn['endpoint']}?ticket={quote(conn['ticket'])}"
                async with self.adapter.api.http.ws_connect(url, heartbeat=30) as ws:
                    self.connected, backoff = True, 1.0
                    self.connections += 1
                    async for msg in ws:
                        if msg.type == aiohttp.WSMsgType.TEXT and await self.handle(ws, json.loads(msg.data)) == "disconnect":
                            break
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - any failure means: reconnect, with backoff
                log.warning("stream connection failed: %s: %s", type(e).__name__, e)
            self.connected = False
            await asyncio.sleep(backoff * (0.5 + random.random() / 2))
            backoff = min(self.max_backoff, backoff * 2)

    async def handle(self, ws, frame: dict) -> str | None:
        kind = frame.get("type")
        headers = frame.get("headers") or {}
        topic, message_id = headers.get("topic"), headers.get("messageId", "")
        if kind == "SYSTEM":
            if topic == "disconnect":
                return "disconnect"
            await ws.send_json(ack(message_id, data=frame.get("data")))  # ping: echo its data
            return None
        if kind == "CALLBACK" and topic != ROBOT_TOPIC:
            log.warning("dingtalk %s: CALLBACK frame on topic %r not understood", self.adapter.account, topic)
            await ws.send_json(ack(message_id, AckMessage.STATUS_NOT_IMPLEMENT, "topic not handled"))
            return None
        try:
            data = frame.get("data") or "{}"
            body = loads_json(data if isinstance(data, str) else "", "frame data")  # NUL, surrogates, NaN: 400
            if not isinstance(body, dict):  # a list or a string would crash parse and loop the connection
                raise BadRequest("frame data must be a JSON object")
            extra = {k: headers[k] for k in EVENT_HEADERS if k in headers} if kind == "EVENT" else {}
            raw = DingTalkRaw(self.adapter.account, "robot" if kind == "CALLBACK" else "event", body,
                              self.adapter.host.clock.now(), self.adapter.media, extra)
            if kind == "EVENT" and not self._understood(raw, message_id):
                await ws.send_json(ack(message_id, AckMessage.STATUS_NOT_IMPLEMENT, "event not handled"))
                return None
            await self.adapter.host.submit(self.adapter, raw)
        except (BadRequest, ValueError) as e:  # malformed: ack it, or it comes back forever
            log.warning("dingtalk %s: malformed %s frame %s: %s", self.adapter.account, kind, message_id, e)
            await ws.send_json(ack(message_id, AckMessage.STATUS_BAD_REQUEST, str(e)))
            return None
        await ws.send_json(ack(message_id))
        return None

    def _understood(self, raw: DingTalkRaw, message_id: str) -> bool:
        """An event the gateway acts on; any other is logged and answered "not handled" (as the SDK's
        default handler does), never acknowledged as if it had been handled. No type at all: 400."""
        kind = event_type(raw)
        if kind is None:
            raise BadRequest("EVENT frame without an eventType")
        if not self.adapter.parse(raw):
            log.info("dingtalk %s: event %s (%s) is not one the gateway uses", self.adapter.account, kind,
                     raw.extra.get("eventId") or message_id)
            return False
        return True
