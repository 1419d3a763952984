"""`gateway import stores|clerks|customers FILE.csv`: upserts, the per-row report, dry runs,
idempotent re-imports, clerks leaving through a file, and the real CLI as a subprocess."""

from __future__ import annotations

import asyncio
import io
import os
import sys
from pathlib import Path

import pytest
from sqlalchemy import func
from sqlalchemy.exc import OperationalError
from sqlmodel import select

from gateway import advisors, cli, importer
from gateway.importer import FileError, run_import
from gateway.models import (
    AuditEntry,
    Binding,
    Clerk,
    ClerkIdentity,
    Customer,
    Identity,
    Interaction,
    Store,
)
from gateway.runtime import Gateway
from gateway.tokens import create_token
from tests.conftest import WEBCHAT_SECRET, make_config

ROOT = Path(__file__).resolve().parent.parent
PHONE_KEY = "test-phone-hash-key"
DT = {"name": "dt", "platform": "dingtalk", "app_key": "dingappkey01", "app_secret": "ding-app-secret-0001",
      "robot_code": "dingrobot01"}


def import_config(db_url: str, **policies):
    return make_config(db_url, accounts=[
        DT, {"name": "workbench", "platform": "workbench"},
        {"name": "webchat", "platform": "webchat", "secret": WEBCHAT_SECRET, "dev_login": True},
    ], policies={"phone_hash_key": PHONE_KEY, "handover": "least_loaded", **policies})


@pytest.fixture
async def igw(db_url, clock):
    """A gateway with a DingTalk clerk-side account `dt` (for work ids) and a phone hash key."""
    g = Gateway(import_config(db_url), clock=clock)
    yield g
    await g.engine.dispose()


def csv_file(tmp_path: Path, name: str, text: str, bom: bool = False) -> Path:
    p = tmp_path / name
    p.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode())
    return p


async def run(gw, kind, path, **kw):
    out, progress = io.StringIO(), io.StringIO()
    result = await run_import(gw, kind, path, out=out, progress=progress, **kw)
    return result, out.getvalue(), progress.getvalue()


async def count(gw, model, *where) -> int:
    async with gw.db() as s:
        return (await s.execute(select(func.count()).select_from(model).where(*where))).scalar()


async def seed_stores(gw, tmp_path):
    p = csv_file(tmp_path, "stores.csv", "name,city\n静安店,上海\n徐汇店,上海\n")
    r, _, _ = await run(gw, "stores", p)
    assert r.created == 2 and r.failed == 0
    async with gw.db() as s:
        return {st.name: st.id for st in (await s.exec(select(Store))).all()}


# -- stores ---------------------------------------------------------------------------------------------


async def test_stores_import_upserts_by_name_and_reimport_creates_nothing(igw, tmp_path, backend):
    p = csv_file(tmp_path, "stores.csv", (
        "name,city,lat,lng,opening_hours\n"
        "静安店,上海,31.2240,121.4450,mon=10:00-22:00;sun=closed;daily=10:00-21:00\n"
        "徐汇店,上海,,,\n"
        "\n"  # blank lines are skipped
        "国贸店,北京,39.91,116.46,daily=09:30-21:30\n"), bom=True)
    r, out, _ = await run(igw, "stores", p)
    assert (r.created, r.updated, r.failed, r.rows, r.exit_code) == (3, 0, 0, 3, 0)
    assert out.strip().endswith("created 3, updated 0, failed 0 of 3 rows")
    async with igw.db() as s:
        stores = {st.name: st for st in (await s.exec(select(Store))).all()}
    assert stores["静安店"].opening_hours == {"mon": "10:00-22:00", "sun": "closed", "daily": "10:00-21:00"}
    assert stores["静安店"].lat == pytest.approx(31.224) and stores["国贸店"].city == "北京"
    assert stores["徐汇店"].lat is None

    again, out, _ = await run(igw, "stores", p)
    assert (again.created, again.updated, again.unchanged, again.failed) == (0, 0, 3, 0)
    assert "created 0, updated 0, failed 0 of 3 rows (3 unchanged)" in out
    assert await count(igw, Store) == 3

    changed = csv_file(tmp_path, "changed.csv", "name,city\n徐汇店,上海徐汇\n")
    r, _, _ = await run(igw, "stores", changed)
    assert (r.created, r.updated) == (0, 1)
    async with igw.db() as s:
        xh = (await s.exec(select(Store).where(Store.name == "徐汇店"))).one()
        audit = (await s.exec(select(AuditEntry).order_by(AuditEntry.id))).all()
    assert xh.city == "上海徐汇" and xh.id == stores["徐汇店"].id
    assert [(a.role, a.method, a.status) for a in audit] == [("cli", "IMPORT", 200)] * 3
    assert audit[0].path == "gateway import stores stores.csv"
    assert audit[0].detail["created"] == 3 and audit[1].detail["unchanged"] == 3


