"""psycopg_pool (sync and async) pool metrics against a real PostgreSQL.

Skips when PostgreSQL is not reachable, fails under ``BAKHMACH_OBS_REQUIRE_SERVICES=1``.
"""

from __future__ import annotations

import functools
import os
import threading
import uuid

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool, ConnectionPool, PoolTimeout

import bakhmach_obs
from bakhmach_obs.pools import instrument_psycopg_pool, uninstrument_psycopg_pool
from bakhmach_obs.testing import Capture, capture

try:  # tests/ as a rootdir-relative directory (pytest's default "prepend" import mode)
    from conftest import need
except ImportError:  # tests/ as a package
    from tests.conftest import need

PG_DSN = os.environ.get("BAKHMACH_OBS_POSTGRES_DSN", "host=127.0.0.1 port=5432 user=postgres dbname=test")
CONNECTIONS = "db_client_connection_count"
MAX = "db_client_connection_max"
WAIT_COUNT = "db_client_connection_wait_time_seconds_count"
TIMEOUTS = "db_client_connection_timeouts_total"


@functools.cache
def _reachable() -> str | None:
    try:
        psycopg.connect(PG_DSN, connect_timeout=3).close()
    except Exception as exc:
        return f"PostgreSQL ({PG_DSN}) is not reachable: {type(exc).__name__}: {exc}"
    return None


@pytest.fixture
def dsn() -> str:
    reason = _reachable()
    need(reason is None, reason or "")
    return PG_DSN


@pytest.fixture
def pool_name() -> str:
    return f"pg_{uuid.uuid4().hex[:12]}"


def _gauges(cap: Capture, pool_name: str) -> tuple[float | None, float | None]:
    return (
        cap.sample(CONNECTIONS, pool_name=pool_name, state="used"),
        cap.sample(CONNECTIONS, pool_name=pool_name, state="idle"),
    )


def test_sync_pool_gauges_waits_and_timeouts(dsn, pool_name):
    with capture() as cap:
        pool = ConnectionPool(dsn, min_size=2, max_size=2, timeout=0.5, open=True, name=pool_name)
        try:
            pool.wait(timeout=10)
            assert instrument_psycopg_pool(pool) is pool
            assert instrument_psycopg_pool(pool, pool_name="ignored") is pool  # idempotent
            assert _gauges(cap, pool_name) == (0.0, 2.0)
            assert cap.sample(MAX, pool_name=pool_name) == 2.0

            first, second = pool.getconn(), pool.getconn()
            assert _gauges(cap, pool_name) == (2.0, 0.0)
            with pytest.raises(PoolTimeout) as info:
                pool.getconn()
            assert type(info.value) is PoolTimeout
            assert cap.sample(TIMEOUTS, pool_name=pool_name) == 1.0
            pool.putconn(first)
            assert _gauges(cap, pool_name) == (1.0, 1.0)
            pool.putconn(second)
            assert _gauges(cap, pool_name) == (0.0, 2.0)

            with pool.connection() as conn:
                assert conn.execute("SELECT 1").fetchone() == (1,)
                assert _gauges(cap, pool_name) == (1.0, 1.0)
            assert _gauges(cap, pool_name) == (0.0, 2.0)
            assert cap.sample(WAIT_COUNT, pool_name=pool_name) == 3.0  # the timed-out one is not a wait
        finally:
            pool.close()
        assert _gauges(cap, pool_name) == (0.0, 0.0)


def test_a_waiting_getconn_measures_its_wait(dsn, pool_name):
    with capture() as cap:
        with instrument_psycopg_pool(ConnectionPool(dsn, min_size=1, max_size=1, timeout=5, open=True)) as pool:
            name = pool.name
            held = pool.getconn()
            release = threading.Timer(0.2, pool.putconn, args=(held,))
            release.start()
            try:
                with pool.connection() as conn:
                    conn.execute("SELECT 1")
            finally:
                release.join()
        assert cap.sample(WAIT_COUNT, pool_name=name) == 2.0
        total = cap.sample("db_client_connection_wait_time_seconds_sum", pool_name=name)
        assert total is not None and total >= 0.15
        assert _gauges(cap, name) == (0.0, 0.0)  # closed by the with block


async def test_async_pool(dsn, pool_name):
    with capture() as cap:
        pool = AsyncConnectionPool(dsn, min_size=2, max_size=2, timeout=0.5, open=False)
        await pool.open(wait=True, timeout=10)
        try:
            assert instrument_psycopg_pool(pool, pool_name=pool_name) is pool
            assert _gauges(cap, pool_name) == (0.0, 2.0)
            async with pool.connection() as a, pool.connection() as b:
                assert _gauges(cap, pool_name) == (2.0, 0.0)
                await (await a.execute("SELECT 1")).fetchone()
                await b.execute("SELECT 1")
                with pytest.raises(PoolTimeout):
                    await pool.getconn()
            assert _gauges(cap, pool_name) == (0.0, 2.0)
            assert cap.sample(TIMEOUTS, pool_name=pool_name) == 1.0
            assert cap.sample(WAIT_COUNT, pool_name=pool_name) == 2.0
            assert cap.sample(MAX, pool_name=pool_name) == 2.0
        finally:
            await pool.close()
        assert _gauges(cap, pool_name) == (0.0, 0.0)


def test_suppress_keeps_gauges_but_records_no_wait(dsn, pool_name):
    with capture() as cap:
        with instrument_psycopg_pool(
            ConnectionPool(dsn, min_size=1, max_size=1, timeout=0.2, open=True), pool_name=pool_name
        ) as pool:
            pool.wait(timeout=10)
            with bakhmach_obs.suppress():
                with pool.connection():
                    assert _gauges(cap, pool_name) == (1.0, 0.0)
                    with pytest.raises(PoolTimeout):
                        pool.getconn()
            assert cap.sample(WAIT_COUNT, pool_name=pool_name) is None
            assert cap.sample(TIMEOUTS, pool_name=pool_name) is None
            assert _gauges(cap, pool_name) == (0.0, 1.0)


def test_uninstrument_restores_the_pool(dsn, pool_name):
    pool = ConnectionPool(dsn, min_size=1, max_size=1, open=True)
    try:
        with capture() as cap:
            instrument_psycopg_pool(pool, pool_name=pool_name)
            assert cap.sample(MAX, pool_name=pool_name) == 1.0
            uninstrument_psycopg_pool(pool)
            uninstrument_psycopg_pool(pool)  # nothing left to undo
            assert not {"getconn", "putconn", "close"} & set(vars(pool))
            assert cap.sample(MAX, pool_name=pool_name) is None  # series dropped
            with pool.connection() as conn:
                conn.execute("SELECT 1")
            assert cap.sample(WAIT_COUNT, pool_name=pool_name) is None
    finally:
        pool.close()


def test_offline_max_and_type_check():
    pool = ConnectionPool("dbname=none", min_size=0, max_size=7, open=False)
    with capture() as cap:
        instrument_psycopg_pool(pool)
        assert cap.sample(MAX, pool_name=pool.name) == 7.0
        assert _gauges(cap, pool.name) == (0.0, 0.0)
    with pytest.raises(TypeError, match="ConnectionPool"):
        instrument_psycopg_pool(object())  # type: ignore[type-var]


def test_import_bakhmach_obs_does_not_import_psycopg_pool():
    import subprocess
    import sys

    code = "import sys, bakhmach_obs, bakhmach_obs.pools; assert 'psycopg_pool' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
