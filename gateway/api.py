"""Admin API `/api/v1`: bearer tokens with roles, JSON in and out, errors as CONTRACT.md says.

Routes are declared with their roles and request models in one table (`ROUTES`), which is also
what the OpenAPI document is generated from.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, Literal

from aiohttp import web
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    WithJsonSchema,
    field_validator,
)
from sqlalchemy import update
from sqlalchemy.exc import IntegrityError
from sqlmodel import select

from gateway import advisors, clock, handover, tokens
from gateway.caches import HOURS, WORK_IDS
from gateway.ingress import error_response
from gateway.models import (
    ApiToken,
    AuditEntry,
    Clerk,
    ClerkIdentity,
    Interaction,
    Invite,
    Outbox,
    Store,
)
from gateway.service import DAYS
from gateway.tokens import ROLES, Principal, create_token

ALL = ("admin", "marketer", "store_manager")
log = logging.getLogger("gateway.api")


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, field: str | None = None):
        super().__init__(message)
        self.status, self.code, self.field = status, code, field


# -- request models (also the OpenAPI schemas) ------------------------------------------------


INT64 = 2**63 - 1


def _storable(v: Any) -> bool:
    """What the database can hold: 64-bit integers, text without NUL (PostgreSQL refuses U+0000)."""
    if isinstance(v, int) and not isinstance(v, bool):
        return -INT64 <= v <= INT64
    if isinstance(v, str):
        return "\x00" not in v
    if isinstance(v, list | tuple | set):
        return all(_storable(x) for x in v)
    if isinstance(v, dict):
        return all(_storable(k) and _storable(x) for k, x in v.items())
    if isinstance(v, BaseModel):
        return True  # nested models check their own fields
    return True


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    @field_validator("*")
    @classmethod
    def _storable(cls, v: Any) -> Any:
        """Invalid input, not a database error: numbers beyond 64 bits, NUL characters."""
        if not _storable(v):
            raise ValueError("number out of range or text with a NUL character")
        return v


def _aware(t: datetime) -> datetime:
    if t.tzinfo is None:
        raise ValueError("needs an offset, e.g. 2026-12-01T10:00:00+08:00")
    return clock.sane(t)


# A time with its offset, within clock.EARLIEST..LATEST (year 1 or 9999 was a 500, not a 422).
Instant = Annotated[datetime, AfterValidator(_aware)]
# The same, where a time without offset is also accepted (read in the configured zone).
LocalInstant = Annotated[datetime, AfterValidator(clock.sane)]

_MONEY = re.compile(r"\d+(\.\d{1,2})?", re.ASCII)
MONEY_PATTERN = r"^\d+(\.\d{1,2})?$"


def _money(v: Any) -> Any:
    """Money is a decimal string of ASCII digits: Decimal() and int() also take "1_000.00",
    Arabic-Indic or full-width digits and floats, none of which a POS means to send."""
    if not isinstance(v, str) or not _MONEY.fullmatch(v):
        raise ValueError('must be a decimal string like "123.45" (ASCII digits, at most 2 decimals)')
    return Decimal(v)


def money(**bounds) -> Any:
    """A money field type: yuan as "123.45"; `bounds` as for Field (gt=0, ge=0)."""
    return Annotated[Decimal, BeforeValidator(_money), Field(max_digits=14, decimal_places=2, **bounds),
                     WithJsonSchema({"type": "string", "pattern": MONEY_PATTERN, "examples": ["123.45"]})]


_SPAN = re.compile(r"^([01]\d|2[0-3]):[0-5]\d-([01]\d|2[0-4]):[0-5]\d$")


class StoreIn(_In):
    name: str = Field(min_length=1, max_length=200)
    city: str | None = Field(None, max_length=100)
    lat: float | None = Field(None, ge=-90, le=90)
    lng: float | None = Field(None, ge=-180, le=180)
    opening_hours: dict[str, str] | None = None  # {"mon": "10:00-22:00", "sun": "closed", "daily": …}

    @field_validator("opening_hours")
    @classmethod
    def _hours(cls, v: dict[str, str] | None) -> dict[str, str] | None:
        for day, span in (v or {}).items():
            if day not in (*DAYS, "daily"):
                raise ValueError(f"{day!r} is not a day: use mon..sun or daily")
            if span != "closed" and not _SPAN.match(span):
                raise ValueError(f"{day}: {span!r} is not HH:MM-HH:MM (opening before closing) or closed")
            if span != "closed" and span[:5] >= span[6:]:
                raise ValueError(f"{day}: {span!r} closes before it opens")
        return v


class StorePatch(StoreIn):
    name: str | None = Field(None, min_length=1, max_length=200)


class ClerkIn(_In):
    name: str = Field(min_length=1, max_length=200)
    display_name: str = Field(min_length=1, max_length=100)
    store_id: int
    role: Literal["clerk", "manager"] = "clerk"
    work_ids: dict[str, str] = {}


class ClerkPatch(_In):
    name: str | None = Field(None, min_length=1, max_length=200)
    display_name: str | None = Field(None, min_length=1, max_length=100)
    store_id: int | None = None
    role: Literal["clerk", "manager"] | None = None
    work_ids: dict[str, str] | None = None


class LeaveIn(_In):
    successor_id: int | None = None  # else the handover policy picks (least loaded / manager / queue)


class InviteIn(_In):
    clerk_id: int
    source: str | None = Field(None, max_length=64)
    campaign_id: int | None = None


class TokenIn(_In):
    role: Literal["admin", "marketer", "store_manager", "clerk"]
    store_id: int | None = None
    clerk_id: int | None = None
    name: str | None = Field(None, max_length=100)


# -- plumbing -------------------------------------------------------------------------------------


@dataclass
class Route:
    method: str
    path: str
    roles: tuple[str, ...]
    handler: Callable[..., Awaitable[Any]]
    body: type[BaseModel] | None = None
    summary: str = ""
    status: int = 200
    auth: str = "bearer"  # or "signature": X-Gateway-Signature over the raw body (POS / shop webhooks)


ROUTES: list[Route] = []


def route(method: str, path: str, *, roles: tuple[str, ...] = ("admin",), body: type[BaseModel] | None = None,
          status: int = 200, auth: str = "bearer"):
    def deco(fn):
        ROUTES.append(Route(method, path, roles, fn, body, (fn.__doc__ or "").strip().split("\n")[0], status, auth))
        return fn

    return deco


@dataclass
class Req:
    request: web.Request
    gw: Any
    who: Principal
    body: Any = None

    def param(self, name: str) -> int:
        raw = self.request.match_info[name]
        if not raw.isdigit() or int(raw) > INT64:
            raise ApiError(404, "not_found", f"no such {name.removesuffix('_id')}")
        return int(raw)

    def query_int(self, name: str, default: int | None = None) -> int | None:
        raw = self.request.query.get(name)
        if raw in (None, ""):
            return default
        try:
            value = int(raw)
        except ValueError:
            raise ApiError(400, "bad_request", f"{name} must be an integer", name) from None
        if abs(value) > INT64:
            raise ApiError(400, "bad_request", f"{name} is out of range", name)
        return value

    def limit(self) -> int:
        return max(1, min(500, self.query_int("limit", 100)))

    def scoped_store(self, store_id: int | None) -> None:
        """Store managers only see and touch their own store."""
        if self.who.role == "store_manager" and store_id != self.who.store_id:
            raise ApiError(403, "forbidden", "outside your store")


def _check_signature(gw, request: web.Request, raw: bytes) -> None:
    """Order webhooks: hex(HMAC-SHA256(orders.webhook_secret, raw body)) in X-Gateway-Signature."""
    import hashlib
    import hmac

    secret = gw.config.orders.webhook_secret
    if not secret:
        raise ApiError(401, "unauthorized", "orders.webhook_secret is not configured: order intake is off")
    expected = hmac.new(secret.encode(), raw, hashlib.sha256).hexdigest()
    given = request.headers.get("X-Gateway-Signature", "").lower()
    if not given.isascii() or not hmac.compare_digest(expected, given):  # compare_digest raises on non-ASCII
        raise ApiError(401, "unauthorized", "bad X-Gateway-Signature")


AUDITED_READS = {"/customers/{customer_id}/export", "/audit"}


async def _audit(gw, r: Route, request: web.Request, who: Principal, status: int) -> None:
    """Every change and every export, who did it and how it ended (PIPL: admin actions are logged)."""
    if r.method == "GET" and r.path not in AUDITED_READS:
        return
    async with gw.db() as s:
        s.add(AuditEntry(at=gw.clock.now(), token_id=who.token_id, role=who.role, method=r.method,
                         path=request.path[:300], status=status, detail=dict(request.match_info) or None))
        await s.commit()


def _loc(loc: tuple) -> str:
    return ".".join(str(p) for p in loc)


def _wrap(r: Route, key: web.AppKey):
    async def handler(request: web.Request) -> web.StreamResponse:
        gw = request.app[key]
        who = None
        try:
            raw = await request.read() if r.body is not None else b""
            if r.auth == "signature":
                _check_signature(gw, request, raw)
            else:
                auth = request.headers.get("Authorization", "")
                if not auth.startswith("Bearer "):
                    raise ApiError(401, "unauthorized", "missing bearer token")
                who = await gw.principal(auth[7:].strip())
                if who is None:
                    raise ApiError(401, "unauthorized", "invalid or revoked token")
                if who.role not in r.roles:
                    raise ApiError(403, "forbidden", f"needs role {' or '.join(r.roles)}")
            body = None
            if r.body is not None:
                try:
                    data = json.loads(raw or b"null")
                except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: nested thousands deep
                    raise ApiError(400, "bad_request", "body is not valid JSON") from None
                if not isinstance(data, dict):
                    raise ApiError(400, "bad_request", "body must be a JSON object")
                try:
                    body = r.body.model_validate(data)
                except ValidationError as e:
                    err = e.errors()[0]
                    raise ApiError(422, "invalid", err["msg"], _loc(err["loc"])) from None
            try:
                result = await r.handler(Req(request, gw, who, body))
            except IntegrityError:  # a check a handler missed: the database's constraint still holds
                log.warning("integrity error on %s %s", request.method, request.path, exc_info=True)
                raise ApiError(409, "conflict", "conflicts with existing data or refers to something that does not exist"
                               ) from None
        except ApiError as e:
            if who is not None:
                await _audit(gw, r, request, who, e.status)
            return error_response(e.status, e.code, str(e), e.field)
        if who is not None:
            await _audit(gw, r, request, who, r.status)
        if isinstance(result, web.StreamResponse):
            return result
        status = r.status
        if isinstance(result, tuple):  # (status, body): e.g. 200 for an idempotent resend, 201 when new
            status, result = result
        return web.json_response(result, status=status, dumps=_dumps)

    return handler


def _default(o: Any):
    if isinstance(o, datetime):
        return o.isoformat()
    return str(o)


def _dumps(obj: Any) -> str:
    return json.dumps(obj, default=_default, ensure_ascii=False)


def setup(app: web.Application, key: web.AppKey) -> None:
    for r in ROUTES:
        app.router.add_route(r.method, "/api/v1" + r.path, _wrap(r, key))


def _page(items: list[dict], limit: int) -> dict:
    out: dict[str, Any] = {"items": items}
    if len(items) == limit:
        out["next"] = items[-1]["id"]
    return out


def _dump(row, tz) -> dict:
    d = row.model_dump()
    for k, v in d.items():
        if isinstance(v, datetime):
            d[k] = v.astimezone(tz).isoformat()
    return d


# -- tokens -------------------------------------------------------------------------------------------


@route("POST", "/tokens", body=TokenIn, status=201)
async def token_create(q: Req):
    """Create an API token; the token is shown once, only its hash is stored."""
    async with q.gw.db() as s:
        try:
            row, token = await create_token(s, q.body.role, store_id=q.body.store_id, clerk_id=q.body.clerk_id,
                                            name=q.body.name)
            await s.commit()
        except ValueError as e:
            raise ApiError(422, "invalid", str(e), "clerk_id" if "clerk" in str(e) else "role") from None
        except IntegrityError:
            raise ApiError(422, "invalid", "store_id or clerk_id does not exist") from None
    return {"id": row.id, "token": token, "role": row.role}


def _token_out(row: ApiToken, clerk_status: str | None, tz) -> dict:
    out = {k: v for k, v in _dump(row, tz).items() if k != "token_hash"}
    out["active"] = row.revoked_at is None and (row.clerk_id is None or clerk_status == "active")
    return out


@route("GET", "/tokens")
async def token_list(q: Req):
    """List tokens (never the secrets) with their last use (?clerk_id=, ?store_id=, ?role=, ?active=true|false)."""
    stmt = (select(ApiToken, Clerk.status).join(Clerk, Clerk.id == ApiToken.clerk_id, isouter=True)
            .where(ApiToken.id > q.query_int("after", 0)).order_by(ApiToken.id).limit(q.limit()))
    for name, column in (("clerk_id", ApiToken.clerk_id), ("store_id", ApiToken.store_id)):
        if (value := q.query_int(name)) is not None:
            stmt = stmt.where(column == value)
    if (role := q.request.query.get("role")) is not None:
        if role not in ROLES:
            raise ApiError(400, "bad_request", f"role must be one of {', '.join(ROLES)}", "role")
        stmt = stmt.where(ApiToken.role == role)
    if (active := q.request.query.get("active")) is not None:
        if active not in ("true", "false"):
            raise ApiError(400, "bad_request", "active must be true or false", "active")
        live = ApiToken.revoked_at.is_(None) & (ApiToken.clerk_id.is_(None) | (Clerk.status == "active"))
        stmt = stmt.where(live if active == "true" else ~live)
    async with q.gw.db() as s:
        rows = (await s.exec(stmt)).all()
    return _page([_token_out(r, status, q.gw.tz) for r, status in rows], q.limit())


@route("POST", "/tokens/{token_id}/revoke")
async def token_revoke(q: Req):
    """Revoke a token, at once on every instance (idempotent)."""
    async with q.gw.db() as s:
        row = await s.get(ApiToken, q.param("token_id"))
        if row is None:
            raise ApiError(404, "not_found", "no such token")
        await tokens.revoke(s, q.gw.clock.now(), token_ids=[row.id], forget=q.gw.forget_tokens)
        await s.commit()
        await s.refresh(row)
    return {"id": row.id, "revoked_at": row.revoked_at.isoformat()}


@route("GET", "/me", roles=ROLES)
async def me(q: Req):
    """Who this token is: role, store or clerk scope, name."""
    return {"token_id": q.who.token_id, "role": q.who.role, "store_id": q.who.store_id, "clerk_id": q.who.clerk_id,
            "name": q.who.name}


# -- stores -------------------------------------------------------------------------------------------


@route("POST", "/stores", body=StoreIn, status=201)
async def store_create(q: Req):
    """Create a store."""
    async with q.gw.db() as s:
        store = Store(**q.body.model_dump())
        s.add(store)
        await s.commit()
    return _dump(store, q.gw.tz)


@route("GET", "/stores", roles=ALL)
async def store_list(q: Req):
    """List stores (a store manager sees their own)."""
    stmt = select(Store).where(Store.id > q.query_int("after", 0)).order_by(Store.id).limit(q.limit())
    if q.who.role == "store_manager":
        stmt = stmt.where(Store.id == q.who.store_id)
    async with q.gw.db() as s:
        rows = (await s.exec(stmt)).all()
    return _page([_dump(r, q.gw.tz) for r in rows], q.limit())


async def _store(s, q: Req) -> Store:
    store = await s.get(Store, q.param("store_id"))
    if store is None:
        raise ApiError(404, "not_found", "no such store")
    q.scoped_store(store.id)
    return store


@route("GET", "/stores/{store_id}", roles=ALL)
async def store_get(q: Req):
    """One store."""
    async with q.gw.db() as s:
        return _dump(await _store(s, q), q.gw.tz)


@route("PATCH", "/stores/{store_id}", body=StorePatch)
async def store_patch(q: Req):
    """Change a store."""
    async with q.gw.db() as s:
        store = await _store(s, q)
        for k, v in q.body.model_dump(exclude_unset=True).items():
            setattr(store, k, v)
        await q.gw.caches.changed(s, HOURS)
        await s.commit()
        return _dump(store, q.gw.tz)


# -- clerks -------------------------------------------------------------------------------------------


async def _set_work_ids(s, q: Req, clerk: Clerk, work_ids: dict[str, str]) -> None:
    for account, user_id in work_ids.items():
        adapter = q.gw.adapters.get(account)
        if adapter is None or adapter.side != "clerk":
            raise ApiError(422, "invalid", f"{account!r} is not a configured clerk-side account", f"work_ids.{account}")
        if adapter.platform == "workbench":
            raise ApiError(422, "invalid", "workbench sign-in uses a clerk token, not a work id", f"work_ids.{account}")
        if not user_id or len(user_id) > 128:
            raise ApiError(422, "invalid", "work id must be 1..128 characters", f"work_ids.{account}")
    existing = (await s.exec(select(ClerkIdentity).where(ClerkIdentity.clerk_id == clerk.id))).all()
    for row in existing:
        if row.account not in work_ids:
            await s.delete(row)
        elif row.external_id != work_ids[row.account]:
            row.external_id = work_ids[row.account]
    have = {r.account for r in existing}
    for account, user_id in work_ids.items():
        if account not in have:
            s.add(ClerkIdentity(clerk_id=clerk.id, platform=q.gw.adapters[account].platform, account=account,
                                external_id=user_id))
    try:
        await s.flush()
    except IntegrityError:
        raise ApiError(409, "conflict", "a work id is already used by another clerk", "work_ids") from None
    await q.gw.caches.changed(s, WORK_IDS)


async def _clerk_out(s, clerk: Clerk, tz) -> dict:
    rows = (await s.exec(select(ClerkIdentity).where(ClerkIdentity.clerk_id == clerk.id))).all()
    return {**_dump(clerk, tz), "work_ids": {r.account: r.external_id for r in rows}}


@route("POST", "/clerks", roles=("admin", "store_manager"), body=ClerkIn, status=201)
async def clerk_create(q: Req):
    """Create a clerk with their personal display name and work-IM ids."""
    q.scoped_store(q.body.store_id)
    async with q.gw.db() as s:
        if await s.get(Store, q.body.store_id) is None:
            raise ApiError(422, "invalid", "no such store", "store_id")
        clerk = Clerk(**q.body.model_dump(exclude={"work_ids"}))
        s.add(clerk)
        await s.flush()
        await _set_work_ids(s, q, clerk, q.body.work_ids)
        await s.commit()
        return await _clerk_out(s, clerk, q.gw.tz)


@route("GET", "/clerks", roles=ALL)
async def clerk_list(q: Req):
    """List clerks (?store_id=, ?status=)."""
    stmt = select(Clerk).where(Clerk.id > q.query_int("after", 0)).order_by(Clerk.id).limit(q.limit())
    store_id = q.who.store_id if q.who.role == "store_manager" else q.query_int("store_id")
    if store_id is not None:
        stmt = stmt.where(Clerk.store_id == store_id)
    if q.request.query.get("status"):
        stmt = stmt.where(Clerk.status == q.request.query["status"])
    async with q.gw.db() as s:
        return _page([await _clerk_out(s, c, q.gw.tz) for c in (await s.exec(stmt)).all()], q.limit())


async def _clerk(s, q: Req) -> Clerk:
    clerk = await s.get(Clerk, q.param("clerk_id"))
    if clerk is None:
        raise ApiError(404, "not_found", "no such clerk")
    q.scoped_store(clerk.store_id)
    return clerk


@route("GET", "/clerks/{clerk_id}", roles=ALL)
async def clerk_get(q: Req):
    """One clerk."""
    async with q.gw.db() as s:
        return await _clerk_out(s, await _clerk(s, q), q.gw.tz)


@route("PATCH", "/clerks/{clerk_id}", roles=("admin", "store_manager"), body=ClerkPatch)
async def clerk_patch(q: Req):
    """Change a clerk (display name, store, role, work ids)."""
    async with q.gw.db() as s:
        clerk = await _clerk(s, q)
        data = q.body.model_dump(exclude_unset=True)
        if "store_id" in data:
            q.scoped_store(data["store_id"])
            if await s.get(Store, data["store_id"]) is None:
                raise ApiError(422, "invalid", "no such store", "store_id")
        for k, v in data.items():
            if k != "work_ids":
                setattr(clerk, k, v)
        if data.get("work_ids") is not None:
            await _set_work_ids(s, q, clerk, data["work_ids"])
        await s.commit()
        return await _clerk_out(s, clerk, q.gw.tz)


@route("POST", "/clerks/{clerk_id}/token", roles=("admin", "store_manager"), status=201)
async def clerk_token(q: Req):
    """Create a workbench sign-in token for a clerk (shown once)."""
    async with q.gw.db() as s:
        clerk = await _clerk(s, q)
        if clerk.status != "active":
            raise ApiError(409, "conflict", "this clerk has left: a departed clerk gets no token")
        row, token = await create_token(s, "clerk", clerk_id=clerk.id, name=clerk.display_name)
        await s.commit()
    return {"id": row.id, "token": token, "role": "clerk",
            "workbench_url": f"{q.gw.config.server.base_url()}/{next(iter(q.gw.clerk_accounts), 'workbench')}/"}


@route("POST", "/clerks/{clerk_id}/tokens/revoke", roles=("admin", "store_manager"))
async def clerk_tokens_revoke(q: Req):
    """Revoke every token of a clerk at once (a lost phone, a shared login), on every instance."""
    async with q.gw.db() as s:
        clerk = await _clerk(s, q)
        ids = await tokens.revoke(s, q.gw.clock.now(), clerk_id=clerk.id, forget=q.gw.forget_tokens)
        await s.commit()
    return {"clerk_id": clerk.id, "revoked": ids}


@route("POST", "/clerks/{clerk_id}/leave", roles=("admin", "store_manager"), body=LeaveIn)
async def clerk_leave(q: Req):
    """A clerk leaves: their customers go to the successor (or by the handover policy); nobody is lost."""
    async with q.gw.db() as s:
        clerk = await _clerk(s, q)
        if clerk.status != "active":
            raise ApiError(409, "conflict", "this clerk has already left")
        successor = None
        if q.body.successor_id is not None:
            successor = await s.get(Clerk, q.body.successor_id)
            if successor is None or successor.status != "active" or successor.id == clerk.id:
                raise ApiError(422, "invalid", "the successor must be another active clerk", "successor_id")
            q.scoped_store(successor.store_id)
        # Still a member on the platforms until their org removes them: in-service transfers apply
        # (an org event for a removed member hands over with the resigned APIs instead).
        counts = await handover.leave(s, q.gw, clerk, now=q.gw.clock.now(), successor=successor, resigned=False,
                                      reason="left (admin)")
        await s.commit()
    q.gw.outbox.kick()
    return {"clerk_id": clerk.id, "status": "left", "customers": dict(counts)}


# -- invites -----------------------------------------------------------------------------------------


def _invite_out(gw, inv: Invite) -> dict:
    url = gw.invite_url(inv.code)
    return {**_dump(inv, gw.tz), "url": url, "qr_png": f"{url}/qr.png", "qr_svg": f"{url}/qr.svg"}


@route("POST", "/invites", roles=("admin", "store_manager", "marketer"), body=InviteIn, status=201)
async def invite_create(q: Req):
    """Create an invite (QR code) that binds customers to a clerk."""
    async with q.gw.db() as s:
        clerk = await s.get(Clerk, q.body.clerk_id)
        if clerk is None:
            raise ApiError(422, "invalid", "no such clerk", "clerk_id")
        q.scoped_store(clerk.store_id)
        if clerk.status != "active":
            raise ApiError(422, "invalid", "the clerk has left", "clerk_id")
        inv = await advisors.create_invite(s, clerk.id, source=q.body.source, campaign_id=q.body.campaign_id)
        await s.commit()
    return _invite_out(q.gw, inv)


@route("GET", "/invites", roles=ALL)
async def invite_list(q: Req):
    """List invites (?clerk_id=)."""
    stmt = select(Invite).where(Invite.id > q.query_int("after", 0)).order_by(Invite.id).limit(q.limit())
    if (clerk_id := q.query_int("clerk_id")) is not None:
        stmt = stmt.where(Invite.clerk_id == clerk_id)
    if q.who.role == "store_manager":
        stmt = stmt.join(Clerk, Clerk.id == Invite.clerk_id).where(Clerk.store_id == q.who.store_id)
    async with q.gw.db() as s:
        return _page([_invite_out(q.gw, i) for i in (await s.exec(stmt)).all()], q.limit())


async def _invite(q: Req) -> Invite:
    """The invite by its code. A store manager asking for another store's invite gets the same 404
    as for a code that does not exist: a 403 would confirm the code is real."""
    stmt = select(Invite).where(Invite.code == q.request.match_info["code"].lower())
    if q.who.role == "store_manager":
        stmt = stmt.join(Clerk, Clerk.id == Invite.clerk_id).where(Clerk.store_id == q.who.store_id)
    async with q.gw.db() as s:
        inv = (await s.exec(stmt)).first()
    if inv is None:
        raise ApiError(404, "not_found", "no such invite")
    return inv


@route("GET", "/invites/{code}", roles=ALL)
async def invite_get(q: Req):
    """One invite by code."""
    return _invite_out(q.gw, await _invite(q))


@route("GET", "/invites/{code}/qr.png", roles=ALL)
async def invite_png(q: Req):
    """The invite's QR code as PNG."""
    from gateway.app import qr_response

    return qr_response(q.gw.invite_url((await _invite(q)).code), "png")


