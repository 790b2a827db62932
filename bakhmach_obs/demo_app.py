"""The demo's checkout service: ordinary FastAPI code instrumented with bakhmach_obs.

``bakhmach-obs demo`` runs this application (see :mod:`bakhmach_obs.demo`); it lives in the
package so that ``pip install 'bakhmach-obs[demo]'`` has it. It is written the way a service
would be, with three dependencies behind small classes:

* a **database** of products and orders: SQLite in memory by default, PostgreSQL (psycopg 3,
  temporary tables: nothing is left behind) when a ``postgresql://`` URL is given; every
  statement through :func:`bakhmach_obs.dbapi.instrument_connection`;
* a **cache** in front of the product lookups (cache-aside): a bounded in-process LRU through
  :func:`bakhmach_obs.cache.instrument_cache`, or Redis (:func:`bakhmach_obs.redis.instrument_redis`
  with ``cache_name``) when a ``redis://`` URL is given;
* a **queue** of accepted orders with a worker task consuming it: a bounded ``asyncio.Queue``
  through :mod:`bakhmach_obs.messaging`, or RabbitMQ (aio-pika,
  :func:`bakhmach_obs.rabbitmq.instrument_aio_channel`) when an ``amqp://`` URL is given.

Routes: ``GET /products/{product_id}`` (cache-aside over the database; 404 for an unknown id),
``POST /orders`` (the product, an ``INSERT`` and a publish; the worker marks the order
fulfilled), ``POST /payments`` (``tok_insufficient_funds`` is declined with ``PaymentError``
``PAYMENT_001``, answered 402; ``tok_provider_down`` makes the payment provider fail, answered
503), ``GET /slow?delay=`` (a slow dependency), ``/health/live``, ``/health/ready``,
``/health/startup`` (:mod:`bakhmach_obs.health`) and ``/metrics``.

Example:
    >>> from bakhmach_obs.demo_app import Services, create_app
    >>> services = Services()  # SQLite, in-process cache and queue: start() before serving
    >>> app = create_app(services)
    >>> sorted(r.path for r in app.routes if getattr(r, "methods", None))[:3]
    ['/orders', '/payments', '/products/{product_id}']
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import sqlite3
import threading
import time
import uuid
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from pydantic import BaseModel

import bakhmach_obs

from . import messaging
from .errors import ConfigurationError
from .health import HealthChecks

if TYPE_CHECKING:
    from fastapi import FastAPI

__all__ = [
    "CARD_DECLINED",
    "CARD_OK",
    "CARD_PROVIDER_DOWN",
    "ORDERS_QUEUE",
    "PRODUCT_COUNT",
    "OrderIn",
    "PaymentError",
    "PaymentIn",
    "ProviderUnavailable",
    "Services",
    "charge",
    "create_app",
    "validate_urls",
]

#: Products in the catalogue, ids 1 to PRODUCT_COUNT (other ids answer 404).
PRODUCT_COUNT = 40
#: A card the payment provider accepts.
CARD_OK = "tok_visa"
#: A card the provider declines with "Insufficient funds" (402, ``PAYMENT_001``).
CARD_DECLINED = "tok_insufficient_funds"
#: A card whose charge finds the provider down (503): the demo's injected server errors.
CARD_PROVIDER_DOWN = "tok_provider_down"
#: The queue of accepted orders (the in-process one; RabbitMQ's is :data:`AMQP_QUEUE`).
ORDERS_QUEUE = "orders"
#: The RabbitMQ queue (auto-deleted when the demo's consumer goes away).
AMQP_QUEUE = "bakhmach-demo-orders"
#: Entries the in-process product cache keeps (least recently used evicted first).
CACHE_SIZE = 16
#: Seconds a product stays in Redis.
REDIS_TTL = 60
#: Messages the in-process queue holds at most.
QUEUE_SIZE = 1000

log = logging.getLogger(__name__)


class PaymentError(Exception):
    """The payment provider refused the charge; ``error_code`` lands in the failure log record."""

    def __init__(self, message: str, error_code: str) -> None:
        super().__init__(message)
        self.error_code = error_code


class ProviderUnavailable(Exception):
    """The payment provider did not answer (the demo's injected 5xx)."""


def _price(product_id: int) -> int:
    return 199 + (product_id * 7919) % 4800


def validate_urls(database_url: str | None, redis_url: str | None, amqp_url: str | None) -> None:
    """Raise :class:`ConfigurationError` for a URL whose scheme the demo does not support.

    Example:
        >>> validate_urls("postgresql://postgres@127.0.0.1/test", None, None)
        >>> validate_urls("mysql://x", None, None)
        Traceback (most recent call last):
        ...
        bakhmach_obs.errors.ConfigurationError: invalid database_url: 'mysql://x'; accepted: ...
    """
    checks = (
        (
            "database_url",
            database_url,
            ("postgresql", "postgres", "sqlite"),
            "postgresql://user@host/db or sqlite:///file",
        ),
        ("redis_url", redis_url, ("redis", "rediss", "unix"), "redis://host:6379/0"),
        ("amqp_url", amqp_url, ("amqp", "amqps"), "amqp://guest:guest@host:5672/%2F"),
    )
    for setting, url, schemes, example in checks:
        if url is not None and urlsplit(url).scheme not in schemes:
            raise ConfigurationError(setting, url, f"a URL like {example}")


# --- the database -----------------------------------------------------------------------------------

_SCHEMA = (
    "CREATE TEMP TABLE products (id INTEGER PRIMARY KEY, name TEXT NOT NULL, price_cents INTEGER NOT NULL)",
    "CREATE TEMP TABLE orders (id {serial} PRIMARY KEY, user_id TEXT NOT NULL, product_id INTEGER NOT NULL,"
    " quantity INTEGER NOT NULL, status TEXT NOT NULL)",
)


class _Database(ABC):
    """Products and orders; ``system`` is the ``db.system.name``."""

    system = ""
    description = ""

    @abstractmethod
    async def start(self) -> None: ...

    @abstractmethod
    async def stop(self) -> None: ...

    @abstractmethod
    async def product(self, product_id: int) -> dict[str, Any] | None: ...

    @abstractmethod
    async def insert_order(self, user_id: str, product_id: int, quantity: int) -> int: ...

    @abstractmethod
    async def fulfil(self, order_id: int) -> None: ...

    @abstractmethod
    def health_check(self) -> Callable[[], Any]: ...


class _SQLite(_Database):
    """SQLite (in memory by default): statements are microseconds, so they run on the event loop."""

    system = "sqlite"

    def __init__(self, path: str = ":memory:") -> None:
        self.path = path
        self.description = f"sqlite ({'in memory' if path == ':memory:' else path})"
        self._raw: sqlite3.Connection | None = None
        self._conn: Any = None
        self._lock = threading.Lock()  # the health check runs in a thread

    async def start(self) -> None:
        from .dbapi import instrument_connection

        self._raw = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        with bakhmach_obs.suppress():  # the set-up is not application traffic
            for statement in _SCHEMA:
                self._raw.execute(statement.format(serial="INTEGER"))
            self._raw.executemany(
                "INSERT INTO products (id, name, price_cents) VALUES (?, ?, ?)",
                [(i, f"product-{i}", _price(i)) for i in range(1, PRODUCT_COUNT + 1)],
            )
        self._conn = instrument_connection(self._raw, db_system="sqlite", db_namespace="main")

    async def stop(self) -> None:
        if self._raw is not None:
            with self._lock:
                self._raw.close()
            self._raw = self._conn = None

    async def product(self, product_id: int) -> dict[str, Any] | None:
        with self._lock:
            row = self._conn.execute(
                "SELECT id, name, price_cents FROM products WHERE id = ?", (product_id,)
            ).fetchone()
        return None if row is None else {"id": row[0], "name": row[1], "price_cents": row[2]}

    async def insert_order(self, user_id: str, product_id: int, quantity: int) -> int:
        with self._lock:
            cursor = self._conn.execute(
                "INSERT INTO orders (user_id, product_id, quantity, status) VALUES (?, ?, ?, 'accepted')",
                (user_id, product_id, quantity),
            )
            return int(cursor.lastrowid)

    async def fulfil(self, order_id: int) -> None:
        with self._lock:
            self._conn.execute("UPDATE orders SET status = 'fulfilled' WHERE id = ?", (order_id,))

    def health_check(self) -> Callable[[], Any]:
        def database() -> bool:
            with self._lock:
                if self._raw is None:
                    return False
                self._raw.execute("SELECT 1").fetchone()
            return True

        return database


class _PostgreSQL(_Database):
    """PostgreSQL through one psycopg 3 async connection; temporary tables vanish with it."""

    system = "postgresql"

    def __init__(self, url: str) -> None:
        self.url = url
        parts = urlsplit(url)
        self.description = f"postgresql ({parts.hostname or 'local socket'}{parts.path or ''})"
        self._conn: Any = None
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        import psycopg

        from .dbapi import instrument_connection

        raw = await psycopg.AsyncConnection.connect(self.url, autocommit=True, connect_timeout=5)
        with bakhmach_obs.suppress():
            for statement in _SCHEMA:
                await raw.execute(statement.format(serial="SERIAL"))
            async with raw.cursor() as cur:
                await cur.executemany(
                    "INSERT INTO products (id, name, price_cents) VALUES (%s, %s, %s)",
                    [(i, f"product-{i}", _price(i)) for i in range(1, PRODUCT_COUNT + 1)],
                )
        info = raw.info
        self._conn = instrument_connection(
            raw, db_system="postgresql", db_namespace=info.dbname, server_address=info.host, server_port=info.port
        )

    async def stop(self) -> None:
        if self._conn is not None:
            await self._conn.close()
            self._conn = None

    async def product(self, product_id: int) -> dict[str, Any] | None:
        async with self._lock:
            cursor = await self._conn.execute("SELECT id, name, price_cents FROM products WHERE id = %s", (product_id,))
            row = await cursor.fetchone()
        return None if row is None else {"id": row[0], "name": row[1], "price_cents": row[2]}

    async def insert_order(self, user_id: str, product_id: int, quantity: int) -> int:
        async with self._lock:
            cursor = await self._conn.execute(
                "INSERT INTO orders (user_id, product_id, quantity, status) VALUES (%s, %s, %s, 'accepted') "
                "RETURNING id",
                (user_id, product_id, quantity),
            )
            row = await cursor.fetchone()
        return int(row[0])

    async def fulfil(self, order_id: int) -> None:
        async with self._lock:
            await self._conn.execute("UPDATE orders SET status = 'fulfilled' WHERE id = %s", (order_id,))

    def health_check(self) -> Callable[[], Any]:
        import psycopg

        from .health import sql_check

        return sql_check(lambda: psycopg.connect(self.url, connect_timeout=1))


# --- the cache ----------------------------------------------------------------------------------------


class _LRU(OrderedDict[str, str]):
    """A bounded least-recently-used mapping (what cachetools.LRUCache does, without the dependency)."""

    def __init__(self, maxsize: int) -> None:
        super().__init__()
        self.maxsize = maxsize

    def __getitem__(self, key: str) -> str:
        value = super().__getitem__(key)
        self.move_to_end(key)
        return value

    def get(self, key: str, default: Any = None) -> Any:
        try:
            return self[key]  # refreshes the entry, as a lookup should
        except KeyError:
            return default

    def __setitem__(self, key: str, value: str) -> None:
        super().__setitem__(key, value)
        self.move_to_end(key)
        while len(self) > self.maxsize:
            self.popitem(last=False)


class _Cache(ABC):
    """The product cache: JSON text by key."""

    description = ""

    @abstractmethod
    async def start(self) -> None: ...

    @abstractmethod
    async def stop(self) -> None: ...

    @abstractmethod
    async def get(self, key: str) -> str | None: ...

    @abstractmethod
    async def set(self, key: str, value: str) -> None: ...

    def health_check(self) -> Callable[[], Any]:
        return lambda: True


class _LocalCache(_Cache):
    description = f"in-process LRU ({CACHE_SIZE} entries)"

    def __init__(self) -> None:
        from .cache import instrument_cache

        # spans=True: the sample trace shows the lookups (an in-process lookup is far cheaper than its span).
        self._cache = instrument_cache(_LRU(CACHE_SIZE), name="products", spans=True)

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def get(self, key: str) -> str | None:
        value: str | None = self._cache.get(key)
        return value

    async def set(self, key: str, value: str) -> None:
        self._cache[key] = value


class _RedisCache(_Cache):
    def __init__(self, url: str) -> None:
        self.url = url
        parts = urlsplit(url)
        self.description = f"redis ({parts.hostname or parts.path}:{parts.port or 6379})"
        # Keys of this run only: every run starts cold, and nothing outlives REDIS_TTL.
        self.prefix = f"bakhmach-demo:{uuid.uuid4().hex[:12]}:"
        self._client: Any = None

    async def start(self) -> None:
        import redis.asyncio

        from .redis import instrument_redis

        client = redis.asyncio.Redis.from_url(self.url, socket_timeout=2, socket_connect_timeout=2)
        await client.ping()
        self._client = instrument_redis(client, cache_name="products")

    async def stop(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def get(self, key: str) -> str | None:
        value = await self._client.get(self.prefix + key)
        return None if value is None else bytes(value).decode()

    async def set(self, key: str, value: str) -> None:
        await self._client.set(self.prefix + key, value, ex=REDIS_TTL)

    def health_check(self) -> Callable[[], Any]:
        from .health import redis_check

        async def cache() -> bool:  # the client of the moment: a restart replaces it
            client = self._client
            if client is None:
                return False
            ping: Any = redis_check(client, asynchronous=True)
            return bool(await ping())

        return cache


# --- the queue ------------------------------------------------------------------------------------


@dataclass
class _Message:
    body: bytes
    headers: dict[str, Any] = field(default_factory=dict)


class _Queue(ABC):
    """Accepted orders go out with :meth:`publish`; :meth:`start` runs ``handler`` on each one."""

    description = ""
    destination = ORDERS_QUEUE

    def __init__(self) -> None:
        self.published = 0
        self.processed = 0
        self.failed = 0

    @abstractmethod
    async def start(self, handler: Callable[[dict[str, Any]], Awaitable[None]]) -> None: ...

    @abstractmethod
    async def stop(self) -> None: ...

    @abstractmethod
    async def publish(self, message: dict[str, Any]) -> None: ...

    @abstractmethod
    def health_check(self) -> Callable[[], Any]: ...

    async def drain(self, timeout: float) -> bool:
        """Wait until every published message was processed (or failed); False at the deadline."""
        deadline = time.monotonic() + timeout
        while self.processed + self.failed < self.published:
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.005)
        return True

    async def _process(self, handler: Callable[[dict[str, Any]], Awaitable[None]], body: bytes) -> None:
        try:
            await handler(json.loads(body))
        except Exception:
            self.failed += 1
            raise
        self.processed += 1


class _LocalQueue(_Queue):
    """A bounded ``asyncio.Queue`` and one worker task, instrumented with :mod:`bakhmach_obs.messaging`."""

    description = f"in-process (asyncio.Queue, at most {QUEUE_SIZE} messages)"
    system = "asyncio"

    def __init__(self) -> None:
        super().__init__()
        self._queue: asyncio.Queue[_Message] | None = None
        self._worker: asyncio.Task[None] | None = None

    async def start(self, handler: Callable[[dict[str, Any]], Awaitable[None]]) -> None:
        self._queue = asyncio.Queue(QUEUE_SIZE)
        self._worker = asyncio.create_task(self._work(handler), name="bakhmach-demo-worker")

    async def _work(self, handler: Callable[[dict[str, Any]], Awaitable[None]]) -> None:
        assert self._queue is not None
        while True:
            message = await self._queue.get()
            try:
                with messaging.consume(
                    self.destination, message.headers, system=self.system, body_size=len(message.body)
                ):
                    await self._process(handler, message.body)
            except Exception:  # recorded by consume(); the worker goes on
                log.exception("order processing failed")

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
            self._worker = None

    async def publish(self, message: dict[str, Any]) -> None:
        assert self._queue is not None
        body = json.dumps(message).encode()
        with messaging.publish(self.destination, system=self.system, body_size=len(body)) as headers:
            self._queue.put_nowait(_Message(body, headers))  # QueueFull when the worker falls behind
        self.published += 1

    def health_check(self) -> Callable[[], Any]:
        def queue() -> bool:
            return self._worker is not None and not self._worker.done()

        return queue


class _RabbitQueue(_Queue):
    """RabbitMQ through aio-pika: publish to the default exchange, consume with a callback."""

    destination = AMQP_QUEUE

    def __init__(self, url: str) -> None:
        super().__init__()
        self.url = url
        parts = urlsplit(url)
        self.description = f"rabbitmq ({parts.hostname}:{parts.port or 5672}, queue {AMQP_QUEUE})"
        self._connection: Any = None
        self._channel: Any = None

    async def start(self, handler: Callable[[dict[str, Any]], Awaitable[None]]) -> None:
        import aio_pika

        from .rabbitmq import instrument_aio_channel

        self._connection = await aio_pika.connect_robust(self.url, timeout=5)
        self._channel = instrument_aio_channel(await self._connection.channel())
        queue = await self._channel.declare_queue(AMQP_QUEUE, auto_delete=True)

        async def on_message(message: Any) -> None:  # runs inside messaging.consume()
            async with message.process(requeue=False):
                await self._process(handler, message.body)

        await queue.consume(on_message)

    async def stop(self) -> None:
        if self._connection is not None:
            await self._connection.close()
            self._connection = self._channel = None

    async def publish(self, message: dict[str, Any]) -> None:
        import aio_pika

        body = json.dumps(message).encode()
        await self._channel.default_exchange.publish(
            aio_pika.Message(body, content_type="application/json"), routing_key=AMQP_QUEUE
        )
        self.published += 1

    def health_check(self) -> Callable[[], Any]:
        async def queue() -> bool:  # on the connection's loop; the connection of the moment (a restart replaces it)
            connection = self._connection
            return connection is not None and not bool(getattr(connection, "is_closed", True))

        return queue


# --- the services ---------------------------------------------------------------------------------


class Services:
    """The service's dependencies, chosen by URL (``None``: the embedded default).

    Args:
        database_url: ``postgresql://...`` or ``sqlite:///path`` (default: SQLite in memory).
        redis_url: ``redis://...`` for the product cache (default: an in-process LRU).
        amqp_url: ``amqp://...`` for the orders queue (default: an in-process queue).
        seed: seed of the simulated latencies (payment provider, inventory).

    Raises:
        ConfigurationError: a URL with an unsupported scheme.
    """

    def __init__(
        self,
        database_url: str | None = None,
        redis_url: str | None = None,
        amqp_url: str | None = None,
        *,
        seed: int = 7,
    ) -> None:
        validate_urls(database_url, redis_url, amqp_url)
        if database_url is None:
            self.database: _Database = _SQLite()
        elif urlsplit(database_url).scheme == "sqlite":
            self.database = _SQLite(urlsplit(database_url).path.removeprefix("/") or ":memory:")
        else:
            self.database = _PostgreSQL(database_url)
        self.cache: _Cache = _LocalCache() if redis_url is None else _RedisCache(redis_url)
        self.queue: _Queue = _LocalQueue() if amqp_url is None else _RabbitQueue(amqp_url)
        self.rng = random.Random(seed)
        #: The readiness checks (database, cache, queue), added by :meth:`start`.
        self.health = HealthChecks(deadline=0.9, timeout=0.8)

    def describe(self) -> dict[str, str]:
        """What backs each dependency, for the report."""
        return {
            "database": self.database.description,
            "cache": self.cache.description,
            "queue": self.queue.description,
        }

    async def start(self) -> None:
        """Connect everything, create the tables, start the queue worker, register the health checks."""
        steps: tuple[tuple[str, str, Callable[[], Awaitable[None]]], ...] = (
            ("database", self.database.description, self.database.start),
            ("cache", self.cache.description, self.cache.start),
            ("queue", self.queue.description, lambda: self.queue.start(self._fulfil)),
        )
        for name, description, start in steps:
            try:
                await start()
            except ImportError:
                await self.stop()
                raise
            except Exception as exc:
                await self.stop()
                raise ConnectionError(f"cannot start the {name}, {description}: {type(exc).__name__}: {exc}") from exc
        health = self.health
        if not health.names():
            health.add("database", self.database.health_check())
            health.add("cache", self.cache.health_check(), critical=False)
            health.add("queue", self.queue.health_check())
        health.mark_started()

    async def stop(self) -> None:
        """Stop the worker and close every connection (never raises for a connection already gone)."""
        for part in (self.queue, self.cache, self.database):
            try:
                await part.stop()
            except Exception:  # closing what is left matters more
                log.warning("closing %s failed", type(part).__name__, exc_info=True)

    async def _fulfil(self, message: dict[str, Any]) -> None:
        await self.database.fulfil(int(message["order_id"]))

    async def delay(self, low: float, high: float) -> None:
        """A simulated dependency call taking between ``low`` and ``high`` seconds."""
        await asyncio.sleep(self.rng.uniform(low, high))


# --- the service layer ------------------------------------------------------------------------------


@bakhmach_obs.instrument
async def load_product(services: Services, product_id: int) -> dict[str, Any] | None:
    """Cache-aside: the cache first, the database on a miss (then cached)."""
    key = f"product:{product_id}"
    cached = await services.cache.get(key)
    if cached is not None:
        product: dict[str, Any] = json.loads(cached)
        return product
    found = await services.database.product(product_id)
    if found is not None:
        await services.cache.set(key, json.dumps(found))
    return found


@bakhmach_obs.instrument(action="payment_processing", attributes={"payment.provider": "demo-psp"})
async def charge(services: Services, user_id: str, amount_cents: int, card_token: str) -> str:
    """Charge a card at the (simulated) payment provider; return the charge id."""
    await services.delay(0.004, 0.03)
    if card_token == CARD_DECLINED:
        raise PaymentError("Insufficient funds", error_code="PAYMENT_001")
    if card_token == CARD_PROVIDER_DOWN:
        raise ProviderUnavailable("payment provider timed out")
    return f"ch_{user_id}_{amount_cents}"


# --- the web layer ---------------------------------------------------------------------------------


class OrderIn(BaseModel):
    """The body of ``POST /orders``."""

    user_id: str
    product_id: int
    quantity: int = 1


class PaymentIn(BaseModel):
    """The body of ``POST /payments``."""

    user_id: str
    amount_cents: int
    card_token: str


#: FastAPI's own OpenTelemetry support (0.165 and later) off: the middleware's SERVER span is the one.
FASTAPI_TELEMETRY_OFF: Mapping[str, Any] = {"tracing": False, "metrics": False, "logs": False, "auto_configure": False}


def create_app(services: Services, *, registry: Any = None) -> FastAPI:
    """The FastAPI application over ``services`` (start them before the first request).

    Args:
        services: the dependencies.
        registry: the registry ``/metrics`` serves (default: the configured one).
    """
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse

    from .asgi import ObservabilityMiddleware

    # ``telemetry`` as a keyword of the mapping: releases before 0.165 keep it in app.extra (harmless).
    options: dict[str, Any] = {"telemetry": dict(FASTAPI_TELEMETRY_OFF)}
    app = FastAPI(title="checkout", openapi_url=None, **options)
    app.add_middleware(ObservabilityMiddleware)

    @app.exception_handler(PaymentError)
    async def declined(request: Request, exc: PaymentError) -> JSONResponse:
        return JSONResponse(
            status_code=402,
            content={"error": str(exc), "error_code": exc.error_code, "correlation_id": bakhmach_obs.correlation_id()},
        )

    @app.exception_handler(ProviderUnavailable)
    async def unavailable(request: Request, exc: ProviderUnavailable) -> JSONResponse:
        return JSONResponse(status_code=503, content={"error": "payment provider unavailable"})

    @app.get("/products/{product_id}")
    async def get_product(product_id: int) -> JSONResponse:
        product = await load_product(services, product_id)
        if product is None:
            return JSONResponse(status_code=404, content={"error": "no such product"})
        return JSONResponse(product)

    @app.post("/orders", status_code=201)
    async def create_order(order: OrderIn) -> JSONResponse:
        with bakhmach_obs.log_context(user_id=order.user_id, action="order_creation"):
            product = await load_product(services, order.product_id)
            if product is None:
                return JSONResponse(status_code=404, content={"error": "no such product"})
            order_id = await services.database.insert_order(order.user_id, order.product_id, order.quantity)
            await services.queue.publish({"order_id": order_id, "product_id": order.product_id})
            log.info("order accepted", extra={"order_id": order_id, "product_id": order.product_id})
            total = product["price_cents"] * order.quantity
            return JSONResponse(status_code=201, content={"order_id": order_id, "total_cents": total})

    @app.post("/payments", status_code=201)
    async def create_payment(payment: PaymentIn) -> dict[str, Any]:
        with bakhmach_obs.log_context(user_id=payment.user_id):
            charge_id = await charge(services, payment.user_id, payment.amount_cents, payment.card_token)
            return {"charge_id": charge_id, "status": "captured"}

    @app.get("/slow")
    async def slow(delay: float = 0.3) -> dict[str, float]:
        delay = max(0.0, min(delay, 5.0))
        await asyncio.sleep(delay)
        return {"slept": delay}

    app.mount("/health", services.health.asgi_app())
    app.mount("/metrics", bakhmach_obs.metrics_asgi_app(registry))
    return app
