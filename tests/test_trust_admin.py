"""Trust, the admin side (issue 16: items 1, 2, 8, 12, 14, 15, 16): what a curious store manager, a
racing POS and a hostile name in a spreadsheet must not achieve.

- a store manager never merges with (nor learns of) a customer outside their store;
- refunds never exceed the order, on PostgreSQL under concurrency too; the ledger rebuilds to
  what was written after any mix of concurrent orders and refunds;
- every CSV escapes formula-leading cells and starts with a BOM;
- edge input (unknown store, huge cursors, years 1 and 9999, odd digits) is a clear 4xx;
- invites of another store are 404; orders are signature-only in the OpenAPI document and a resend
  with the same content written differently is the same order.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import random
import sys
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from sqlalchemy import func, select

from gateway import advisors, attribution, ledger
from gateway.models import Binding, Clerk, Customer, Interaction, LedgerEntry, Order, Refund, Store
from gateway.models import Identity as IdentityRow
from gateway.tokens import create_token
from tests.test_ledger import SECRET, post_order

PHONE_KEY = "phone-hash-key-0123456789abcdef"


def auth(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


async def error(resp) -> dict:
    return (await resp.json())["error"]


async def assert_ledger_rebuilds(gw, client, world) -> None:
    """POST /ledger/rebuild finds exactly what was written (bounties of customers without an order
    are appended by the periodic sync first, as in production)."""
    await attribution.sync_changed(gw, gw.clock.now() - timedelta(days=365))
    rebuilt = await (await client.post("/api/v1/ledger/rebuild", headers=auth(world.admin_token))).json()
    assert rebuilt["missing"] == rebuilt["differ"] == rebuilt["extra"] == [], rebuilt


# -- item 1: merges by phone stay inside what the caller may see --------------------------------------


async def _two_stores(gw, client, world) -> dict:
    """Store 1 (the world's) with two customers of 小林; store 2 with 大王 and a customer who has an
    order (so a ledger line) and a phone; a store manager of store 1."""
    gw.config.policies.phone_hash_key = PHONE_KEY
    now = gw.clock.now()
    async with gw.db() as s:
        store2 = Store(name="别的店")
        s.add(store2)
        await s.flush()
        wang = Clerk(name="王大", display_name="大王", store_id=store2.id)
        s.add(wang)
        await s.flush()
        mine = Customer(name="本店一", store_id=world.store_id, created_at=now)
        mine2 = Customer(name="本店二", store_id=world.store_id, created_at=now)
        theirs = Customer(name="别店", store_id=store2.id, created_at=now,
                          phone_hash=advisors.phone_hash(PHONE_KEY, "13900000002"))
        s.add_all([mine, mine2, theirs])
        await s.flush()
        s.add_all([Binding(customer_id=mine.id, clerk_id=world.clerk_id, store_id=world.store_id,
                           valid_from=now - timedelta(days=5), source="invite"),
                   Binding(customer_id=mine2.id, clerk_id=world.clerk_id, store_id=world.store_id,
                           valid_from=now - timedelta(days=5), source="invite"),
                   Binding(customer_id=theirs.id, clerk_id=wang.id, store_id=store2.id,
                           valid_from=now - timedelta(days=9), source="invite")])
        _, mgr = await create_token(s, "store_manager", store_id=world.store_id)
        await s.commit()
        ids = {"store2": store2.id, "wang": wang.id, "mine": mine.id, "mine2": mine2.id, "theirs": theirs.id,
               "mgr": mgr}
    gw.config.orders.webhook_secret = SECRET
    r = await post_order(client, {"order_id": "THEIRS-1", "customer": {"customer_id": ids["theirs"]},
                                          "amount": "500.00", "channel": "store",
                                          "placed_at": (now - timedelta(days=1)).isoformat()})
    assert r.status == 201
    return ids


@pytest.fixture
async def stores2(gw, client, world):
    return await _two_stores(gw, client, world)


async def test_a_store_manager_setting_another_stores_phone_merges_nothing_and_learns_nothing(
        gw, client, world, stores2, backend):
    ids, m = stores2, auth(stores2["mgr"])
    taken = await client.patch(f"/api/v1/customers/{ids['mine']}", json={"phone": "13900000002"}, headers=m)
    fresh = await client.patch(f"/api/v1/customers/{ids['mine2']}", json={"phone": "13900000003"}, headers=m)
    assert taken.status == fresh.status == 200
    a, b = await taken.json(), await fresh.json()
    # The same answer as for a phone nobody has: same fields, own record, nothing merged.
    assert a.keys() == b.keys() and a["id"] == ids["mine"] and a["merged_into_id"] is None
    assert {k: v for k, v in a.items() if k not in ("id", "name", "phone_hash")} == \
        {k: v for k, v in b.items() if k not in ("id", "name", "phone_hash")}
    async with gw.db() as s:
        theirs = await s.get(Customer, ids["theirs"])
        assert theirs.merged_into_id is None and theirs.store_id == ids["store2"]
        open_ = (await s.execute(select(Binding).where(Binding.customer_id == ids["theirs"],
                                                       Binding.valid_to.is_(None)))).scalars().all()
        assert [x.clerk_id for x in open_] == [ids["wang"]]  # store 2 keeps its customer
        assert (await s.get(Customer, ids["mine"])).merged_into_id is None
        order = (await s.execute(select(Order).where(Order.order_id == "THEIRS-1"))).scalar_one()
        assert order.customer_id == ids["theirs"]
    # Still out of reach, and the ledger is what was written.
    assert (await client.get(f"/api/v1/customers/{ids['theirs']}", headers=m)).status in (403, 404)
    seen = await (await client.get(f"/api/v1/interactions?customer_id={ids['mine']}", headers=m)).json()
    assert all(str(ids["theirs"]) not in json.dumps(i["payload"]) for i in seen["items"])
    await assert_ledger_rebuilds(gw, client, world)
    # An admin can see the pair that was not merged, and may merge it.
    held = await (await client.get("/api/v1/interactions?type=merge_held", headers=auth(world.admin_token))).json()
    assert [i["payload"]["customer_ids"] for i in held["items"]] == [sorted([ids["mine"], ids["theirs"]])]
    merged = await client.patch(f"/api/v1/customers/{ids['mine']}", json={"phone": "13900000002"},
                                headers=auth(world.admin_token))
    assert merged.status == 200
    async with gw.db() as s:
        assert (await s.get(Customer, ids["theirs"])).merged_into_id == ids["mine"]


async def test_a_store_manager_still_merges_two_records_of_their_own_store(gw, client, world, stores2):
    ids, m = stores2, auth(stores2["mgr"])
    assert (await client.patch(f"/api/v1/customers/{ids['mine']}", json={"phone": "13900000007"}, headers=m)).status == 200
    resp = await client.patch(f"/api/v1/customers/{ids['mine2']}", json={"phone": "+8613900000007"}, headers=m)
    assert resp.status == 200 and (await resp.json())["id"] == ids["mine"]  # the older record stays
    async with gw.db() as s:
        assert (await s.get(Customer, ids["mine2"])).merged_into_id == ids["mine"]


async def test_a_store_manager_never_merges_with_a_customer_of_no_store(gw, client, world, stores2):
    """A customer nobody has bound yet (no home store) is not the store manager's to see either."""
    ids, m = stores2, auth(stores2["mgr"])
    async with gw.db() as s:
        loose = Customer(name="无店", created_at=gw.clock.now(), phone_hash=advisors.phone_hash(PHONE_KEY, "13900000008"))
        s.add(loose)
        await s.commit()
        loose_id = loose.id
    assert (await client.patch(f"/api/v1/customers/{ids['mine']}", json={"phone": "13900000008"}, headers=m)).status == 200
    async with gw.db() as s:
        assert (await s.get(Customer, loose_id)).merged_into_id is None
        assert (await s.get(Customer, ids["mine"])).merged_into_id is None


# -- item 2: refunds under a lock, orders racing, the ledger invariant -------------------------------------


async def _bound_customer(gw, world, name="顾客", days=30) -> int:
    now = gw.clock.now()
    async with gw.db() as s:
        c = Customer(name=name, store_id=world.store_id, created_at=now - timedelta(days=days))
        s.add(c)
        await s.flush()
        s.add(Binding(customer_id=c.id, clerk_id=world.clerk_id, store_id=world.store_id,
                      valid_from=now - timedelta(days=days), source="invite"))
        await s.commit()
        return c.id


async def _order_lines(gw, order_id: str) -> list[LedgerEntry]:
    async with gw.db() as s:
        return list((await s.execute(select(LedgerEntry).where(LedgerEntry.order_id == order_id))).scalars())


async def test_twenty_concurrent_refunds_of_60_on_a_100_order_accept_exactly_one(gw, client, world, backend):
    gw.config.orders.webhook_secret = SECRET
    cid = await _bound_customer(gw, world)
    now = gw.clock.now()
    r = await post_order(client, {"order_id": "R-100", "customer": {"customer_id": cid}, "amount": "100.00",
                                  "channel": "store", "placed_at": (now - timedelta(days=1)).isoformat()})
    assert r.status == 201
    refunds = [{"amount": "60.00", "refunded_at": (now + timedelta(seconds=i)).isoformat()} for i in range(20)]
    answers = await asyncio.gather(*(post_order(client, b, "/api/v1/orders/R-100/refund") for b in refunds))
    statuses = sorted(a.status for a in answers)
    assert statuses == [201] + [422] * 19, statuses
    for a in answers:
        if a.status == 422:
            assert (await error(a))["field"] == "amount"
    async with gw.db() as s:
        refunded = (await s.execute(select(func.sum(Refund.amount)))).scalar_one()
    assert Decimal(refunded) == Decimal("60.00")
    lines = await _order_lines(gw, "R-100")
    assert sum(e.amount for e in lines) == Decimal("1.20")  # 3.00 commission − 1.80 reversed, never negative
    await assert_ledger_rebuilds(gw, client, world)


async def test_the_same_order_sent_ten_times_at_once_is_one_order(gw, client, world, backend):
    gw.config.orders.webhook_secret = SECRET
    cid = await _bound_customer(gw, world)
    body = {"order_id": "DUP-1", "customer": {"customer_id": cid}, "amount": "399.00", "channel": "store",
            "placed_at": gw.clock.now().isoformat()}
    answers = await asyncio.gather(*(post_order(client, body) for _ in range(10)))
    assert sorted(a.status for a in answers) == [200] * 9 + [201]
    assert len({json.dumps(await a.json(), sort_keys=True) for a in answers}) == 1  # the same answer each time
    other = await asyncio.gather(*(post_order(client, {**body, "order_id": "DUP-2", "amount": f"{100 + i}.00"})
                                   for i in range(6)))
    assert sorted(a.status for a in other) == [201] + [409] * 5
    async with gw.db() as s:
        assert (await s.execute(select(func.count()).select_from(Order))).scalar_one() == 2
    assert [e.kind for e in await _order_lines(gw, "DUP-1")] == ["commission"]


async def test_an_order_and_its_refund_racing_never_500(gw, client, world, backend):
    gw.config.orders.webhook_secret = SECRET
    cid = await _bound_customer(gw, world)
    now = gw.clock.now()
    for n in range(5):
        order = {"order_id": f"RACE-{n}", "customer": {"customer_id": cid}, "amount": "50.00", "channel": "store",
                 "placed_at": now.isoformat()}
        refund = {"amount": "50.00", "refunded_at": (now + timedelta(minutes=1)).isoformat()}
        o, r = await asyncio.gather(post_order(client, order), post_order(client, refund, f"/api/v1/orders/RACE-{n}/refund"))
        assert o.status == 201 and r.status in (201, 404), (o.status, r.status)
    await assert_ledger_rebuilds(gw, client, world)


async def test_the_ledger_rebuilds_to_what_was_written_after_a_random_concurrent_mix(gw, client, world, backend):
    """Orders (some resent), refunds (some too big, some resent, amounts that round to the fen) for a
    few customers, all at once in waves: the ledger appended under load is the ledger rebuilt."""
    gw.config.orders.webhook_secret = SECRET
    rnd = random.Random(16)
    customers = [await _bound_customer(gw, world, f"客{i}", days=40 - i) for i in range(4)]
    async with gw.db() as s:  # one customer was bound to clerk 2 until 10 days ago, then to 小林
        s.add(Binding(customer_id=customers[0], clerk_id=world.clerk2_id, store_id=world.store_id,
                      valid_from=gw.clock.now() - timedelta(days=60), valid_to=gw.clock.now() - timedelta(days=40),
                      end_reason="handover", source="invite"))
        await s.commit()
    now = gw.clock.now()
    orders = {}
    for n in range(24):
        orders[f"MIX-{n}"] = {"order_id": f"MIX-{n}", "customer": {"customer_id": rnd.choice(customers)},
                              "amount": f"{rnd.randint(1, 50000) / 100:.2f}",
                              "channel": rnd.choice(["store", "cloud_store", "flagship", "other"]),
                              "placed_at": (now - timedelta(days=rnd.randint(0, 50), minutes=n)).isoformat()}
    first = list(orders.values())
    await asyncio.gather(*(post_order(client, o) for o in first + rnd.sample(first, 6)))
    calls = []
    for i in range(60):
        oid = rnd.choice(list(orders))
        amount = Decimal(orders[oid]["amount"]) * Decimal(rnd.choice(["0.5", "0.34", "0.01", "0.99", "1.2"]))
        body = {"amount": f"{max(amount, Decimal('0.01')):.2f}", "refunded_at": (now + timedelta(seconds=i)).isoformat()}
        calls.append(post_order(client, body, f"/api/v1/orders/{oid}/refund"))
        if i % 7 == 0:
            calls.append(post_order(client, body, f"/api/v1/orders/{oid}/refund"))  # a resend
    answers = await asyncio.gather(*calls)
    assert {a.status for a in answers} <= {200, 201, 422}, [a.status for a in answers]
    async with gw.db() as s:
        for o in (await s.execute(select(Order))).scalars():
            refunded = (await s.execute(select(func.coalesce(func.sum(Refund.amount), 0))
                                        .where(Refund.order_pk == o.id))).scalar_one()
            assert Decimal(refunded) <= o.amount
    for oid in orders:
        assert sum((e.amount for e in await _order_lines(gw, oid)), Decimal(0)) >= 0
    await assert_ledger_rebuilds(gw, client, world)


def test_refund_reversals_follow_arrival_so_a_late_refund_dated_earlier_changes_no_written_line():
    """Refunds of 0.50 twice on a 1.00 order at 3 %: each reverses fen(0.015) = 0.02, capped at the
    0.03 commission. The second to arrive (dated earlier) gets what is left, and the first line
    written stays right; ordering by refunded_at would rewrite it and reverse 0.04 in total."""
    rules = ledger.Rules({"store": Decimal("0.03")}, Decimal(0), 30)
    day = datetime(2026, 11, 1, tzinfo=UTC)
    b = [ledger.BindingRec(1, 7, 1, day - timedelta(days=9), None, None, "invite")]
    o = [ledger.OrderRec("O", Decimal("1.00"), "store", day, None)]
    first = ledger.RefundRec(1, "O", Decimal("0.50"), day + timedelta(days=2))
    late = ledger.RefundRec(2, "O", Decimal("0.50"), day + timedelta(days=1))
    before = {e.source: e.amount for e in ledger.entries(1, b, o, [first], rules)}
    after = {e.source: e.amount for e in ledger.entries(1, b, o, [first, late], rules)}
    assert before["refund:1"] == after["refund:1"] == Decimal("-0.02")
    assert after["refund:2"] == Decimal("-0.01") and sum(after.values()) == 0


# -- item 8: CSV ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("raw, cell", [
    ("=1+1", "'=1+1"), ("=cmd|' /C calc'!A0", "'=cmd|' /C calc'!A0"), ("+86 138", "'+86 138"),
    ("-2+3", "'-2+3"), ("@SUM(A1)", "'@SUM(A1)"), ("\t=1", "'\t=1"), ("\r=1", "'\r=1"),
    ("-12.30", "-12.30"), ("+5", "+5"), ("-7", "-7"), ("12.30", "12.30"), ("王女士", "王女士"), ("", ""),
    (None, ""), (Decimal("-3.20"), "-3.20"), (-4, "-4"), ("a=b", "a=b"), ("'=x", "''=x"), ("'x", "'x"),
])
def test_csv_cells_escape_formulas_but_numbers_stay_numbers(raw, cell):
    from gateway import csvsafe  # (imported here: the module is new, the other tests run without it)

    assert csvsafe.cell(raw) == cell