# -- clerks ---------------------------------------------------------------------------------------------


async def test_clerks_import_with_work_ids_and_upsert_by_work_id(igw, tmp_path, backend):
    ids = await seed_stores(igw, tmp_path)
    p = csv_file(tmp_path, "clerks.csv", (
        "name,display_name,store,role,work_ids,status\n"
        "林小雨,小林,静安店,,dt=lin01,\n"
        f"王芳,芳芳,{ids['静安店']},manager,dt=wang01,active\n"
        "赵磊,磊磊,徐汇店,clerk,,\n"))
    r, out, _ = await run(igw, "clerks", p)
    assert (r.created, r.failed) == (3, 0), out
    async with igw.db() as s:
        clerks = {c.name: c for c in (await s.exec(select(Clerk))).all()}
        work = {(i.clerk_id, i.platform, i.account, i.external_id) for i in (await s.exec(select(ClerkIdentity))).all()}
    assert clerks["林小雨"].store_id == ids["静安店"] and clerks["林小雨"].role == "clerk"
    assert clerks["王芳"].role == "manager" and clerks["赵磊"].store_id == ids["徐汇店"]
    assert work == {(clerks["林小雨"].id, "dingtalk", "dt", "lin01"), (clerks["王芳"].id, "dingtalk", "dt", "wang01")}

    again, _, _ = await run(igw, "clerks", p)
    assert (again.created, again.updated, again.unchanged) == (0, 0, 3)

    # Matched by the work id: a new display name and another store update the same clerk.
    moved = csv_file(tmp_path, "moved.csv", "name,display_name,store,work_ids\n林小雨,雨雨,徐汇店,dt=lin01\n")
    r, _, _ = await run(igw, "clerks", moved)
    assert (r.created, r.updated) == (0, 1)
    async with igw.db() as s:
        lin = await s.get(Clerk, clerks["林小雨"].id)
    assert (lin.display_name, lin.store_id) == ("雨雨", ids["徐汇店"])
    assert await count(igw, Clerk) == 3


async def test_clerk_rows_are_checked_like_the_api(igw, tmp_path):
    await seed_stores(igw, tmp_path)
    p = csv_file(tmp_path, "clerks.csv", (
        "name,display_name,store,role,work_ids\n"
        "甲,甲,静安店,boss,\n"             # line 2: role
        "乙,乙,不存在店,,\n"                # line 3: store
        "丙,丙,静安店,,webchat=u1\n"        # line 4: a customer-side account
        "丁,丁,静安店,,dt=d1\n"             # line 5: good
        "戊,戊,静安店,,dt=d1\n"             # line 6: dt=d1 is 丁's: matched by work id → updates 丁
        "己,,静安店,,\n"                    # line 7: display_name missing
        "庚,庚,静安店,,dt\n"))               # line 8: not account=user_id
    r, out, _ = await run(igw, "clerks", p)
    assert (r.created, r.updated, r.failed, r.rows) == (1, 1, 5, 7)
    assert "line 2, column role: Input should be 'clerk' or 'manager'" in out
    assert "line 3, column store: no store with id or name '不存在店'" in out
    assert "line 4, column work_ids: 'webchat' is not a configured clerk-side account" in out
    assert "line 7, column display_name: Field required" in out
    assert "line 8, column work_ids:" in out
    async with igw.db() as s:
        names = {c.name for c in (await s.exec(select(Clerk))).all()}
    assert names == {"戊"}  # 丁 created, then renamed by the row with the same work id


