"""Security headers: on every answer (no sniffing, no referrer), and each HTML page with a Content
Security Policy of its own — scripts and styles from the gateway only (inline ones by their hash),
no plugins, no base or form tricks, framed only where the page may be framed.

A clerk's workbench token sits in the browser's storage; whatever runs on the gateway's origin can
read it. The media route serves files so they cannot run here (adapters/media.py), and these
policies keep anything injected into a page from loading or running script.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path

from aiohttp import web

_SCRIPT = re.compile(rb"<script>(.*?)</script>", re.S)  # inline: no src attribute
_STYLE = re.compile(rb"<style>(.*?)</style>", re.S)
_HOST = re.compile(r"^[A-Za-z0-9.-]+(:\d{1,5})?$|^\[[0-9A-Fa-f:.]+\](:\d{1,5})?$")
FALLBACK_CSP = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'"  # HTML nobody gave a policy


def _hashes(pattern: re.Pattern, html: bytes) -> str:
    return " ".join(f"'sha256-{base64.b64encode(hashlib.sha256(m).digest()).decode()}'"
                    for m in pattern.findall(html))


@lru_cache(maxsize=16)
def _load(path: Path, mtime: float) -> tuple[bytes, str, str]:
    html = path.read_bytes()
    return html, _hashes(_SCRIPT, html), _hashes(_STYLE, html)


def page_response(request: web.Request, path: Path, *, frame_ancestors: Iterable[str] = ("'none'",)) -> web.Response:
    """An HTML page of ours with its policy. `frame_ancestors`: origins that may frame it (the
    webchat page may sit in the brand's H5); the others may not be framed at all (clickjacking)."""
    html, scripts, styles = _load(path, path.stat().st_mtime)
    ancestors = " ".join(frame_ancestors)
    # 'self' covers same-origin WebSockets in CSP 3; older WebKit needs the ws(s) origin spelled out
    sockets = f" ws://{request.host} wss://{request.host}" if _HOST.match(request.host or "") else ""
    csp = "; ".join([
        "default-src 'none'",
        f"script-src 'self' {scripts}".strip(),
        f"style-src 'self' {styles}".strip(),
        "img-src 'self' data: blob: https: http:",  # product pictures and images people send are anywhere
        "media-src 'self' https: http:",
        f"connect-src 'self'{sockets}",
        "font-src 'self'",
        "base-uri 'none'",
        "form-action 'self'",
        f"frame-ancestors {ancestors}",
    ])
    headers = {"Content-Security-Policy": csp, "Cache-Control": "no-cache"}
    if ancestors in ("'none'", "'self'"):  # the same for browsers that only know X-Frame-Options
        headers["X-Frame-Options"] = "DENY" if ancestors == "'none'" else "SAMEORIGIN"
    return web.Response(body=html, content_type="text/html", charset="utf-8", headers=headers)


def _harden(resp: web.StreamResponse) -> None:
    if resp.prepared:  # a WebSocket or a stream already under way
        return
    resp.headers.setdefault("X-Content-Type-Options", "nosniff")
    resp.headers.setdefault("Referrer-Policy", "no-referrer")  # page URLs may carry a signed session or token
    if resp.content_type in ("text/html", "image/svg+xml"):  # documents that could run script (QR SVGs: none)
        resp.headers.setdefault("Content-Security-Policy", FALLBACK_CSP)


@web.middleware
async def security_headers(request: web.Request, handler):
    try:
        resp = await handler(request)
    except web.HTTPException as e:  # redirects and errors answered by raising
        _harden(e)
        raise
    _harden(resp)
    return resp
