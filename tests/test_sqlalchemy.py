"""SQLAlchemy engines against real PostgreSQL (psycopg 3) and MariaDB (PyMySQL); SQLite for offline checks.

Every test that needs a server skips when it is not reachable, and fails under
``BAKHMACH_OBS_REQUIRE_SERVICES=1``. Tables get unique names and are dropped; engines are disposed.
"""

from __future__ import annotations

import asyncio
import functools
import importlib.util
import os
import threading
import uuid
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from opentelemetry.instrumentation.utils import suppress_instrumentation
from opentelemetry.trace import SpanKind, StatusCode
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column
from sqlalchemy.pool import NullPool, QueuePool

import bakhmach_obs
from bakhmach_obs.sqlalchemy import instrument_engine, uninstrument_engine
from bakhmach_obs.testing import Capture, capture

try:  # tests/ as a rootdir-relative directory (pytest's default "prepend" import mode)
    from conftest import need
except ImportError:  # tests/ as a package
    from tests.conftest import need

PG_URL = os.environ.get("BAKHMACH_OBS_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
MYSQL_URL = os.environ.get("BAKHMACH_OBS_MYSQL_URL", "mysql+pymysql://root:@127.0.0.1:3306/test")
URLS = {"postgresql": PG_URL, "mariadb": MYSQL_URL}

DURATION = "db_client_operation_duration_seconds"
COUNT = DURATION + "_count"
CONNECTIONS = "db_client_connection_count"
MAX = "db_client_connection_max"
WAIT_COUNT = "db_client_connection_wait_time_seconds_count"
TIMEOUTS = "db_client_connection_timeouts_total"
#: Small pools so that exhausting one takes three connections and half a second.
POOL = {"pool_size": 2, "max_overflow": 1, "pool_timeout": 0.5}


@functools.cache
def _reachable(url: str) -> str | None:
    """None when a plain (uninstrumented) engine can run ``SELECT 1`` there, else the reason."""
    engine = sa.create_engine(url, poolclass=NullPool, connect_args={"connect_timeout": 3})
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except Exception as exc:
        return f"{engine.url.render_as_string()} is not reachable: {type(exc).__name__}: {exc}"
    finally:
        engine.dispose()
    return None


def _need_server(backend: str) -> str:
    url = URLS[backend]
    reason = _reachable(url)
    need(reason is None, reason or "")
    return url


def _unique(prefix: str = "bo_sa") -> str:
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


@pytest.fixture(params=["postgresql", "mariadb"])
def backend(request) -> str:
    return request.param


@pytest.fixture
def url(backend) -> str:
    return _need_server(backend)


@pytest.fixture
def pool_name() -> str:
    return _unique("pool")


@pytest.fixture
def engine(url, pool_name) -> Iterator[sa.Engine]:
    eng = instrument_engine(sa.create_engine(url, **POOL), pool_name=pool_name)
    yield eng
    uninstrument_engine(eng)
    eng.dispose()


@pytest.fixture
def table(url) -> Iterator[str]:
    """A unique table ``(id INTEGER PRIMARY KEY, name VARCHAR(50))``, dropped afterwards."""
    name = _unique()
    plain = sa.create_engine(url, poolclass=NullPool)
    with plain.begin() as conn:
        conn.execute(sa.text(f"CREATE TABLE {name} (id INTEGER PRIMARY KEY, name VARCHAR(50))"))
    yield name
    with plain.begin() as conn:
        conn.execute(sa.text(f"DROP TABLE IF EXISTS {name}"))
    plain.dispose()


def _system(backend: str) -> str:
    return "postgresql" if backend == "postgresql" else "mariadb"


def _count(cap: Capture, **labels: str) -> float:
    return cap.sample(COUNT, **labels) or 0.0


def _gauges(cap: Capture, pool_name: str) -> tuple[float | None, float | None]:
    return (
        cap.sample(CONNECTIONS, pool_name=pool_name, state="used"),
        cap.sample(CONNECTIONS, pool_name=pool_name, state="idle"),
    )


# --- statements -----------------------------------------------------------------------------------
def test_every_statement_is_one_span_and_one_observation(engine, table, backend):
    system = _system(backend)
    with capture() as cap:
        with cap.runtime.tracer.start_as_current_span("parent") as parent, engine.begin() as conn:
            for i in range(3):
                conn.execute(sa.text(f"INSERT INTO {table} (id, name) VALUES (:id, :name)"), {"id": i, "name": "n"})
            rows = conn.execute(sa.text(f"SELECT id, name FROM {table} WHERE id >= :low"), {"low": 1}).all()
            conn.execute(sa.text(f"UPDATE {table} SET name = 'x' WHERE id = 1"))
            conn.execute(sa.text(f"DELETE FROM {table} WHERE id = 2"))
    assert sorted(r.id for r in rows) == [1, 2]
    common = {"db_system_name": system, "db_collection_name": table, "db_namespace": "test", "error_type": ""}
    assert _count(cap, db_operation_name="INSERT", **common) == 3
    assert _count(cap, db_operation_name="SELECT", **common) == 1
    assert _count(cap, db_operation_name="UPDATE", **common) == 1
    assert _count(cap, db_operation_name="DELETE", **common) == 1

    spans = [s for s in cap.spans() if s.name.endswith(table)]
    expected = [f"INSERT {table}"] * 3 + [f"SELECT {table}", f"UPDATE {table}", f"DELETE {table}"]
    assert [s.name for s in spans] == expected
    for span in spans:
        assert span.kind is SpanKind.CLIENT
        assert span.parent is not None and span.parent.span_id == parent.get_span_context().span_id
        attrs = dict(span.attributes or {})
        assert attrs["db.system.name"] == system
        assert attrs["db.namespace"] == "test"
        assert attrs["db.collection.name"] == table
        assert attrs["server.address"] == "127.0.0.1"
        assert "db.query.text" not in attrs  # opt-in only
        assert span.status.status_code is StatusCode.UNSET


def test_executemany_records_each_cursor_call(engine, table):
    rows = [{"id": i, "name": f"n{i}"} for i in range(5)]
    with capture() as cap, engine.begin() as conn:
        conn.execute(sa.text(f"INSERT INTO {table} (id, name) VALUES (:id, :name)"), rows)
        total = conn.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar_one()
    assert total == 5
    inserts = _count(cap, db_operation_name="INSERT", db_collection_name=table)
    assert inserts >= 1
    assert inserts == len(cap.spans(f"INSERT {table}"))


def test_query_text_is_opt_in_and_parameterized(url, table, pool_name):
    eng = instrument_engine(sa.create_engine(url, **POOL), pool_name=pool_name, capture_query_text=True)
    try:
        with capture() as cap, eng.begin() as conn:
            conn.execute(sa.text(f"INSERT INTO {table} (id, name) VALUES (42, 'secret-value')"))
    finally:
        uninstrument_engine(eng)
        eng.dispose()
    (span,) = cap.spans(f"INSERT {table}")
    text = span.attributes["db.query.text"]
    # Exactly the parameterized statement: no literal survives (a bare `"42" not in text` would also
    # match the random table name now and then).
    assert text == f"INSERT INTO {table} (id, name) VALUES (?, ?)"


def _run_plain(url: str, statements: list[str]) -> BaseException:
    """What an uninstrumented engine raises for the last of ``statements``."""
    plain = sa.create_engine(url, poolclass=NullPool)
    try:
        with plain.connect() as conn:
            for sql in statements[:-1]:
                conn.execute(sa.text(sql))
            conn.commit()
            try:
                conn.execute(sa.text(statements[-1]))
            except sa.exc.DBAPIError as exc:
                return exc
    finally:
        plain.dispose()
    raise AssertionError("the statement did not fail")


def _check_failure(cap: Capture, error: sa.exc.DBAPIError, operation: str, collection: str, system: str) -> None:
    orig = error.orig
    assert orig is not None
    error_type = f"{type(orig).__module__}.{type(orig).__qualname__}"
    labels = {"db_operation_name": operation, "db_collection_name": collection, "db_system_name": system}
    assert _count(cap, error_type=error_type, **labels) == 1
    assert _count(cap, error_type="", **labels) == 0
    (span,) = [s for s in cap.spans() if s.attributes.get("error.type") == error_type]
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes["db.operation.name"] == operation
    assert span.attributes.get("db.response.status_code")
    (event,) = [e for e in span.events if e.name == "exception"]
    assert event.attributes["exception.type"] == error_type


def test_bad_sql_is_recorded_and_reraised_unchanged(engine, url, backend):
    missing = _unique("missing")
    sql = f"SELECT * FROM {missing}"
    expected = _run_plain(url, [sql])
    with capture() as cap:
        with pytest.raises(sa.exc.DBAPIError) as info, engine.connect() as conn:
            conn.execute(sa.text(sql))
    assert type(info.value) is type(expected)
    assert type(info.value.orig) is type(expected.orig)
    assert info.value.__cause__ is info.value.orig
    _check_failure(cap, info.value, "SELECT", missing, _system(backend))


def test_unique_violation_is_recorded_and_reraised_unchanged(engine, url, table, backend):
    insert = f"INSERT INTO {table} (id, name) VALUES (1, 'a')"
    expected = _run_plain(url, [insert, insert])
    with engine.begin() as conn:  # the plain engine committed one row already: start from it
        conn.execute(sa.text(f"DELETE FROM {table}"))
        conn.execute(sa.text(insert))
    with capture() as cap:
        with pytest.raises(sa.exc.IntegrityError) as info, engine.begin() as conn:
            conn.execute(sa.text(insert))
    assert type(info.value) is type(expected)
    assert type(info.value.orig) is type(expected.orig)
    _check_failure(cap, info.value, "INSERT", table, _system(backend))
    (event,) = cap.spans(f"INSERT {table}")[0].events
    assert "\n" not in event.attributes["exception.message"]  # PostgreSQL's DETAIL line quotes the row
    assert "Key (id)" not in event.attributes["exception.stacktrace"]
    if backend == "postgresql":
        assert cap.spans(f"INSERT {table}")[0].attributes["db.response.status_code"] == "23505"
    else:
        assert cap.spans(f"INSERT {table}")[0].attributes["db.response.status_code"] == "1062"
    # the connection went back to the pool and works
    with engine.connect() as conn:
        assert conn.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar_one() == 1


def test_exception_event_redacts_before_cutting_the_first_line():
    """A token and a card in a PostgreSQL error never reach the span, even where the 512-char cut falls."""
    engine = instrument_engine(sa.create_engine(_need_server("postgresql"), poolclass=NullPool))
    head = "charge failed: Bearer s3cr3t-tok, "
    # the card starts at character 498: a cut before redaction would keep "4111 1111 1111" (12 digits,
    # too short to look like a card any more)
    message = head + "x" * (498 - len(head) - len(" card ")) + " card 4111 1111 1111 1111 declined"
    assert message.index("4111") == 498
    sql = f"DO $$ BEGIN RAISE EXCEPTION USING MESSAGE = '{message}', DETAIL = 'row (ada@example.com)'; END $$"
    try:
        with capture() as cap:
            with pytest.raises(sa.exc.DBAPIError) as info, engine.connect() as conn:
                conn.execute(sa.text(sql))
    finally:
        uninstrument_engine(engine)
        engine.dispose()
    assert "s3cr3t-tok" in str(info.value.orig)  # the application's exception is untouched
    (span,) = cap.spans()
    (event,) = span.events
    attributes = event.attributes
    assert attributes["exception.type"] == "psycopg.errors.RaiseException"
    assert attributes["exception.message"].startswith("charge failed: Bearer [REDACTED], xxx")
    assert " card [REDACTED] dec" in attributes["exception.message"]  # then cut at 512 characters
    assert len(attributes["exception.message"]) == 512
    assert "psycopg.errors.RaiseException: charge failed" in attributes["exception.stacktrace"]
    for value in attributes.values():
        text = str(value)
        assert "s3cr3t-tok" not in text and "4111 1111" not in text
        assert "ada@example.com" not in text  # the DETAIL line is left out


# --- the pool ------------------------------------------------------------------------------------
def test_pool_gauges_follow_checkouts_and_returns(engine, pool_name):
    with capture() as cap:
        first, second = engine.connect(), engine.connect()
        assert _gauges(cap, pool_name) == (2.0, 0.0)
        assert cap.sample(MAX, pool_name=pool_name) == 3.0
        first.close()
        assert _gauges(cap, pool_name) == (1.0, 1.0)
        second.close()
        assert _gauges(cap, pool_name) == (0.0, 2.0)
        with engine.connect():
            assert _gauges(cap, pool_name) == (1.0, 1.0)
        assert _gauges(cap, pool_name) == (0.0, 2.0)
        assert cap.sample(WAIT_COUNT, pool_name=pool_name) == 3.0
        engine.dispose()  # closes the idle connections
        assert _gauges(cap, pool_name) == (0.0, 0.0)
        with engine.connect():  # the new pool is instrumented too
            assert _gauges(cap, pool_name) == (1.0, 0.0)
        assert cap.sample(WAIT_COUNT, pool_name=pool_name) == 4.0


def test_exhausted_pool_counts_a_timeout_and_raises_it_unchanged(engine, pool_name):
    with capture() as cap:
        held = [engine.connect() for _ in range(3)]  # pool_size 2 + max_overflow 1
        assert _gauges(cap, pool_name) == (3.0, 0.0)
        with pytest.raises(sa.exc.TimeoutError) as info:
            engine.connect()
        assert type(info.value) is sa.exc.TimeoutError
        assert cap.sample(TIMEOUTS, pool_name=pool_name) == 1.0
        assert cap.sample(WAIT_COUNT, pool_name=pool_name) == 3.0  # only the checkouts that succeeded
        assert _gauges(cap, pool_name) == (3.0, 0.0)
        for conn in held:
            conn.close()
        # the overflow connection is closed on return: two stay idle
        assert _gauges(cap, pool_name) == (0.0, 2.0)


def test_a_waiting_checkout_measures_its_wait(engine, pool_name):
    with capture() as cap:
        held = [engine.connect() for _ in range(3)]
        release = threading.Timer(0.2, held[0].close)
        release.start()
        try:
            with engine.connect() as conn:  # waits until the timer returns a connection
                conn.execute(sa.text("SELECT 1"))
        finally:
            release.join()
            for conn in held[1:]:
                conn.close()
        total = cap.sample("db_client_connection_wait_time_seconds_sum", pool_name=pool_name)
    assert cap.sample(WAIT_COUNT, pool_name=pool_name) == 4.0
    assert total is not None and total >= 0.15


def test_invalidated_connection_is_not_counted_as_idle(engine, pool_name):
    with capture() as cap:
        conn = engine.connect()
        assert _gauges(cap, pool_name) == (1.0, 0.0)
        conn.invalidate()  # closes the DB-API connection and gives its slot back to the pool at once
        assert _gauges(cap, pool_name) == (0.0, 0.0)
        conn.close()
        assert _gauges(cap, pool_name) == (0.0, 0.0)
        with engine.connect() as again:  # reconnects transparently
            again.execute(sa.text("SELECT 1"))
            assert _gauges(cap, pool_name) == (1.0, 0.0)
        assert _gauges(cap, pool_name) == (0.0, 1.0)


# --- ORM, async, suppression ---------------------------------------------------------------------
def test_orm_session_keeps_working(engine, backend):
    name = _unique()

    class Base(DeclarativeBase):
        pass

    class Item(Base):
        __tablename__ = name
        id: Mapped[int] = mapped_column(primary_key=True)
        label: Mapped[str] = mapped_column(sa.String(50))

    Base.metadata.create_all(engine)
    try:
        with capture() as cap:
            with Session(engine) as session:
                session.add_all([Item(id=1, label="a"), Item(id=2, label="b")])
                session.commit()
            with Session(engine) as session:
                labels = session.scalars(sa.select(Item.label).order_by(Item.id)).all()
                session.get(Item, 1).label = "z"
                session.commit()
    finally:
        Base.metadata.drop_all(engine)
    assert labels == ["a", "b"]
    assert _count(cap, db_operation_name="INSERT", db_collection_name=name) >= 1
    assert _count(cap, db_operation_name="SELECT", db_collection_name=name) == 2
    assert _count(cap, db_operation_name="UPDATE", db_collection_name=name) == 1


def test_async_engine(pool_name):
    url = _need_server("postgresql")
    need(importlib.util.find_spec("greenlet") is not None, "greenlet is not installed (sqlalchemy[asyncio])")
    from sqlalchemy.ext.asyncio import create_async_engine

    name = _unique()

    async def run(cap: Capture) -> list[int]:
        eng = create_async_engine(url, **POOL)
        assert instrument_engine(eng, pool_name=pool_name) is eng
        assert instrument_engine(eng) is eng  # idempotent
        try:
            async with eng.begin() as conn:
                await conn.execute(sa.text(f"CREATE TABLE {name} (id INTEGER PRIMARY KEY)"))
                await conn.execute(sa.text(f"INSERT INTO {name} (id) VALUES (1), (2)"))
            async with eng.connect() as a, eng.connect() as b:
                assert _gauges(cap, pool_name) == (2.0, 0.0)
                ids = list((await a.execute(sa.text(f"SELECT id FROM {name} ORDER BY id"))).scalars())
                await b.execute(sa.text("SELECT 1"))
            assert _gauges(cap, pool_name) == (0.0, 2.0)
            with pytest.raises(sa.exc.ProgrammingError):
                async with eng.connect() as conn:
                    await conn.execute(sa.text(f"SELECT * FROM {name}_missing"))
            held = [await eng.connect() for _ in range(3)]
            with pytest.raises(sa.exc.TimeoutError):
                await eng.connect()
            for conn in held:
                await conn.close()
            with bakhmach_obs.suppress():
                async with eng.connect() as conn:
                    await conn.execute(sa.text(f"SELECT id FROM {name}"))
            return ids
        finally:
            async with eng.begin() as conn:
                await conn.execute(sa.text(f"DROP TABLE IF EXISTS {name}"))
            uninstrument_engine(eng)
            await eng.dispose()

    with capture() as cap:
        ids = asyncio.run(run(cap))
    assert ids == [1, 2]
    assert _count(cap, db_operation_name="SELECT", db_collection_name=name, error_type="") == 1
    assert _count(cap, db_operation_name="INSERT", db_collection_name=name) == 1
    assert _count(cap, db_collection_name=f"{name}_missing", error_type="psycopg.errors.UndefinedTable") == 1
    assert cap.sample(TIMEOUTS, pool_name=pool_name) == 1.0
    assert cap.sample(WAIT_COUNT, pool_name=pool_name) == 8.0  # begin, a, b, error, three held (not suppressed)
    assert len(cap.spans(f"SELECT {name}")) == 1  # not the suppressed one


def test_nothing_is_recorded_inside_suppress(engine, table, pool_name):
    with capture() as cap:
        with bakhmach_obs.suppress(), engine.begin() as conn:
            conn.execute(sa.text(f"INSERT INTO {table} (id, name) VALUES (1, 'a')"))
            with pytest.raises(sa.exc.DBAPIError), conn.begin_nested():
                conn.execute(sa.text(f"INSERT INTO {table} (id, name) VALUES (1, 'a')"))
        with suppress_instrumentation(), engine.connect() as conn:
            conn.execute(sa.text(f"SELECT * FROM {table}"))
        assert cap.spans() == []
        assert cap.sample(COUNT) is None
        assert cap.sample(WAIT_COUNT, pool_name=pool_name) is None
        # the gauges are state: kept whatever happens
        assert _gauges(cap, pool_name) == (0.0, 1.0)


# --- wiring, offline (SQLite) ---------------------------------------------------------------------
def _sqlite(**kwargs) -> sa.Engine:
    kwargs.setdefault("poolclass", QueuePool)
    return sa.create_engine("sqlite://", **kwargs)


def test_instrumenting_twice_records_once_and_uninstrument_undoes_it():
    eng = _sqlite()
    pool_connect = eng.pool.connect
    try:
        assert instrument_engine(eng, pool_name="p") is eng
        assert instrument_engine(eng, pool_name="other") is eng
        with capture() as cap, eng.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
        assert len(cap.spans()) == 1
        assert cap.sample(COUNT) == 1.0
        assert cap.sample(WAIT_COUNT) == 1.0
        assert cap.sample(MAX, pool_name="other") is None
        uninstrument_engine(eng)
        uninstrument_engine(eng)  # nothing left to undo
        assert "connect" not in vars(eng.pool)
        assert eng.pool.connect == pool_connect
        with capture() as cap, eng.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
        assert cap.spans() == []
        assert cap.sample(COUNT) is None
    finally:
        eng.dispose()


def test_default_pool_name_never_holds_credentials():
    eng = sa.create_engine("postgresql+psycopg://alice:s3cr3t@db.example.com:6543/shop", **POOL)
    named = sa.create_engine("postgresql+psycopg://alice:s3cr3t@db.example.com/shop", pool_logging_name="primary")
    try:
        with capture() as cap:
            instrument_engine(eng)
            instrument_engine(named)
        assert cap.sample(MAX, pool_name="postgresql://db.example.com:6543/shop") == 3.0
        assert cap.sample(MAX, pool_name="primary") == 15.0  # the defaults: 5 + 10
        assert "s3cr3t" not in cap.exposition() and "alice" not in cap.exposition()
    finally:
        for e in (eng, named):
            uninstrument_engine(e)
            e.dispose()


def test_pool_without_a_maximum_publishes_counts_only():
    eng = instrument_engine(_sqlite(poolclass=NullPool), pool_name="nullpool")
    try:
        with capture() as cap:
            with eng.connect() as conn:
                conn.execute(sa.text("SELECT 1"))
                assert _gauges(cap, "nullpool") == (1.0, 0.0)
            assert _gauges(cap, "nullpool") == (0.0, 0.0)  # NullPool closes on return
            assert cap.sample(MAX, pool_name="nullpool") is None
    finally:
        uninstrument_engine(eng)
        eng.dispose()


def test_sqlite_failure_and_system_name():
    eng = instrument_engine(_sqlite(), pool_name="lite")
    try:
        with capture() as cap, eng.connect() as conn:
            with pytest.raises(sa.exc.OperationalError) as info:
                conn.execute(sa.text("SELECT * FROM nowhere"))
        assert type(info.value.orig).__name__ == "OperationalError"
        assert _count(cap, db_system_name="sqlite", error_type="sqlite3.OperationalError") == 1
        (span,) = cap.spans()
        assert span.name == "SELECT nowhere"
        assert "db.namespace" not in span.attributes  # in-memory database: no name
    finally:
        uninstrument_engine(eng)
        eng.dispose()


def test_a_telemetry_failure_never_breaks_the_statement(monkeypatch):
    eng = instrument_engine(_sqlite(), pool_name="broken")
    try:
        with capture() as cap:

            def boom(*args, **kwargs):
                raise RuntimeError("tracer down")

            monkeypatch.setattr(cap.runtime, "start_span", boom)
            with eng.connect() as conn:
                assert conn.execute(sa.text("SELECT 7")).scalar_one() == 7
            assert cap.sample(COUNT) == 1.0  # the metric is still recorded
            assert cap.sample("bakhmach_obs_telemetry_errors_total", component="tracing") == 1.0
    finally:
        uninstrument_engine(eng)
        eng.dispose()


def test_disabled_sdk_records_nothing():
    eng = instrument_engine(_sqlite(), pool_name="off")
    try:
        with capture(disabled=True) as cap, eng.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
        assert cap.sample(COUNT) is None
        assert cap.sample(CONNECTIONS, pool_name="off", state="used") is None
    finally:
        uninstrument_engine(eng)
        eng.dispose()


def test_rejects_what_is_not_an_engine():
    with pytest.raises(TypeError, match="Engine or AsyncEngine"):
        instrument_engine(object())  # type: ignore[type-var]


def test_import_bakhmach_obs_does_not_import_sqlalchemy():
    import subprocess
    import sys

    code = "import sys, bakhmach_obs, bakhmach_obs.testing; assert 'sqlalchemy' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