def test_csv_text_starts_with_a_bom_and_reads_back():
    from gateway import csvsafe

    text = csvsafe.dumps(["name", "amount"], [["=1+1", "-12.30"], ["小林", "3.00"]])
    assert text.startswith("\ufeff")
    rows = list(csv.reader(io.StringIO(text.removeprefix("\ufeff"))))
    assert rows == [["name", "amount"], ["'=1+1", "-12.30"], ["小林", "3.00"]]
    assert [csvsafe.unescape(x) for x in rows[1]] == ["=1+1", "-12.30"]


async def _hostile_clerk_with_a_sale(gw, client, world) -> None:
    gw.config.orders.webhook_secret = SECRET
    async with gw.db() as s:
        clerk = await s.get(Clerk, world.clerk_id)
        clerk.display_name = "=cmd|' /C calc'!A0"
        await s.commit()
    cid = await _bound_customer(gw, world)
    now = gw.clock.now()
    assert (await post_order(client, {"order_id": "CSV-1", "customer": {"customer_id": cid}, "amount": "100.00",
                                      "channel": "store", "placed_at": now.isoformat()})).status == 201
    assert (await post_order(client, {"amount": "100.00", "refunded_at": now.isoformat()},
                             "/api/v1/orders/CSV-1/refund")).status == 201


