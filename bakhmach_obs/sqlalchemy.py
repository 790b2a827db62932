"""SQLAlchemy 2 engines (sync ``Engine`` and ``AsyncEngine``): a span and a metric per statement, pool metrics.

:func:`instrument_engine` listens to the engine's events; nothing is patched in SQLAlchemy itself.
Every statement sent to the database (each ``cursor.execute``/``executemany``; each batch of an
"insertmanyvalues" INSERT) records

* a span of kind CLIENT named ``"{operation} {table}"`` (``SELECT users``; the operation alone, or
  the system name, when the statement has no table or no recognised operation) with
  ``db.system.name`` (``postgresql``, ``mysql``, ``mariadb``, ``sqlite``...), ``db.namespace``
  (the database name), ``db.operation.name`` and ``db.collection.name`` parsed from the
  statement, ``server.address``/``server.port``, the correlation id when one is bound and, with
  ``capture_query_text=True``, ``db.query.text``: the statement with every literal replaced by
  ``?`` (bound parameter values are never recorded);
* ``db_client_operation_duration_seconds{db_system_name, db_operation_name, db_collection_name,
  db_namespace, error_type}`` with ``error_type=""`` on success.

A failing statement sets ``error.type`` to the qualified class of the driver's exception
(``psycopg.errors.UniqueViolation``, ``pymysql.err.IntegrityError``: SQLAlchemy's
``original_exception``), ``db.response.status_code`` to the driver's code when it has one
(SQLSTATE, MySQL error number), records the exception (the first line of its message, at most
512 characters, and its stack trace, both through the runtime's redaction policy; not SQLAlchemy's
wrapper, whose text quotes the parameters) and sets the span status to ERROR.
SQLAlchemy raises its usual exception, unchanged.

**Pool metrics**, under ``pool_name`` (default: the pool's ``logging_name`` when the engine was
created with ``pool_logging_name=``, else ``"{dialect}://{host}:{port}/{database}"``, never the
user name or password):

* ``db_client_connection_count{pool_name, state}``: ``used`` counts the connections checked out,
  ``idle`` the open connections waiting in the pool. They are kept from the pool's ``connect``,
  ``checkout``, ``checkin``, ``close`` and ``detach`` events, by connection identity (so a
  repeated event never counts twice): ``pool.checkedout()``/``checkedin()`` cannot be used from
  inside those events, which fire before the pool has updated its queue. Connections opened
  before :func:`instrument_engine` are seen once they are checked out; instrument right after
  ``create_engine()``;
* ``db_client_connection_max{pool_name}``: ``pool_size + max_overflow`` of a ``QueuePool`` (also
  the async one); pools without a fixed maximum (``NullPool``, ``StaticPool``,
  ``SingletonThreadPool``, ``max_overflow=-1``) publish none;
* ``db_client_connection_wait_time_seconds{pool_name}``: the time each checkout took, from the
  request to the connection in hand, waiting for a free connection and opening a new one (and a
  ``pre_ping``) included. SQLAlchemy has no "checkout requested" event, so the pool's public
  ``connect()`` is wrapped on the pool instance (again on the new pool ``engine.dispose()``
  creates); only checkouts that succeeded are observed;
* ``db_client_connection_timeouts_total{pool_name}``: checkouts that raised
  ``sqlalchemy.exc.TimeoutError`` (pool exhausted for ``pool_timeout`` seconds); the exception
  reaches the caller unchanged.

Nothing is recorded inside ``bakhmach_obs.suppress()``, while OpenTelemetry's instrumentation
suppression is on, or when the SDK is disabled, except the connection gauges: they are state,
kept up to date whatever happens. ``pool_name`` must be unique per engine.

Example:
    >>> from sqlalchemy import create_engine, text
    >>> from sqlalchemy.pool import QueuePool
    >>> from bakhmach_obs.sqlalchemy import instrument_engine
    >>> from bakhmach_obs.testing import capture
    >>> with capture() as cap:
    ...     engine = instrument_engine(create_engine("sqlite://", poolclass=QueuePool, pool_size=2, max_overflow=1))
    ...     with engine.connect() as conn:
    ...         conn.execute(text("CREATE TABLE users (id INTEGER)")).rowcount
    ...         conn.execute(text("SELECT id FROM users WHERE id = 7")).all()
    ...         cap.sample("db_client_connection_count", state="used")
    -1
    []
    1.0
    >>> [s.name for s in cap.spans()]
    ['CREATE users', 'SELECT users']
    >>> cap.sample("db_client_operation_duration_seconds_count", db_operation_name="SELECT", db_system_name="sqlite")
    1.0
    >>> cap.sample("db_client_connection_count", state="idle"), cap.sample("db_client_connection_max")
    (1.0, 3.0)
    >>> engine.dispose()
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from time import perf_counter
from typing import TYPE_CHECKING, Any, TypeVar

import sqlalchemy
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from sqlalchemy import event
from sqlalchemy.engine import URL, Connection, Dialect, Engine
from sqlalchemy.pool import Pool

from . import conventions as c
from ._runtime import Runtime, per_runtime
from ._sql import OPERATION_OTHER, parameterize, summarize
from .context import CORRELATION_ID, instrumentation_suppressed
from .logs import exception_type_name
from .metrics import observe_with_exemplar
from .pools import PoolMetrics
from .tracing import record_exception

if TYPE_CHECKING:
    from sqlalchemy.engine.interfaces import DBAPIConnection, ExceptionContext, ExecutionContext
    from sqlalchemy.ext.asyncio import AsyncEngine
    from sqlalchemy.pool import ConnectionPoolEntry, PoolProxiedConnection

__all__ = ["instrument_engine", "uninstrument_engine"]

_CLIENT = SpanKind.CLIENT
#: The attribute of an execution context (or the key of ``Connection.info``) holding its statements in flight.
_ATTR = "_bakhmach_obs_db_calls"
#: Marks the ``Pool.connect`` wrapper this module installed.
_MARK = "_bakhmach_obs_sqlalchemy"
#: ``db.system.name`` for SQLAlchemy dialect names (OpenTelemetry's well-known values).
_SYSTEMS = {
    "postgresql": "postgresql",
    "mysql": "mysql",
    "mariadb": "mariadb",
    "sqlite": "sqlite",
    "mssql": "microsoft.sql_server",
    "oracle": "oracle.db",
}
_SYSTEM_OTHER = "other_sql"
_MYSQL_DIALECTS = frozenset({"mysql", "mariadb"})
#: The exception event keeps the first line of the message, at most this long (later lines quote row values).
_MESSAGE_LIMIT = 512

_EngineT = TypeVar("_EngineT", bound="Engine | AsyncEngine")


# --- runtime binding ------------------------------------------------------------------------------


class _Bound:
    """What a statement needs from the runtime, resolved once per ``configure()``."""

    __slots__ = ("exemplars", "family", "on", "rt", "tracer")

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.on = rt.enabled
        self.tracer = rt.tracer
        self.family: Any = None
        if rt.metrics_enabled:
            try:
                self.family = rt.metric_set.get(c.DB_CLIENT_DURATION)
            except Exception as exc:  # noqa: BLE001 - a registry failure must not break the statement
                rt.report_error("metrics", exc)
        self.exemplars = rt.exemplars and self.family is not None


_bound = per_runtime(_Bound)


def _system_name(dialect: Dialect) -> str:
    name = dialect.name
    if name == "mysql" and getattr(dialect, "is_mariadb", False):
        return "mariadb"
    return _SYSTEMS.get(name, _SYSTEM_OTHER)


def _status_code(exc: BaseException) -> str | None:
    """The driver's error code: MySQL/MariaDB error number (PyMySQL), SQLSTATE (psycopg), error name (sqlite3)."""
    args = getattr(exc, "args", ())
    if args and type(args[0]) is int:
        return str(args[0])
    for attr in ("sqlstate", "pgcode", "sqlite_errorname"):
        value = getattr(exc, attr, None)
        if isinstance(value, str) and value:
            return value
    return None


