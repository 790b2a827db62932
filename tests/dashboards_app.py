"""An instrumented example shop for the dashboard end-to-end test and the dashboard renderer.

Run as ``python -m uvicorn tests.dashboards_app:app`` (see :func:`running_shop`): a Starlette app
behind ``ObservabilityMiddleware`` with ``/metrics``, ``/health`` probes, an instrumented cache,
SQLite through the DB-API adapter, a psycopg pool (``DASH_PG_DSN``), RabbitMQ publishing,
consuming and queue-depth polling (``DASH_AMQP_URL``), business metrics and runtime metrics.
:func:`drive` sends mixed traffic: fast reads, orders, slow searches, 5xx and 404s.

Nothing here is a stand-in: every series comes from the SDK's real instrumentation.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from tests.prometheus_server import stop_process

ROOT = Path(__file__).resolve().parent.parent
QUEUE = "dashboards-e2e-orders"
_app: Any = None


def _build() -> Any:
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse, PlainTextResponse
    from starlette.routing import Mount, Route

    import bakhmach_obs
    from bakhmach_obs import business, runtime_metrics
    from bakhmach_obs.asgi import ObservabilityMiddleware
    from bakhmach_obs.dbapi import instrument_connection
    from bakhmach_obs.health import HealthChecks

    bakhmach_obs.configure(
        service_name="shop",
        environment="e2e",
        traces_sampler="always_on",
        traces_exporter="none",
        log_format="none",
    )
    rng = random.Random(7)
    db = instrument_connection(sqlite3.connect(":memory:", check_same_thread=False), db_system="sqlite")
    db.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)")
    db.executemany("INSERT INTO users VALUES (?, ?)", [(i, f"user{i}") for i in range(100)])
    db_lock = threading.Lock()
    profiles = bakhmach_obs.instrument_cache({}, name="profiles")
    sales = business.Transactions(types=["purchase", "refund"], currencies=["USD", "EUR"])
    features = business.Features(["search", "export", "wishlist"])
    checkout = business.Funnel("checkout", steps=["cart", "shipping", "payment", "confirmed"])
    active = business.ActiveUsers(refresh=0.5)
    segments = business.Segments(["free", "pro"])
    segments.set_engagement_score("free", 0.42)
    segments.set_engagement_score("pro", 0.77)
    segments.set_churn_ratio("free", 0.08)
    segments.set_churn_ratio("pro", 0.02)
    health = HealthChecks()
    health.add("sqlite", lambda: db.execute("SELECT 1").fetchone() == (1,))
    pool: Any = None
    stop = threading.Event()

    @bakhmach_obs.instrument
    def price(items: int) -> int:
        time.sleep(0.002 * items)
        if items > 8:
            raise ValueError("too many items")
        return 1999 * items

    async def user(request: Any) -> Any:
        uid = int(request.path_params["user_id"])
        active.seen(uid)
        cached = profiles.get(uid)
        if cached is None:
            with db_lock:
                row = db.execute("SELECT name FROM users WHERE id = ?", (uid,)).fetchone()
            cached = profiles[uid] = row[0] if row else None
        if uid % 10 == 3:  # a table that was never migrated: a failed statement
            with db_lock, contextlib.suppress(sqlite3.OperationalError):
                db.execute("SELECT * FROM audit_log WHERE user_id = ?", (uid,))
        if pool is not None and uid % 4 == 0:
            await asyncio.to_thread(_pg_query, pool)
        return JSONResponse({"id": uid, "name": cached})

    async def order(request: Any) -> Any:
        body = await request.json()
        uid, items = int(body["user"]), int(body["items"])
        active.seen(uid)
        checkout.step("cart")
        if rng.random() < 0.8:
            checkout.step("shipping")
            if rng.random() < 0.75:
                checkout.step("payment")
                try:
                    cents = price(items)
                except ValueError:
                    return JSONResponse({"error": "too many items"}, status_code=422)
                sales.record("purchase", body.get("currency", "USD"), minor_units=cents)
                checkout.step("confirmed")
        if rng.random() < 0.05:
            sales.record("refund", "USD", minor_units=500)
        with db_lock:
            db.execute("UPDATE users SET name = name WHERE id = ?", (uid,))
        return JSONResponse({"ok": True})

    async def search(request: Any) -> Any:
        features.use("search")
        await asyncio.sleep(float(request.query_params.get("delay", "0.3")))
        return JSONResponse({"results": []})

    async def export(request: Any) -> Any:
        features.use("export")
        with db_lock:
            rows = db.execute("SELECT id, name FROM users").fetchall()
        return PlainTextResponse("\n".join(f"{i},{n}" for i, n in rows))

    async def boom(request: Any) -> Any:
        return JSONResponse({"error": "payment provider down"}, status_code=rng.choice([500, 502, 503]))

    async def startup() -> None:
        nonlocal pool
        runtime_metrics.register(loop=asyncio.get_running_loop(), interval=0.2)
        if os.environ.get("DASH_PG_DSN"):
            pool = _pg_pool(os.environ["DASH_PG_DSN"])
        if os.environ.get("DASH_AMQP_URL"):
            threading.Thread(target=_amqp_worker, args=(os.environ["DASH_AMQP_URL"], stop), daemon=True).start()

    async def shutdown() -> None:
        stop.set()
        if pool is not None:
            pool.close()

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> Any:
        await startup()
        try:
            yield
        finally:
            await shutdown()

    app = Starlette(
        routes=[
            Route("/users/{user_id:int}", user),
            Route("/orders", order, methods=["POST"]),
            Route("/search", search),
            Route("/export", export),
            Route("/boom", boom),
            Mount("/health", app=health.asgi_app()),
            Route("/metrics", _AsgiEndpoint(bakhmach_obs.metrics_asgi_app())),
        ],
        lifespan=lifespan,
    )
    app.add_middleware(ObservabilityMiddleware)
    return app


class _AsgiEndpoint:
    """An ASGI app as a Starlette route endpoint (``/metrics`` exactly, no redirect to ``/metrics/``)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self.app(scope, receive, send)


