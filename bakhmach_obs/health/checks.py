"""Built-in checks: small factories returning a check callable for :meth:`HealthChecks.add`.

Each takes the client the application already has (a SQLAlchemy engine, a redis client, a
connection factory) and maps its driver's errors onto the seed's states: a refused or
unreachable dependency raises :class:`~bakhmach_obs.health.Unavailable` (``"disconnected"``), a
driver timeout raises :class:`TimeoutError` (``"timeout"``), anything else is ``"error"``. The
drivers are imported only when a factory is called. Checks run inside
:func:`bakhmach_obs.suppress`, so their own queries are not counted as application traffic.

Example:
    >>> import asyncio
    >>> from bakhmach_obs.health import HealthChecks, checks
    >>> health = HealthChecks()
    >>> health.add("disk", checks.disk_check("/", min_free_ratio=0.0001), critical=False)
    >>> asyncio.run(health.ready()).body()["services"]
    {'disk': 'connected'}
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import inspect
import shutil
from collections.abc import Callable, Container
from typing import Any

from ..errors import ConfigurationError
from ._core import Check, CheckResult, Unavailable, process_rss_bytes

__all__ = ["disk_check", "http_check", "memory_check", "rabbitmq_check", "redis_check", "sql_check", "tcp_check"]


def _typed(check: Any, component_type: str) -> Check:
    setattr(check, "component_type", component_type)  # noqa: B010 - read by HealthChecks.add
    result: Check = check
    return result


def sql_check(target: Any, query: str = "SELECT 1", *, asynchronous: bool | None = None) -> Check:
    """Run ``query`` (default ``SELECT 1``) on a database.

    Args:
        target: a SQLAlchemy ``Engine`` or ``AsyncEngine`` (a pooled connection is checked out
            and returned), or a connection factory: a callable returning a new DB-API connection
            (``lambda: psycopg.connect(dsn, connect_timeout=1)``), or an ``async def`` returning
            an async one (psycopg ``AsyncConnection``, asyncpg); the connection is closed after.
        query: the statement to run.
        asynchronous: the factory is async (detected for ``async def`` and ``AsyncEngine``).

    A failure to connect is ``"disconnected"``; a failing query is ``"error"``.
    """
    if not callable(target) and not hasattr(target, "connect"):
        raise ConfigurationError("sql_check target", target, "a SQLAlchemy (Async)Engine or a connection factory")
    if hasattr(target, "sync_engine"):  # sqlalchemy.ext.asyncio.AsyncEngine
        from sqlalchemy import text

        statement = text(query)

        async def async_engine_check() -> bool:
            conn = target.connect()
            try:
                await conn.start()
            except Exception as exc:
                raise Unavailable("cannot connect to the database") from exc
            try:
                await conn.execute(statement)
            finally:
                await conn.close()
            return True

        return _typed(async_engine_check, "datastore")
    if hasattr(target, "dialect") and hasattr(target, "connect"):  # sqlalchemy.engine.Engine
        from sqlalchemy import text

        statement = text(query)

        def engine_check() -> bool:
            try:
                conn = target.connect()
            except Exception as exc:
                raise Unavailable("cannot connect to the database") from exc
            with conn:
                conn.execute(statement)
            return True

        return _typed(engine_check, "datastore")
    if asynchronous or (asynchronous is None and inspect.iscoroutinefunction(target)):

        async def async_factory_check() -> bool:
            try:
                conn = await target()
            except Exception as exc:
                raise Unavailable("cannot connect to the database") from exc
            try:
                if hasattr(conn, "fetchval"):  # asyncpg
                    await conn.fetchval(query)
                else:
                    cursor = conn.cursor()
                    await cursor.execute(query)
                    await cursor.fetchone()
            finally:
                await conn.close()
            return True

        return _typed(async_factory_check, "datastore")

    def factory_check() -> bool:
        try:
            conn = target()
        except Exception as exc:
            raise Unavailable("cannot connect to the database") from exc
        try:
            cursor = conn.cursor()
            cursor.execute(query)
            cursor.fetchone()
        finally:
            conn.close()
        return True

    return _typed(factory_check, "datastore")


def _redis_errors() -> tuple[type[BaseException], type[BaseException]]:
    import redis

    return redis.ConnectionError, redis.TimeoutError


def redis_check(client: Any, *, asynchronous: bool | None = None) -> Check:
    """``PING`` through a redis-py client (``redis.Redis`` or ``redis.asyncio.Redis``).

    The client's own retry policy applies: redis-py retries a refused connection with backoff by
    default, so an unreachable server then shows as ``"timeout"``. A client built with
    ``retry=Retry(NoBackoff(), 0)`` reports ``"disconnected"`` at once.
    """
    if not callable(getattr(client, "ping", None)):
        raise ConfigurationError("redis_check client", client, "a redis-py client (redis.Redis or redis.asyncio.Redis)")
    if asynchronous is None:  # by class, subclasses included: an async client's ping() is a plain def
        is_async = any(cls.__module__.startswith("redis.asyncio") for cls in type(client).__mro__)
    else:
        is_async = asynchronous
    connection_error, timeout_error = _redis_errors()

    if is_async:

        async def async_ping() -> bool:
            try:
                return bool(await client.ping())
            except timeout_error as exc:
                raise TimeoutError("redis did not answer") from exc
            except connection_error as exc:
                raise Unavailable("cannot reach redis") from exc

        return _typed(async_ping, "datastore")

    def ping() -> bool:
        try:
            answer = client.ping()
        except timeout_error as exc:
            raise TimeoutError("redis did not answer") from exc
        except connection_error as exc:
            raise Unavailable("cannot reach redis") from exc
        if inspect.isawaitable(answer):  # an async client not recognised: never count an unawaited PING as a pass
            close = getattr(answer, "close", None)
            if close is not None:
                close()
            raise TypeError("redis_check: the client's ping() is asynchronous; pass asynchronous=True")
        return bool(answer)

    return _typed(ping, "datastore")


def rabbitmq_check(
    url: str | None = None, *, connection: Any = None, asynchronous: bool = False, connect_timeout: float = 2.0
) -> Check:
    """RabbitMQ: open (and close) a connection to ``url``, or look at a live ``connection``.

    Args:
        url: an AMQP URL; each run opens a fresh connection with pika (in a thread) or, with
            ``asynchronous=True``, aio-pika. Refused, unreachable or rejected credentials are
            ``"disconnected"``.
        connection: instead of ``url``, the application's pika or aio-pika connection: the check
            reads its open/closed flag only (never uses it from another thread).
        connect_timeout: socket timeout of the probe connection, in seconds.
    """
    if (url is None) == (connection is None):
        raise ConfigurationError("rabbitmq_check", {"url": url, "connection": connection},
                                 "exactly one of url= or connection=")  # fmt: skip
    if connection is not None:

        def connection_open() -> bool:
            is_open = getattr(connection, "is_open", None)
            if is_open is not None:
                return bool(is_open)
            return not bool(getattr(connection, "is_closed", True))

        return _typed(connection_open, "component")
    amqp_url = url
    assert amqp_url is not None
    if asynchronous:

        async def aio_pika_check() -> bool:
            import aio_pika

            try:
                conn = await aio_pika.connect(amqp_url, timeout=connect_timeout)
            except (aio_pika.exceptions.AMQPConnectionError, OSError) as exc:
                raise Unavailable("cannot connect to RabbitMQ") from exc
            await conn.close()
            return True

        return _typed(aio_pika_check, "component")

    def pika_check() -> bool:
        pika: Any = importlib.import_module("pika")  # untyped

        params = pika.URLParameters(amqp_url)
        params.connection_attempts = 1
        params.socket_timeout = connect_timeout
        params.stack_timeout = connect_timeout
        params.blocked_connection_timeout = connect_timeout
        try:
            conn = pika.BlockingConnection(params)
        except pika.exceptions.AMQPConnectionError as exc:
            raise Unavailable("cannot connect to RabbitMQ") from exc
        conn.close()
        return True

    return _typed(pika_check, "component")


def tcp_check(host: str, port: int) -> Check:
    """A TCP connect to ``host:port`` (closed again at once): refused or unreachable is ``"disconnected"``."""
    if not isinstance(port, int) or not 0 < port < 65536:
        raise ConfigurationError("tcp_check port", port, "an integer 1-65535")

    async def tcp_connect() -> bool:
        _, writer = await asyncio.open_connection(host, port)
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return True

    return _typed(tcp_connect, "component")


def http_check(
    url: str,
    *,
    client: Any = None,
    expect_status: Container[int] = range(200, 400),
    headers: dict[str, str] | None = None,
) -> Check:
    """``GET url`` of a dependency: a status in ``expect_status`` (2xx-3xx) passes.

    Uses httpx (``client=``: your ``httpx.AsyncClient``; default a short-lived one per run); without
    httpx installed, urllib in a thread. A refused connection is ``"disconnected"``, another status
    ``"error"``. Redirects are not followed.
    """
    try:
        import httpx
    except ImportError:  # pragma: no cover - httpx is a test dependency
        return _typed(_urllib_check(url, expect_status, headers or {}), "component")

    async def get(c: Any) -> int:
        try:  # streamed and closed unread: the status line is the answer, the body may be anything
            async with c.stream("GET", url, headers=headers, follow_redirects=False) as response:
                return int(response.status_code)
        except httpx.TimeoutException as exc:
            raise TimeoutError("the dependency did not answer") from exc
        except httpx.TransportError as exc:
            raise Unavailable("cannot reach the dependency") from exc

    async def http_get() -> CheckResult:
        if client is not None:
            status = await get(client)
        else:
            async with httpx.AsyncClient(timeout=None) as own:
                status = await get(own)
        ok = status in expect_status
        return CheckResult("pass" if ok else "fail", state=None if ok else "error")

    return _typed(http_get, "component")


def _urllib_check(url: str, expect_status: Container[int], headers: dict[str, str]) -> Callable[[], CheckResult]:
    import urllib.error
    import urllib.request

    def http_get() -> CheckResult:
        request = urllib.request.Request(url, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=5.0) as response:
                status = int(response.status)
        except urllib.error.HTTPError as exc:
            status = exc.code
        except urllib.error.URLError as exc:
            if isinstance(exc.reason, TimeoutError):
                raise TimeoutError("the dependency did not answer") from exc
            raise Unavailable("cannot reach the dependency") from exc
        ok = status in expect_status
        return CheckResult("pass" if ok else "fail", state=None if ok else "error")

    return http_get


def disk_check(path: str = "/", *, min_free_bytes: int | None = None, min_free_ratio: float | None = 0.05) -> Check:
    """Free space on the filesystem of ``path``: fails below ``min_free_bytes`` or ``min_free_ratio``.

    Reports the free bytes as ``observedValue`` (measurement ``free``).
    """
    if min_free_bytes is not None and (not isinstance(min_free_bytes, int) or min_free_bytes < 0):
        raise ConfigurationError("disk_check min_free_bytes", min_free_bytes, "None or an integer >= 0")
    if min_free_ratio is not None and (not isinstance(min_free_ratio, (int, float)) or not 0 <= min_free_ratio <= 1):
        raise ConfigurationError("disk_check min_free_ratio", min_free_ratio, "None or a number from 0 to 1")

    def disk_free() -> CheckResult:
        usage = shutil.disk_usage(path)
        low = (min_free_bytes is not None and usage.free < min_free_bytes) or (
            min_free_ratio is not None and usage.total > 0 and usage.free / usage.total < min_free_ratio
        )
        return CheckResult("fail" if low else "pass", observed_value=usage.free, observed_unit="bytes",
                           measurement="free", state="error" if low else None)  # fmt: skip

    return _typed(disk_free, "system")


def memory_check(max_rss_bytes: int) -> Check:
    """The process's resident set size: fails above ``max_rss_bytes`` (register it ``critical=False``
    to have a warning rather than an unready pod). Reports the RSS in bytes (measurement ``rss``)."""
    if not isinstance(max_rss_bytes, int) or max_rss_bytes <= 0:
        raise ConfigurationError("memory_check max_rss_bytes", max_rss_bytes, "an integer > 0")

    def memory_rss() -> CheckResult:
        rss = process_rss_bytes()
        high = rss > max_rss_bytes
        return CheckResult("fail" if high else "pass", observed_value=rss, observed_unit="bytes", measurement="rss",
                           state="error" if high else None)  # fmt: skip

    return _typed(memory_rss, "system")
