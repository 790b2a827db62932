"""DB-API instrumentation against real PostgreSQL (psycopg sync and async), MariaDB (PyMySQL) and sqlite3.

Each test checks what was recorded (metric counts equal the statements run, span names and
attributes) and that the instrumented connection behaves exactly as the raw one: same results,
same exceptions (type, object, message), same transactions.
"""

from __future__ import annotations

import socket
import sqlite3
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.instrumentation.utils import suppress_instrumentation
from opentelemetry.sdk.trace import SpanProcessor
from opentelemetry.trace import SpanKind, StatusCode

import bakhmach_obs
from bakhmach_obs import dbapi, metrics
from bakhmach_obs.dbapi import (
    OPERATION_CONNECT,
    instrument_connect,
    instrument_connection,
    uninstrument_connection,
)
from bakhmach_obs.testing import Capture, capture

from .conftest import need

HOST = "127.0.0.1"
PG_PORT = 5432
MYSQL_PORT = 3306
PG_DSN = f"host={HOST} port={PG_PORT} dbname=test user=postgres connect_timeout=5"
MYSQL_ARGS: dict[str, Any] = {"host": HOST, "port": MYSQL_PORT, "user": "root", "password": "", "database": "test"}
COUNT = "db_client_operation_duration_seconds_count"


def _listening(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=1):
            return True
    except OSError:
        return False


def _free_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def count(cap: Capture, **labels: str) -> float:
    """Sum of the duration histogram's counts over the series whose labels include ``labels``."""
    total = 0.0
    for metric in cap.registry.collect():
        for s in metric.samples:
            if s.name == COUNT and all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
    return total


def telemetry_errors(cap: Capture, component: str) -> float:
    return cap.sample("bakhmach_obs_telemetry_errors_total", component=component) or 0.0


def table_name(prefix: str = "obs") -> str:
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


# --- fixtures ---------------------------------------------------------------------------------------


@pytest.fixture
def psycopg_mod():
    psycopg = pytest.importorskip("psycopg")
    need(_listening(PG_PORT), f"PostgreSQL is not reachable on {HOST}:{PG_PORT}")
    return psycopg


@pytest.fixture
def pymysql_mod():
    pymysql = pytest.importorskip("pymysql")
    need(_listening(MYSQL_PORT), f"MariaDB/MySQL is not reachable on {HOST}:{MYSQL_PORT}")
    return pymysql


@pytest.fixture
def pg(psycopg_mod) -> Iterator[tuple[Any, Any]]:
    """(raw, instrumented) psycopg connections, autocommit off, closed afterwards."""
    raw = psycopg_mod.connect(PG_DSN)
    other = psycopg_mod.connect(PG_DSN)
    proxy = instrument_connection(
        other, db_system="postgresql", db_namespace="test", server_address=HOST, server_port=PG_PORT
    )
    try:
        yield raw, proxy
    finally:
        raw.close()
        proxy.close()


@pytest.fixture
def my(pymysql_mod) -> Iterator[tuple[Any, Any]]:
    raw = pymysql_mod.connect(**MYSQL_ARGS)
    proxy = instrument_connection(pymysql_mod.connect(**MYSQL_ARGS), db_system="mariadb", db_namespace="test")
    try:
        yield raw, proxy
    finally:
        raw.close()
        proxy.close()


@pytest.fixture
def lite() -> Iterator[tuple[sqlite3.Connection, sqlite3.Connection]]:
    raw = sqlite3.connect(":memory:")
    proxy = instrument_connection(sqlite3.connect(":memory:"), db_system="sqlite", db_namespace="main")
    try:
        yield raw, proxy
    finally:
        raw.close()
        proxy.close()


# --- the wrapper itself -----------------------------------------------------------------------------


def test_proxy_is_transparent_and_reversible(lite):
    raw, proxy = lite
    assert isinstance(proxy, sqlite3.Connection)
    assert isinstance(proxy.cursor(), sqlite3.Cursor)
    assert proxy.isolation_level == uninstrument_connection(proxy).isolation_level
    assert instrument_connection(proxy, db_system="sqlite") is proxy  # idempotent
    assert uninstrument_connection(raw) is raw
    inner = uninstrument_connection(proxy)
    assert type(inner) is sqlite3.Connection
    assert not hasattr(proxy, "callproc")
    assert not hasattr(proxy.cursor(), "callproc")  # only what the driver has is wrapped