# --- one statement ----------------------------------------------------------------------------------


class _Call:
    """One statement in flight: its span, its labels and its start time."""

    __slots__ = ("b", "labels", "span", "t0")

    def __init__(self, b: _Bound, hooks: _EngineHooks, dialect: Dialect, statement: str) -> None:
        self.b = b
        system = _system_name(dialect)
        mysql = dialect.name in _MYSQL_DIALECTS
        op, collection = summarize(statement, mysql=mysql)
        namespace = hooks.namespace
        self.labels = (system, op, collection, namespace)
        self.span: Span | None = None
        tracer = b.tracer
        if tracer is not None:
            try:
                attributes: dict[str, Any] = {c.ATTR_DB_SYSTEM: system}
                if namespace:
                    attributes[c.ATTR_DB_NAMESPACE] = namespace
                if op:
                    attributes[c.ATTR_DB_OPERATION] = op
                if collection:
                    attributes[c.ATTR_DB_COLLECTION] = collection
                if hooks.capture_query_text:
                    attributes[c.ATTR_DB_QUERY_TEXT] = parameterize(statement, mysql=mysql)
                if hooks.host:
                    attributes[c.ATTR_SERVER_ADDRESS] = hooks.host
                if hooks.port is not None:
                    attributes[c.ATTR_SERVER_PORT] = hooks.port
                cid = CORRELATION_ID.get()
                if cid is not None:
                    attributes[c.ATTR_CORRELATION_ID] = cid
                name = op if op and op != OPERATION_OTHER else system
                if collection:
                    name = f"{op} {collection}"
                self.span = b.rt.start_span(name, _CLIENT, attributes)
            except Exception as exc:  # noqa: BLE001
                b.rt.report_error("tracing", exc)
        self.t0 = perf_counter()

    def finish(self) -> None:
        duration = perf_counter() - self.t0
        self._end()
        self._observe("", duration)

    def fail(self, exc: BaseException) -> None:
        duration = perf_counter() - self.t0
        b = self.b
        error_type = exception_type_name(exc)
        span = self.span
        if span is not None:
            try:
                if span.is_recording():
                    span.set_attribute(c.ATTR_ERROR_TYPE, error_type)
                    code = _status_code(exc)
                    if code is not None:
                        span.set_attribute(c.ATTR_DB_STATUS_CODE, code)
                    # first line only: PostgreSQL's DETAIL (later lines) quotes row values
                    record_exception(span, exc, b.rt.redaction, b.rt.report_error, first_line_limit=_MESSAGE_LIMIT)
                    span.set_status(Status(StatusCode.ERROR, error_type))
            except Exception as err:  # noqa: BLE001
                b.rt.report_error("tracing", err)
        self._end()
        self._observe(error_type, duration)

    def _observe(self, error_type: str, duration: float) -> None:
        b = self.b
        family = b.family
        if family is None:
            return
        try:
            child = family.labels(*self.labels, error_type)
            observe_with_exemplar(child, duration, self.span if b.exemplars else None)
        except Exception as exc:  # noqa: BLE001
            b.rt.report_error("metrics", exc)

    def _end(self) -> None:
        if self.span is not None:
            try:
                self.span.end()
            except Exception as exc:  # noqa: BLE001
                self.b.rt.report_error("tracing", exc)


