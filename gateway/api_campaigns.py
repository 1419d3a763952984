"""Admin API for the catalogue and campaigns (marketers). Registered in the same ROUTES table, so
roles, errors and the OpenAPI document work as for the rest of the API."""

from __future__ import annotations

import secrets
from typing import Annotated, Literal

from pydantic import Field, model_validator
from sqlalchemy import func, insert, select

from gateway import campaigns, scheduler
from gateway.api import ALL, ApiError, Instant, LocalInstant, Req, _dump, _In, _page, money, route
from gateway.models import Campaign, CampaignRun, Coupon, CouponCode, Product, Store

MARKETING = ("admin", "marketer")
Price = money(ge=0)
_CODE_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"


class ProductIn(_In):
    sku: str = Field(min_length=1, max_length=64)
    name: str = Field(min_length=1, max_length=200)
    price: Price
    image_url: str | None = Field(None, max_length=500, pattern=r"^https?://")
    url: str | None = Field(None, max_length=500, pattern=r"^https?://")
    store_ids: list[int] | None = None


class CouponIn(_In):
    name: str = Field(min_length=1, max_length=200)
    value: Price
    valid_from: Instant
    valid_to: Instant
    codes: list[Annotated[str, Field(min_length=4, max_length=64)]] | None = Field(None, max_length=1_000_000)
    generate: int | None = Field(None, ge=1, le=1_000_000)

    @model_validator(mode="after")
    def _check(self):
        if self.valid_to <= self.valid_from:
            raise ValueError("valid_to must be after valid_from")
        if self.codes and len(set(self.codes)) != len(self.codes):
            raise ValueError("codes must be unique")
        return self


class Content(_In):
    text: str = Field(min_length=1, max_length=2000)
    product_id: int | None = None
    link: str | None = Field(None, max_length=1000, pattern=r"^https?://")


class Near(_In):
    store_id: int
    km: float = Field(gt=0, le=500)


class Audience(_In):
    stores: list[int] | None = None
    tags: list[str] | None = None
    clerks: list[int] | None = None
    near: Near | None = None
    bound_after: Instant | None = None
    bound_before: Instant | None = None


class Schedule(_In):
    at: Instant | None = None
    cron: str | None = None
    until: LocalInstant | None = None  # without an offset: in the configured zone

    @model_validator(mode="after")
    def _one(self):
        if (self.at is None) == (self.cron is None):
            raise ValueError("give either at or cron")
        if self.cron is not None:
            from apscheduler.triggers.cron import CronTrigger

            try:
                CronTrigger(**scheduler.cron_fields(self.cron))
            except ValueError as e:
                raise ValueError(f"cron: {e}") from None
        return self


class CampaignIn(_In):
    name: str = Field(min_length=1, max_length=200)
    kind: Literal["coupon", "new_product", "notice"]
    content: Content
    coupon_id: int | None = None
    audience: Audience = Audience()
    sender: Literal["advisor", "brand"] = "advisor"
    schedule: Schedule | None = None
    holdout_pct: int = Field(0, ge=0, le=50)
    mode: Literal["direct", "clerk_assisted"] = "direct"

    @model_validator(mode="after")
    def _coupon(self):
        if self.kind == "coupon" and self.coupon_id is None:
            raise ValueError("a coupon campaign needs coupon_id")
        return self


# -- catalogue ---------------------------------------------------------------------------------------


@route("POST", "/products", roles=MARKETING, body=ProductIn, status=201)
async def product_create(q: Req):
    """Add a product to the catalogue."""
    async with q.gw.db() as s:
        if (await s.execute(select(Product.id).where(Product.sku == q.body.sku))).first():
            raise ApiError(409, "conflict", f"sku {q.body.sku} exists", "sku")
        p = Product(**q.body.model_dump(), created_at=q.gw.clock.now())
        s.add(p)
        await s.commit()
        return _dump(p, q.gw.tz)


@route("GET", "/products", roles=ALL)
async def product_list(q: Req):
    """The catalogue."""
    async with q.gw.db() as s:
        rows = (await s.execute(select(Product).where(Product.id > q.query_int("after", 0))
                                .order_by(Product.id).limit(q.limit()))).scalars().all()
    return _page([_dump(r, q.gw.tz) for r in rows], q.limit())


@route("POST", "/coupons", roles=MARKETING, body=CouponIn, status=201)
async def coupon_create(q: Req):
    """A coupon and its code pool (uploaded, or `generate` N unique codes)."""
    b = q.body
    async with q.gw.db() as s:
        c = Coupon(name=b.name, value=b.value, valid_from=b.valid_from, valid_to=b.valid_to,
                   created_at=q.gw.clock.now())
        s.add(c)
        await s.flush()
        codes = list(b.codes or [])
        if b.generate:
            made: set[str] = set(codes)
            while len(made) < len(codes) + b.generate:
                made.add("".join(secrets.choice(_CODE_ALPHABET) for _ in range(10)))
            codes = list(made)
        for i in range(0, len(codes), 10_000):
            await s.execute(insert(CouponCode), [{"coupon_id": c.id, "code": x} for x in codes[i:i + 10_000]])
        await s.commit()
        return {**_dump(c, q.gw.tz), "codes": len(codes)}


