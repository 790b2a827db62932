"""Connection-pool metrics, and the psycopg_pool adapter (``ConnectionPool``, ``AsyncConnectionPool``).

:func:`instrument_psycopg_pool` records, for one pool, under ``pool_name`` (default: the pool's own
``name``, which never holds credentials):

* ``db_client_connection_count{pool_name, state}``: ``state="used"`` are the connections handed to
  the application, ``state="idle"`` those waiting in the pool;
* ``db_client_connection_max{pool_name}``: the pool's ``max_size``;
* ``db_client_connection_wait_time_seconds{pool_name}``: the time each ``getconn()`` (and so each
  ``connection()``) took to hand a connection over, waiting for a free one or a new one included;
* ``db_client_connection_timeouts_total{pool_name}``: ``getconn()`` calls that raised
  ``psycopg_pool.PoolTimeout`` (the exception goes on to the caller unchanged).

**How the gauges are kept.** The pool's ``getconn``, ``putconn`` and ``close`` are wrapped on the
instance (``connection()`` goes through them), and after each call the gauges are set from the
pool's own ``get_stats()``: ``idle = pool_available``, ``used = pool_size - pool_available``,
``max = pool_max``. That needs no custom collector (so it works in prometheus_client's
multiprocess mode, where gauges are ``livesum``), follows a later ``configure()`` and costs one
``get_stats()`` per checkout and return. What the pool does on its own in background workers
(filling up to ``min_size``, shrinking idle connections, a ``reset`` callback that returns a
connection later) shows at the next checkout or return. A closed pool reports 0 used and 0 idle.

Gauges are state, not measurements of an operation: they are kept up to date even inside
``bakhmach_obs.suppress()``; the wait histogram and the timeout counter are not recorded there,
nor while OpenTelemetry's instrumentation suppression is on. Nothing is recorded when the SDK or
its metrics are disabled. ``pool_name`` must be unique per pool: two pools with one name overwrite
each other's gauges.

psycopg_pool is imported only when a function here is called: ``import bakhmach_obs`` never
imports it.

Example (no server needed: the pool is not opened):
    >>> from psycopg_pool import ConnectionPool
    >>> from bakhmach_obs.pools import instrument_psycopg_pool
    >>> from bakhmach_obs.testing import capture
    >>> with capture() as cap:
    ...     pool = instrument_psycopg_pool(ConnectionPool("dbname=test", max_size=4, open=False), pool_name="main")
    ...     cap.sample("db_client_connection_max", pool_name="main")
    4.0
    >>> pool is instrument_psycopg_pool(pool)  # idempotent
    True
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from time import perf_counter
from typing import TYPE_CHECKING, Any, TypeVar

from . import conventions as c
from ._runtime import Runtime, per_runtime
from .context import instrumentation_suppressed

if TYPE_CHECKING:
    from psycopg_pool import AsyncConnectionPool, ConnectionPool

__all__ = ["instrument_psycopg_pool", "uninstrument_psycopg_pool"]

#: Marks the wrappers this module installed on a pool (idempotence, uninstrumenting).
_MARK = "_bakhmach_obs_pool"
_STATE_USED, _STATE_IDLE = "used", "idle"

_PoolT = TypeVar("_PoolT", bound="ConnectionPool[Any] | AsyncConnectionPool[Any]")


class _Bound:
    """The pool metric families of one runtime, resolved once per ``configure()``."""

    __slots__ = ("count", "max", "rt", "timeouts", "wait")

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.count: Any = None
        self.max: Any = None
        self.wait: Any = None
        self.timeouts: Any = None
        if rt.metrics_enabled:
            try:
                ms = rt.metric_set
                self.count = ms.get(c.DB_CONNECTION_COUNT)
                self.max = ms.get(c.DB_CONNECTION_MAX)
                self.wait = ms.get(c.DB_CONNECTION_WAIT)
                self.timeouts = ms.get(c.DB_CONNECTION_TIMEOUTS)
            except Exception as exc:  # noqa: BLE001 - a registry failure must not break the pool
                self.count = self.max = self.wait = self.timeouts = None
                rt.report_error("metrics", exc)


_bound = per_runtime(_Bound)


def _quiet() -> bool:
    """True when operation measurements must not be recorded (``suppress()``, OTel suppression)."""
    return instrumentation_suppressed()


class PoolMetrics:
    """The four pool metrics of one ``pool_name``; every method swallows telemetry failures.

    Shared by the pool adapters (psycopg_pool here, SQLAlchemy in :mod:`bakhmach_obs.sqlalchemy`).
    Private API: it may change without notice.
    """

    __slots__ = ("_lock", "pool_name")

    def __init__(self, pool_name: str) -> None:
        self.pool_name = pool_name
        self._lock = threading.Lock()

    def publish(self, used: int, idle: int, maximum: int | None) -> None:
        """Set the count gauges (and the max one when the pool has a maximum)."""
        b = _bound()
        if b.count is None:
            return
        name = self.pool_name
        try:
            with self._lock:  # two threads publishing never leave an older value behind
                b.count.labels(name, _STATE_USED).set(max(used, 0))
                b.count.labels(name, _STATE_IDLE).set(max(idle, 0))
                if maximum is not None:
                    b.max.labels(name).set(maximum)
        except Exception as exc:  # noqa: BLE001
            b.rt.report_error("metrics", exc)

    def waited(self, seconds: float) -> None:
        """Record one checkout that took ``seconds`` (not inside ``suppress()``)."""
        b = _bound()
        if b.wait is None or _quiet():
            return
        try:
            b.wait.labels(self.pool_name).observe(seconds)
        except Exception as exc:  # noqa: BLE001
            b.rt.report_error("metrics", exc)

    def timed_out(self) -> None:
        """Count one checkout that timed out (not inside ``suppress()``)."""
        b = _bound()
        if b.timeouts is None or _quiet():
            return
        try:
            b.timeouts.labels(self.pool_name).inc()
        except Exception as exc:  # noqa: BLE001
            b.rt.report_error("metrics", exc)

    def forget(self) -> None:
        """Remove this pool's gauge series from the current registry (the pool is gone)."""
        b = _bound()
        if b.count is None:
            return
        name = self.pool_name
        for family, labels in (
            (b.count, (name, _STATE_USED)),
            (b.count, (name, _STATE_IDLE)),
            (b.max, (name,)),
        ):
            try:
                family.remove(*labels)
            except KeyError:
                pass  # never published
            except Exception as exc:  # noqa: BLE001
                b.rt.report_error("metrics", exc)