@pytest.mark.parametrize(
    ("kwargs", "setting"),
    [
        ({"db_system": ""}, "db_system"),
        ({"db_system": None}, "db_system"),
        ({"db_system": "sqlite", "server_port": "5432"}, "server_port"),
        ({"db_system": "sqlite", "server_port": 0}, "server_port"),
        ({"db_system": "sqlite", "db_namespace": 1}, "db_namespace"),
        ({"db_system": "sqlite", "server_address": 1}, "server_address"),
    ],
)
def test_bad_arguments_are_rejected_at_wrap_time(kwargs, setting):
    conn = sqlite3.connect(":memory:")
    try:
        with pytest.raises(bakhmach_obs.ConfigurationError) as info:
            instrument_connection(conn, **kwargs)
        assert info.value.setting == setting
    finally:
        conn.close()


class _Boom(Exception):
    pass


class _FakeCursor:
    """A DB-API cursor that raises a given exception object, to check it comes back unchanged."""

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc

    def execute(self, query: str, params: Any = None) -> None:
        raise self.exc

    def executemany(self, query: str, seq: Any) -> None:
        raise self.exc

    def callproc(self, name: str, params: Any = ()) -> Any:
        raise self.exc


class _FakeConnection:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc

    def cursor(self) -> _FakeCursor:
        return _FakeCursor(self.exc)

    def commit(self) -> None:
        return None


@pytest.mark.parametrize("method", ["execute", "executemany", "callproc"])
def test_user_exception_is_the_same_object(method):
    exc = _Boom("original message")
    with capture() as cap:
        cur = instrument_connection(_FakeConnection(exc), db_system="other_sql").cursor()
        with pytest.raises(_Boom) as info:
            getattr(cur, method)("UPDATE t SET a = 1", [])
    assert info.value is exc
    assert str(info.value) == "original message"
    label = f"{__name__}._Boom"
    assert count(cap, error_type=label) == 1
    (span,) = cap.spans()
    assert span.attributes["error.type"] == label
    assert span.status.status_code is StatusCode.ERROR
    assert "db.response.status_code" not in span.attributes


# --- sqlite3 ----------------------------------------------------------------------------------------


def _sqlite_workload(conn: Any) -> list[Any]:
    """The same statements on a raw or instrumented connection; returns everything observable."""
    out: list[Any] = []
    cur = conn.cursor()
    cur.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT UNIQUE, age INT)")
    cur.executemany("INSERT INTO users (name, age) VALUES (?, ?)", [("ada", 36), ("bob", 41), ("cy", 29)])
    out.append(cur.rowcount)
    cur.execute("INSERT INTO users (name, age) VALUES (?, ?)", ("dee", 50))
    out.append(cur.lastrowid)
    conn.commit()
    out.append(cur.execute("SELECT name FROM users ORDER BY id").fetchall())
    cur.execute("SELECT id, name, age FROM users ORDER BY id")
    out.append([d[0] for d in cur.description])
    out.append(cur.fetchone())
    out.append(cur.fetchmany(2))
    out.append(list(cur))  # iteration
    cur.execute("SELECT age FROM users WHERE age > ?", (30,))
    out.append(next(cur))
    out.append(list(conn.execute("SELECT count(*) FROM users")))
    out.append(conn.executemany("UPDATE users SET age = age + 1 WHERE name = ?", [("ada",), ("bob",)]).rowcount)
    with conn:  # transaction: commits
        conn.execute("DELETE FROM users WHERE name = 'cy'")
    try:
        with conn:  # transaction: rolls back
            conn.execute("DELETE FROM users")
            raise RuntimeError("abort")
    except RuntimeError:
        pass
    out.append(conn.execute("SELECT name, age FROM users ORDER BY id").fetchall())
    cur.close()
    return out