# -- customers ------------------------------------------------------------------------------------------


async def make_clerks(gw, tmp_path) -> dict[str, Clerk]:
    await seed_stores(gw, tmp_path)
    p = csv_file(tmp_path, "team.csv", (
        "name,display_name,store,role,work_ids\n"
        "林小雨,小林,静安店,,dt=lin01\n"
        "王芳,芳芳,静安店,,dt=wang01\n"
        "周杰,阿杰,静安店,,dt=zhou01\n"
        "店长,店长,静安店,manager,\n"
        "赵磊,磊磊,徐汇店,,dt=zhao01\n"))
    r, out, _ = await run(gw, "clerks", p)
    assert r.failed == 0, out
    async with gw.db() as s:
        return {c.display_name: c for c in (await s.exec(select(Clerk))).all()}


async def test_customers_import_binds_by_work_id_and_clerk_id_and_is_idempotent(igw, tmp_path, backend):
    clerks = await make_clerks(igw, tmp_path)
    p = csv_file(tmp_path, "customers.csv", (
        "name,phone,store,tags,clerk,unionid\n"
        "王女士,13800138000,静安店,vip;高端,dt:lin01,\n"
        f"李先生,+8613900139000,,新客,{clerks['芳芳'].id},\n"
        "张女士,13700137000,徐汇店,,,\n"))
    r, out, _ = await run(igw, "customers", p)
    assert (r.created, r.failed) == (3, 0), out
    async with igw.db() as s:
        cs = {c.name: c for c in (await s.exec(select(Customer))).all()}
        bindings = (await s.exec(select(Binding))).all()
        bound = (await s.exec(select(Interaction).where(Interaction.type == "bound"))).all()
    wang = cs["王女士"]
    assert wang.phone_hash == advisors.phone_hash(PHONE_KEY, "13800138000") and wang.tags == ["vip", "高端"]
    assert cs["李先生"].phone_hash == advisors.phone_hash(PHONE_KEY, "13900139000")  # +86 is the same number
    assert {(b.customer_id, b.clerk_id, b.source, b.valid_to) for b in bindings} == {
        (wang.id, clerks["小林"].id, "import", None), (cs["李先生"].id, clerks["芳芳"].id, "import", None)}
    assert wang.store_id == clerks["小林"].store_id and cs["张女士"].store_id == clerks["磊磊"].store_id
    assert len(bound) == 2 and all(i.payload["source"] == "import" for i in bound)

    again, out, _ = await run(igw, "customers", p)
    assert (again.created, again.updated, again.unchanged, again.failed) == (0, 0, 3, 0), out
    assert await count(igw, Customer) == 3 and await count(igw, Binding) == 2

    # The same phone written differently and a new tag list update the one record.
    retag = csv_file(tmp_path, "retag.csv", "phone,tags\n+86 13800138000,vip\n8613800138000,vip\n")
    r, out, _ = await run(igw, "customers", retag)
    assert r.failed == 1 and "line 2, column phone: String should match pattern" in out  # like the API: no spaces
    assert (r.created, r.updated) == (0, 1)
    async with igw.db() as s:
        assert (await s.get(Customer, wang.id)).tags == ["vip"]
    assert await count(igw, Customer) == 3


