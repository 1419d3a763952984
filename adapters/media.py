"""`/media/{account}/{code}`: the files clerks and customers send on DingTalk, WeCom and the Official
Account, reached by the other side through the gateway (the platform's token never leaves us).

The route answers only links the gateway signed, until they expire, at most `rate_per_minute` a
client, and serves a file so that it can never run on the gateway's origin: an HTML file opened
from here used to run as our page and read a clerk's token from the browser's storage.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import re
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import quote

from aiohttp import web

from gateway.adapter import Permanent, Retryable, RouteDef
from gateway.ingress import error_response
from gateway.redact import redact_secrets

log = logging.getLogger("gateway.media")

# Shown in the browser (inline) only when the type cannot carry script: raster images, audio, video.
# SVG is an image that runs script, so it is downloaded like everything else.
_INLINE = re.compile(r"^(image/(png|jpeg|gif|webp|bmp)|audio/[a-z0-9.+-]+|video/[a-z0-9.+-]+)$")
_MIME = re.compile(r"^[a-z0-9!#$&^_.+-]+/[a-z0-9!#$&^_.+-]+$")
_ACTIVE = ("html", "xml", "svg", "javascript", "ecmascript")  # never served under their own type
SANDBOX = "default-src 'none'; sandbox"


@dataclass(frozen=True)
class MediaLinks:
    """Signs and checks the links of one account's media route. Pure, so parsers can build links.

    key empty: plain links (what the parse vectors expect); the adapters always sign."""

    prefix: str = ""  # the route's public URL, f"{public_url}/media/{account}"
    key: bytes = b""
    ttl: int = 3 * 24 * 3600  # platforms keep the files 3 days (WeCom, Official Account media)

    def _sig(self, code: str, exp: int) -> str:
        mac = hmac.new(self.key, f"{code}\n{exp}".encode(), hashlib.sha256).digest()[:16]
        return base64.urlsafe_b64encode(mac).rstrip(b"=").decode()

    def url(self, code: str, now: datetime) -> str:
        path = f"{self.prefix}/{quote(code, safe='/+=')}"  # DingTalk download codes are base64: "/" and "+"
        if not self.key:
            return path
        exp = int(now.timestamp()) + self.ttl
        return f"{path}?exp={exp}&sig={self._sig(code, exp)}"

    def valid(self, code: str, exp: str, sig: str, now: datetime) -> bool:
        if not (exp.isascii() and exp.isdigit() and len(exp) <= 12 and sig.isascii()):
            return False
        return int(exp) >= now.timestamp() and hmac.compare_digest(self._sig(code, int(exp)), sig)


def link_key(secret: str, account: str) -> bytes:
    """One key per account, so a link signed for one account's file opens nothing on another."""
    return hmac.new(secret.encode(), f"media-link:{account}".encode(), hashlib.sha256).digest()


class ClientLimit:
    """A token bucket per client address on the injected clock; the oldest buckets go first."""

    def __init__(self, per_minute: int, clock, max_clients: int = 10_000):
        self.rate, self.burst = per_minute / 60.0, float(per_minute)
        self._clock, self._max = clock, max_clients
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def take(self, client: str) -> float:
        """0 when allowed (one taken), else the seconds until the client may try again."""
        now = self._clock.now().timestamp()
        tokens, at = self._buckets.pop(client, (self.burst, now))
        tokens = min(self.burst, tokens + max(0.0, now - at) * self.rate)
        wait = 0.0 if tokens >= 1 else (1 - tokens) / self.rate
        self._buckets[client] = (tokens - 1 if not wait else tokens, now)
        while len(self._buckets) > self._max:
            self._buckets.popitem(last=False)
        return wait


Download = Callable[[str], Awaitable[tuple[bytes, str]]]
Locate = Callable[[str], Awaitable[str]]


class MediaRoute:
    """The route of one adapter: `download` fetches the bytes (passed through with safe headers),
    or `locate` resolves the platform's own short-lived URL (redirected to; another origin)."""

    def __init__(self, adapter, platform_secret: str, *, download: Download | None = None,
                 locate: Locate | None = None):
        self.adapter, self._secret = adapter, platform_secret
        self._download, self._locate = download, locate
        self.limit = ClientLimit(adapter.host.media_settings.rate_per_minute, adapter.host.clock)

    @property
    def links(self) -> MediaLinks:
        host, account = self.adapter.host, self.adapter.account
        settings = host.media_settings
        # Built per use: the public URL may be set after start-up (tests; `server.public_url`).
        return MediaLinks(f"{host.base_url}/media/{account}", link_key(settings.secret or self._secret, account),
                          settings.link_ttl)

    def route(self) -> RouteDef:
        return RouteDef("GET", f"/media/{self.adapter.account}/{{code:.+}}", self.handle)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        host = self.adapter.host
        wait = self.limit.take(host.client_address(request))
        if wait:
            resp = error_response(429, "too_many_requests", "too many media requests from this address")
            resp.headers["Retry-After"] = str(max(1, round(wait)))
            return resp
        code, q = request.match_info["code"], request.query
        if not self.links.valid(code, q.get("exp", ""), q.get("sig", ""), host.clock.now()):
            return error_response(403, "forbidden", "this media link is unsigned, altered or expired")
        try:
            if self._locate is not None:
                url = await self._locate(code)
            else:
                body, ctype = await self._download(code)
        except (Retryable, Permanent) as e:  # the reason is logged (redacted), never sent: it named URLs
            log.warning("media %s: %s", self.adapter.account, redact_secrets(str(e)))
            return error_response(502, "upstream", "the platform did not deliver this file; try again later")
        if self._locate is not None:  # the platform's own origin: nothing there can read ours
            raise web.HTTPFound(url, headers={"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"})
        return web.Response(body=body, headers=file_headers(ctype, int(q["exp"]) - int(host.clock.now().timestamp())))


def file_headers(upstream_type: str | None, fresh_for: int) -> dict[str, str]:
    """A platform file's headers: inline only for the allow-listed types; everything else is an
    attachment, never under an active type; no sniffing; a sandbox if a browser renders it anyway."""
    ctype = (upstream_type or "").split(";")[0].strip().lower()
    if not _MIME.match(ctype):
        ctype = "application/octet-stream"
    inline = bool(_INLINE.match(ctype))
    if not inline and any(word in ctype for word in _ACTIVE):
        ctype = "application/octet-stream"
    return {"Content-Type": ctype, "Content-Disposition": "inline" if inline else "attachment",
            "X-Content-Type-Options": "nosniff", "Content-Security-Policy": SANDBOX,
            "Referrer-Policy": "no-referrer", "Cache-Control": f"private, max-age={max(0, min(fresh_for, 86400))}"}
