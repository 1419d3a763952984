"""What the two built-in web channels (webchat for customers, workbench for clerks) share:
the JSON message body, the wire shape of a message, bearer tokens and the live WebSocket."""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import WSMsgType, web

from gateway.adapter import BadRequest, Receipt, Unauthorized
from gateway.model import Message, Segment

# The page script both web channels share, served next to each page as `webim.js`.
SHARED_JS = Path(__file__).parent / "static" / "webim.js"

# Segments a client may send; cards and coupons are only ever sent by the gateway.
CLIENT_SEGMENTS = frozenset({"text", "image", "file", "link", "location", "voice"})
WEB_SEGMENTS = frozenset({"text", "image", "file", "link", "product", "coupon", "location", "voice"})


async def read_body(request: web.Request, max_body: int) -> bytes:
    """The body, refused with 413 past the configured limit (before reading it when it says so)."""
    if request.content_length is not None and request.content_length > max_body:
        raise web.HTTPRequestEntityTooLarge(max_size=max_body, actual_size=request.content_length)
    body = await request.read()  # aiohttp enforces client_max_size while reading
    if len(body) > max_body:
        raise web.HTTPRequestEntityTooLarge(max_size=max_body, actual_size=len(body))
    return body


def _no_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is out of range")
    return value


def loads_json(text: str | bytes, what: str = "body"):
    """json.loads for untrusted input: every failure is a BadRequest, and no string in the result
    holds a NUL (PostgreSQL text refuses it) or a lone surrogate ("\\ud800" is valid JSON but
    cannot be encoded as UTF-8, so it could never be stored or relayed)."""
    try:  # NaN / Infinity / 1e999 are not JSON: PostgreSQL's json type refuses them where events are kept
        data = json.loads(text or b"null", parse_constant=_no_constant, parse_float=_finite)
    except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: nested thousands deep
        raise BadRequest(f"{what} is not valid JSON") from None
    stack = [data]
    while stack:
        v = stack.pop()
        if isinstance(v, str):
            if "\x00" in v:
                raise BadRequest(f"{what} holds a NUL character")
            try:
                v.encode()
            except UnicodeEncodeError:
                raise BadRequest(f"{what} holds a lone UTF-16 surrogate") from None
        elif isinstance(v, dict):
            stack.extend(v)
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)
    return data


async def read_json(request: web.Request, max_body: int) -> dict:
    data = loads_json(await read_body(request, max_body))
    if not isinstance(data, dict):
        raise BadRequest("body must be a JSON object")
    return data


def bearer(request: web.Request) -> str:
    auth = request.headers.get("Authorization", "")
    if auth.startswith("Bearer "):
        return auth[7:].strip()
    token = request.query.get("token", "")  # browsers cannot set headers on a WebSocket
    if not token:
        raise Unauthorized("missing bearer token")
    return token


def _str(body: dict, key: str, *, required: bool, max_len: int) -> str | None:
    v = body.get(key)
    if v is None:
        if required:
            raise BadRequest(f"{key} is required", field=key)
        return None
    if not isinstance(v, str) or not v.strip():
        raise BadRequest(f"{key} must be a non-empty string", field=key)
    if len(v) > max_len:
        raise BadRequest(f"{key} is longer than {max_len} characters", field=key)
    return v


def parse_message_body(body: dict, max_text: int) -> tuple[Message, str]:
    """`{"text" | "segments", "client_msg_id"}` → (Message, client_msg_id); BadRequest if malformed."""
    client_msg_id = _str(body, "client_msg_id", required=True, max_len=128)
    text = _str(body, "text", required=False, max_len=max_text)
    raw_segments = body.get("segments")
    if (text is None) == (raw_segments is None):
        raise BadRequest("give exactly one of text or segments", field="text")
    if text is not None:
        return Message([Segment.text(text)]), client_msg_id
    if not isinstance(raw_segments, list) or not 1 <= len(raw_segments) <= 20:
        raise BadRequest("segments must be a list of 1 to 20 objects", field="segments")
    segments = []
    for i, seg in enumerate(raw_segments):
        if not isinstance(seg, dict) or not isinstance(seg.get("type"), str) or seg["type"] not in CLIENT_SEGMENTS:
            raise BadRequest(f"segments[{i}].type must be one of {sorted(CLIENT_SEGMENTS)}", field=f"segments[{i}]")
        data = {k: v for k, v in seg.items() if k != "type"}
        if not all(isinstance(v, str | int | float) for v in data.values()):
            raise BadRequest(f"segments[{i}] values must be strings or numbers", field=f"segments[{i}]")
        if seg["type"] == "text" and not (isinstance(data.get("text"), str) and 0 < len(data["text"]) <= max_text):
            raise BadRequest(f"segments[{i}].text must be 1..{max_text} characters", field=f"segments[{i}].text")
        for key in ("url",):
            if key in data and not str(data[key]).startswith(("https://", "http://")):
                raise BadRequest(f"segments[{i}].url must be an http(s) URL", field=f"segments[{i}].url")
        segments.append(Segment(seg["type"], data))
    return Message(segments), client_msg_id


