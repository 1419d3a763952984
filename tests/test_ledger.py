"""The ledger: hypothesis against a plain reference computation (random bindings, handovers,
orders and refunds), never negative after refunds, rounding to the fen half up; and the order API
end to end (signatures, idempotency, attribution by binding history, refunds, rebuild)."""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st
from sqlmodel import select

from gateway import attribution, ledger
from gateway.models import Binding, Customer
from gateway.models import Identity as IdentityRow

RULES = ledger.Rules({"store": Decimal("0.03"), "cloud_store": Decimal("0.05"), "flagship": Decimal("0.02"),
                      "other": Decimal("0")}, Decimal("5.00"), 30)
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def test_fen_rounds_half_up_once():
    assert ledger.fen(Decimal("0.005")) == Decimal("0.01") and ledger.fen(Decimal("0.0049")) == Decimal("0.00")
    assert ledger.fen(Decimal("399.00") * Decimal("0.03")) == Decimal("11.97")
    assert ledger.fen(Decimal("-0.005")) == Decimal("-0.01")


# -- property: the ledger equals a plain reference computation ---------------------------------------


@st.composite
def histories(draw):
    """A customer's bindings as consecutive periods (handovers, switches, a final open one or an
    end), orders at random times (some before any binding) and refunds that never exceed them."""
    n = draw(st.integers(0, 4))
    t, bindings = T0 + timedelta(days=draw(st.integers(0, 10))), []
    for i in range(n):
        length = draw(st.integers(1, 60))
        last = i == n - 1
        end = None if last and draw(st.booleans()) else t + timedelta(days=length)
        reason = None if end is None else draw(st.sampled_from(["handover", "customer_switched", "unbound", "merged"]))
        bindings.append(ledger.BindingRec(i + 1, draw(st.integers(1, 3)), draw(st.sampled_from([1, 2, None])), t, end,
                                          reason, draw(st.sampled_from(["invite", "contact", "import"]))))
        if end is None:
            break
        t = end + timedelta(days=draw(st.integers(0, 3)))  # a gap: nobody bound
    orders, refunds = [], []
    for j in range(draw(st.integers(0, 6))):
        amount = Decimal(draw(st.integers(1, 200_000))) / 100
        o = ledger.OrderRec(f"o{j}", amount, draw(st.sampled_from(list(RULES.rates))),
                            T0 + timedelta(hours=draw(st.integers(0, 24 * 120))), draw(st.sampled_from([None, 7])))
        orders.append(o)
        left = amount
        for k in range(draw(st.integers(0, 3))):
            if left <= 0:
                break
            r = min(left, Decimal(draw(st.integers(1, 200_000))) / 100)
            left -= r
            refunds.append(ledger.RefundRec(len(refunds) + 1, o.order_id, r, o.placed_at + timedelta(days=k + 1)))
    return bindings, orders, refunds


def reference(bindings, orders, refunds, rules):
    """The rules read literally, with nothing shared with the implementation but Decimal."""
    def r2(x):
        return x.quantize(Decimal("0.01"), rounding="ROUND_HALF_UP")

    totals: dict[int, Decimal] = {}
    first = min(bindings, key=lambda b: (b.valid_from, b.id)) if bindings else None
    if first is not None and first.source != "import":  # imported relationships were not recruited here
        totals[first.clerk_id] = totals.get(first.clerk_id, Decimal(0)) + r2(rules.member_bounty)
        if (first.valid_to is not None and first.end_reason not in ("handover", "merged")
                and (first.valid_to - first.valid_from).days < rules.bounty_clawback_days):
            totals[first.clerk_id] -= r2(rules.member_bounty)
    for o in orders:
        owner = [b for b in bindings if b.valid_from <= o.placed_at and (b.valid_to is None or o.placed_at < b.valid_to)]
        if not owner:
            continue
        clerk = owner[0].clerk_id
        commission = r2(o.amount * rules.rates[o.channel])
        reversed_ = Decimal(0)
        for r in sorted((r for r in refunds if r.order_id == o.order_id), key=lambda r: r.id):  # as they arrived
            reversed_ += min(commission - reversed_, r2(r.amount * rules.rates[o.channel]))
        totals[clerk] = totals.get(clerk, Decimal(0)) + commission - reversed_
    return {k: v for k, v in totals.items()}


