"""Async engine, sessions, column types and migrations.

SQLite (aiosqlite, WAL) by default, PostgreSQL (asyncpg) by URL. Times are stored as UTC and come
back aware; money is stored exactly (integer fen on SQLite, NUMERIC on PostgreSQL).
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlalchemy.ext.asyncio import AsyncSession as _SAAsyncSession
from sqlmodel.ext.asyncio.session import AsyncSession as _SQLModelAsyncSession

MIGRATIONS = Path(__file__).parent / "migrations"


class UTCDateTime(sa.TypeDecorator):
    """Aware datetimes in, aware UTC datetimes out, on every backend."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given; use an aware datetime")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value, dialect):
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Money(sa.TypeDecorator):
    """Decimal yuan with 2 places; exact on SQLite too (stored as integer fen there)."""

    impl = sa.Numeric(14, 2)
    cache_ok = True

    def load_dialect_impl(self, dialect):
        return dialect.type_descriptor(sa.BigInteger() if dialect.name == "sqlite" else sa.Numeric(14, 2))

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        value = Decimal(value).quantize(Decimal("0.01"))
        return int(value * 100) if dialect.name == "sqlite" else value

    def process_result_value(self, value, dialect):
        if value is None:
            return None
        if dialect.name == "sqlite":
            return (Decimal(int(value)) / 100).quantize(Decimal("0.01"))
        return Decimal(value).quantize(Decimal("0.01"))


def utcnow() -> datetime:
    return datetime.now(UTC)


def make_engine(url: str, *, echo: bool = False, pool_size: int = 10) -> AsyncEngine:
    if url.startswith("sqlite"):
        engine = create_async_engine(url, echo=echo, connect_args={"timeout": 30})

        @event.listens_for(engine.sync_engine, "connect")
        def _pragmas(dbapi_conn, _record):
            # Let us issue BEGIN ourselves: IMMEDIATE takes the write lock up front, so a
            # read-then-write transaction cannot fail with "database is locked" half way.
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        @event.listens_for(engine.sync_engine, "begin")
        def _begin(conn):
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    engine = create_async_engine(url, echo=echo, pool_size=pool_size, max_overflow=pool_size)

    @event.listens_for(engine.sync_engine, "checkout")
    def _alive(dbapi_conn, _record, _proxy):
        # Instead of a pre-ping (a round trip on every checkout, several per relayed batch): a
        # connection the server closed (a restart) has seen its socket close already, so it is
        # replaced here rather than fail the first statement of a write nobody retries — a send's
        # record lost that way sent the message again after its lease.
        if dbapi_conn.driver_connection.is_closed():
            raise DisconnectionError("the server closed this connection")

    return engine


class AsyncSession(_SQLModelAsyncSession):
    """SQLModel's session (`exec` for ORM selects) that also runs Core statements without nagging."""

    async def execute(self, *args, **kwargs):  # type: ignore[override]
        return await _SAAsyncSession.execute(self, *args, **kwargs)


def session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, class_=AsyncSession, expire_on_commit=False)


def _alembic_config(url: str):
    from alembic.config import Config as AlembicConfig

    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade_sync(url: str, revision: str = "head") -> None:
    """Apply migrations (blocking; runs its own event loop)."""
    from alembic import command

    if url.startswith("sqlite"):
        path = url.split(":///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        command.upgrade(_alembic_config(url), revision)
        return
    # Alembic's env.py runs its own event loop, which cannot nest in a running one: use a thread.
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(command.upgrade, _alembic_config(url), revision).result()


async def upgrade(url: str, revision: str = "head") -> None:
    """Apply migrations from async code: Alembic's env runs its own loop, so give it a thread."""
    await asyncio.get_running_loop().run_in_executor(None, upgrade_sync, url, revision)
