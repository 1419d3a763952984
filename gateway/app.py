"""The aiohttp application: platform callbacks, adapters' own routes, admin API, health, pages."""

from __future__ import annotations

import logging
from pathlib import Path

import segno
from aiohttp import web
from sqlalchemy import exc as sa_exc
from sqlalchemy import text
from sqlmodel import select

from gateway import api, logs
from gateway.ingress import error_response
from gateway.models import Invite
from gateway.pages import page_response, security_headers
from gateway.runtime import Gateway

log = logging.getLogger("gateway.http")

GATEWAY = web.AppKey("gateway", Gateway)
STATIC = Path(__file__).parent / "static"


# Errors that are bugs in what we asked the database; any other database error means it is away,
# locked or full, and the same request may succeed later.
_DB_BUGS = (sa_exc.IntegrityError, sa_exc.ProgrammingError, sa_exc.DataError, sa_exc.NotSupportedError)


# PostgreSQL error classes that pass: connection, resources, operator intervention (restart),
# transaction rollback (deadlock, serialization), lock not available. Others are our bug or bad data.
_TRANSIENT_SQLSTATE = ("08", "53", "57", "40", "55")


def database_unavailable(e: BaseException) -> bool:
    """SQLite "database is locked" / "disk is full", PostgreSQL restarting or unreachable, pool exhausted."""
    if isinstance(e, sa_exc.DBAPIError):
        orig = e.orig
        state = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None) or getattr(
            getattr(orig, "__cause__", None), "sqlstate", None)
        if state:
            return str(state)[:2] in _TRANSIENT_SQLSTATE
        return not isinstance(e, _DB_BUGS)
    return isinstance(e, sa_exc.TimeoutError | ConnectionError | TimeoutError)  # asyncpg's connect raises these bare


@web.middleware
async def refuse_nul(request: web.Request, handler):
    """A NUL in the path or the query is never valid input (and PostgreSQL refuses it in text)."""
    if "\x00" in request.path or any("\x00" in k or "\x00" in v for k, v in request.query.items()):
        return error_response(400, "bad_request", "NUL character in the URL")
    return await handler(request)


@web.middleware
async def json_errors(request: web.Request, handler):
    """Every error leaves as `{"error": {...}}`; nothing leaks a traceback."""
    try:
        return await handler(request)
    except web.HTTPRequestEntityTooLarge:
        return error_response(413, "too_large", f"body over {request.app[GATEWAY].max_body} bytes")
    except web.HTTPException as e:
        if e.status < 400 or e.content_type == "application/json":
            raise
        code = {404: "not_found", 405: "method_not_allowed"}.get(e.status, "http_error")
        return error_response(e.status, code, e.reason)
    except Exception as e:
        if database_unavailable(e):  # rolled back: retrying is safe (inbound is deduplicated by its key)
            log.warning("database unavailable on %s %s: %s", request.method, request.path, type(e).__name__)
            resp = error_response(503, "unavailable", "database busy or full, retry")
            resp.headers["Retry-After"] = "1"
            return resp
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error_response(500, "internal", "internal error")