def test_sqlite_behaves_like_the_raw_connection_and_counts_every_statement(lite):
    raw, proxy = lite
    with capture() as cap:
        expected = _sqlite_workload(raw)
        got = _sqlite_workload(proxy)
    assert got == expected
    common = {"db_system_name": "sqlite", "db_namespace": "main", "error_type": ""}
    assert count(cap, db_operation_name="CREATE", db_collection_name="users", **common) == 1
    assert count(cap, db_operation_name="INSERT", db_collection_name="users", **common) == 2  # executemany is one
    assert count(cap, db_operation_name="SELECT", db_collection_name="users", **common) == 5
    assert count(cap, db_operation_name="UPDATE", db_collection_name="users", **common) == 1
    assert count(cap, db_operation_name="DELETE", db_collection_name="users", **common) == 2
    assert count(cap) == 11  # nothing else: commit() and the transaction blocks are not statements
    names = [s.name for s in cap.spans()]
    assert names.count("SELECT users") == 5 and names.count("INSERT users") == 2
    span = cap.spans("INSERT users")[0]
    assert span.kind is SpanKind.CLIENT
    assert span.attributes["db.operation.batch.size"] == 3
    assert dict(cap.spans("CREATE users")[0].attributes) == {
        "db.system.name": "sqlite",
        "db.namespace": "main",
        "db.operation.name": "CREATE",
        "db.collection.name": "users",
    }


def test_sqlite_errors_are_recorded_and_reraised_unchanged(lite):
    raw, proxy = lite
    for conn in (raw, proxy):
        conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, email TEXT UNIQUE)")
        conn.execute("INSERT INTO t (email) VALUES ('a@example.com')")
    with capture() as cap:
        raised = []
        for conn in (raw, proxy):
            with pytest.raises(sqlite3.OperationalError) as bad:
                conn.execute("SELEC * FROM t")
            with pytest.raises(sqlite3.IntegrityError) as dup:
                conn.cursor().execute("INSERT INTO t (email) VALUES (?)", ("a@example.com",))
            raised.append((bad.value, dup.value))
    (raw_bad, raw_dup), (bad_exc, dup_exc) = raised
    assert (type(bad_exc), str(bad_exc), bad_exc.args) == (type(raw_bad), str(raw_bad), raw_bad.args)
    assert (type(dup_exc), str(dup_exc), dup_exc.args) == (type(raw_dup), str(raw_dup), raw_dup.args)
    assert count(cap, db_operation_name="_OTHER", error_type="sqlite3.OperationalError") == 1
    assert count(cap, db_operation_name="INSERT", db_collection_name="t", error_type="sqlite3.IntegrityError") == 1
    assert count(cap) == 2
    bad_span, dup_span = cap.spans()
    assert bad_span.name == "sqlite"  # no known operation: the system name
    assert dup_span.name == "INSERT t"
    assert dup_span.attributes["error.type"] == "sqlite3.IntegrityError"
    assert dup_span.attributes["db.response.status_code"] == str(dup_exc.sqlite_errorcode)
    assert dup_span.status.status_code is StatusCode.ERROR
    (event,) = dup_span.events
    assert event.name == "exception"
    assert event.attributes["exception.message"] == str(dup_exc)


def test_query_text_is_opt_in_and_parameterized():
    with capture() as cap:
        plain = instrument_connection(sqlite3.connect(":memory:"), db_system="sqlite")
        text = instrument_connection(sqlite3.connect(":memory:"), db_system="sqlite", capture_query_text=True)
        for conn in (plain, text):
            conn.execute("SELECT 'secret', 12345, ? /* 777 */", ("bound",)).fetchall()
            conn.close()
    first, second = cap.spans()
    assert "db.query.text" not in first.attributes
    assert second.attributes["db.query.text"] == "SELECT ?, ?, ? "


def test_suppressed_statements_record_nothing(lite):
    _, proxy = lite
    with capture() as cap:
        with bakhmach_obs.suppress():
            assert proxy.execute("SELECT 1").fetchone() == (1,)
            assert proxy.cursor().execute("SELECT 2").fetchone() == (2,)
        with suppress_instrumentation():  # OpenTelemetry's own switch
            assert proxy.execute("SELECT 3").fetchone() == (3,)
        proxy.execute("SELECT 4").fetchone()
    assert count(cap) == 1
    assert len(cap.spans()) == 1