@settings(max_examples=300, deadline=None)
@given(histories())
def test_ledger_equals_the_reference_and_never_goes_negative(h):
    bindings, orders, refunds = h
    lines = ledger.entries(1, bindings, orders, refunds, RULES)
    got: dict[int, Decimal] = {}
    for e in lines:
        got[e.clerk_id] = got.get(e.clerk_id, Decimal(0)) + e.amount
        assert e.amount == ledger.fen(e.amount)  # every line is whole fen
    want = reference(bindings, orders, refunds, RULES)
    assert {k: v for k, v in got.items() if v or k in want} == want
    for o in orders:  # an order's commission after its refunds is never negative
        assert sum((e.amount for e in lines if e.order_id == o.order_id), Decimal(0)) >= 0
    assert len({e.source for e in lines}) == len(lines)  # each cause once
    assert ledger.entries(1, list(reversed(bindings)), list(reversed(orders)), list(reversed(refunds)), RULES) == \
        ledger.entries(1, bindings, orders, refunds, RULES)  # order of input does not matter


# -- the order API ---------------------------------------------------------------------------------------


SECRET = "orders-webhook-secret-0123456789"


def signed(body: dict) -> tuple[bytes, dict]:
    raw = json.dumps(body, ensure_ascii=False).encode()
    return raw, {"X-Gateway-Signature": hmac.new(SECRET.encode(), raw, hashlib.sha256).hexdigest(),
                 "Content-Type": "application/json"}


async def post_order(client, body, path="/api/v1/orders"):
    raw, headers = signed(body)
    return await client.post(path, data=raw, headers=headers)


async def test_orders_are_credited_to_the_advisor_at_placed_at_and_the_ledger_rebuilds_the_same(gw, client, world,
                                                                                                 backend):
    gw.config.orders.webhook_secret = SECRET
    now = gw.clock.now()
    async with gw.db() as s:  # A served from 60 days ago to 10 days ago; B since
        c = Customer(name="王女士", store_id=world.store_id, created_at=now - timedelta(days=90))
        s.add(c)
        await s.flush()
        s.add(IdentityRow(customer_id=c.id, platform="webchat", account="webchat", external_id="u-wang", profile={}))
        s.add(Binding(customer_id=c.id, clerk_id=world.clerk_id, store_id=world.store_id,
                      valid_from=now - timedelta(days=60), valid_to=now - timedelta(days=10), end_reason="handover"))
        s.add(Binding(customer_id=c.id, clerk_id=world.clerk2_id, store_id=world.store_id,
                      valid_from=now - timedelta(days=10)))
        await s.commit()
        cid = c.id
    early = {"order_id": "POS-1", "customer": {"customer_id": cid}, "amount": "999.00", "channel": "store",
             "placed_at": (now - timedelta(days=70)).isoformat()}
    during_a = {"order_id": "POS-2", "customer": {"channel": "webchat", "external_id": "u-wang"}, "amount": "399.00",
                "channel": "store", "placed_at": (now - timedelta(days=20)).isoformat()}
    during_b = {"order_id": "TM-3", "customer": {"customer_id": cid}, "amount": "1299.00", "channel": "cloud_store",
                "placed_at": (now - timedelta(days=1)).isoformat()}
    r1 = await post_order(client, early)
    assert r1.status == 201 and (await r1.json())["unattributed"] == "no_advisor_at_placed_at"
    r2 = await (await post_order(client, during_a)).json()
    assert r2["clerk_id"] == world.clerk_id and r2["ledger"] == [{"kind": "commission", "clerk_id": world.clerk_id,
                                                                  "amount": "11.97"}]
    r3 = await (await post_order(client, during_b)).json()
    assert r3["clerk_id"] == world.clerk2_id and r3["ledger"][0]["amount"] == "64.95"
    again = await post_order(client, during_b)
    assert again.status == 200 and (await again.json())["order_id"] == "TM-3"  # idempotent
    clash = await post_order(client, {**during_b, "amount": "1.00"})
    assert clash.status == 409
    raw, headers = signed(during_a)
    assert (await client.post("/api/v1/orders", data=raw, headers={**headers, "X-Gateway-Signature": "0" * 64})
            ).status == 401
    refund = {"amount": "100.00", "refunded_at": now.isoformat()}
    rr = await post_order(client, refund, "/api/v1/orders/TM-3/refund")
    assert rr.status == 201 and [x["amount"] for x in (await rr.json())["ledger"]] == ["64.95", "-5.00"]
    assert (await post_order(client, {"amount": "1200.00", "refunded_at": now.isoformat()},
                             "/api/v1/orders/TM-3/refund")).status == 422  # more than is left
    assert (await post_order(client, refund, "/api/v1/orders/TM-3/refund")).status == 200  # a resend
    await attribution.sync_changed(gw, now - timedelta(days=365))  # bounty for the first binding
    headers = {"Authorization": f"Bearer {world.admin_token}"}
    led = await (await client.get(f"/api/v1/ledger?clerk_id={world.clerk_id}", headers=headers)).json()
    assert led["total"] == "16.97"  # 11.97 commission + 5.00 bounty (kept: the binding ended by handover)
    led_b = await (await client.get(f"/api/v1/ledger?clerk_id={world.clerk2_id}", headers=headers)).json()
    assert led_b["total"] == "59.95"
    rebuilt = await (await client.post("/api/v1/ledger/rebuild", headers=headers)).json()
    assert rebuilt["missing"] == [] and rebuilt["differ"] == [] and rebuilt["extra"] == []
    assert rebuilt["total"] == "76.92"

    # Over time, for the dashboards: GMV by the day it was placed (refunds on theirs), commission by ledger day.
    frm = (now - timedelta(days=30)).astimezone(gw.tz).date().isoformat()
    ser = await (await client.get(f"/api/v1/reports/series?by=clerk&from={frm}", headers=headers)).json()
    assert len(ser["days"]) == 31 and ser["days"][0] == frm
    by_clerk = {x["id"]: x for x in ser["series"]}
    day = lambda t: ser["days"].index(t.astimezone(gw.tz).date().isoformat())  # noqa: E731
    a, b = by_clerk[world.clerk_id], by_clerk[world.clerk2_id]
    assert a["gmv"][day(now - timedelta(days=20))] == "399.00"
    assert b["gmv"][day(now - timedelta(days=1))] == "1299.00" and b["gmv"][day(now)] == "-100.00"
    assert sum(Decimal(x) for x in a["commission"]) + sum(Decimal(x) for x in b["commission"]) == Decimal("76.92")
    assert sum(Decimal(x) for x in a["gmv"]) == Decimal("399.00")  # POS-1 is before the period and unattributed
    stores = await (await client.get(f"/api/v1/reports/series?by=store&from={frm}", headers=headers)).json()
    assert [x["id"] for x in stores["series"]] == [world.store_id]
    assert (await client.get("/api/v1/reports/series?by=planet", headers=headers)).status == 400