@route("GET", "/invites/{code}/qr.svg", roles=ALL)
async def invite_svg(q: Req):
    """The invite's QR code as SVG."""
    from gateway.app import qr_response

    return qr_response(q.gw.invite_url((await _invite(q)).code), "svg")


# -- interactions and the outbox ----------------------------------------------------------------------


@route("GET", "/interactions", roles=ALL)
async def interaction_list(q: Req):
    """The interaction log (?customer_id=, ?clerk_id=, ?type=, ?after=)."""
    stmt = select(Interaction).where(Interaction.id > q.query_int("after", 0)).order_by(Interaction.id).limit(q.limit())
    for name in ("customer_id", "clerk_id", "store_id", "campaign_id"):
        if (v := q.query_int(name)) is not None:
            stmt = stmt.where(getattr(Interaction, name) == v)
    if q.request.query.get("type"):
        stmt = stmt.where(Interaction.type.in_(q.request.query["type"].split(",")))
    if q.who.role == "store_manager":
        stmt = stmt.where(Interaction.store_id == q.who.store_id)
    async with q.gw.db() as s:
        return _page([_dump(r, q.gw.tz) for r in (await s.exec(stmt)).all()], q.limit())


@route("GET", "/outbox")
async def outbox_list(q: Req):
    """Outbound messages by status (?status=dead for dead letters, held, pending …)."""
    status = q.request.query.get("status", "dead")
    stmt = (select(Outbox).where(Outbox.status == status, Outbox.id > q.query_int("after", 0))
            .order_by(Outbox.id).limit(q.limit()))
    async with q.gw.db() as s:
        return _page([_dump(r, q.gw.tz) for r in (await s.exec(stmt)).all()], q.limit())


@route("POST", "/outbox/{outbox_id}/retry")
async def outbox_retry(q: Req):
    """Send a dead or held letter again."""
    async with q.gw.db() as s:
        res = await s.execute(
            update(Outbox)
            .where(Outbox.id == q.param("outbox_id"), Outbox.status.in_(("dead", "held")))
            .values(status="pending", attempts=0, next_attempt_at=q.gw.clock.now(), last_error=None, error_code=None)
        )
        await s.commit()
    if res.rowcount != 1:
        raise ApiError(409, "conflict", "only dead or held messages can be retried")
    q.gw.outbox.kick()
    return {"id": q.param("outbox_id"), "status": "pending"}


assert set(ROLES) >= set(ALL)


# The catalogue, campaign and order routes live in their own modules and join the same table.
import gateway.api_campaigns  # noqa: E402, F401
import gateway.api_customers  # noqa: E402, F401
import gateway.api_orders  # noqa: E402, F401