# --- psycopg_pool ---------------------------------------------------------------------------------


class _PsycopgHooks:
    """What an instrumented psycopg pool carries: its metrics and the methods it had before."""

    __slots__ = ("close", "getconn", "metrics", "pool", "putconn")

    def __init__(self, pool: Any, metrics: PoolMetrics) -> None:
        self.pool = pool
        self.metrics = metrics
        self.getconn: Callable[..., Any] = pool.getconn
        self.putconn: Callable[..., Any] = pool.putconn
        self.close: Callable[..., Any] = pool.close

    def refresh(self) -> None:
        """Set the gauges from the pool's own statistics."""
        pool = self.pool
        try:
            if pool.closed:
                used = idle = 0
                maximum = int(pool.max_size)
            else:
                stats = pool.get_stats()
                idle = int(stats.get("pool_available", 0))
                used = int(stats.get("pool_size", 0)) - idle
                maximum = int(stats.get("pool_max", pool.max_size))
        except Exception as exc:  # noqa: BLE001 - statistics are best effort
            _bound().rt.report_error("database", exc)
            return
        self.metrics.publish(used, idle, maximum)


def _sync_wrappers(hooks: _PsycopgHooks, timeout_error: type[BaseException]) -> dict[str, Callable[..., Any]]:
    def getconn(timeout: float | None = None) -> Any:
        t0 = perf_counter()
        try:
            conn = hooks.getconn(timeout=timeout)
        except timeout_error:
            hooks.metrics.timed_out()
            hooks.refresh()
            raise
        hooks.metrics.waited(perf_counter() - t0)
        hooks.refresh()
        return conn

    def putconn(conn: Any) -> None:
        try:
            hooks.putconn(conn)
        finally:
            hooks.refresh()

    def close(timeout: float = 5.0) -> None:
        try:
            hooks.close(timeout=timeout)
        finally:
            hooks.refresh()

    return {"getconn": getconn, "putconn": putconn, "close": close}


def _async_wrappers(hooks: _PsycopgHooks, timeout_error: type[BaseException]) -> dict[str, Callable[..., Any]]:
    async def getconn(timeout: float | None = None) -> Any:
        t0 = perf_counter()
        try:
            conn = await hooks.getconn(timeout=timeout)
        except timeout_error:
            hooks.metrics.timed_out()
            hooks.refresh()
            raise
        hooks.metrics.waited(perf_counter() - t0)
        hooks.refresh()
        return conn

    async def putconn(conn: Any) -> None:
        try:
            await hooks.putconn(conn)
        finally:
            hooks.refresh()

    async def close(timeout: float = 5.0) -> None:
        try:
            await hooks.close(timeout=timeout)
        finally:
            hooks.refresh()

    return {"getconn": getconn, "putconn": putconn, "close": close}


def instrument_psycopg_pool(pool: _PoolT, *, pool_name: str | None = None) -> _PoolT:
    """Record the metrics of a ``psycopg_pool.ConnectionPool`` or ``AsyncConnectionPool``; return it.

    ``pool_name`` defaults to the pool's ``name``. Calling it again on the same pool changes
    nothing (the first ``pool_name`` stays). Instrument the pool before handing it to threads or
    tasks; the gauges are set at once and then on each checkout and return (see the module
    docstring).

    Raises:
        TypeError: ``pool`` is not a psycopg_pool connection pool.
    """
    import psycopg_pool

    if isinstance(pool, psycopg_pool.AsyncConnectionPool):
        make = _async_wrappers
    elif isinstance(pool, psycopg_pool.ConnectionPool):
        make = _sync_wrappers
    else:
        raise TypeError(
            f"instrument_psycopg_pool() needs a psycopg_pool.ConnectionPool or AsyncConnectionPool, "
            f"not {type(pool).__name__}"
        )
    if getattr(vars(pool).get("getconn"), _MARK, None) is not None:
        return pool
    hooks = _PsycopgHooks(pool, PoolMetrics(pool_name if pool_name is not None else str(pool.name)))
    for attr, wrapper in make(hooks, psycopg_pool.PoolTimeout).items():
        setattr(wrapper, _MARK, hooks)
        wrapper.__wrapped__ = getattr(hooks, attr)  # type: ignore[attr-defined]
        setattr(pool, attr, wrapper)
    hooks.refresh()
    return pool


def uninstrument_psycopg_pool(pool: ConnectionPool[Any] | AsyncConnectionPool[Any]) -> None:
    """Undo :func:`instrument_psycopg_pool`: put the pool's methods back and drop its gauge series.

    Does nothing when the pool is not instrumented.
    """
    attrs = getattr(pool, "__dict__", {})
    hooks: object = getattr(attrs.get("getconn"), _MARK, None)
    if not isinstance(hooks, _PsycopgHooks):
        return
    metrics = hooks.metrics
    for attr in ("getconn", "putconn", "close"):
        if getattr(attrs.get(attr), _MARK, None) is hooks:
            delattr(pool, attr)
    metrics.forget()