async def test_order_intake_is_off_without_a_secret_and_validates(client, gw, world):
    gw.config.orders.webhook_secret = None
    assert (await post_order(client, {"order_id": "x"})).status == 401
    gw.config.orders.webhook_secret = SECRET
    bad = await post_order(client, {"order_id": "x", "customer": {"customer_id": 1}, "amount": "1.005",
                                    "channel": "store", "placed_at": "2026-11-01T10:00:00+08:00"})
    assert bad.status == 422 and (await bad.json())["error"]["field"] == "amount"
    unknown = await (await post_order(client, {"order_id": "y", "customer": {"channel": "webchat", "external_id": "nobody"},
                                               "amount": "10.00", "channel": "other",
                                               "placed_at": "2026-11-01T10:00:00+08:00"})).json()
    assert unknown["unattributed"] == "unknown_customer" and unknown["ledger"] == []
    async with gw.db() as s:
        assert (await s.execute(select(Customer))).first() is None


def test_lift_is_the_difference_of_conversion_rates_with_an_interval():
    from gateway.reports import lift

    out = lift(1000, 120, 250, 20)  # 12 % with the push, 8 % without
    assert out["treated_rate"] == 0.12 and out["holdout_rate"] == 0.08 and out["lift"] == 0.04
    lo, hi = out["ci95"]
    assert lo < 0.04 < hi and round(hi - 0.04, 4) == round(0.04 - lo, 4)
    assert lift(10, 1, 0, 0)["lift"] is None  # no holdout: no lift claimed