def test_disabled_sdk_records_nothing(lite):
    _, proxy = lite
    with capture(disabled=True) as cap:
        assert proxy.execute("SELECT 1").fetchone() == (1,)
    assert count(cap) == 0
    assert cap.spans() == []


def test_follows_a_later_configure(lite):
    """The connection is wrapped once; each runtime installed afterwards gets the statements."""
    _, proxy = lite
    with capture() as first:
        proxy.execute("SELECT 1")
    with capture(tracing_enabled=False) as second:
        proxy.execute("SELECT 1")
        proxy.execute("SELECT 1")
    assert count(first) == 1 and count(second) == 2
    assert len(first.spans()) == 1 and second.spans() == []


def test_metrics_only_and_default_sampler_record_every_statement(lite):
    _, proxy = lite
    with capture(traces_sampler="parentbased_traceidratio", traces_sampler_arg=0.1) as cap:
        for _ in range(200):
            proxy.execute("SELECT 1").fetchone()
    assert count(cap, db_operation_name="SELECT") == 200
    assert 0 < len(cap.spans()) < 100  # about 20


def test_exemplars_link_the_histogram_to_sampled_spans(lite):
    from prometheus_client.openmetrics.exposition import generate_latest

    _, proxy = lite
    with capture() as cap:
        proxy.execute("SELECT 1")
    (span,) = cap.spans()
    text = generate_latest(cap.registry).decode()
    assert f'trace_id="{span.context.trace_id:032x}"' in text


# --- telemetry failures never reach the application --------------------------------------------------


class _FailingProcessor(SpanProcessor):
    def on_start(self, span: Any, parent_context: Any = None) -> None:
        return None

    def on_end(self, span: Any) -> None:
        raise RuntimeError("span pipeline is broken")

    def shutdown(self) -> None:
        return None

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


def test_a_failing_span_pipeline_does_not_break_statements(lite):
    _, proxy = lite
    with capture() as cap:
        cap.runtime.provider.add_span_processor(_FailingProcessor())
        assert proxy.execute("SELECT 40 + 2").fetchone() == (42,)
        with pytest.raises(sqlite3.OperationalError):
            proxy.execute("SELEC 1")
    assert telemetry_errors(cap, "tracing") == 2
    assert count(cap) == 2  # the metric is still recorded


def test_a_failing_metric_does_not_break_statements(lite, monkeypatch):
    _, proxy = lite

    def broken(self, value):
        raise RuntimeError("metric store is broken")

    monkeypatch.setattr(metrics.HistogramCell, "observe", broken)
    with capture() as cap:
        assert proxy.execute("SELECT 42").fetchone() == (42,)
    assert telemetry_errors(cap, "metrics") == 1
    assert [s.name for s in cap.spans()] == ["SELECT"]


def test_a_failing_statement_parser_does_not_break_statements(lite, monkeypatch):
    _, proxy = lite

    def broken(sql, mysql=False):
        raise RuntimeError("parser is broken")

    monkeypatch.setattr(dbapi, "summarize", broken)
    with capture() as cap:
        assert proxy.execute("SELECT 42 AS unparsed").fetchone() == (42,)
    assert telemetry_errors(cap, "database") == 1
    assert count(cap) == 0  # unrecorded, but it ran


# --- PostgreSQL: psycopg 3 sync ----------------------------------------------------------------------