def _calls(conn: Connection, context: ExecutionContext | None, create: bool) -> list[_Call] | None:
    """The statements in flight of one execution (a stack: nested executions stay separate)."""
    if context is not None:
        stack: list[_Call] | None = getattr(context, _ATTR, None)
        if stack is None and create:
            stack = []
            setattr(context, _ATTR, stack)
        return stack
    info = conn.info
    stack = info.get(_ATTR)
    if stack is None and create:
        stack = info[_ATTR] = []
    return stack


# --- one engine ------------------------------------------------------------------------------------


def _default_pool_name(engine: Engine) -> str:
    logging_name = getattr(engine.pool, "logging_name", None)
    if logging_name:
        return str(logging_name)
    url: URL = engine.url
    host = url.host or ""
    netloc = f"{host}:{url.port}" if url.port is not None else host
    return f"{engine.dialect.name}://{netloc}/{url.database or ''}"


def _pool_max(pool: Pool) -> int | None:
    size = getattr(pool, "size", None)
    overflow = getattr(pool, "_max_overflow", None)
    if not callable(size) or not isinstance(overflow, int) or overflow < 0:
        return None
    n = size()
    return n + overflow if isinstance(n, int) and n > 0 else None


class _EngineHooks:
    """The listeners of one instrumented engine and its pool's state. Holds no reference to the engine."""

    def __init__(self, engine: Engine, pool_name: str | None, capture_query_text: bool) -> None:
        url = engine.url
        self.namespace = url.database or ""
        self.host = url.host or ""
        self.port = url.port
        self.capture_query_text = capture_query_text
        self.metrics = PoolMetrics(pool_name if pool_name is not None else _default_pool_name(engine))
        self.max: int | None = _pool_max(engine.pool)
        self._lock = threading.Lock()
        #: Checked-out pool entries, by identity, and the open DB-API connections, by identity.
        self._used: dict[int, ConnectionPoolEntry] = {}
        self._open: dict[int, DBAPIConnection] = {}
        self.engine_events: dict[str, Callable[..., Any]] = {
            "before_cursor_execute": self.before_cursor_execute,
            "after_cursor_execute": self.after_cursor_execute,
            "handle_error": self.handle_error,
            "engine_disposed": self.engine_disposed,
        }
        self.pool_events: dict[str, Callable[..., Any]] = {
            "connect": self.on_connect,
            "checkout": self.on_checkout,
            "checkin": self.on_checkin,
            "close": self.on_close,
            "detach": self.on_detach,
        }

    # --- statements -----------------------------------------------------------------------------
    def before_cursor_execute(
        self,
        conn: Connection,
        cursor: Any,
        statement: str,
        parameters: Any,
        context: ExecutionContext | None,
        executemany: bool,
    ) -> None:
        b = _bound()
        if not b.on or instrumentation_suppressed():
            return
        try:
            call = _Call(b, self, conn.dialect, statement)
            stack = _calls(conn, context, True)
            assert stack is not None
            stack.append(call)
        except Exception as exc:  # noqa: BLE001 - the statement runs unrecorded
            b.rt.report_error("database", exc)

    def after_cursor_execute(
        self,
        conn: Connection,
        cursor: Any,
        statement: str,
        parameters: Any,
        context: ExecutionContext | None,
        executemany: bool,
    ) -> None:
        stack = _calls(conn, context, False)
        if stack:
            stack.pop().finish()

    def handle_error(self, exception_context: ExceptionContext) -> None:
        conn = exception_context.connection
        if conn is None:
            return  # a failure to connect: no statement was in flight
        stack = _calls(conn, exception_context.execution_context, False)
        if stack:
            stack.pop().fail(exception_context.original_exception)
        # returns None: SQLAlchemy raises its own exception, unchanged

    # --- pool --------------------------------------------------------------------------------------
    def engine_disposed(self, engine: Engine) -> None:
        """``dispose()`` put a new pool in place (same listeners): wrap its ``connect`` too."""
        self.max = _pool_max(engine.pool)
        self.wrap_pool(engine.pool)
        self.publish()

    def wrap_pool(self, pool: Pool) -> None:
        current_connect = vars(pool).get("connect")
        if getattr(current_connect, _MARK, None) is not None:
            return
        original = pool.connect
        metrics = self.metrics
        timeout_error = sqlalchemy.exc.TimeoutError

        def connect() -> PoolProxiedConnection:
            t0 = perf_counter()
            try:
                conn = original()
            except timeout_error:
                metrics.timed_out()
                raise
            metrics.waited(perf_counter() - t0)
            return conn

        setattr(connect, _MARK, self)
        connect.__wrapped__ = original  # type: ignore[attr-defined]
        connect.__doc__ = original.__doc__
        pool.connect = connect  # type: ignore[method-assign]

    def unwrap_pool(self, pool: Pool) -> None:
        if getattr(vars(pool).get("connect"), _MARK, None) is self:
            del pool.connect

    def publish(self) -> None:
        with self._lock:
            used = len(self._used)
            opened = self._open
            busy = sum(1 for rec in self._used.values() if id(rec.dbapi_connection) in opened)
            idle = len(opened) - busy
        self.metrics.publish(used, idle, self.max)

    def on_connect(self, dbapi_connection: DBAPIConnection, record: ConnectionPoolEntry) -> None:
        with self._lock:
            self._open[id(dbapi_connection)] = dbapi_connection
        self.publish()

    def on_checkout(
        self, dbapi_connection: DBAPIConnection, record: ConnectionPoolEntry, proxy: PoolProxiedConnection
    ) -> None:
        with self._lock:
            self._used[id(record)] = record
            # a connection opened before instrument_engine(): known from now on
            self._open.setdefault(id(dbapi_connection), dbapi_connection)
        self.publish()

    def on_checkin(self, dbapi_connection: DBAPIConnection | None, record: ConnectionPoolEntry) -> None:
        with self._lock:
            self._used.pop(id(record), None)
        self.publish()

    def on_close(self, dbapi_connection: DBAPIConnection, record: ConnectionPoolEntry) -> None:
        with self._lock:
            self._open.pop(id(dbapi_connection), None)
        self.publish()

    def on_detach(self, dbapi_connection: DBAPIConnection, record: ConnectionPoolEntry) -> None:
        with self._lock:  # the connection leaves the pool: neither used nor idle any more
            self._used.pop(id(record), None)
            self._open.pop(id(dbapi_connection), None)
        self.publish()

    # --- wiring ------------------------------------------------------------------------------------
    def attach(self, engine: Engine) -> None:
        for name, fn in self.engine_events.items():
            event.listen(engine, name, fn)
        for name, fn in self.pool_events.items():
            event.listen(engine.pool, name, fn)
        self.wrap_pool(engine.pool)
        self.publish()

    def detach(self, engine: Engine) -> None:
        for name, fn in self.engine_events.items():
            if event.contains(engine, name, fn):
                event.remove(engine, name, fn)
        for name, fn in self.pool_events.items():
            if event.contains(engine.pool, name, fn):
                event.remove(engine.pool, name, fn)
        self.unwrap_pool(engine.pool)
        self.metrics.forget()