async def test_report_and_ledger_csv_escape_names_keep_negative_amounts_and_have_a_bom(gw, client, world):
    await _hostile_clerk_with_a_sale(gw, client, world)
    h = auth(world.admin_token)
    for path in ("/api/v1/reports/clerks?format=csv", f"/api/v1/ledger?clerk_id={world.clerk_id}&format=csv"):
        resp = await client.get(path, headers=h)
        assert resp.status == 200 and resp.content_type == "text/csv" and resp.charset == "utf-8"
        raw = await resp.read()
        assert raw.startswith("\ufeff".encode()), path
        rows = list(csv.DictReader(io.StringIO(raw.decode("utf-8-sig"))))
        names = {r.get("clerk") for r in rows}
        assert "'=cmd|' /C calc'!A0" in names and "=cmd|' /C calc'!A0" not in names, (path, rows)
        assert not any(v.startswith(("=", "@")) for r in rows for v in r.values() if v), rows
    ledger_rows = list(csv.DictReader(io.StringIO((await (await client.get(
        "/api/v1/ledger?format=csv", headers=h)).read()).decode("utf-8-sig"))))
    assert sorted((r["kind"], r["amount"]) for r in ledger_rows) == [
        ("bounty", "5.00"), ("commission", "3.00"), ("refund_reversal", "-3.00")]  # a negative amount is data