def _pg_workload(conn: Any, table: str, psycopg: Any) -> list[Any]:
    out: list[Any] = []
    with conn.cursor() as cur:
        cur.execute(f"CREATE TABLE {table} (id serial PRIMARY KEY, email text UNIQUE NOT NULL, n int)")
        cur.executemany(f"INSERT INTO {table} (email, n) VALUES (%s, %s)", [(f"u{i}@x", i) for i in range(5)])
        out.append(cur.execute(f"SELECT email, n FROM {table} ORDER BY id").fetchall())
        cur.execute(f"SELECT n FROM {table} WHERE n >= %s ORDER BY n", (2,))
        out.append(cur.fetchone())
        out.append(list(cur))
        out.append(cur.rowcount)
        out.append([d.name for d in cur.description])
        out.append(cur.execute("SELECT %s::text, %s::int", ("x", 1)).fetchone())
        query = psycopg.sql.SQL("SELECT count(*) FROM {}").format(psycopg.sql.Identifier(table))
        out.append(cur.execute(query).fetchone())
    conn.commit()
    with conn.transaction():
        conn.execute(f"UPDATE {table} SET n = n * 10 WHERE n < %s", (2,))
    try:
        with conn.transaction():
            conn.execute(f"DELETE FROM {table}")
            raise RuntimeError("roll back")
    except RuntimeError:
        pass
    with conn.cursor(name=f"srv_{table}") as server_side:  # a named (server-side) cursor
        server_side.itersize = 2
        server_side.execute(f"SELECT n FROM {table} ORDER BY n")
        out.append(server_side.fetchmany(2))
        out.append(list(server_side))
    conn.commit()
    with conn.cursor() as cur:
        cur.execute(f"DROP TABLE {table}")
    conn.commit()
    return out


def test_postgresql_behaves_like_the_raw_connection_and_counts_every_statement(pg, psycopg_mod):
    raw, proxy = pg
    assert isinstance(proxy, psycopg_mod.Connection)
    with capture() as cap:
        expected = _pg_workload(raw, table_name(), psycopg_mod)
        table = table_name()
        got = _pg_workload(proxy, table, psycopg_mod)
    assert got == expected
    base = {"db_system_name": "postgresql", "db_namespace": "test", "error_type": ""}
    assert count(cap, db_operation_name="CREATE", db_collection_name=table, **base) == 1
    assert count(cap, db_operation_name="INSERT", db_collection_name=table, **base) == 1
    assert count(cap, db_operation_name="SELECT", db_collection_name=table, **base) == 4  # incl. sql.Composed
    assert count(cap, db_operation_name="SELECT", db_collection_name="", **base) == 1
    assert count(cap, db_operation_name="UPDATE", db_collection_name=table, **base) == 1
    assert count(cap, db_operation_name="DELETE", db_collection_name=table, **base) == 1
    assert count(cap, db_operation_name="DROP", db_collection_name=table, **base) == 1
    assert count(cap) == 10
    span = cap.spans(f"SELECT {table}")[0]
    assert span.attributes["server.address"] == HOST and span.attributes["server.port"] == PG_PORT
    assert span.attributes["db.system.name"] == "postgresql"


def test_postgresql_errors_keep_type_message_and_sqlstate(pg, psycopg_mod):
    raw, proxy = pg
    table = table_name()
    for conn in (raw, proxy):
        conn.execute(f"CREATE TABLE IF NOT EXISTS {table} (id int PRIMARY KEY)")
        conn.execute(f"INSERT INTO {table} VALUES (1) ON CONFLICT DO NOTHING")
        conn.commit()
    try:
        with capture() as cap:
            raised = []
            for conn in (raw, proxy):
                with pytest.raises(psycopg_mod.errors.UniqueViolation) as dup:
                    conn.execute(f"INSERT INTO {table} VALUES (%s)", (1,))
                conn.rollback()
                with pytest.raises(psycopg_mod.errors.SyntaxError) as bad:
                    conn.cursor().execute("SELEC 1")
                conn.rollback()
                raised.append((dup.value, bad.value))
        (raw_dup, raw_bad), (dup_exc, bad_exc) = raised
        for got, want in ((dup_exc, raw_dup), (bad_exc, raw_bad)):
            assert type(got) is type(want)
            assert str(got) == str(want)
            assert got.sqlstate == want.sqlstate
        assert count(cap, db_operation_name="INSERT", error_type="psycopg.errors.UniqueViolation") == 1
        assert count(cap, db_operation_name="_OTHER", error_type="psycopg.errors.SyntaxError") == 1
        dup_span = cap.spans(f"INSERT {table}")[0]
        assert dup_span.attributes["db.response.status_code"] == "23505"
        assert dup_span.attributes["error.type"] == "psycopg.errors.UniqueViolation"
        message = dup_span.events[0].attributes["exception.message"]
        assert "DETAIL" not in message and "(1)" not in message  # the row values stay out of the span
        assert cap.spans("postgresql")[0].attributes["db.response.status_code"] == "42601"
    finally:
        raw.execute(f"DROP TABLE IF EXISTS {table}")
        raw.commit()


