"""Logs: structured (JSON lines for collectors, or readable text), with the request id of the
HTTP request that caused them, phone numbers masked and secrets redacted, whatever logger wrote them."""

from __future__ import annotations

import logging
import re
import sys
import time
import uuid

import structlog
from aiohttp import web

from gateway.privacy import mask_phones
from gateway.redact import redact_secrets

_RID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
access = logging.getLogger("gateway.access")


def _mask(_, __, event: dict) -> dict:
    """PII never leaves whole: phones in the message and in every string field; nor do secrets
    (tokens, platform secrets, signed URLs) a library put in an exception message."""
    for k, v in event.items():
        if isinstance(v, str):
            event[k] = redact_secrets(mask_phones(v))
    return event


def setup(fmt: str = "auto", level: int = logging.INFO, stream=None) -> None:
    """Route the standard library's logging (ours, aiohttp's, SQLAlchemy's) through structlog."""
    if fmt == "auto":
        fmt = "text" if sys.stderr.isatty() else "json"
    renderer = (structlog.processors.JSONRenderer(ensure_ascii=False) if fmt == "json"
                else structlog.dev.ConsoleRenderer(colors=False))
    handler = logging.StreamHandler(stream)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[
            structlog.contextvars.merge_contextvars,
            structlog.stdlib.add_log_level,
            structlog.stdlib.add_logger_name,
            structlog.stdlib.ExtraAdder(),
            structlog.processors.TimeStamper(fmt="iso", utc=True),
        ],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            _mask,
            renderer,
        ],
    ))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def request_id(request: web.Request) -> str:
    rid = request.headers.get("X-Request-Id", "")
    return rid if _RID.match(rid) else uuid.uuid4().hex[:16]


def middleware(metrics_of, access_log: bool = True):
    """Binds the request id to every log line the request causes, echoes it back, logs the request
    (path only: query strings may carry tokens) and counts it by route."""

    @web.middleware
    async def log_requests(request: web.Request, handler):
        rid = request_id(request)
        started = time.perf_counter()
        status = 500
        with structlog.contextvars.bound_contextvars(request_id=rid):
            try:
                resp = await handler(request)
                status = resp.status
                if not resp.prepared:
                    resp.headers["X-Request-Id"] = rid
                return resp
            except web.HTTPException as e:
                status = e.status
                e.headers["X-Request-Id"] = rid
                raise
            finally:
                info = request.match_info.route.resource
                route = info.canonical if info is not None else "unmatched"
                metrics_of(request).observe_http(request.method, route, status, started)
                if access_log:
                    access.info("%s %s %s", request.method, request.path, status,
                                extra={"status": status, "ms": round((time.perf_counter() - started) * 1000, 1)})

    return log_requests