async def test_cli_report_csv_escapes_and_has_a_bom_and_refuses_year_1(gw, client, world, tmp_path):
    await _hostile_clerk_with_a_sale(gw, client, world)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"database:\n  url: {json.dumps(str(gw.engine.url))}\n", encoding="utf-8")

    async def cli(*args) -> tuple[int, bytes, bytes]:
        p = await asyncio.create_subprocess_exec(sys.executable, "-m", "gateway", "report", "clerks", *args,
                                                 "--config", str(cfg), stdout=asyncio.subprocess.PIPE,
                                                 stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(p.communicate(), 60)
        return p.returncode, out, err

    code, out, err = await cli("--format", "csv")
    assert code == 0 and out.startswith("\ufeff".encode()), err
    assert "'=cmd|' /C calc'!A0" in out.decode("utf-8-sig")
    code, out, err = await cli("--from", "0001-01-01", "--format", "csv")
    assert code == 2 and b"--from" in err and b"Traceback" not in err


async def test_import_errors_file_escapes_cells_and_reimports_as_it_is(gw, tmp_path):
    from gateway.importer import run_import

    src = tmp_path / "stores.csv"
    src.write_text("name,city,lat\n=HYPERLINK(\"http://x\"),上海,100\n", encoding="utf-8")
    errors = tmp_path / "bad.csv"
    result = await run_import(gw, "stores", src, errors_file=errors, out=io.StringIO(), progress=io.StringIO())
    assert result.failed == 1
    raw = errors.read_bytes()
    assert raw.startswith("\ufeff".encode())
    rows = list(csv.reader(io.StringIO(raw.decode("utf-8-sig"))))
    assert rows[1][0] == "'=HYPERLINK(\"http://x\")"
    fixed = tmp_path / "fixed.csv"
    fixed.write_text(raw.decode("utf-8-sig").replace(",100,", ",31.2,"), encoding="utf-8")
    again = await run_import(gw, "stores", fixed, out=io.StringIO(), progress=io.StringIO())
    assert again.created == 1
    async with gw.db() as s:
        assert (await s.execute(select(Store.name).where(Store.city == "上海"))).scalars().all() == \
            ['=HYPERLINK("http://x")']  # the escape is undone on the way back in


# -- item 12: an unknown store ------------------------------------------------------------------------------


async def test_an_order_for_an_unknown_store_is_422_naming_store_id(gw, client, world, backend):
    gw.config.orders.webhook_secret = SECRET
    cid = await _bound_customer(gw, world)
    body = {"order_id": "NOSTORE", "customer": {"customer_id": cid}, "amount": "10.00", "channel": "store",
            "store_id": 424242, "placed_at": gw.clock.now().isoformat()}
    resp = await asyncio.wait_for(post_order(client, body), 5)
    assert resp.status == 422 and (await error(resp))["field"] == "store_id"
    async with gw.db() as s:
        assert (await s.execute(select(func.count()).select_from(Order))).scalar_one() == 0
    assert (await post_order(client, {**body, "store_id": world.store_id})).status == 201


# -- item 14: edge input is a 4xx naming the field ----------------------------------------------------------


async def test_huge_cursors_on_the_message_histories_are_400(gw, client, world):
    from adapters.webchat.simulator import BrandApp
    from tests.conftest import WEBCHAT_SECRET

    server = str(client.make_url("")).rstrip("/")
    ann = await BrandApp(client.session, server, "webchat", WEBCHAT_SECRET).login(
        "u-cursor", "Ann", ts=int(gw.clock.now().timestamp()))
    for base, token in (("/webchat/webchat", ann.token), ("/workbench/api", world.clerk_token)):
        for q, field in (("after=" + "9" * 30, "after"), ("after=-1", "after"), ("after=١٢", "after"),
                         ("limit=" + "9" * 30, "limit"), ("limit=x", "limit")):
            resp = await client.get(f"{base}/messages?{q}", headers=auth(token))
            assert resp.status == 400, (base, q, resp.status)
            assert (await error(resp))["field"] == field
        ok = await client.get(f"{base}/messages?after={2**63 - 1}", headers=auth(token))
        assert ok.status == 200 and (await ok.json())["items"] == []


Y1, Y9999 = "0001-01-01T00:00:00+08:00", "9999-12-31T23:59:59-08:00"


async def test_orders_and_refunds_in_year_1_or_9999_are_422(gw, client, world, backend):
    gw.config.orders.webhook_secret = SECRET
    cid = await _bound_customer(gw, world)
    base = {"order_id": "Y", "customer": {"customer_id": cid}, "amount": "10.00", "channel": "store",
            "placed_at": gw.clock.now().isoformat()}
    for t in (Y1, Y9999, "1969-12-31T23:59:59Z", "0001-01-01T00:00:00"):
        resp = await post_order(client, {**base, "placed_at": t})
        assert resp.status == 422 and (await error(resp))["field"] == "placed_at", t
    assert (await post_order(client, base)).status == 201
    for t in (Y1, Y9999):
        resp = await post_order(client, {"amount": "1.00", "refunded_at": t}, "/api/v1/orders/Y/refund")
        assert resp.status == 422 and (await error(resp))["field"] == "refunded_at", t


async def test_report_periods_in_year_1_or_9999_are_400(gw, client, world):
    h = auth(world.admin_token)
    for path in ("/api/v1/reports/clerks", "/api/v1/reports/series"):
        for name, value in (("from", "0001-01-01"), ("from", Y1.replace("+", "%2B")), ("to", Y9999),
                            ("to", "9999-12-31")):
            resp = await client.get(f"{path}?{name}={value}", headers=h)
            assert resp.status == 400 and (await error(resp))["field"] == name, (path, name, value)


async def test_coupons_and_campaigns_with_years_1_or_9999_are_422(gw, client, world):
    h = auth(world.admin_token)
    ok_from, ok_to = "2026-12-01T00:00:00+08:00", "2026-12-31T00:00:00+08:00"
    for body, field in (({"valid_from": Y1, "valid_to": ok_to}, "valid_from"),
                        ({"valid_from": ok_from, "valid_to": Y9999}, "valid_to"),
                        ({"valid_from": "2026-12-01T00:00:00", "valid_to": ok_to}, "valid_from")):
        resp = await client.post("/api/v1/coupons", json={"name": "券", "value": "5.00", "generate": 1, **body}, headers=h)
        assert resp.status == 422 and (await error(resp))["field"] == field, body
    campaign = {"name": "n", "kind": "notice", "content": {"text": "hi"}}
    for extra, field in (({"audience": {"bound_after": Y1}}, "audience.bound_after"),
                         ({"audience": {"bound_before": Y9999}}, "audience.bound_before"),
                         ({"audience": {"bound_after": "2026-01-01T00:00:00"}}, "audience.bound_after"),
                         ({"schedule": {"at": Y1}}, "schedule.at"), ({"schedule": {"at": Y9999}}, "schedule.at"),
                         ({"schedule": {"cron": "0 10 * * 1", "until": Y9999}}, "schedule.until"),
                         ({"schedule": {"cron": "0 10 * * 1", "until": "0001-01-01T00:00:00"}}, "schedule.until")):
        resp = await client.post("/api/v1/campaigns", json={**campaign, **extra}, headers=h)
        assert resp.status == 422 and (await error(resp))["field"] == field, extra
    ok = await client.post("/api/v1/campaigns", json={**campaign, "audience": {"bound_after": ok_from},
                                                      "schedule": {"cron": "0 10 * * 1", "until": "2027-06-01T00:00:00"}},
                           headers=h)
    assert ok.status == 201
    cid = (await ok.json())["id"]
    assert (await client.post(f"/api/v1/campaigns/{cid}/preview", headers=h)).status == 200


# -- item 15: another store's invite is not found -------------------------------------------------------------


async def test_a_store_manager_gets_404_for_another_stores_invite(gw, client, world, stores2):
    h = auth(world.admin_token)
    theirs = await (await client.post("/api/v1/invites", json={"clerk_id": stores2["wang"]}, headers=h)).json()
    m = auth(stores2["mgr"])
    for suffix in ("", "/qr.png", "/qr.svg"):
        resp = await client.get(f"/api/v1/invites/{theirs['code']}{suffix}", headers=m)
        assert resp.status == 404, suffix
        assert await error(resp) == (await error(await client.get(f"/api/v1/invites/zzzzzzzz{suffix}", headers=m)))
        assert (await client.get(f"/api/v1/invites/{world.invite}{suffix}", headers=m)).status == 200
        assert (await client.get(f"/api/v1/invites/{theirs['code']}{suffix}", headers=h)).status == 200


# -- item 16: the order webhook's contract --------------------------------------------------------------------


async def test_openapi_says_orders_and_refunds_are_signed_not_bearer(client):
    doc = await (await client.get("/openapi.json")).json()
    schemes = doc["components"]["securitySchemes"]
    assert schemes["signature"] == {"type": "apiKey", "in": "header", "name": "X-Gateway-Signature",
                                    "description": schemes["signature"]["description"]}
    assert "HMAC-SHA256" in schemes["signature"]["description"]
    for path in ("/api/v1/orders", "/api/v1/orders/{order_id}/refund"):
        op = doc["paths"][path]["post"]
        assert op["security"] == [{"signature": []}], path
        assert "Roles" not in op["description"] and "403" not in op["responses"]
    assert doc["paths"]["/api/v1/ledger"]["get"]["security"] == [{"bearer": []}]
    schema = doc["components"]["schemas"]["OrderIn"]["properties"]["amount"]
    assert schema["type"] == "string" and schema["pattern"] == r"^\d+(\.\d{1,2})?$"


async def test_amounts_are_plain_ascii_decimals(gw, client, world):
    gw.config.orders.webhook_secret = SECRET
    cid = await _bound_customer(gw, world)
    base = {"order_id": "AMT", "customer": {"customer_id": cid}, "channel": "store",
            "placed_at": gw.clock.now().isoformat()}
    for bad in ("1_000.00", "١٠٠.٠٠", "１００", "100.005", "1e3", "-5.00", "+5.00", " ", "0", "0.00", "NaN",
                100.5, 100, True, "100.", ".5", "100.00\n"):
        resp = await post_order(client, {**base, "amount": bad})
        assert resp.status == 422 and (await error(resp))["field"] == "amount", bad
    for amount in ("1000", "0.5", "12.30"):
        assert (await post_order(client, {**base, "order_id": f"AMT-{amount}", "amount": amount})).status == 201
    refund = await post_order(client, {"amount": "1_0.00", "refunded_at": gw.clock.now().isoformat()},
                              "/api/v1/orders/AMT-1000/refund")
    assert refund.status == 422 and (await error(refund))["field"] == "amount"


async def test_a_resend_written_differently_is_the_same_order(gw, client, world, backend):
    gw.config.orders.webhook_secret = SECRET
    cid = await _bound_customer(gw, world)
    now = gw.clock.now()
    first = {"order_id": "SAME", "customer": {"customer_id": cid}, "amount": "100.00", "channel": "store",
             "placed_at": now.astimezone(gw.tz).isoformat(), "coupon_codes": ["B-1", "A-1"]}
    created = await post_order(client, first)
    assert created.status == 201
    for resend in ({**first, "amount": "100.0"}, {**first, "amount": "100"},
                   {**first, "placed_at": now.isoformat().replace("+00:00", "Z")},
                   {**first, "currency": "CNY"}, {**first, "coupon_codes": ["A-1", "B-1"]},
                   {k: first[k] for k in reversed(list(first))}):
        again = await post_order(client, resend)
        assert again.status == 200, resend
        assert await again.json() == await created.json()
    for different in ({**first, "amount": "100.01"}, {**first, "channel": "flagship"},
                      {**first, "placed_at": (now + timedelta(seconds=1)).isoformat()},
                      {**first, "coupon_codes": ["A-1"]}, {**first, "store_id": world.store_id}):
        assert (await post_order(client, different)).status == 409, different


async def test_orders_stored_with_the_old_hash_still_accept_their_identical_resend(gw, client, world, backend):
    """Before normalising, the hash was of the body as sent (amount as written, placed_at with its
    offset). Such an order must still answer 200 to the same body again."""
    from gateway import attribution

    gw.config.orders.webhook_secret = SECRET
    cid = await _bound_customer(gw, world)
    body = {"order_id": "OLD-1", "customer": {"customer_id": cid}, "amount": "88.0", "channel": "store",
            "placed_at": "2026-01-04T10:00:00+08:00"}
    assert (await post_order(client, body)).status == 201
    legacy = attribution.legacy_body_hash({**body, "currency": "CNY"})
    async with gw.db() as s:
        o = (await s.execute(select(Order).where(Order.order_id == "OLD-1"))).scalar_one()
        o.body_hash = legacy
        await s.commit()
    assert (await post_order(client, body)).status == 200
    for amount in ("88.00", "88"):  # the same amount written otherwise
        assert (await post_order(client, {**body, "amount": amount})).status == 200
    assert (await post_order(client, {**body, "amount": "89.00"})).status == 409


async def test_identity_lookups_by_channel_still_work_for_orders(gw, client, world):
    """The customer reference by channel identity is unchanged by the stricter body."""
    gw.config.orders.webhook_secret = SECRET
    cid = await _bound_customer(gw, world)
    async with gw.db() as s:
        s.add(IdentityRow(customer_id=cid, platform="webchat", account="webchat", external_id="u-ch", profile={}))
        await s.commit()
    resp = await post_order(client, {"order_id": "CH-1", "customer": {"channel": "webchat", "external_id": "u-ch"},
                                     "amount": "20.00", "channel": "store", "placed_at": gw.clock.now().isoformat()})
    assert resp.status == 201 and (await resp.json())["customer_id"] == cid
    async with gw.db() as s:
        kinds = (await s.execute(select(Interaction.type).where(Interaction.customer_id == cid))).scalars().all()
    assert "order" in kinds