@route("GET", "/coupons", roles=ALL)
async def coupon_list(q: Req):
    """Coupons with their pools (codes, issued, redeemed)."""
    pool = (select(CouponCode.coupon_id, func.count().label("codes"), func.count(CouponCode.customer_id).label("issued"),
                   func.count(CouponCode.redeemed_at).label("redeemed")).group_by(CouponCode.coupon_id).subquery())
    stmt = (select(Coupon, pool.c.codes, pool.c.issued, pool.c.redeemed).outerjoin(pool, pool.c.coupon_id == Coupon.id)
            .where(Coupon.id > q.query_int("after", 0)).order_by(Coupon.id).limit(q.limit()))
    async with q.gw.db() as s:
        rows = (await s.execute(stmt)).all()
    return _page([{**_dump(c, q.gw.tz), "codes": n or 0, "issued": i or 0, "redeemed": r or 0} for c, n, i, r in rows],
                 q.limit())


@route("GET", "/coupons/{coupon_id}", roles=ALL)
async def coupon_get(q: Req):
    """A coupon with its pool: codes, issued, redeemed."""
    async with q.gw.db() as s:
        c = await s.get(Coupon, q.param("coupon_id"))
        if c is None:
            raise ApiError(404, "not_found", "no such coupon")
        total, issued, redeemed = (await s.execute(select(
            func.count(), func.count(CouponCode.customer_id), func.count(CouponCode.redeemed_at))
            .where(CouponCode.coupon_id == c.id))).one()
    return {**_dump(c, q.gw.tz), "codes": total, "issued": issued, "redeemed": redeemed}


# -- campaigns ---------------------------------------------------------------------------------------


def _out(c: Campaign, tz) -> dict:
    return _dump(c, tz)


async def _campaign(s, q: Req) -> Campaign:
    c = await s.get(Campaign, q.param("campaign_id"))
    if c is None:
        raise ApiError(404, "not_found", "no such campaign")
    return c


@route("POST", "/campaigns", roles=MARKETING, body=CampaignIn, status=201)
async def campaign_create(q: Req):
    """Define a campaign (a draft until scheduled)."""
    b = q.body
    async with q.gw.db() as s:
        if b.content.product_id is not None and await s.get(Product, b.content.product_id) is None:
            raise ApiError(422, "invalid", "no such product", "content.product_id")
        if b.coupon_id is not None and await s.get(Coupon, b.coupon_id) is None:
            raise ApiError(422, "invalid", "no such coupon", "coupon_id")
        ids = set(b.audience.stores or []) | ({b.audience.near.store_id} if b.audience.near else set())
        if ids:
            known = set((await s.execute(select(Store.id).where(Store.id.in_(ids)))).scalars())
            if ids - known:
                raise ApiError(422, "invalid", f"no such store: {sorted(ids - known)}", "audience.stores")
        c = Campaign(name=b.name, kind=b.kind, content=b.content.model_dump(exclude_none=True), coupon_id=b.coupon_id,
                     audience=b.audience.model_dump(exclude_none=True, mode="json"), sender=b.sender,
                     schedule=b.schedule.model_dump(exclude_none=True, mode="json") if b.schedule else None,
                     holdout_pct=b.holdout_pct, mode=b.mode, created_at=q.gw.clock.now())
        s.add(c)
        await s.commit()
        return _out(c, q.gw.tz)


@route("GET", "/campaigns", roles=ALL)
async def campaign_list(q: Req):
    """Campaigns, newest first."""
    async with q.gw.db() as s:
        stmt = select(Campaign).order_by(Campaign.id.desc()).limit(q.limit())
        if (before := q.query_int("before")) is not None:
            stmt = stmt.where(Campaign.id < before)
        rows = (await s.execute(stmt)).scalars().all()
    return _page([_out(r, q.gw.tz) for r in rows], q.limit())


@route("GET", "/campaigns/{campaign_id}", roles=ALL)
async def campaign_get(q: Req):
    """One campaign."""
    async with q.gw.db() as s:
        return _out(await _campaign(s, q), q.gw.tz)


@route("POST", "/campaigns/{campaign_id}/preview", roles=MARKETING)
async def campaign_preview(q: Req):
    """Counts per channel, per store, excluded by each rule, and three rendered samples: nothing sent."""
    async with q.gw.db() as s:
        c = await _campaign(s, q)
    return await campaigns.preview(q.gw, c)


@route("POST", "/campaigns/{campaign_id}/schedule", roles=MARKETING)
async def campaign_schedule(q: Req):
    """Arm the campaign's schedule; runs fire at its times (in the configured zone)."""
    async with q.gw.db() as s:
        c = await _campaign(s, q)
        if c.status not in ("draft", "scheduled"):
            raise ApiError(409, "conflict", f"the campaign is {c.status}")
        if not c.schedule:
            raise ApiError(422, "invalid", "the campaign has no schedule", "schedule")
        first = scheduler.first_fire(c.schedule, q.gw.tz, q.gw.clock.now())
        if first is None:
            raise ApiError(422, "invalid", "the schedule has no future run", "schedule")
        c.status, c.next_run_at = "scheduled", first
        await s.commit()
        return _out(c, q.gw.tz)


@route("POST", "/campaigns/{campaign_id}/cancel", roles=MARKETING)
async def campaign_cancel(q: Req):
    """Stop: no further runs, and what has not been sent is not sent."""
    async with q.gw.db() as s:
        c = await _campaign(s, q)
        if c.status == "cancelled":
            raise ApiError(409, "conflict", "already cancelled")
    return {**await campaigns.cancel(q.gw, c.id), "status": "cancelled"}


@route("GET", "/campaigns/{campaign_id}/report", roles=ALL)
async def campaign_report(q: Req):
    """Per run: audience, queued, excluded by rule, sent, delivered, failed, held, clicked, redeemed."""
    async with q.gw.db() as s:
        c = await _campaign(s, q)
        runs = (await s.execute(select(func.count()).select_from(CampaignRun)
                                .where(CampaignRun.campaign_id == c.id))).scalar_one()
    return {**await campaigns.report(q.gw, c), "run_count": runs}
