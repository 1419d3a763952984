"""Campaigns on a controllable clock: schedules across restarts, quiet hours, caps, opt-outs,
holdout, two schedulers on one database, cancel, preview, tracked links and the report."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import func, insert
from sqlmodel import select

from gateway import campaigns, scheduler
from gateway.clock import FakeClock
from gateway.models import (
    Binding,
    Campaign,
    CampaignRun,
    Clerk,
    CouponCode,
    Customer,
    Delivery,
    Interaction,
    Outbox,
    Store,
)
from gateway.models import Identity as IdentityRow
from gateway.runtime import Gateway
from gateway.tokens import create_token
from tests.conftest import make_config

TZ = ZoneInfo("Asia/Shanghai")
# Sunday 2026-11-29 12:00 in Shanghai
START = datetime(2026, 11, 29, 12, 0, tzinfo=TZ).astimezone(UTC)


@pytest.fixture
def clock():
    return FakeClock(START)


async def people(gw, n: int, *, store_id: int, clerk_id: int | None, prefix="c") -> list[int]:
    now = gw.clock.now()
    async with gw.db() as s:
        ids = (await s.execute(insert(Customer).returning(Customer.id, sort_by_parameter_order=True),
                               [{"name": f"{prefix}{i}", "store_id": store_id, "created_at": now} for i in range(n)]
                               )).scalars().all()
        idents = (await s.execute(insert(IdentityRow).returning(IdentityRow.id, sort_by_parameter_order=True), [
            {"customer_id": c, "platform": "webchat", "account": "webchat", "external_id": f"{prefix}-{c}",
             "profile": {"name": f"{prefix}{i}"}, "created_at": now} for i, c in enumerate(ids)])).scalars().all()
        for c, i in zip(ids, idents, strict=True):
            (await s.get(Customer, c)).last_identity_id = i
        if clerk_id:
            await s.execute(insert(Binding), [{"customer_id": c, "clerk_id": clerk_id, "store_id": store_id,
                                               "valid_from": now - timedelta(days=10), "source": "invite"} for c in ids])
        await s.commit()
    return list(ids)


async def setup_world(gw):
    async with gw.db() as s:
        store = Store(name="静安店", lat=31.22, lng=121.45)
        far = Store(name="北京店", lat=39.9, lng=116.4)
        s.add_all([store, far])
        await s.flush()
        clerk = Clerk(name="林小雨", display_name="小林", store_id=store.id)
        s.add(clerk)
        await s.flush()
        _, admin = await create_token(s, "marketer")
        await s.commit()
    return store.id, far.id, clerk.id, {"Authorization": f"Bearer {admin}"}


async def new_campaign(gw, **kw) -> Campaign:
    data = {"name": "双十二", "kind": "notice", "content": {"text": "{customer_name}您好，我是{advisor_name}：新品到店"},
            "audience": {}, "sender": "advisor", "schedule": {"at": (gw.clock.now() + timedelta(hours=1)).isoformat()},
            "holdout_pct": 0, "mode": "direct", **kw}
    async with gw.db() as s:
        c = Campaign(**data, created_at=gw.clock.now())
        s.add(c)
        await s.commit()
        return c


async def arm(gw, c: Campaign) -> None:
    async with gw.db() as s:
        row = await s.get(Campaign, c.id)
        row.status, row.next_run_at = "scheduled", scheduler.first_fire(row.schedule, gw.tz, gw.clock.now())
        await s.commit()


async def count(gw, model, *where) -> int:
    async with gw.db() as s:
        return (await s.execute(select(func.count()).select_from(model).where(*where))).scalar()


async def fire(gw) -> list[int]:
    runs = await scheduler.tick(gw)
    await scheduler.run_pending(gw, "test")
    return runs


# -- schedules -------------------------------------------------------------------------------------------


async def test_cron_fires_at_the_local_time_across_a_restart_and_once(db_url, clock, backend):
    cfg = make_config(db_url)
    gw = Gateway(cfg, clock=clock)
    store, _, clerk, _ = await setup_world(gw)
    await people(gw, 3, store_id=store, clerk_id=clerk)
    c = await new_campaign(gw, schedule={"cron": "0 10 * * 1"})  # Mondays 10:00, Shanghai time
    await arm(gw, c)
    async with gw.db() as s:
        assert (await s.get(Campaign, c.id)).next_run_at == datetime(2026, 11, 30, 10, 0, tzinfo=TZ)
    await gw.engine.dispose()

    gw2 = Gateway(cfg, clock=clock)  # a restart: nothing in memory, the table is the truth
    clock.advance(hours=21, minutes=59)  # Monday 09:59
    assert await fire(gw2) == []
    clock.advance(minutes=1)
    [run_id] = await fire(gw2)
    other = Gateway(cfg, clock=clock)  # a second instance ticking at the same moment
    assert await fire(other) == [] and await fire(gw2) == []
    async with gw2.db() as s:
        run = await s.get(CampaignRun, run_id)
        camp = await s.get(Campaign, c.id)
    assert run.scheduled_for == datetime(2026, 11, 30, 10, 0, tzinfo=TZ) and run.counts["queued"] == 3
    assert camp.next_run_at == datetime(2026, 12, 7, 10, 0, tzinfo=TZ)
    assert await count(gw2, Outbox, Outbox.kind == "push") == 3
    for g in (gw2, other):
        await g.engine.dispose()


async def test_missed_fire_times_run_once_within_grace_and_are_counted(gw, clock):
    store, _, clerk, _ = await setup_world(gw)
    await people(gw, 1, store_id=store, clerk_id=clerk)
    c = await new_campaign(gw, schedule={"cron": "0 10 * * *"})  # daily
    await arm(gw, c)
    clock.advance(days=2, hours=22, minutes=30)  # down across Mon, Tue, Wed 10:00; now Wed 10:30
    runs = await fire(gw)
    assert len(runs) == 1
    async with gw.db() as s:
        run = await s.get(CampaignRun, runs[0])
        camp = await s.get(Campaign, c.id)
    assert run.scheduled_for == datetime(2026, 12, 2, 10, 0, tzinfo=TZ) and camp.skipped_runs == 2
    gw.config.campaigns.misfire_grace_seconds = 60
    clock.advance(days=1, hours=1)  # the next one is an hour old: beyond grace, skipped
    assert await fire(gw) == []
    async with gw.db() as s:
        assert (await s.get(Campaign, c.id)).skipped_runs == 3


async def test_two_schedulers_on_one_database_make_each_delivery_once(db_url, clock, backend):
    import asyncio

    cfg = make_config(db_url)
    a, b = Gateway(cfg, clock=clock), Gateway(cfg, clock=clock)
    store, _, clerk, _ = await setup_world(a)
    await people(a, 300, store_id=store, clerk_id=clerk)
    c = await new_campaign(a)
    await arm(a, c)
    clock.advance(hours=1)
    gw_batch = 50
    a.config.campaigns.batch = b.config.campaigns.batch = gw_batch
    await asyncio.gather(scheduler.tick(a), scheduler.tick(b))
    await asyncio.gather(scheduler.run_pending(a, "a"), scheduler.run_pending(b, "b"))
    assert await count(a, CampaignRun) == 1
    assert await count(a, Delivery) == 300 and await count(a, Outbox, Outbox.kind == "push") == 300
    async with a.db() as s:
        dup = (await s.execute(select(Outbox.customer_id).where(Outbox.kind == "push").group_by(Outbox.customer_id)
                               .having(func.count() > 1))).all()
    assert dup == []
    await b.engine.dispose()
    await a.engine.dispose()


# -- policies --------------------------------------------------------------------------------------------


async def test_opt_outs_caps_channels_and_holdout_are_excluded_with_their_reason(gw, clock):
    store, _, clerk, _ = await setup_world(gw)
    ids = await people(gw, 200, store_id=store, clerk_id=clerk)
    now = gw.clock.now()
    async with gw.db() as s:
        (await s.get(Customer, ids[0])).opted_out_at = now
        ghost = Customer(name="no channel", store_id=store, created_at=now)
        s.add(ghost)
        await s.flush()
        s.add(Binding(customer_id=ghost.id, clerk_id=clerk, store_id=store, valid_from=now))
        for i in range(3):  # three pushes this week already: the per-customer cap (3 a week)
            s.add(Outbox(idem_key=f"old:{i}", platform="webchat", account="webchat", target={}, message={},
                         kind="push", status="sent", customer_id=ids[1], created_at=now - timedelta(days=1)))
        await s.commit()
    c = await new_campaign(gw, holdout_pct=20)
    await arm(gw, c)
    clock.advance(hours=1)
    [run_id] = await fire(gw)
    async with gw.db() as s:
        reasons = dict((await s.execute(select(Delivery.reason, func.count()).where(Delivery.run_id == run_id)
                                        .group_by(Delivery.reason))).all())
        holdout = set((await s.execute(select(Delivery.customer_id).where(Delivery.reason == "holdout"))).scalars())
        pushed = set((await s.execute(select(Outbox.customer_id).where(Outbox.campaign_id == c.id))).scalars())
    assert reasons["opted_out"] == 1 and reasons["cap"] == 1 and reasons["no_channel"] == 1
    assert 20 <= reasons["holdout"] <= 60  # 20 % of 199, drawn at random
    assert not holdout & pushed and ids[0] not in pushed and ids[1] not in pushed
    assert reasons[None] == len(pushed) == 201 - 3 - reasons["holdout"]
    assert {cid for cid in ids[2:] if campaigns.in_holdout(f"run:{run_id}", cid, 20)} == holdout  # stable per run


async def test_quiet_hours_defer_the_pushes_to_their_end(gw, clock):
    store, _, clerk, _ = await setup_world(gw)
    await people(gw, 2, store_id=store, clerk_id=clerk)
    late = datetime(2026, 11, 29, 23, 0, tzinfo=TZ)
    c = await new_campaign(gw, schedule={"at": late.isoformat()})
    await arm(gw, c)
    clock.advance(hours=11)
    await fire(gw)
    async with gw.db() as s:
        due = set((await s.execute(select(Outbox.next_attempt_at).where(Outbox.kind == "push"))).scalars())
    assert due == {datetime(2026, 11, 30, 8, 0, tzinfo=TZ)}
    assert await gw.outbox.claim(10) == []  # nothing is due in the quiet window
    clock.advance(hours=9)
    rows = await gw.outbox.claim(10)
    assert len(rows) == 2


async def test_a_push_still_pending_when_quiet_hours_start_waits(gw, clock):
    store, _, clerk, _ = await setup_world(gw)
    await people(gw, 1, store_id=store, clerk_id=clerk)
    c = await new_campaign(gw, schedule={"at": datetime(2026, 11, 29, 21, 59, tzinfo=TZ).isoformat()})
    await arm(gw, c)
    clock.advance(hours=9, minutes=59)
    await fire(gw)
    clock.advance(minutes=2)  # 22:01: the send had not happened yet
    [row] = await gw.outbox.claim(1)
    assert await gw.outbox.deliver(row) == "pending"
    async with gw.db() as s:
        o = await s.get(Outbox, row.id)
    assert o.attempts == 0 and o.next_attempt_at.astimezone(TZ).hour == 8 and "quiet" in o.last_error


# -- content, preview, links, report, cancel -------------------------------------------------------------


async def test_preview_renders_samples_and_counts_without_sending(gw, client, clock):
    store, far, clerk, h = await setup_world(gw)
    await people(gw, 5, store_id=store, clerk_id=clerk)
    await people(gw, 4, store_id=far, clerk_id=None, prefix="far")
    p = await (await client.post("/api/v1/products", json={"sku": "SKU1", "name": "羊绒大衣", "price": "1299.00",
                                                           "url": "https://shop.example/p/1"}, headers=h)).json()
    cp = await (await client.post("/api/v1/coupons", json={"name": "满300减50", "value": "50.00",
                                                          "valid_from": "2026-11-01T00:00:00+08:00",
                                                          "valid_to": "2026-12-31T00:00:00+08:00", "generate": 4},
                                  headers=h)).json()
    assert cp["codes"] == 4
    body = {"name": "新品", "kind": "coupon", "coupon_id": cp["id"], "sender": "advisor",
            "content": {"text": "{customer_name}，{advisor_name}为您留了{product_name}，券码{coupon_code}：{link}",
                        "product_id": p["id"]},
            "audience": {"near": {"store_id": store, "km": 50}},
            "schedule": {"at": (gw.clock.now() + timedelta(minutes=5)).isoformat()}}
    camp = await (await client.post("/api/v1/campaigns", json=body, headers=h)).json()
    prev = await client.post(f"/api/v1/campaigns/{camp['id']}/preview", headers=h)
    assert prev.status == 200, await prev.text()
    pv = await prev.json()
    assert pv["audience"] == 5 and pv["eligible"] == 5 and pv["by_channel"] == {"webchat": 5}
    assert len(pv["samples"]) == 3 and "小林为您留了羊绒大衣，券码SAMPLE-CODE" in pv["samples"][0]["text"]
    assert pv["samples"][0]["sender"] == "小林"
    assert await count(gw, Outbox) == 0 and await count(gw, CampaignRun) == 0

    assert (await client.post(f"/api/v1/campaigns/{camp['id']}/schedule", headers=h)).status == 200
    clock.advance(minutes=5)
    await fire(gw)
    async with gw.db() as s:
        issued = (await s.execute(select(func.count(CouponCode.customer_id)))).scalar()
        reasons = dict((await s.execute(select(Delivery.reason, func.count()).group_by(Delivery.reason))).all())
        msg = (await s.execute(select(Outbox.message).where(Outbox.kind == "push").limit(1))).scalar()
    assert issued == 4 and reasons == {None: 4, "no_coupon": 1}  # the pool had four codes
    text = msg["segments"][0]["text"]
    token = text.rsplit("/t/", 1)[1]
    click = await client.get(f"/t/{token}", allow_redirects=False)
    assert click.status == 302 and click.headers["Location"] == "https://shop.example/p/1"
    assert (await client.get("/t/nope", allow_redirects=False)).status == 404
    assert await count(gw, Interaction, Interaction.type == "link_click") == 1
    report = await (await client.get(f"/api/v1/campaigns/{camp['id']}/report", headers=h)).json()
    run = report["runs"][0]
    assert run["audience"] == 5 and run["queued"] == 4 and run["clicked"] == 1
    assert run["excluded"] == {"no_coupon": 1}


async def test_cancel_stops_what_has_not_gone(gw, clock):
    store, _, clerk, _ = await setup_world(gw)
    await people(gw, 50, store_id=store, clerk_id=clerk)
    c = await new_campaign(gw)
    await arm(gw, c)
    clock.advance(hours=1)
    await fire(gw)
    rows = await gw.outbox.claim(5)  # five went out before the cancel
    for r in rows:
        await gw.outbox.deliver(r)
    out = await campaigns.cancel(gw, c.id)
    assert out["cancelled_sends"] == 45
    assert await gw.outbox.claim(100) == []
    report = await campaigns.report(gw, await _get(gw, c.id))
    assert report["runs"][0]["sent"] == 5 and report["runs"][0]["cancelled"] == 45
    assert report["status"] == "cancelled" and report["runs"][0]["status"] == "cancelled"
    clock.advance(days=7)
    assert await scheduler.tick(gw) == []


async def _get(gw, cid):
    async with gw.db() as s:
        return await s.get(Campaign, cid)


async def test_campaign_api_validates_input(client, gw):
    _, _, _, h = await setup_world(gw)
    bad = [({"name": "x", "kind": "coupon", "content": {"text": "t"}}, ""),
           ({"name": "x", "kind": "notice", "content": {"text": "t"}, "schedule": {"cron": "61 * * * *"}}, "schedule"),
           ({"name": "x", "kind": "notice", "content": {"text": "t"}, "holdout_pct": 80}, "holdout_pct"),
           ({"name": "x", "kind": "notice", "content": {"text": "t"}, "audience": {"stores": [999]}}, "audience.stores")]
    for body, field in bad:
        r = await client.post("/api/v1/campaigns", json=body, headers=h)
        assert r.status == 422 and (await r.json())["error"].get("field", "").startswith(field), (body, await r.text())


async def test_clerk_assisted_campaigns_brief_clerks_who_forward_to_their_own_customers(gw, client, clock):
    from adapters.webchat.simulator import BrandApp
    from adapters.workbench.simulator import ClerkClient
    from tests.conftest import WEBCHAT_SECRET, make_world

    w = await make_world(gw)
    server = str(client.make_url("")).rstrip("/")
    brand = BrandApp(client.session, server, "webchat", WEBCHAT_SECRET)
    ann = await brand.login("u-ann", "Ann", ts=int(clock.now().timestamp()))
    await ann.bind(w.invite)
    await ann.wait_for(lambda m: "小林" in m["text"])
    await people(gw, 2, store_id=w.store_id, clerk_id=w.clerk2_id, prefix="fang")
    c = await new_campaign(gw, mode="clerk_assisted", content={"text": "{customer_name}，周末会员日全场8折"})
    await arm(gw, c)
    clock.advance(hours=1)
    await fire(gw)
    lin = ClerkClient(client.session, server, w.clerk_token)
    brief = await lin.wait_for(lambda m: "/forward" in m["text"])
    assert "1 位顾客" in brief["text"] and "3%" in brief["text"]
    fang = ClerkClient(client.session, server, w.clerk2_token)
    await fang.wait_for(lambda m: "2 位顾客" in m["text"])
    assert await count(gw, Outbox, Outbox.kind == "push") == 0  # nothing reaches customers by itself
    await lin.say("/campaigns")
    await lin.wait_for(lambda m: f"/forward {c.id}" in m["text"] and "双十二" in m["text"])
    await lin.say(f"/forward {c.id}")
    done = await lin.wait_for(lambda m: "已以您的名义发送给 1 位顾客" in m["text"])
    got = await ann.wait_for(lambda m: "会员日" in m["text"])
    assert got["sender"] == {"name": "小林"} and got["text"].startswith("Ann，")
    await lin.say(f"/forward {c.id}")  # twice: nobody gets it twice
    await lin.wait_for(lambda m: "发送给 0 位顾客" in m["text"])
    assert done and await count(gw, Outbox, Outbox.kind == "push") == 1
    report = await campaigns.report(gw, await _get(gw, c.id))
    run = report["runs"][0]
    assert run["clerks_briefed"] == 2 and run["clerks_forwarded"] == 1 and run["share_rate"] == 0.5
    assert await count(gw, Interaction, Interaction.type == "forwarded") == 2


async def test_the_cli_shows_each_runs_progress(db_url, clock, tmp_path):
    import asyncio
    import os
    import sys

    gw = Gateway(make_config(db_url), clock=clock)
    store, _, clerk, _ = await setup_world(gw)
    await people(gw, 7, store_id=store, clerk_id=clerk)
    c = await new_campaign(gw, name="会员日推送")
    await arm(gw, c)
    clock.advance(hours=1)
    await fire(gw)
    await gw.engine.dispose()
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"database:\n  url: {db_url}\n", encoding="utf-8")
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "gateway", "campaigns", str(c.id), "--config",
                                                str(cfg), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                                                env={**os.environ})
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    line = next(ln for ln in out.decode().splitlines() if "会员日推送" in ln)
    assert "dispatching" in line and line.split()[3:6] == ["dispatching", "7", "7"]


async def test_a_push_a_live_page_takes_is_logged_delivered_for_the_reports(gw, clock):
    from gateway import reports
    from gateway.models import Interaction

    store, _, clerk, _ = await setup_world(gw)
    ids = await people(gw, 4, store_id=store, clerk_id=clerk)
    live = gw.hub().subscribe("webchat", f"c-{ids[0]}")  # one customer has the page open
    c = await new_campaign(gw)
    await arm(gw, c)
    clock.advance(hours=1)
    await fire(gw)
    for r in await gw.outbox.claim(10):
        assert await gw.outbox.deliver(r) == "sent"
    assert live.get_nowait()["text"].startswith("c0您好")
    async with gw.db() as s:
        logged = (await s.execute(select(Interaction).where(Interaction.type == "push_sent"))).scalars().all()
    assert [(i.customer_id, i.clerk_id, i.campaign_id) for i in logged] == [(ids[0], clerk, c.id)]
    run = (await campaigns.report(gw, await _get(gw, c.id)))["runs"][0]
    assert run["sent"] == 4 and run["delivered"] == 1  # the others are stored for their next visit
    async with gw.db() as s:
        (row,) = await reports.campaigns(s, START - timedelta(days=1), clock.now() + timedelta(days=1), 7)
        by_clerk = {x["clerk_id"]: x for x in await reports.clerks(s, START - timedelta(days=1),
                                                                    clock.now() + timedelta(days=1))}
    assert row["sent"] == 4 and row["delivered"] == 1 and by_clerk[clerk]["pushes_delivered"] == 1
    # An order placed after the push is credited to the campaign, and to the run that reached the customer.
    from gateway import attribution

    clock.advance(hours=2)
    out = await attribution.record_order(gw, {"order_id": "A-1", "customer": {"customer_id": ids[1]},
                                              "amount": "199.00", "channel": "store",
                                              "placed_at": clock.now().isoformat()})
    assert out[1]["campaign_id"] == c.id
    run = (await campaigns.report(gw, await _get(gw, c.id)))["runs"][0]
    assert (run["orders"], run["gmv"]) == (1, "199.00")
