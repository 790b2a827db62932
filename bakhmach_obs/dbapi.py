"""DB-API 2.0 connections (psycopg 3 sync and async, PyMySQL, sqlite3...): a span and a metric per statement.

:func:`instrument_connection` wraps a connection in a transparent proxy (``wrapt.ObjectProxy``:
``isinstance``, attributes, context managers and iteration behave as on the connection); the
cursors it hands out are proxies too. :func:`instrument_connect` wraps a connect function so every
connection it opens is instrumented, and records the connection attempt itself.
:func:`uninstrument_connection` gives the original connection back.

Each ``execute``, ``executemany`` and ``callproc`` of a cursor, and each ``execute`` and
``executemany`` of the connection when the driver has them (psycopg 3, sqlite3), records

* a span of kind CLIENT named ``{operation} {table}`` (``SELECT users``), or ``{operation}``
  (``COMMIT``), or the ``db_system`` when the statement has no known operation, with
  ``db.system.name``, ``db.namespace``, ``db.operation.name``, ``db.collection.name``,
  ``server.address``, ``server.port``, ``db.operation.batch.size`` for an ``executemany`` of two
  or more parameter sets given as a list or tuple, ``db.stored_procedure.name`` for ``callproc``
  and, only with ``capture_query_text=True``, ``db.query.text``: the statement with every literal
  replaced by ``?`` (:func:`bakhmach_obs._sql.parameterize`), never the raw text;
* ``db_client_operation_duration_seconds{db_system_name, db_operation_name, db_collection_name,
  db_namespace, error_type}`` with ``error_type=""`` on success.

The operation and the table come from :func:`bakhmach_obs._sql.summarize`: the first keyword from a
bounded set (else ``_OTHER``) and the first table, never anything from a literal. ``callproc`` is
the operation ``CALL``; a connection attempt through :func:`instrument_connect` is ``CONNECT``.

A statement that raises sets ``error.type`` (the exception's qualified class name, also the
``error_type`` label), ``db.response.status_code`` (the SQLSTATE of psycopg, the error number of
PyMySQL for ``mysql``/``mariadb``, the extended result code of sqlite3) and the span status ERROR;
the exception event carries the first line of the driver's message only (PostgreSQL's ``DETAIL``
lines quote row values). The exception itself is re-raised unchanged.

The duration is the driver call: for a server-side (named) cursor that is the ``DECLARE``, not
the later fetches. The span is not made current during the call. Nothing is recorded inside
``bakhmach_obs.suppress()``, while OpenTelemetry's instrumentation suppression is on, or when the
SDK is disabled; a telemetry failure is counted in ``bakhmach_obs_telemetry_errors_total`` and the
statement runs as if uninstrumented. Drivers are never imported by this module.

Example:
    >>> import sqlite3
    >>> from bakhmach_obs.dbapi import instrument_connection
    >>> from bakhmach_obs.testing import capture
    >>> with capture() as cap:
    ...     conn = instrument_connection(sqlite3.connect(":memory:"), db_system="sqlite", db_namespace="main")
    ...     with conn:
    ...         _ = conn.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)")
    ...         _ = conn.executemany("INSERT INTO users (name) VALUES (?)", [("ada",), ("bob",)])
    ...     cur = conn.cursor()
    ...     cur.execute("SELECT name FROM users WHERE id = ?", (1,)).fetchone()
    ...     conn.close()
    ('ada',)
    >>> [s.name for s in cap.spans()]
    ['CREATE users', 'INSERT users', 'SELECT users']
    >>> cap.sample("db_client_operation_duration_seconds_count", db_operation_name="SELECT", error_type="")
    1.0
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import re
from collections.abc import Callable
from time import perf_counter
from typing import Any, TypeVar

import wrapt
from opentelemetry.trace import SpanKind, Status, StatusCode

from . import conventions as c
from ._runtime import CURRENT, Runtime, current
from ._sql import OPERATION_OTHER, SCAN_LIMIT, parameterize, summarize
from .context import instrumentation_suppressed
from .errors import ConfigurationError
from .logs import exception_type_name
from .metrics import HistogramCell
from .tracing import record_exception

__all__ = [
    "OPERATION_CALL",
    "OPERATION_CONNECT",
    "instrument_connect",
    "instrument_connection",
    "uninstrument_connection",
]

#: ``db.operation.name`` of ``cursor.callproc()``.
OPERATION_CALL = "CALL"
#: ``db.operation.name`` of a connection attempt made through :func:`instrument_connect`.
OPERATION_CONNECT = "CONNECT"

ATTR_BATCH_SIZE = c.ATTR_DB_BATCH_SIZE
ATTR_STORED_PROCEDURE = c.ATTR_DB_STORED_PROCEDURE

_CLIENT = SpanKind.CLIENT
_MYSQL_SYSTEMS = frozenset({"mysql", "mariadb"})
_STATEMENT_CACHE = 1024
_MESSAGE_LIMIT = 512
#: What ``callproc`` may name: one (optionally qualified, optionally quoted) name, nothing more.
_PROCEDURE = re.compile(r"[\w$.\"`\[\] -]{1,200}")
# What a wrapped method records: a statement (execute), a statement and a batch, a procedure.
_EXECUTE, _MANY, _CALLPROC = 0, 1, 2
_CURSOR_METHODS = {"execute": _EXECUTE, "executemany": _MANY, "callproc": _CALLPROC}
_CONNECTION_METHODS = {"execute": _EXECUTE, "executemany": _MANY}

_C = TypeVar("_C")
_F = TypeVar("_F", bound=Callable[..., Any])


class _Stmt:
    """What a statement records, worked out once per distinct statement text."""

    __slots__ = ("attrs", "cell", "collection", "name", "operation")

    def __init__(self, operation: str, collection: str, name: str, attrs: dict[str, Any]) -> None:
        self.operation = operation
        self.collection = collection
        self.name = name
        self.attrs = attrs
        #: ``(binding, success cell)``: the histogram child of the last binding, in one atomic slot.
        self.cell: tuple[_Binding, HistogramCell] | None = None


class _Binding:
    """One configuration's view of the runtime for one :class:`_Db` (rebuilt when ``configure()`` runs)."""

    __slots__ = ("cells", "db", "exemplars", "family", "limit", "on", "rt", "spans")

    def __init__(self, rt: Runtime, db: _Db) -> None:
        self.rt = rt
        self.db = db
        self.on = rt.enabled
        self.spans = rt.tracer is not None
        self.family: Any = None
        if rt.metrics_enabled:
            try:
                self.family = rt.metric_set.get(c.DB_CLIENT_DURATION)
            except Exception as exc:  # noqa: BLE001 - a registry failure must not break the statement
                rt.report_error("metrics", exc)
        self.exemplars = rt.exemplars and self.family is not None
        self.cells: dict[tuple[str, str, str], HistogramCell] = {}
        self.limit = 2 * rt.settings.cardinality_limit

    def cell(self, operation: str, collection: str, error_type: str) -> HistogramCell:
        key = (operation, collection, error_type)
        cell = self.cells.get(key)
        if cell is None:
            db = self.db
            cell = HistogramCell(self.family.labels(db.system, operation, collection, db.namespace, error_type))
            if len(self.cells) < self.limit:
                self.cells[key] = cell
        return cell


