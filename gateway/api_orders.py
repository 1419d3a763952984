"""Orders from POS and shops (signed webhooks), refunds, and the commission ledger."""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal
from typing import Annotated, Literal

from pydantic import Field, model_validator
from sqlalchemy import func, select

from gateway import attribution, clock, csvsafe, reports
from gateway.api import ALL, ApiError, Instant, Req, _In, money, route
from gateway.models import Clerk, LedgerEntry

Amount = money(gt=0)


class CustomerRef(_In):
    customer_id: int | None = None
    channel: str | None = Field(None, max_length=32)  # a platform: webchat, wechat_mp, wecom …
    external_id: str | None = Field(None, max_length=128)

    @model_validator(mode="after")
    def _one(self):
        if (self.customer_id is None) == (self.channel is None or self.external_id is None):
            raise ValueError("give customer_id, or channel and external_id")
        return self


class OrderIn(_In):
    order_id: str = Field(min_length=1, max_length=128)
    customer: CustomerRef
    amount: Amount
    currency: Literal["CNY"] = "CNY"
    channel: Literal["store", "cloud_store", "flagship", "other"]
    store_id: int | None = None
    placed_at: Instant
    coupon_codes: list[Annotated[str, Field(min_length=1, max_length=64)]] | None = Field(None, max_length=20)


class RefundIn(_In):
    amount: Amount
    refunded_at: Instant


async def _call(fn, *args):
    try:
        return await fn(*args)
    except attribution.OrderError as e:
        raise ApiError(e.status, e.code, str(e), e.field) from None


@route("POST", "/orders", auth="signature", body=OrderIn, status=201)
async def order_create(q: Req):
    """An order (signed with X-Gateway-Signature), idempotent by order_id; credited to the advisor
    bound at placed_at."""
    body = q.body.model_dump(mode="json", exclude_none=True)
    body["customer"] = q.body.customer.model_dump(exclude_none=True)
    return await _call(attribution.record_order, q.gw, body)


@route("POST", "/orders/{order_id}/refund", auth="signature", body=RefundIn, status=201)
async def order_refund(q: Req):
    """A full or partial refund (signed); reverses the commission in proportion."""
    return await _call(attribution.record_refund, q.gw, q.request.match_info["order_id"],
                       q.body.model_dump(mode="json"))


LEDGER_COLUMNS = ["id", "source", "kind", "clerk_id", "clerk", "store_id", "customer_id", "amount", "order_id",
                  "binding_id", "rule_version", "created_at"]


@route("GET", "/ledger", roles=ALL)
async def ledger_list(q: Req):
    """Ledger lines (?clerk_id=, ?after=) and their total; ?format=csv: every line, for spreadsheets."""
    stmt = select(LedgerEntry).where(LedgerEntry.id > q.query_int("after", 0)).order_by(LedgerEntry.id)
    total = select(func.coalesce(func.sum(LedgerEntry.amount), 0))
    if (clerk := q.query_int("clerk_id")) is not None:
        stmt, total = stmt.where(LedgerEntry.clerk_id == clerk), total.where(LedgerEntry.clerk_id == clerk)
    if q.who.role == "store_manager":
        stmt, total = (stmt.where(LedgerEntry.store_id == q.who.store_id),
                       total.where(LedgerEntry.store_id == q.who.store_id))
    if q.request.query.get("format") == "csv":
        return await _ledger_csv(q, stmt)
    async with q.gw.db() as s:
        rows = (await s.execute(stmt.limit(q.limit()))).scalars().all()
        sum_ = Decimal((await s.execute(total)).scalar_one())
    items = [{"id": e.id, "source": e.source, "kind": e.kind, "clerk_id": e.clerk_id, "store_id": e.store_id,
              "customer_id": e.customer_id, "amount": f"{e.amount:.2f}", "order_id": e.order_id,
              "binding_id": e.binding_id, "rule_version": e.rule_version,
              "created_at": e.created_at.astimezone(q.gw.tz).isoformat()} for e in rows]
    out = {"items": items, "total": f"{sum_:.2f}"}
    if len(items) == q.limit():
        out["next"] = items[-1]["id"]
    return out


