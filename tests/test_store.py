"""The store suite: schema, constraints and types, on SQLite and on PostgreSQL alike."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy.exc import IntegrityError, StatementError

from gateway.db import Money, UTCDateTime, make_engine
from gateway.models import Binding, Clerk, Customer, Handle, Identity, QueueEntry, Store, metadata

pytestmark = pytest.mark.usefixtures("backend")


@pytest.fixture
async def engine(db_url):
    e = make_engine(db_url)
    yield e
    await e.dispose()


async def test_migrations_match_the_models(engine):
    def diff(conn):
        return compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), metadata)

    async with engine.connect() as conn:
        assert await conn.run_sync(diff) == []


async def _people(s):
    store = Store(name="店")
    s.add(store)
    await s.flush()
    clerk = Clerk(name="c", display_name="c", store_id=store.id)
    cust = Customer(name="x")
    s.add_all([clerk, cust])
    await s.flush()
    return store, clerk, cust


async def test_identity_is_unique_per_platform_account_external_id(gw):
    async with gw.db() as s:
        _, _, cust = await _people(s)
        s.add(Identity(customer_id=cust.id, platform="webchat", account="a", external_id="u1"))
        s.add(Identity(customer_id=cust.id, platform="webchat", account="b", external_id="u1"))
        await s.commit()
        s.add(Identity(customer_id=cust.id, platform="webchat", account="a", external_id="u1"))
        with pytest.raises(IntegrityError):
            await s.commit()


async def test_one_open_binding_per_customer(gw):
    now = datetime.now(UTC)
    async with gw.db() as s:
        store, clerk, cust = await _people(s)
        s.add(Binding(customer_id=cust.id, clerk_id=clerk.id, valid_from=now - timedelta(days=2), valid_to=now - timedelta(days=1)))
        s.add(Binding(customer_id=cust.id, clerk_id=clerk.id, valid_from=now - timedelta(days=1), valid_to=now))
        s.add(Binding(customer_id=cust.id, clerk_id=clerk.id, valid_from=now))  # closed history + one open: fine
        await s.commit()
        s.add(Binding(customer_id=cust.id, clerk_id=clerk.id, valid_from=now))
        with pytest.raises(IntegrityError):
            await s.commit()


async def test_handles_are_unique_per_clerk(gw):
    async with gw.db() as s:
        _, clerk, cust = await _people(s)
        other = Customer(name="y")
        s.add(other)
        await s.flush()
        s.add(Handle(clerk_id=clerk.id, customer_id=cust.id, n=1))
        await s.commit()
        s.add(Handle(clerk_id=clerk.id, customer_id=other.id, n=1))
        with pytest.raises(IntegrityError):
            await s.commit()


async def test_one_open_queue_entry_per_customer(gw):
    async with gw.db() as s:
        _, _, cust = await _people(s)
        s.add(QueueEntry(customer_id=cust.id, reason="no_advisor", resolved_at=datetime.now(UTC)))
        s.add(QueueEntry(customer_id=cust.id, reason="no_advisor"))
        await s.commit()
        s.add(QueueEntry(customer_id=cust.id, reason="no_advisor"))
        with pytest.raises(IntegrityError):
            await s.commit()


async def test_times_come_back_aware_utc_and_naive_is_refused(engine):
    t = sa.Table("t_time", sa.MetaData(), sa.Column("id", sa.Integer, primary_key=True), sa.Column("at", UTCDateTime))
    async with engine.begin() as conn:
        await conn.run_sync(t.create)
        shanghai = datetime(2026, 3, 1, 22, 30, tzinfo=timezone(timedelta(hours=8)))
        await conn.execute(t.insert().values(id=1, at=shanghai))
        got = (await conn.execute(sa.select(t.c.at))).scalar_one()
        assert got == shanghai and got.tzinfo is not None and got.utcoffset() == timedelta(0)
        with pytest.raises(StatementError):
            await conn.execute(t.insert().values(id=2, at=datetime(2026, 3, 1, 12, 0)))
        await conn.run_sync(t.drop)


async def test_money_is_exact(engine):
    t = sa.Table("t_money", sa.MetaData(), sa.Column("id", sa.Integer, primary_key=True), sa.Column("amount", Money))
    values = [Decimal("0.01"), Decimal("12.30"), Decimal("99999999.99"), Decimal("-5.00"), Decimal("0.10") + Decimal("0.20")]
    async with engine.begin() as conn:
        await conn.run_sync(t.create)
        for i, v in enumerate(values):
            await conn.execute(t.insert().values(id=i, amount=v))
        got = [r for (r,) in (await conn.execute(sa.select(t.c.amount).order_by(t.c.id)))]
        assert got == values and all(isinstance(v, Decimal) for v in got)
        assert str(got[1]) == "12.30"
        total = (await conn.execute(sa.select(sa.func.sum(t.c.amount)))).scalar_one()
        assert total == sum(values)  # aggregates keep the exact type too
        await conn.run_sync(t.drop)


async def test_migrations_go_down_and_up_again(db_url):
    import asyncio

    from alembic import command

    from gateway.db import _alembic_config, upgrade

    cfg = _alembic_config(db_url)
    await asyncio.get_running_loop().run_in_executor(None, command.downgrade, cfg, "base")
    await upgrade(db_url)
    e = make_engine(db_url)
    try:
        async with e.connect() as conn:
            def diff(c):
                return compare_metadata(MigrationContext.configure(c, opts={"compare_type": True}), metadata)

            assert await conn.run_sync(diff) == []
    finally:
        await e.dispose()


async def test_handles_for_two_clerks_in_opposite_orders_never_deadlock(gw, backend):
    """Two batches (transactions) each bind a new customer to two clerks, in opposite orders. With
    `#n` as max + 1 inside each transaction, the second insert of each waited for the other's
    uncommitted number: a deadlock on PostgreSQL (bench/inbound.py's Official Account setup hit
    3). Numbers come from a counter committed at once, so neither waits for the other."""
    import asyncio

    from gateway import advisors

    if backend == "sqlite":
        pytest.skip("one writer: the second transaction waits for the first as a whole")
    async with gw.db() as s:
        store, one, _ = await _people(s)
        two = Clerk(name="d", display_name="d", store_id=store.id)
        people = [Customer(name=f"p{i}") for i in range(4)]
        s.add_all([two, *people])
        await s.commit()
        old = Customer(name="earlier")  # a clerk with handles from before the counter existed
        s.add(old)
        await s.flush()
        s.add(Handle(clerk_id=two.id, customer_id=old.id, n=7))
        await s.commit()
    first_done, second_done = asyncio.Event(), asyncio.Event()

    async def batch(clerks, customers, mine: asyncio.Event, other: asyncio.Event):
        async with gw.db() as s:
            a = await advisors.handle_for(s, clerks[0], customers[0])
            mine.set()
            await other.wait()  # both hold their first number, uncommitted
            b = await advisors.handle_for(s, clerks[1], customers[1])
            await s.commit()
            return a, b

    got = await asyncio.wait_for(asyncio.gather(
        batch([one.id, two.id], [people[0].id, people[1].id], first_done, second_done),
        batch([two.id, one.id], [people[2].id, people[3].id], second_done, first_done)), 10)
    async with gw.db() as s:
        rows = (await s.execute(sa.select(Handle.clerk_id, Handle.customer_id, Handle.n))).all()
    by_clerk = {}
    for clerk_id, _customer_id, n in rows:
        by_clerk.setdefault(clerk_id, []).append(n)
    assert sorted(by_clerk[one.id]) == [1, 2] and sorted(by_clerk[two.id]) == [7, 8, 9]
    assert {n for pair in got for n in pair} == {1, 2, 8, 9}