_lock = threading.Lock()
_ENGINES: weakref.WeakKeyDictionary[Engine, _EngineHooks] = weakref.WeakKeyDictionary()


def _sync_engine(engine: Any) -> Engine:
    sync = getattr(engine, "sync_engine", engine)
    if not isinstance(sync, Engine):
        raise TypeError(f"expected a SQLAlchemy Engine or AsyncEngine, not {type(engine).__name__}")
    return sync


def instrument_engine(engine: _EngineT, *, pool_name: str | None = None, capture_query_text: bool = False) -> _EngineT:
    """Record the statements and the pool of a SQLAlchemy ``Engine`` or ``AsyncEngine``; return it.

    Args:
        engine: what ``create_engine()`` or ``create_async_engine()`` returned.
        pool_name: the ``pool_name`` label of the pool metrics (default: see the module docstring).
        capture_query_text: also put the statement, literals replaced by ``?``, in ``db.query.text``.

    Calling it again on the same engine changes nothing (the first options stay).

    Raises:
        TypeError: ``engine`` is neither an ``Engine`` nor an ``AsyncEngine``.
    """
    sync = _sync_engine(engine)
    with _lock:
        if sync in _ENGINES:
            return engine
        hooks = _EngineHooks(sync, pool_name, capture_query_text)
        hooks.attach(sync)
        _ENGINES[sync] = hooks
    return engine


def uninstrument_engine(engine: Engine | AsyncEngine) -> None:
    """Undo :func:`instrument_engine`: remove the listeners, unwrap the pool, drop the gauge series.

    Does nothing when the engine is not instrumented.
    """
    sync = _sync_engine(engine)
    with _lock:
        hooks = _ENGINES.pop(sync, None)
        if hooks is not None:
            hooks.detach(sync)