def test_postgresql_connection_context_manager_and_instrument_connect(psycopg_mod):
    connect = instrument_connect(
        psycopg_mod.connect, db_system="postgresql", db_namespace="test", server_address=HOST, server_port=PG_PORT
    )
    with capture() as cap:
        with connect(PG_DSN) as conn:  # psycopg: commits and closes on exit
            assert isinstance(conn, psycopg_mod.Connection)
            with conn.cursor() as cur:
                assert cur.execute("SELECT 1").fetchone() == (1,)
        assert conn.closed
        port = _free_port()
        with pytest.raises(psycopg_mod.OperationalError) as refused:
            connect(f"host={HOST} port={port} dbname=test user=postgres connect_timeout=2")
    assert "refused" in str(refused.value).lower() or str(port) in str(refused.value)
    assert count(cap, db_operation_name=OPERATION_CONNECT, error_type="") == 1
    assert count(cap, db_operation_name=OPERATION_CONNECT, error_type="psycopg.OperationalError") == 1
    assert count(cap, db_operation_name="SELECT") == 1
    failed = [s for s in cap.spans(OPERATION_CONNECT) if s.status.status_code is StatusCode.ERROR]
    assert failed and failed[0].attributes["error.type"] == "psycopg.OperationalError"


# --- PostgreSQL: psycopg 3 async ---------------------------------------------------------------------


async def _pg_async_workload(conn: Any, table: str) -> list[Any]:
    out: list[Any] = []
    async with conn.cursor() as cur:
        await cur.execute(f"CREATE TABLE {table} (id serial PRIMARY KEY, email text UNIQUE, n int)")
        await cur.executemany(f"INSERT INTO {table} (email, n) VALUES (%s, %s)", [(f"u{i}@x", i) for i in range(4)])
        await cur.execute(f"SELECT email, n FROM {table} ORDER BY id")
        out.append(await cur.fetchone())
        out.append([row async for row in cur])
    cur = await conn.execute(f"SELECT count(*) FROM {table}")
    out.append(await cur.fetchone())
    await conn.commit()
    async with conn.transaction():
        await conn.execute(f"UPDATE {table} SET n = n + 1")
    async with conn.cursor(name=f"srv_{table}") as server_side:
        await server_side.execute(f"SELECT n FROM {table} ORDER BY n")
        out.append(await server_side.fetchmany(3))
    await conn.commit()
    await conn.execute(f"DROP TABLE {table}")
    await conn.commit()
    return out


async def test_postgresql_async_behaves_like_the_raw_connection(psycopg_mod):
    raw = await psycopg_mod.AsyncConnection.connect(PG_DSN)
    proxy = instrument_connection(
        await psycopg_mod.AsyncConnection.connect(PG_DSN), db_system="postgresql", db_namespace="test"
    )
    assert isinstance(proxy, psycopg_mod.AsyncConnection)
    try:
        with capture() as cap:
            expected = await _pg_async_workload(raw, table_name())
            table = table_name()
            got = await _pg_async_workload(proxy, table)
            dup = table_name()
            await proxy.execute(f"CREATE TABLE {dup} (id int PRIMARY KEY)")
            await proxy.execute(f"INSERT INTO {dup} VALUES (1)")
            with pytest.raises(psycopg_mod.errors.UniqueViolation):
                await proxy.execute(f"INSERT INTO {dup} VALUES (1)")
            await proxy.rollback()
    finally:
        await raw.close()
        await proxy.close()
    assert got == expected
    base = {"db_system_name": "postgresql", "db_namespace": "test"}
    assert count(cap, db_operation_name="SELECT", db_collection_name=table, error_type="", **base) == 3
    assert count(cap, db_operation_name="INSERT", db_collection_name=table, error_type="", **base) == 1
    assert count(cap, db_operation_name="UPDATE", db_collection_name=table, error_type="", **base) == 1
    assert (
        count(cap, db_operation_name="INSERT", db_collection_name=dup, error_type="psycopg.errors.UniqueViolation") == 1
    )
    assert count(cap) == 10
    assert cap.spans(f"INSERT {dup}")[-1].attributes["db.response.status_code"] == "23505"