def wire_item(*, id: int | None, direction: str, message: Message, created_at: str, status: str | None = None,
              client_msg_id: str | None = None) -> dict[str, Any]:
    """One message as the web clients see it, in history and on the WebSocket alike."""
    return {
        "type": "message",
        "id": id,
        "direction": direction,
        "text": message.plain_text,
        "segments": [s.to_dict() for s in message.render(WEB_SEGMENTS)],
        "sender": {"name": message.sender_name} if message.sender_name else None,
        "status": status,
        "client_msg_id": client_msg_id,
        "created_at": created_at,
    }


def history_item(row: dict) -> dict[str, Any]:
    msg = Message([Segment.from_dict(s) for s in row["segments"]], row.get("sender_name"))
    return wire_item(id=row["id"], direction=row["direction"], message=msg, created_at=row["created_at"],
                     status=row["status"], client_msg_id=row.get("client_msg_id"))


REVOKED = 4001  # WebSocket close code (application range): the sign-in was revoked


async def live(request: web.Request, hub, account: str, external_id: str, heartbeat: float = 25.0, *,
               still_valid: Callable[[], Awaitable[bool]] | None = None, recheck: float = 2.0) -> web.WebSocketResponse:
    """Push this peer's messages until the client goes away. Clients catch up with `?after=`.

    With `still_valid`, the sign-in is checked again every `recheck` seconds and on every client
    message: a socket opened before its token was revoked (a clerk who left) is closed, not kept
    streaming customers' messages."""
    ws = web.WebSocketResponse(heartbeat=heartbeat, max_msg_size=4096)
    await ws.prepare(request)
    queue = hub.subscribe(account, external_id)

    async def revoked() -> bool:
        if still_valid is None or await still_valid():
            return False
        await ws.close(code=REVOKED, message=b"sign-in revoked")
        return True

    async def pump() -> None:
        while True:
            await ws.send_json(await queue.get())

    async def watch() -> None:
        while True:
            await asyncio.sleep(recheck)
            if await revoked():
                return

    tasks = [asyncio.create_task(pump())] + ([asyncio.create_task(watch())] if still_valid is not None else [])
    try:
        async for msg in ws:  # clients only ping; anything else is ignored
            if await revoked():
                break
            if msg.type == WSMsgType.TEXT and msg.data == "ping":
                await ws.send_str("pong")
            elif msg.type in (WSMsgType.ERROR, WSMsgType.CLOSE):
                break
    finally:
        for t in tasks:
            t.cancel()
        hub.unsubscribe(account, external_id, queue)
        await asyncio.gather(*tasks, return_exceptions=True)
    return ws


async def shared_js(request: web.Request) -> web.StreamResponse:
    return web.FileResponse(SHARED_JS, headers={"Cache-Control": "no-cache", "Content-Type": "text/javascript"})


_CURSOR_MAX = 2**63 - 1  # a message id is a 64-bit integer: a 30-digit cursor overflowed the query (500)


def history_params(request: web.Request) -> tuple[int, int]:
    """?after= (a message id, 0 = from the start) and ?limit= (1..200, default 50), as plain ASCII
    digits: int() alone also takes "1_000", "-5" and Arabic-Indic digits."""
    def number(name: str, default: str) -> int:
        raw = request.query.get(name, default) or default
        if not (raw.isascii() and raw.isdigit()) or int(raw) > _CURSOR_MAX:
            raise BadRequest(f"{name} must be a whole number from 0 to {_CURSOR_MAX}", field=name)
        return int(raw)

    return number("after", "0"), min(200, max(1, number("limit", "50")))


def push(hub, account: str, peer_id: str, message: Message) -> Receipt:
    """Deliver to the peer's open pages. The message is stored already, so an offline peer sees it
    in the history on their next visit; delivered means a live page received it now."""
    ref = message.ref or {}
    item = wire_item(id=ref.get("id"), direction="out", message=message, created_at=ref.get("created_at", ""),
                     status="sent")
    n = hub.publish(account, peer_id, item)
    return Receipt(platform_msg_id=str(ref["id"]) if ref.get("id") else None, delivered=n > 0)