class _Db:
    """Everything decided when a connection (or connect function) is wrapped."""

    __slots__ = ("base_attrs", "binding", "capture_text", "connect_stmt", "mysql", "namespace", "stmts", "system")

    def __init__(
        self,
        system: str,
        namespace: str | None,
        address: str | None,
        port: int | None,
        capture_text: bool,
    ) -> None:
        if not isinstance(system, str) or not system:
            raise ConfigurationError("db_system", system, "a non-empty string such as 'postgresql', 'mysql', 'sqlite'")
        if namespace is not None and not isinstance(namespace, str):
            raise ConfigurationError("db_namespace", namespace, "a string or None")
        if address is not None and not isinstance(address, str):
            raise ConfigurationError("server_address", address, "a string or None")
        if port is not None and (not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536):
            raise ConfigurationError("server_port", port, "an int in 1..65535 or None")
        self.system = system
        self.namespace = namespace or ""
        self.mysql = system in _MYSQL_SYSTEMS
        self.capture_text = bool(capture_text)
        attrs: dict[str, Any] = {c.ATTR_DB_SYSTEM: system}
        if namespace:
            attrs[c.ATTR_DB_NAMESPACE] = namespace
        if address:
            attrs[c.ATTR_SERVER_ADDRESS] = address
        if port is not None:
            attrs[c.ATTR_SERVER_PORT] = port
        self.base_attrs = attrs
        self.binding: _Binding | None = None
        self.stmts: dict[Any, _Stmt] = {}
        self.connect_stmt = self._stmt(OPERATION_CONNECT, "", OPERATION_CONNECT, {})

    def bind(self) -> _Binding:
        b = self.binding = _Binding(current(), self)
        return b

    def _stmt(self, operation: str, collection: str, name: str, extra: dict[str, Any]) -> _Stmt:
        attrs = dict(self.base_attrs)
        if operation:
            attrs[c.ATTR_DB_OPERATION] = operation
        if collection:
            attrs[c.ATTR_DB_COLLECTION] = collection
        attrs.update(extra)
        return _Stmt(operation, collection, name, attrs)

    def _remember(self, key: Any, stmt: _Stmt) -> None:
        stmts = self.stmts
        if len(stmts) >= _STATEMENT_CACHE:
            with contextlib.suppress(KeyError, RuntimeError, StopIteration):  # another thread got there first
                del stmts[next(iter(stmts))]  # the oldest entry
        stmts[key] = stmt

    def statement(self, query: Any) -> _Stmt:
        """The :class:`_Stmt` of a query (a ``str``, ``bytes`` or a psycopg ``sql.Composable``)."""
        try:
            stmt = self.stmts.get(query)
            cacheable = type(query) in (str, bytes) and len(query) <= SCAN_LIMIT
        except TypeError:  # unhashable (psycopg's sql.Composed): not cached
            stmt, cacheable = None, False
        if stmt is not None:
            return stmt
        text = _text(query)
        operation, collection = summarize(text, mysql=self.mysql)
        if collection:
            name = f"{operation} {collection}"
        else:
            name = operation if operation and operation != OPERATION_OTHER else self.system
        extra = {c.ATTR_DB_QUERY_TEXT: parameterize(text, mysql=self.mysql)} if self.capture_text and text else {}
        stmt = self._stmt(operation, collection, name, extra)
        if cacheable:
            self._remember(query, stmt)
        return stmt

    def procedure(self, procname: Any) -> _Stmt:
        """The :class:`_Stmt` of ``callproc(procname)``: operation ``CALL``, the name if it is one."""
        key = ("callproc", procname)
        stmt = self.stmts.get(key) if type(procname) is str else None
        if stmt is not None:
            return stmt
        name = ""
        if type(procname) is str and _PROCEDURE.fullmatch(procname):
            name = summarize(f"TABLE {procname}", mysql=self.mysql)[1]  # the name rules of a table
        extra = {ATTR_STORED_PROCEDURE: name} if name else {}
        stmt = self._stmt(OPERATION_CALL, "", f"{OPERATION_CALL} {name}" if name else OPERATION_CALL, extra)
        if name:
            self._remember(key, stmt)
        return stmt