async def callback(request: web.Request) -> web.StreamResponse:
    gw = request.app[GATEWAY]
    adapter = gw.adapters.get(request.match_info["account"])
    if adapter is None:
        return error_response(404, "not_found", "no such account")
    return await gw.ingest(adapter, request)


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Ready for traffic: started, the database answers, every platform connection is up. Whether
    this instance leads the scheduler is reported, not required: followers serve traffic too."""
    gw = request.app[GATEWAY]
    checks: dict = {"started": gw.started}
    try:
        async with gw.db() as s:
            await s.execute(text("SELECT 1"))
        checks["database"] = True
    except Exception as e:  # noqa: BLE001 - readiness reports, it does not raise
        checks["database"] = False
        checks["database_error"] = type(e).__name__
    checks["adapters"] = {name: a.connected() for name, a in gw.adapters.items()}
    checks["scheduler"] = "leader" if gw.leadership.is_leader else "standby"
    ok = checks["started"] and checks["database"] and all(checks["adapters"].values())
    return web.json_response({"status": "ready" if ok else "not_ready", "instance": gw.instance_id, "checks": checks},
                             status=200 if ok else 503)


async def metrics(request: web.Request) -> web.Response:
    from gateway.metrics import CONTENT_TYPE

    body = await request.app[GATEWAY].metrics.render()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


async def _invite(request: web.Request) -> Invite:
    gw = request.app[GATEWAY]
    async with gw.db() as s:
        invite = (await s.exec(select(Invite).where(Invite.code == request.match_info["code"].lower()))).first()
    if invite is None:
        raise web.HTTPNotFound(reason="no such invite")
    return invite


async def invite_landing(request: web.Request) -> web.StreamResponse:
    """What a scanned QR code opens: the brand's customer page with the invite."""
    gw = request.app[GATEWAY]
    invite = await _invite(request)
    webchat = gw.config.accounts_of("webchat")
    if webchat:
        raise web.HTTPFound(f"/webchat/{webchat[0].name}/?invite={invite.code}")
    async with gw.db() as s:  # no web channel: the Official Account's QR, else the clerk's WeCom contact
        urls = await gw.contact_urls(s, invite.clerk_id, invite.code)
    if urls:
        raise web.HTTPFound(urls[0][1])
    raise web.HTTPNotFound(reason="no customer channel is configured for this invite")


def qr_response(url: str, kind: str) -> web.Response:
    import io

    qr = segno.make(url, error="m")
    buf = io.BytesIO()
    if kind == "png":
        qr.save(buf, kind="png", scale=8, border=2)
        return web.Response(body=buf.getvalue(), content_type="image/png")
    qr.save(buf, kind="svg", scale=8, border=2, xmldecl=False)
    return web.Response(body=buf.getvalue(), content_type="image/svg+xml")


async def invite_qr(request: web.Request) -> web.Response:
    invite = await _invite(request)
    return qr_response(request.app[GATEWAY].invite_url(invite.code), request.match_info["kind"])


async def tracked_link(request: web.Request) -> web.StreamResponse:
    """A campaign's tracked link: the click is logged (campaign, customer, clerk), then 302."""
    from gateway.campaigns import click

    url = await click(request.app[GATEWAY], request.match_info["token"][:32])
    if url is None:
        raise web.HTTPNotFound(reason="no such link")
    raise web.HTTPFound(url)


async def openapi(request: web.Request) -> web.Response:
    from gateway.openapi import document

    return web.json_response(document())


async def console(request: web.Request) -> web.StreamResponse:
    return page_response(request, STATIC / "console.html")


def _redirect(to: str):
    async def handler(request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound(to)

    return handler


def create_app(gw: Gateway, *, manage_lifecycle: bool = True) -> web.Application:
    observe = logs.middleware(lambda request: request.app[GATEWAY].metrics, gw.config.server.access_log)
    app = web.Application(client_max_size=gw.max_body, middlewares=[observe, security_headers, json_errors, refuse_nul])
    app[GATEWAY] = gw
    for adapter in gw.adapters.values():
        for r in adapter.routes():
            app.router.add_route(r.method, r.path, r.handler, name=r.name)
    app.router.add_route("*", "/callbacks/{account}", callback)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/t/{token}", tracked_link)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/i/{code}", invite_landing)
    app.router.add_get(r"/i/{code}/qr.{kind:png|svg}", invite_qr)
    app.router.add_get("/openapi.json", openapi)
    app.router.add_get("/console/", console)
    app.router.add_get("/console", _redirect("/console/"))
    app.router.add_static("/console/assets/", STATIC / "console", append_version=False)
    app.router.add_get("/", _redirect("/console/"))
    api.setup(app, GATEWAY)

    if manage_lifecycle:

        async def lifecycle(app: web.Application):
            await gw.start()
            yield
            await gw.stop()

        app.cleanup_ctx.append(lifecycle)
    return app