async def test_postgresql_async_instrument_connect(psycopg_mod):
    connect = instrument_connect(psycopg_mod.AsyncConnection.connect, db_system="postgresql", db_namespace="test")
    with capture() as cap:
        async with await connect(PG_DSN) as conn:
            assert isinstance(conn, psycopg_mod.AsyncConnection)
            cur = await conn.execute("SELECT 1")
            assert await cur.fetchone() == (1,)
        with pytest.raises(psycopg_mod.OperationalError):
            await connect(f"host={HOST} port={_free_port()} dbname=test user=postgres connect_timeout=2")
    assert count(cap, db_operation_name=OPERATION_CONNECT, error_type="") == 1
    assert count(cap, db_operation_name=OPERATION_CONNECT, error_type="psycopg.OperationalError") == 1
    assert count(cap, db_operation_name="SELECT") == 1


# --- MariaDB / MySQL: PyMySQL ------------------------------------------------------------------------


def _mysql_workload(conn: Any, table: str, proc: str, pymysql: Any) -> list[Any]:
    out: list[Any] = []
    with conn.cursor() as cur:
        cur.execute(f"CREATE TABLE `{table}` (id INT AUTO_INCREMENT PRIMARY KEY, email VARCHAR(64) UNIQUE, n INT)")
        out.append(cur.executemany(f"INSERT INTO `{table}` (email, n) VALUES (%s, %s)", [("a", 1), ("b", 2), ("c", 3)]))
        out.append(cur.execute(f"SELECT email, n FROM {table} ORDER BY id"))
        out.append(cur.fetchone())
        out.append(cur.fetchall())
        cur.execute(f"SELECT n FROM {table} WHERE n > %s", (1,))
        out.append(list(cur))
        cur.execute(f"CREATE PROCEDURE `{proc}`(IN lim INT) SELECT email FROM `{table}` WHERE n <= lim ORDER BY n")
        cur.callproc(proc, (2,))
        out.append(cur.fetchall())
        while cur.nextset():
            pass
    conn.commit()
    with conn.cursor(pymysql.cursors.DictCursor) as cur:
        cur.execute(f"UPDATE {table} SET n = n + 10 WHERE email = %s", ("a",))
        conn.rollback()
        cur.execute(f"SELECT * FROM {table} ORDER BY id")
        out.append(cur.fetchall())
        cur.execute(f"DELETE FROM {table} WHERE email = %s", ("c",))
        out.append(cur.rowcount)
        cur.execute(f"DROP PROCEDURE `{proc}`")
        cur.execute(f"DROP TABLE `{table}`")
    conn.commit()
    return out


def test_mariadb_behaves_like_the_raw_connection_and_counts_every_statement(my, pymysql_mod):
    raw, proxy = my
    with capture() as cap:
        expected = _mysql_workload(raw, table_name(), table_name("proc"), pymysql_mod)
        table, proc = table_name(), table_name("proc")
        got = _mysql_workload(proxy, table, proc, pymysql_mod)
    assert got == expected
    base = {"db_system_name": "mariadb", "db_namespace": "test", "error_type": ""}
    assert count(cap, db_operation_name="CREATE", db_collection_name=table, **base) == 1
    assert count(cap, db_operation_name="CREATE", db_collection_name="", **base) == 1  # the procedure
    assert count(cap, db_operation_name="INSERT", db_collection_name=table, **base) == 1
    assert count(cap, db_operation_name="SELECT", db_collection_name=table, **base) == 3
    assert count(cap, db_operation_name="CALL", db_collection_name="", **base) == 1
    assert count(cap, db_operation_name="UPDATE", db_collection_name=table, **base) == 1
    assert count(cap, db_operation_name="DELETE", db_collection_name=table, **base) == 1
    assert count(cap, db_operation_name="DROP", **base) == 2
    assert count(cap) == 11
    (call,) = cap.spans(f"CALL {proc}")
    assert call.attributes["db.stored_procedure.name"] == proc
    assert call.attributes["db.operation.name"] == "CALL"
    assert cap.spans(f"INSERT {table}")[0].attributes["db.operation.batch.size"] == 3