def _text(query: Any) -> str:
    """The statement text of what was passed to ``execute`` (``""`` when there is none to read)."""
    if type(query) is str:
        return query
    if isinstance(query, (bytes, bytearray, memoryview)):
        return bytes(query[:SCAN_LIMIT]).decode("utf-8", "replace")
    if isinstance(query, str):
        return str.__str__(query)
    as_string = getattr(query, "as_string", None)  # psycopg.sql.Composable
    if as_string is not None:
        text = as_string(None)
        if isinstance(text, str):
            return text
    return ""


def _query(kind: int, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    if args:
        return args[0]
    if kind == _CALLPROC:
        return kwargs.get("procname")
    for key in ("query", "operation", "sql"):
        if key in kwargs:
            return kwargs[key]
    return None


def _batch_size(args: tuple[Any, ...], kwargs: dict[str, Any]) -> int:
    """The number of parameter sets of an ``executemany``, when it can be known without consuming them."""
    seq = args[1] if len(args) > 1 else kwargs.get("params_seq", kwargs.get("args", kwargs.get("seq_of_parameters")))
    return len(seq) if isinstance(seq, (list, tuple)) else 0


def _begin(db: _Db, b: _Binding, kind: int, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[_Stmt, Any]:
    """The statement and its (possibly non-recording) span; raises only if the statement cannot be read."""
    query = args[0] if args else _query(kind, args, kwargs)
    if kind == _CALLPROC:
        stmt = db.procedure(query)
    else:
        try:
            hit = db.stmts.get(query)
        except TypeError:  # unhashable (psycopg's sql.Composed)
            hit = None
        stmt = hit if hit is not None else db.statement(query)
    if not b.spans:
        return stmt, None
    span = None
    try:
        span = b.rt.start_span(stmt.name, _CLIENT, stmt.attrs)
        if kind == _MANY:
            size = _batch_size(args, kwargs)
            if size > 1 and span.is_recording():
                span.set_attribute(ATTR_BATCH_SIZE, size)
    except Exception as exc:  # noqa: BLE001
        b.rt.report_error("tracing", exc)
    return stmt, span


def _ok(b: _Binding, stmt: _Stmt, span: Any, duration: float) -> None:
    if b.family is not None:
        try:
            pair = stmt.cell
            if pair is not None and pair[0] is b:
                cell = pair[1]
            else:
                cell = b.cell(stmt.operation, stmt.collection, "")
                stmt.cell = (b, cell)
            i = cell.observe(duration)
            if span is not None and b.exemplars:
                cell.exemplar(i, duration, span)
        except Exception as exc:  # noqa: BLE001
            b.rt.report_error("metrics", exc)
    if span is not None:
        try:
            span.end()
        except Exception as exc:  # noqa: BLE001
            b.rt.report_error("tracing", exc)


def _status_code(exc: BaseException, mysql: bool) -> str | None:
    """The database's own error code: MySQL's error number, SQLSTATE (psycopg, psycopg2), sqlite's result code."""
    args = getattr(exc, "args", ())
    if mysql and args and isinstance(args[0], int) and not isinstance(args[0], bool):
        return str(args[0])  # PyMySQL, mysqlclient: (1062, "Duplicate entry ...")
    for attr in ("sqlstate", "pgcode", "sqlite_errorcode"):
        code = getattr(exc, attr, None)
        if code is not None and not isinstance(code, bool) and isinstance(code, (str, int)):
            return str(code)
    return None


def _fail(b: _Binding, db: _Db, stmt: _Stmt, span: Any, exc: BaseException, duration: float) -> None:
    rt = b.rt
    try:
        error_type = exception_type_name(exc)
    except Exception as err:  # noqa: BLE001
        rt.report_error("database", err)
        error_type = OPERATION_OTHER
    if b.family is not None:
        try:
            b.cell(stmt.operation, stmt.collection, error_type).observe(duration)
        except Exception as err:  # noqa: BLE001
            rt.report_error("metrics", err)
    if span is None:
        return
    try:
        if span.is_recording():
            span.set_attribute(c.ATTR_ERROR_TYPE, error_type)
            code = _status_code(exc, db.mysql)
            if code is not None:
                span.set_attribute(c.ATTR_DB_STATUS_CODE, code)
            record_exception(span, exc, rt.redaction, rt.report_error, first_line_limit=_MESSAGE_LIMIT)
            span.set_status(Status(StatusCode.ERROR, error_type))
    except Exception as err:  # noqa: BLE001
        rt.report_error("tracing", err)
    try:
        span.end()
    except Exception as err:  # noqa: BLE001
        rt.report_error("tracing", err)


def _binding(db: _Db) -> _Binding | None:
    """The binding to record with, or None when nothing must be recorded now."""
    b = db.binding
    if b is None or b.rt is not CURRENT[0]:
        b = db.bind()
    if not b.on or instrumentation_suppressed():
        return None
    return b


# --- wrapped methods -------------------------------------------------------------------------------
# The hot path is written out in full (no helper calls until a statement is known to be recorded):
# a call costs one identity check for the runtime, the suppression check and a dict lookup.


def _sync_method(name: str, kind: int, cursor: bool) -> Callable[..., Any]:
    def method(self: Any, *args: Any, **kwargs: Any) -> Any:
        wrapped = self.__wrapped__
        fn = getattr(wrapped, name)
        db: _Db = self._self_db
        b = db.binding
        if b is None or b.rt is not CURRENT[0]:
            b = db.bind()
        if not b.on or instrumentation_suppressed():
            result = fn(*args, **kwargs)
        else:
            try:
                stmt, span = _begin(db, b, kind, args, kwargs)
            except Exception as exc:  # noqa: BLE001 - the statement runs unrecorded
                b.rt.report_error("database", exc)
                stmt = None
            if stmt is None:
                result = fn(*args, **kwargs)
            else:
                t0 = perf_counter()
                try:
                    result = fn(*args, **kwargs)
                except BaseException as exc:
                    _fail(b, db, stmt, span, exc, perf_counter() - t0)
                    raise
                _ok(b, stmt, span, perf_counter() - t0)
        if cursor:
            return self if result is wrapped else result
        return _connection_result(self, result)

    method.__name__ = method.__qualname__ = name
    return method


def _async_method(name: str, kind: int, cursor: bool) -> Callable[..., Any]:
    async def method(self: Any, *args: Any, **kwargs: Any) -> Any:
        wrapped = self.__wrapped__
        fn = getattr(wrapped, name)
        db: _Db = self._self_db
        b = _binding(db)
        stmt = None
        if b is not None:
            try:
                stmt, span = _begin(db, b, kind, args, kwargs)
            except Exception as exc:  # noqa: BLE001 - the statement runs unrecorded
                b.rt.report_error("database", exc)
        if b is None or stmt is None:
            result = await fn(*args, **kwargs)
        else:
            t0 = perf_counter()
            try:
                result = await fn(*args, **kwargs)
            except BaseException as exc:
                _fail(b, db, stmt, span, exc, perf_counter() - t0)
                raise
            _ok(b, stmt, span, perf_counter() - t0)
        if cursor:
            return self if result is wrapped else result
        return _connection_result(self, result)

    method.__name__ = method.__qualname__ = name
    return method


def _connection_result(proxy: Any, result: Any) -> Any:
    """``connection.execute()`` returns a new cursor: instrument it too."""
    if result is None or isinstance(result, _Proxy) or not hasattr(result, "fetchone"):
        return result
    return _wrap_cursor(result, proxy._self_db)


# --- proxies --------------------------------------------------------------------------------------


class _Proxy(wrapt.ObjectProxy[Any]):
    """Base of every proxy here; ``_self_db`` holds what was decided at wrap time."""

    def __init__(self, wrapped: Any, db: _Db) -> None:
        super().__init__(wrapped)
        self._self_db = db


class _Cursor(_Proxy):
    def __enter__(self) -> Any:
        wrapped = self.__wrapped__
        result = wrapped.__enter__()
        return self if result is wrapped else result

    def __exit__(self, *exc_info: Any) -> Any:
        return self.__wrapped__.__exit__(*exc_info)


class _AsyncCursor(_Proxy):
    async def __aenter__(self) -> Any:
        wrapped = self.__wrapped__
        result = await wrapped.__aenter__()
        return self if result is wrapped else result

    async def __aexit__(self, *exc_info: Any) -> Any:
        return await self.__wrapped__.__aexit__(*exc_info)

    def __aiter__(self) -> Any:
        return self.__wrapped__.__aiter__()


class _Connection(_Proxy):
    def cursor(self, *args: Any, **kwargs: Any) -> Any:
        return _wrap_cursor(self.__wrapped__.cursor(*args, **kwargs), self._self_db)

    def __enter__(self) -> Any:
        wrapped = self.__wrapped__
        result = wrapped.__enter__()
        return self if result is wrapped else result

    def __exit__(self, *exc_info: Any) -> Any:
        return self.__wrapped__.__exit__(*exc_info)


class _AsyncConnection(_Proxy):
    def cursor(self, *args: Any, **kwargs: Any) -> Any:
        return _wrap_cursor(self.__wrapped__.cursor(*args, **kwargs), self._self_db)

    async def __aenter__(self) -> Any:
        wrapped = self.__wrapped__
        result = await wrapped.__aenter__()
        return self if result is wrapped else result

    async def __aexit__(self, *exc_info: Any) -> Any:
        return await self.__wrapped__.__aexit__(*exc_info)


def _next(self: Any) -> Any:
    return self.__wrapped__.__next__()


async def _anext(self: Any) -> Any:
    return await self.__wrapped__.__anext__()


_CLASSES: dict[tuple[type, bool], type] = {}


def _is_async(cls: type, name: str) -> bool:
    return inspect.iscoroutinefunction(getattr(cls, name, None))


def _proxy_class(cls: type, cursor: bool) -> type:
    """The proxy class for a driver's cursor or connection class: only the methods it has are wrapped."""
    key = (cls, cursor)
    proxy = _CLASSES.get(key)
    if proxy is not None:
        return proxy
    methods = _CURSOR_METHODS if cursor else _CONNECTION_METHODS
    is_async = _is_async(cls, "execute") if cursor else _is_async(cls, "commit") or _is_async(cls, "execute")
    make = _async_method if is_async else _sync_method
    namespace: dict[str, Any] = {
        name: make(name, kind, cursor) for name, kind in methods.items() if callable(getattr(cls, name, None))
    }
    if cursor and not is_async and hasattr(cls, "__next__"):
        namespace["__next__"] = _next
    if cursor and is_async and hasattr(cls, "__anext__"):
        namespace["__anext__"] = _anext
    if cursor:
        base: type = _AsyncCursor if is_async else _Cursor
    else:
        base = _AsyncConnection if is_async else _Connection
    name = f"Instrumented{cls.__name__}"
    namespace["__module__"] = __name__
    namespace["__qualname__"] = name
    proxy = _CLASSES[key] = type(name, (base,), namespace)
    return proxy


def _wrap_cursor(cursor: Any, db: _Db) -> Any:
    if cursor is None or isinstance(cursor, _Proxy):
        return cursor
    return _proxy_class(type(cursor), True)(cursor, db)


def _wrap_connection(conn: Any, db: _Db) -> Any:
    return _proxy_class(type(conn), False)(conn, db)


# --- public API -----------------------------------------------------------------------------------


def instrument_connection(
    conn: _C,
    *,
    db_system: str,
    db_namespace: str | None = None,
    server_address: str | None = None,
    server_port: int | None = None,
    capture_query_text: bool = False,
) -> _C:
    """Return a proxy of the DB-API connection ``conn`` that records every statement (module docstring).

    Args:
        conn: an open connection: ``psycopg.Connection``/``AsyncConnection``, ``pymysql``'s,
            ``sqlite3.Connection``, or any DB-API 2.0 connection.
        db_system: ``db.system.name``: ``postgresql``, ``mysql``, ``mariadb``, ``sqlite``... (``mysql``
            and ``mariadb`` also select the MySQL dialect for the statement scanner).
        db_namespace: the database name (``db.namespace`` and the ``db_namespace`` label).
        server_address: ``server.address`` of the spans (not a metric label).
        server_port: ``server.port`` of the spans.
        capture_query_text: add ``db.query.text`` (literals replaced by ``?``) to the spans.

    Wrapping a connection this module already wrapped returns it unchanged.

    Raises:
        ConfigurationError: ``db_system`` is not a non-empty string, or another argument has the wrong type.
    """
    if isinstance(conn, _Proxy):
        return conn
    db = _Db(db_system, db_namespace, server_address, server_port, capture_query_text)
    return _wrap_connection(conn, db)  # type: ignore[no-any-return]


def uninstrument_connection(conn: _C) -> _C:
    """The connection :func:`instrument_connection` wrapped (``conn`` itself if it is not a proxy of ours).

    Example:
        >>> import sqlite3
        >>> from bakhmach_obs.dbapi import instrument_connection, uninstrument_connection
        >>> raw = sqlite3.connect(":memory:")
        >>> proxy = instrument_connection(raw, db_system="sqlite")
        >>> isinstance(proxy, sqlite3.Connection), uninstrument_connection(proxy) is raw
        (True, True)
        >>> raw.close()
    """
    if isinstance(conn, _Proxy):
        return conn.__wrapped__  # type: ignore[no-any-return]
    return conn


def instrument_connect(
    connect_fn: _F,
    *,
    db_system: str,
    db_namespace: str | None = None,
    server_address: str | None = None,
    server_port: int | None = None,
    capture_query_text: bool = False,
) -> _F:
    """Wrap a connect function: the connections it returns are instrumented, and each attempt is recorded.

    The attempt is a span and a ``db_client_operation_duration_seconds`` sample with the operation
    ``CONNECT`` (a refused connection has ``error_type`` set; the exception is re-raised
    unchanged). A coroutine function (``psycopg.AsyncConnection.connect``) gives a coroutine
    function. The keyword arguments are those of :func:`instrument_connection`, decided once here.

    Example:
        >>> import sqlite3
        >>> from bakhmach_obs.dbapi import instrument_connect
        >>> connect = instrument_connect(sqlite3.connect, db_system="sqlite")
        >>> conn = connect(":memory:")
        >>> conn.execute("SELECT 1").fetchall()
        [(1,)]
        >>> conn.close()
    """
    db = _Db(db_system, db_namespace, server_address, server_port, capture_query_text)
    stmt = db.connect_stmt

    if inspect.iscoroutinefunction(connect_fn):

        async def connect_async(*args: Any, **kwargs: Any) -> Any:
            b = _binding(db)
            if b is None:
                return _wrap_connection(await connect_fn(*args, **kwargs), db)
            span = _connect_span(b, stmt)
            t0 = perf_counter()
            try:
                conn = await connect_fn(*args, **kwargs)
            except BaseException as exc:
                _fail(b, db, stmt, span, exc, perf_counter() - t0)
                raise
            _ok(b, stmt, span, perf_counter() - t0)
            return _wrap_connection(conn, db)

        return functools.wraps(connect_fn)(connect_async)  # type: ignore[return-value]

    def connect(*args: Any, **kwargs: Any) -> Any:
        b = _binding(db)
        if b is None:
            return _wrap_connection(connect_fn(*args, **kwargs), db)
        span = _connect_span(b, stmt)
        t0 = perf_counter()
        try:
            conn = connect_fn(*args, **kwargs)
        except BaseException as exc:
            _fail(b, db, stmt, span, exc, perf_counter() - t0)
            raise
        _ok(b, stmt, span, perf_counter() - t0)
        return _wrap_connection(conn, db)

    return functools.wraps(connect_fn)(connect)  # type: ignore[return-value]


def _connect_span(b: _Binding, stmt: _Stmt) -> Any:
    if not b.spans:
        return None
    try:
        return b.rt.start_span(stmt.name, _CLIENT, stmt.attrs)
    except Exception as exc:  # noqa: BLE001
        b.rt.report_error("tracing", exc)
        return None