async def test_customers_match_by_unionid_and_phone_and_merge_two_records(igw, tmp_path, backend):
    clerks = await make_clerks(igw, tmp_path)
    now = igw.clock.now()
    async with igw.db() as s:
        wx = Customer(name="微信用户", created_at=now)
        s.add(wx)
        await s.flush()
        s.add(Identity(customer_id=wx.id, platform="webchat", account="webchat", external_id="app-1",
                       unionid="U-1", profile={}, created_at=now))
        await s.commit()
    p = csv_file(tmp_path, "c.csv", "name,phone,unionid,clerk\n王女士,,U-1,dt:lin01\n李先生,13900139000,,\n")
    r, out, _ = await run(igw, "customers", p)
    assert (r.created, r.updated, r.failed) == (1, 1, 0), out
    async with igw.db() as s:
        assert (await s.get(Customer, wx.id)).name == "王女士"
        assert (await advisors.open_binding(s, wx.id))[1].id == clerks["小林"].id
    # A row naming both: the record with the unionid and the one with the phone are one person.
    both = csv_file(tmp_path, "both.csv", "phone,unionid\n13900139000,U-1\n")
    r, out, _ = await run(igw, "customers", both)
    assert (r.updated, r.failed) == (1, 0), out
    async with igw.db() as s:
        live = (await s.exec(select(Customer).where(Customer.merged_into_id.is_(None)))).all()
    assert [c.id for c in live] == [wx.id] and live[0].phone_hash == advisors.phone_hash(PHONE_KEY, "13900139000")

    unknown = csv_file(tmp_path, "u.csv", "name,unionid\n谁,U-unknown\n")
    r, out, _ = await run(igw, "customers", unknown)
    assert r.failed == 1 and "line 2, column unionid: no customer has this unionid yet" in out


async def test_customer_rows_report_line_column_reason_and_good_rows_land(igw, tmp_path, backend):
    clerks = await make_clerks(igw, tmp_path)
    p = csv_file(tmp_path, "c.csv", (
        "name,phone,store,tags,clerk\n"
        "好一,13800000001,,,dt:lin01\n"                         # 2 good
        "坏一,12345,,,\n"                                         # 3 phone
        '"坏二\n(两行)",13800000002,静安店,,dt:nobody\n'          # 4-5 clerk: one record over two lines
        "好二,13800000003,静安店,a;b,\n"                          # 6 good
        "坏三,13800000004,徐汇店,,dt:lin01\n"                     # 7 store ≠ the clerk's
        "坏四,,,,\n"                                              # 8 no key
        "坏五,13800000005,,,dt:lin01,extra\n"                     # 9 too many cells
        f"坏六,13800000006,,,{clerks['磊磊'].id + 1000}\n"))       # 10 no such clerk id
    errors = tmp_path / "errors.csv"
    r, out, _ = await run(igw, "customers", p, errors_file=errors)
    assert (r.created, r.failed, r.rows, r.exit_code) == (2, 6, 8, 1)
    lines = out.strip().splitlines()
    assert lines[-1] == "created 2, updated 0, failed 6 of 8 rows"
    assert lines[0].startswith("line 3, column phone: String should match pattern")
    assert "line 4, column clerk: no clerk has the work id 'nobody' on 'dt'" in lines
    assert any(x.startswith("line 7, column store: clerk ") for x in lines)
    assert "line 8, column phone: a phone or a unionid is required" in out
    assert "line 9: the row has 6 cells but the header names 5 columns" in lines
    assert f"line 10, column clerk: no clerk with id {clerks['磊磊'].id + 1000}" in lines
    async with igw.db() as s:
        assert sorted(c.name for c in (await s.exec(select(Customer))).all()) == ["好一", "好二"]

    # The errors file: the failing rows as they were, plus why; fixed, it imports as it is.
    text = errors.read_text(encoding="utf-8-sig")
    assert text.splitlines()[0] == "name,phone,store,tags,clerk,error"
    assert "坏二\n(两行)" in text and "line 4: clerk: no clerk has the work id" in text
    fixed = (text.replace("12345", "13800000009").replace("dt:nobody", "dt:wang01")
             .replace("坏三,13800000004,徐汇店", "坏三,13800000004,静安店").replace("坏四,,", "坏四,13800000010,")
             .replace(",dt:lin01,extra", ",dt:lin01").replace(f"{clerks['磊磊'].id + 1000}", "dt:zhou01"))
    again, out, _ = await run(igw, "customers", csv_file(tmp_path, "fixed.csv", fixed))
    assert (again.created, again.failed) == (6, 0), out