def _pg_pool(dsn: str) -> Any:
    from psycopg_pool import ConnectionPool

    from bakhmach_obs.pools import instrument_psycopg_pool

    pool = ConnectionPool(dsn, min_size=1, max_size=4, open=False, timeout=5)
    pool = instrument_psycopg_pool(pool, pool_name="shop-db")
    pool.open(wait=True, timeout=10)
    return pool


def _pg_query(pool: Any) -> None:
    from bakhmach_obs.dbapi import instrument_connection

    with pool.connection() as conn:
        db = instrument_connection(conn, db_system="postgresql", db_namespace="test")
        db.execute("SELECT pg_sleep(0.005)").fetchone()


def _amqp_worker(url: str, stop: threading.Event) -> None:
    """Publish about three messages a second and consume two: the queue grows and ages."""
    import pika

    from bakhmach_obs import messaging
    from bakhmach_obs.rabbitmq import QueueDepthCollector, instrument_channel

    conn = pika.BlockingConnection(pika.URLParameters(url))
    channel = instrument_channel(conn.channel())
    channel.queue_declare(QUEUE, auto_delete=False)
    channel.queue_purge(QUEUE)
    collector = QueueDepthCollector(url, [QUEUE], interval=0.5).start()
    try:
        tick = 0
        while not stop.wait(0.1):
            tick += 1
            if tick % 3 == 0:
                channel.basic_publish("", QUEUE, b'{"order": 1}')
            if tick % 5 == 0:
                method, props, _body = channel.basic_get(QUEUE)
                if method is not None:
                    with messaging.consume(QUEUE, props.headers, system="rabbitmq"):
                        time.sleep(0.01)
                    channel.basic_ack(method.delivery_tag)
    finally:
        collector.stop()
        with contextlib.suppress(Exception):
            channel.queue_delete(QUEUE)
            conn.close()


def __getattr__(name: str) -> Any:  # uvicorn imports `app`: build it only then
    global _app
    if name == "app":
        if _app is None:
            _app = _build()
        return _app
    raise AttributeError(name)


# --- the test side ------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def running_shop(workdir: Path, *, pg_dsn: str | None = None, amqp_url: str | None = None) -> Iterator[str]:
    """Start the shop under uvicorn on a free loopback port; yield ``host:port``; stop it."""
    import httpx

    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "BAKHMACH_OBS_", "PROMETHEUS_MULTIPROC"))}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("DASH_PG_DSN", None)
    env.pop("DASH_AMQP_URL", None)
    if pg_dsn:
        env["DASH_PG_DSN"] = pg_dsn
    if amqp_url:
        env["DASH_AMQP_URL"] = amqp_url
    log = workdir / "shop.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                *(sys.executable, "-m", "uvicorn", "tests.dashboards_app:app", "--host", "127.0.0.1"),
                *("--port", str(port), "--no-access-log", "--log-level", "warning"),
            ],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"the shop exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://127.0.0.1:{port}/health/live", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise AssertionError(f"the shop did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.2)
        yield f"127.0.0.1:{port}"
    finally:
        stop_process(proc)


def drive(address: str, *, seconds: float, concurrency: int = 8, seed: int = 1) -> dict[str, int]:
    """Send mixed traffic for ``seconds``; return the count of responses by status code."""
    import httpx

    deadline = time.monotonic() + seconds
    counts: dict[str, int] = {}
    lock = threading.Lock()

    def worker(n: int) -> None:
        rng = random.Random(seed * 100 + n)
        with httpx.Client(base_url=f"http://{address}", timeout=10) as client:
            while time.monotonic() < deadline:
                roll = rng.random()
                if roll < 0.45:
                    r = client.get(f"/users/{rng.randrange(40)}")
                elif roll < 0.7:
                    r = client.post(
                        "/orders",
                        json={
                            "user": rng.randrange(500),
                            "items": rng.randrange(1, 10),
                            "currency": rng.choice(["USD", "EUR"]),
                        },
                    )
                elif roll < 0.8:
                    r = client.get("/search", params={"delay": f"{rng.choice([0.05, 0.2, 0.4, 0.8, 1.5]):.2f}"})
                elif roll < 0.86:
                    r = client.get("/export")
                elif roll < 0.93:
                    r = client.get("/boom")
                elif roll < 0.97:
                    r = client.get(f"/nope/{rng.randrange(1000)}")
                else:
                    r = client.get("/health/ready")
                with lock:
                    counts[str(r.status_code)] = counts.get(str(r.status_code), 0) + 1

    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(worker, range(concurrency)))
    return counts