def test_mariadb_errors_keep_type_message_and_errno(my, pymysql_mod):
    raw, proxy = my
    table = table_name()
    with raw.cursor() as cur:
        cur.execute(f"CREATE TABLE {table} (id INT PRIMARY KEY)")
        cur.execute(f"INSERT INTO {table} VALUES (1)")
    raw.commit()
    try:
        with capture() as cap:
            raised = []
            for conn in (raw, proxy):
                with conn.cursor() as cur:
                    with pytest.raises(pymysql_mod.err.IntegrityError) as dup:
                        cur.execute(f"INSERT INTO {table} VALUES (%s)", (1,))
                    with pytest.raises(pymysql_mod.err.ProgrammingError) as bad:
                        cur.execute("SELEC 1")
                conn.rollback()  # the failed INSERT holds a lock on the key until then
                raised.append((dup.value, bad.value))
        (raw_dup, raw_bad), (dup_exc, bad_exc) = raised
        for got, want in ((dup_exc, raw_dup), (bad_exc, raw_bad)):
            assert type(got) is type(want) and got.args == want.args
        assert count(cap, db_operation_name="INSERT", error_type="pymysql.err.IntegrityError") == 1
        assert count(cap, db_operation_name="_OTHER", error_type="pymysql.err.ProgrammingError") == 1
        assert cap.spans(f"INSERT {table}")[0].attributes["db.response.status_code"] == "1062"
        assert cap.spans("mariadb")[0].attributes["db.response.status_code"] == "1064"
    finally:
        with raw.cursor() as cur:
            cur.execute(f"DROP TABLE IF EXISTS {table}")
        raw.commit()


def test_mariadb_instrument_connect_records_refused_connections(pymysql_mod):
    connect = instrument_connect(pymysql_mod.connect, db_system="mariadb", db_namespace="test")
    with capture() as cap:
        conn = connect(**MYSQL_ARGS)
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT 1")
                assert cur.fetchall() == ((1,),)
        finally:
            conn.close()
        with pytest.raises(pymysql_mod.err.OperationalError) as refused:
            connect(**{**MYSQL_ARGS, "port": _free_port(), "connect_timeout": 2})
    assert refused.value.args[0] == 2003  # "Can't connect to MySQL server": message unchanged
    assert count(cap, db_operation_name=OPERATION_CONNECT, error_type="") == 1
    assert count(cap, db_operation_name=OPERATION_CONNECT, error_type="pymysql.err.OperationalError") == 1
    (failed,) = [s for s in cap.spans(OPERATION_CONNECT) if s.status.status_code is StatusCode.ERROR]
    assert failed.attributes["db.response.status_code"] == "2003"


def test_mariadb_suppressed(my):
    _, proxy = my
    with capture() as cap:
        with bakhmach_obs.suppress(), proxy.cursor() as cur:
            cur.execute("SELECT 1")
            assert cur.fetchall() == ((1,),)
    assert count(cap) == 0 and cap.spans() == []


class _OkCursor:
    def callproc(self, name: Any, params: Any = ()) -> Any:
        return params

    def execute(self, query: Any, params: Any = None) -> None:
        return None

    def executemany(self, query: Any, seq: Any) -> None:
        return None


class _OkConnection:
    def cursor(self) -> _OkCursor:
        return _OkCursor()


@pytest.mark.parametrize(
    ("procname", "span_name"),
    [
        ("refresh", "CALL refresh"),
        ("shop.refresh", "CALL shop.refresh"),
        ("`shop`.`refresh`", "CALL shop.refresh"),
        ("x; DROP TABLE t", "CALL"),
        ("p('secret')", "CALL"),
        (None, "CALL"),
    ],
)
def test_callproc_names_only_plausible_procedures(procname, span_name):
    with capture() as cap:
        cur = instrument_connection(_OkConnection(), db_system="mysql").cursor()
        assert cur.callproc(procname, (1,)) == (1,)
    (span,) = cap.spans()
    assert span.name == span_name
    assert span.attributes.get("db.stored_procedure.name") == (span_name[5:] or None)
    assert count(cap, db_operation_name="CALL", db_collection_name="", error_type="") == 1