async def test_a_customer_bound_elsewhere_follows_the_binding_policy(igw, tmp_path):
    clerks = await make_clerks(igw, tmp_path)
    first = csv_file(tmp_path, "a.csv", "name,phone,clerk\n王女士,13800138000,dt:lin01\n")
    await run(igw, "customers", first)
    other = csv_file(tmp_path, "b.csv", "name,phone,clerk\n王女士,13800138000,dt:wang01\n")
    r, out, _ = await run(igw, "customers", other)  # keep_first (the default): reported, nothing changes
    assert r.failed == 1 and "line 2, column clerk: already the customer of clerk" in out and "transfer" in out
    igw.config.policies.binding = "latest_wins"
    r, out, _ = await run(igw, "customers", other)
    assert (r.updated, r.failed) == (1, 0), out
    async with igw.db() as s:
        rows = (await s.exec(select(Binding).order_by(Binding.id))).all()
    assert [(b.clerk_id, b.end_reason, b.valid_to is None) for b in rows] == [
        (clerks["小林"].id, "rebound", False), (clerks["芳芳"].id, None, True)]


# -- clerks leaving -------------------------------------------------------------------------------------


async def test_a_clerk_set_to_left_hands_their_customers_over(igw, tmp_path, backend):
    clerks = await make_clerks(igw, tmp_path)
    rows = "".join(f"顾客{i},1380000{i:04d},dt:lin01\n" for i in range(9))
    r, _, _ = await run(igw, "customers", csv_file(tmp_path, "c.csv", "name,phone,clerk\n" + rows))
    assert r.created == 9
    leave = csv_file(tmp_path, "leave.csv", "name,display_name,store,work_ids,status\n林小雨,小林,静安店,dt=lin01,left\n")
    async with igw.db() as s:
        _, token = await create_token(s, "clerk", clerk_id=clerks["小林"].id)
        await s.commit()

    dry, out, _ = await run(igw, "clerks", leave, dry_run=True)
    assert (dry.updated, dry.left) == (1, 1) and "dry run, nothing written" in out
    async with igw.db() as s:
        assert (await s.get(Clerk, clerks["小林"].id)).status == "active"
    assert await count(igw, Binding, Binding.clerk_id == clerks["小林"].id, Binding.valid_to.is_(None)) == 9

    assert await igw.principal(token) is not None  # the dry run revoked nothing
    r, out, _ = await run(igw, "clerks", leave)
    assert (r.updated, r.left, r.failed) == (1, 1, 0)
    assert await igw.principal(token) is None  # leaving by file revokes the clerk's tokens like the API
    assert "1 clerk left, their customers: 9 moved" in out
    async with igw.db() as s:
        lin = await s.get(Clerk, clerks["小林"].id)
        open_ = (await s.exec(select(Binding).where(Binding.valid_to.is_(None)))).all()
        closed = (await s.exec(select(Binding).where(Binding.clerk_id == lin.id))).all()
        handovers = (await s.exec(select(Interaction).where(Interaction.type == "handover"))).all()
    assert lin.status == "left" and lin.left_at is not None
    per_customer = {}
    for b in open_:
        per_customer[b.customer_id] = per_customer.get(b.customer_id, 0) + 1
    assert len(per_customer) == 9 and set(per_customer.values()) == {1}  # nobody lost, nobody doubled
    load = {}
    for b in open_:
        load[b.clerk_id] = load.get(b.clerk_id, 0) + 1
    # least_loaded among the active colleagues at the store (芳芳, 阿杰, 店长): 3 each
    assert load == {clerks["芳芳"].id: 3, clerks["阿杰"].id: 3, clerks["店长"].id: 3}
    assert all(b.end_reason == "handover" and b.valid_to is not None for b in closed)
    assert len(handovers) == 9 and all(h.payload["reason"] == "left (import)" for h in handovers)

    again, out, _ = await run(igw, "clerks", leave)  # already left: nothing to do
    assert (again.unchanged, again.left, again.failed) == (1, 0, 0), out
    back = csv_file(tmp_path, "back.csv", "name,display_name,store,work_ids\n林小雨,小林,静安店,dt=lin01\n")
    r, out, _ = await run(igw, "clerks", back)
    assert r.failed == 1 and "column status: clerk" in out and "has left" in out


