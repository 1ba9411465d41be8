"""PostgreSQL connections are pinged on checkout only after resting in the pool: a dead
rested one is replaced unseen; one in steady use is trusted, and should it be dead, its
failure retires the whole pool so the next unit of work finds a live connection."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from storage.db import make_engine

pytestmark = pytest.mark.postgres


async def _backend(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        return int((await conn.execute(sa.text("SELECT pg_backend_pid()"))).scalar_one())


async def _terminate(pg_url: str, pid: int) -> None:
    admin = create_async_engine(pg_url, poolclass=sa.pool.NullPool, isolation_level="AUTOCOMMIT")
    try:
        async with admin.connect() as conn:
            query = sa.text("SELECT pg_terminate_backend(:pid)").bindparams(pid=pid)
            assert (await conn.execute(query)).scalar_one() is True
    finally:
        await admin.dispose()


def _pings(engine: AsyncEngine) -> list[int]:
    """Counts the pings the dialect makes from now on."""
    dialect, made = engine.sync_engine.dialect, []
    ping = dialect.do_ping

    def counted(dbapi_connection: object) -> bool:
        made.append(1)
        return ping(dbapi_connection)  # type: ignore[arg-type]

    dialect.do_ping = counted  # type: ignore[method-assign]
    return made


async def test_a_rested_connection_whose_server_end_died_is_replaced_on_checkout(pg_url):
    engine = make_engine(pg_url, ping_after_idle=0.0, pool_size=1, max_overflow=0)
    try:
        first = await _backend(engine)
        await _terminate(pg_url, first)
        pings = _pings(engine)
        second = await _backend(engine)  # no error: the ping found it dead, a new one came
        assert second != first
        assert pings
    finally:
        await engine.dispose()


async def test_a_connection_in_steady_use_is_not_pinged(pg_url):
    engine = make_engine(pg_url, ping_after_idle=3600.0, pool_size=1, max_overflow=0)
    try:
        first = await _backend(engine)
        pings = _pings(engine)
        assert [await _backend(engine) for _ in range(5)] == [first] * 5
        assert pings == []
    finally:
        await engine.dispose()


async def test_a_trusted_connection_found_dead_retires_the_pool_and_the_next_use_works(pg_url):
    engine = make_engine(pg_url, ping_after_idle=3600.0, pool_size=2, max_overflow=0)
    try:
        async with engine.connect() as one, engine.connect() as two:  # two pooled connections
            pids = [
                (await c.execute(sa.text("SELECT pg_backend_pid()"))).scalar_one()
                for c in (one, two)
            ]
        for pid in pids:  # the server went away under both
            await _terminate(pg_url, pid)
        with pytest.raises(sa.exc.DBAPIError) as failed:
            await _backend(engine)
        assert failed.value.connection_invalidated
        assert await _backend(engine) not in pids  # the other dead one was retired unused
    finally:
        await engine.dispose()


def test_the_default_engine_pings_rested_connections_only():
    engine = make_engine("postgresql+asyncpg://nobody@127.0.0.1:1/none")
    assert engine.sync_engine.pool._pre_ping is False
    assert sa.event.contains(engine.sync_engine.pool, "checkout", _checkout_listener(engine))


def _checkout_listener(engine: AsyncEngine):
    listeners = engine.sync_engine.pool.dispatch.checkout
    found = [fn for fn in listeners if getattr(fn, "__name__", "") == "_alive"]
    assert len(found) == 1
    return found[0]