async def test_reports_per_clerk_store_and_funnel_as_json_and_csv(gw, client, world, backend):
    from adapters.webchat.simulator import BrandApp
    from adapters.workbench.simulator import ClerkClient
    from tests.conftest import WEBCHAT_SECRET

    gw.config.orders.webhook_secret = SECRET
    server = str(client.make_url("")).rstrip("/")
    alice = await BrandApp(client.session, server, "webchat", WEBCHAT_SECRET).login("u-r", "Rita")
    await alice.bind(world.invite)
    await alice.say("在吗")
    clerk = ClerkClient(client.session, server, world.clerk_token)
    await clerk.wait_for(lambda m: "在吗" in m["text"])
    await clerk.say("#1 在的")
    await alice.wait_for(lambda m: m["text"] == "在的")
    r = await post_order(client, {"order_id": "R-1", "customer": {"channel": "webchat", "external_id": "u-r"},
                                  "amount": "200.00", "channel": "flagship",
                                  "placed_at": gw.clock.now().isoformat()})
    assert r.status == 201
    await attribution.sync_changed(gw, gw.clock.now() - timedelta(days=1))
    h = {"Authorization": f"Bearer {world.admin_token}"}
    rows = (await (await client.get("/api/v1/reports/clerks", headers=h)).json())["items"]
    lin = next(x for x in rows if x["clerk_id"] == world.clerk_id)
    assert lin["members_recruited"] == 1 and lin["messages"] == 1 and lin["orders"] == 1
    assert lin["gmv"] == "200.00" and lin["commission"] == "9.00"  # 200 × 2 % + the 5.00 bounty
    assert lin["first_reply_median_s"] is not None and lin["active_customers"] == 1
    store = (await (await client.get("/api/v1/reports/stores", headers=h)).json())["items"][0]
    assert store["orders"] == 1 and store["gmv"] == "200.00"
    funnel = await (await client.get("/api/v1/reports/funnel", headers=h)).json()
    assert funnel["customers_chatted"] == 1 and funnel["customers_bought"] == 1 and funnel["chat_to_deal"] == 1.0
    csv_ = await client.get("/api/v1/reports/clerks?format=csv", headers=h)
    assert csv_.status == 200 and csv_.content_type == "text/csv"
    assert (await csv_.text()).splitlines()[0].startswith("\ufeffclerk_id,clerk,store_id")  # BOM: Excel reads UTF-8
    assert (await client.get("/api/v1/reports/nope", headers=h)).status == 404
    assert (await client.get("/api/v1/reports/clerks?from=yesterday", headers=h)).status == 400


@settings(max_examples=200, deadline=None)
@given(histories())
def test_incremental_appends_never_change_a_line_and_end_equal_to_a_rebuild(h):
    """Replaying the history in time order, each step's ledger only adds lines to the last one:
    what was appended is never wrong later (append-only is sound), and the end is the rebuild."""
    bindings, orders, refunds = h
    events = sorted([(b.valid_from, "b", b) for b in bindings] + [(b.valid_to, "e", b) for b in bindings if b.valid_to]
                    + [(o.placed_at, "o", o) for o in orders] + [(r.refunded_at, "r", r) for r in refunds],
                    key=lambda e: (e[0], "beor".index(e[1])))
    seen_b: dict[int, ledger.BindingRec] = {}
    seen_o, seen_r, appended = [], [], {}
    for _, kind, x in events:
        if kind == "b":
            seen_b[x.id] = ledger.BindingRec(x.id, x.clerk_id, x.store_id, x.valid_from, None, None, x.source)
        elif kind == "e":
            seen_b[x.id] = x
        elif kind == "o":
            seen_o.append(x)
        else:
            seen_r.append(x)
        for e in ledger.entries(1, list(seen_b.values()), seen_o, seen_r, RULES):
            assert appended.setdefault(e.source, e) == e  # a line, once written, stays right
    assert set(appended.values()) == set(ledger.entries(1, bindings, orders, refunds, RULES))


async def test_an_order_with_the_customers_coupon_marks_it_redeemed(gw, client, world):
    from gateway.models import Coupon, CouponCode

    gw.config.orders.webhook_secret = SECRET
    now = gw.clock.now()
    async with gw.db() as s:
        c = Customer(name="券", created_at=now)
        s.add(c)
        await s.flush()
        cp = Coupon(name="满减", value=Decimal("20.00"), valid_from=now - timedelta(days=1), valid_to=now + timedelta(days=9))
        s.add(cp)
        await s.flush()
        s.add_all([CouponCode(coupon_id=cp.id, code="MINE-1", customer_id=c.id, issued_at=now),
                   CouponCode(coupon_id=cp.id, code="OTHER-1")])
        await s.commit()
        cid = c.id
    r = await post_order(client, {"order_id": "C-1", "customer": {"customer_id": cid}, "amount": "88.00",
                                  "channel": "store", "placed_at": now.isoformat(), "coupon_codes": ["MINE-1", "OTHER-1"]})
    assert r.status == 201
    async with gw.db() as s:
        codes = {x.code: x.redeemed_at for x in (await s.execute(select(CouponCode))).scalars()}
    assert codes["MINE-1"] is not None and codes["OTHER-1"] is None  # only the customer's own code counts