# -- dry runs, file-level errors, batches -------------------------------------------------------------


async def test_dry_run_writes_nothing_and_prints_the_same_report(igw, tmp_path, backend):
    await seed_stores(igw, tmp_path)
    before = await count(igw, AuditEntry)
    p = csv_file(tmp_path, "s.csv", "name,city,lat\n新店,杭州,30.2\n静安店,上海静安,\n坏店,,100\n")
    dry, dry_out, _ = await run(igw, "stores", p, dry_run=True)
    assert (dry.created, dry.updated, dry.failed) == (1, 1, 1)
    assert await count(igw, Store) == 2 and await count(igw, AuditEntry) == before
    async with igw.db() as s:
        assert (await s.exec(select(Store.city).where(Store.name == "静安店"))).one() == "上海"
    real, real_out, _ = await run(igw, "stores", p)
    assert dry_out.replace(" — dry run, nothing written", "") == real_out
    assert await count(igw, Store) == 3


async def test_file_level_errors_stop_before_anything_is_written(igw, tmp_path):
    bad = csv_file(tmp_path, "bad.csv", "name,city,colour\n店,上海,red\n")
    with pytest.raises(FileError, match="unknown column 'colour'"):
        await run(igw, "stores", bad)
    assert await count(igw, Store) == 0 and await count(igw, AuditEntry) == 0
    for text, why in [("city\n上海\n", "required column 'name'"), ("", "empty"),
                      ("name,name\n店,店\n", "more than once"), ("name,phone\n张,1\n", None)]:
        p = csv_file(tmp_path, "x.csv", text)
        kind = "customers" if "phone" in text else "stores"
        if why is None:  # a customers file without a phone hash key configured
            igw.config.policies.phone_hash_key = None
            why = "phone_hash_key"
        with pytest.raises(FileError, match=why):
            await run(igw, kind, p)
    latin = tmp_path / "latin.csv"
    latin.write_bytes("name\nCaf\xe9\n".encode("latin-1"))
    with pytest.raises(FileError, match="not UTF-8"):
        await run(igw, "stores", latin)
    with pytest.raises(FileError, match="no such file"):
        await run(igw, "stores", tmp_path / "missing.csv")
    with pytest.raises(FileError, match="another file"):
        await run(igw, "stores", bad.parent / "." / bad.name, errors_file=bad)
    cfg = import_config(igw.config.database.url)
    assert importer.main(cfg, "stores", str(bad)) == 2
    assert importer.main(cfg, "stores", str(tmp_path / "missing.csv")) == 2
    assert importer.main(cfg, "shops", str(bad)) == 2
    assert await count(igw, Store) == 0