async def _ledger_csv(q: Req, stmt):
    """Streamed in pages of 1,000 lines, so a whole year's ledger never sits in memory."""
    from aiohttp import web

    resp = web.StreamResponse(headers={"Content-Type": "text/csv; charset=utf-8",
                                       "Content-Disposition": 'attachment; filename="ledger.csv"'})
    await resp.prepare(q.request)
    await resp.write(csvsafe.dumps(LEDGER_COLUMNS, []).encode())
    after = 0
    while True:
        async with q.gw.db() as s:
            page = (await s.execute(stmt.add_columns(Clerk.display_name).join(Clerk, Clerk.id == LedgerEntry.clerk_id)
                                    .where(LedgerEntry.id > after).limit(1000))).all()
        if not page:
            break
        after = page[-1][0].id
        await resp.write(csvsafe.lines([
            [e.id, e.source, e.kind, e.clerk_id, name, e.store_id, e.customer_id, f"{e.amount:.2f}", e.order_id,
             e.binding_id, e.rule_version, e.created_at.astimezone(q.gw.tz).isoformat()] for e, name in page
        ]).encode())
    await resp.write_eof()
    return resp


@route("POST", "/ledger/rebuild", roles=("admin",))
async def ledger_rebuild(q: Req):
    """Recompute the ledger from orders, refunds and bindings and compare with what is stored."""
    return await attribution.rebuild(q.gw)


def _period(q: Req) -> tuple[datetime, datetime]:
    """?from= and ?to= as dates or times in the configured zone; default: the last 30 days."""
    def parse(name: str, default: datetime) -> datetime:
        raw = q.request.query.get(name)
        if not raw:
            return default
        try:
            return clock.parse_local(raw, q.gw.tz)
        except ValueError as e:
            raise ApiError(400, "bad_request", f"{name} must be a date or an ISO time ({e})", name) from None

    now = q.gw.clock.now()
    return parse("from", now - timedelta(days=30)), parse("to", now)


@route("GET", "/reports/series", roles=ALL)
async def report_series(q: Req):
    """GMV and commission per day, ?by=clerk|store over ?from=&to= (a store manager: their store)."""
    by = q.request.query.get("by", "clerk")
    if by not in ("clerk", "store"):
        raise ApiError(400, "bad_request", "by must be clerk or store", "by")
    frm, to = _period(q)
    if to <= frm:
        raise ApiError(400, "bad_request", "from must be before to", "from")
    store = q.who.store_id if q.who.role == "store_manager" else None
    async with q.gw.db() as s:
        out = await reports.series(s, frm, to, by, q.gw.tz, store)
    return {"from": frm.astimezone(q.gw.tz).isoformat(), "to": to.astimezone(q.gw.tz).isoformat(), **out}


@route("GET", "/reports/{kind}", roles=ALL)
async def report(q: Req):
    """clerks | stores | campaigns | funnel over ?from=&to= (default the last 30 days), ?format=json|csv."""
    from aiohttp import web

    kind = q.request.match_info["kind"]
    if kind not in reports.KINDS:
        raise ApiError(404, "not_found", f"reports are {', '.join(reports.KINDS)}")
    store = None
    if q.who.role == "store_manager":
        if kind not in ("clerks", "stores"):
            raise ApiError(403, "forbidden", "store managers see the clerks and stores reports of their store")
        store = q.who.store_id
    frm, to = _period(q)
    rows = await reports.build(q.gw, kind, frm, to, store)
    if q.request.query.get("format") == "csv":
        return web.Response(text=reports.to_csv(rows), content_type="text/csv",
                            headers={"Content-Disposition": f'attachment; filename="{kind}.csv"'})
    return {"from": frm.astimezone(q.gw.tz).isoformat(), "to": to.astimezone(q.gw.tz).isoformat(),
            **({"items": rows} if isinstance(rows, list) else rows)}