async def test_batches_and_progress(igw, tmp_path, monkeypatch):
    monkeypatch.setattr(importer, "PROGRESS_EVERY", 4)
    rows = "".join(f"店{i},城{i % 3}\n" for i in range(10)) + "店3,\n" + ",无名\n"
    p = csv_file(tmp_path, "s.csv", "name,city\n" + rows)
    r, out, progress = await run(igw, "stores", p, batch=3)
    assert (r.created, r.unchanged, r.failed, r.rows) == (10, 1, 1, 12)
    assert "line 13, column name: Field required" in out
    assert progress.splitlines() == ["import stores: 4 of 12 rows", "import stores: 8 of 12 rows",
                                     "import stores: 12 of 12 rows"]
    assert await count(igw, Store) == 10


async def test_a_batch_that_cannot_commit_is_retried_row_by_row(igw, tmp_path, monkeypatch):
    from gateway.db import AsyncSession

    real, calls = AsyncSession.commit, []

    async def flaky(self):
        calls.append(1)
        if len(calls) == 1:
            raise OperationalError("COMMIT", {}, Exception("disk I/O error"))
        return await real(self)

    monkeypatch.setattr(AsyncSession, "commit", flaky)
    p = csv_file(tmp_path, "s.csv", "name,lat\n一店,1\n二店,x\n三店,3\n")
    r, out, _ = await run(igw, "stores", p, batch=10)
    assert (r.created, r.failed) == (2, 1) and "line 3, column lat:" in out
    assert len(calls) == 1 + 2 + 1  # the batch, each good row again, the audit entry
    assert await count(igw, Store) == 2


# -- the real command -----------------------------------------------------------------------------------


async def gateway_cli(*args: str, cwd: Path, env: dict) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "gateway", *args, cwd=cwd, env=env,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    return proc.returncode, out.decode(), err.decode()


async def test_the_cli_imports_a_file_and_exits_by_outcome(db_url, tmp_path):
    base = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY")}
    env = {**base, "GATEWAY__DATABASE__URL": db_url, "PYTHONPATH": str(ROOT)}
    good = csv_file(tmp_path, "stores.csv", "name,city\n静安店,上海\n徐汇店,上海\n", bom=True)
    code, out, err = await gateway_cli("import", "stores", str(good), cwd=tmp_path, env=env)
    assert code == 0, err
    assert out.strip().splitlines()[-1] == "created 2, updated 0, failed 0 of 2 rows"

    mixed = csv_file(tmp_path, "mixed.csv", "name,lat\n国贸店,39.9\n坏店,north\n")
    errors = tmp_path / "errors.csv"
    code, out, err = await gateway_cli("import", "stores", str(mixed), "--errors", str(errors), cwd=tmp_path, env=env)
    assert code == 1, err
    assert "line 3, column lat: Input should be a valid number" in out
    assert "created 1, updated 0, failed 1 of 2 rows" in out
    assert errors.read_text(encoding="utf-8-sig").splitlines()[1].startswith("坏店,north,")

    cfg = tmp_path / "gateway.yaml"
    cfg.write_text(f"database:\n  url: {db_url}\n")
    no_url = {**base, "PYTHONPATH": str(ROOT)}
    bad = csv_file(tmp_path, "bad.csv", "name,colour\n店,red\n")
    code, out, err = await gateway_cli("import", "stores", str(bad), "--config", str(cfg), cwd=tmp_path, env=no_url)
    assert code == 2 and "unknown column 'colour'" in err, err
    with pytest.raises(SystemExit) as exit_:  # an unknown kind: argparse's usage error, exit 2
        cli.build_parser().parse_args(["import", "shops", str(good)])
    assert exit_.value.code == 2
    args = cli.build_parser().parse_args(["import", "clerks", "f.csv", "--dry-run", "--errors", "e.csv"])
    assert (args.fn, args.kind, args.dry_run, args.errors) == (cli.cmd_import, "clerks", True, "e.csv")
    g = Gateway(make_config(db_url))
    try:
        async with g.db() as s:
            audit = (await s.exec(select(AuditEntry.method, AuditEntry.status).order_by(AuditEntry.id))).all()
    finally:
        await g.engine.dispose()
    assert audit == [("IMPORT", 200), ("IMPORT", 207)]
