"""Health checks against the real PostgreSQL, Redis and RabbitMQ on loopback.

A dependency is made unreachable without touching the shared services: the checks go through a
local TCP proxy the test stops (connections refused, open ones cut) and starts again on the same
port. A hanging dependency is a TCP server that accepts and never answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
import time
from importlib import resources

import httpx
import jsonschema
import pytest
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.routing import Mount

from bakhmach_obs.health import HealthChecks, rabbitmq_check, redis_check, sql_check, tcp_check

from .conftest import need
from .tcp_proxy import TcpProxy

PG = ("127.0.0.1", 5432)
REDIS = ("127.0.0.1", 6379)
AMQP = ("127.0.0.1", 5672)
AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"
SEED_READY = {"status": "ready", "services": {"database": "connected", "cache": "connected", "queue": "connected"}}
SEED_SCHEMA = json.loads(resources.files("bakhmach_obs").joinpath("assets/health_seed.schema.json").read_text())
IETF_SCHEMA = json.loads(resources.files("bakhmach_obs").joinpath("assets/health_json.schema.json").read_text())

pytestmark = pytest.mark.services


def _up(address) -> bool:
    try:
        with socket.create_connection(address, timeout=0.5):
            return True
    except OSError:
        return False


@pytest.fixture
def services():
    need(_up(PG), "PostgreSQL is not running on 127.0.0.1:5432")
    need(_up(REDIS), "Redis is not running on 127.0.0.1:6379")
    need(_up(AMQP), "RabbitMQ is not running on 127.0.0.1:5672")


class Hanging:
    """Accepts connections and never answers (until closed)."""

    def __init__(self):
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.listener.settimeout(0.1)
        self.held: list[socket.socket] = []
        self.running = True
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while self.running:
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.held.append(conn)

    def close(self):
        self.running = False
        self.listener.close()
        for conn in self.held:
            conn.close()


@contextlib.contextmanager
def proxies(*targets):
    started = [TcpProxy(t).start() for t in targets]
    try:
        yield started
    finally:
        for p in started:
            p.stop()


def fast_redis(port, **options):
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    options = {"socket_connect_timeout": 1, "socket_timeout": 1, **options}
    return redis.Redis(host="127.0.0.1", port=port, retry=Retry(NoBackoff(), 0), **options)


def pg_factory(port):
    import psycopg

    return lambda: psycopg.connect(host="127.0.0.1", port=port, user="postgres", dbname="test", connect_timeout=2)


async def probe(app, path="/health/ready", **kw):
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://app") as client:
        started = time.monotonic()
        response = await client.get(path, **kw)
        return response, time.monotonic() - started


async def until(app, predicate, seconds=5.0):
    end = time.monotonic() + seconds
    while True:
        response, _ = await probe(app)
        if predicate(response) or time.monotonic() > end:
            return response
        await asyncio.sleep(0.05)


async def test_ready_with_real_services_then_unreachable_then_back(services):
    import redis

    with proxies(PG, REDIS) as (pg, rd):
        client = fast_redis(rd.port)
        health = HealthChecks(registry=CollectorRegistry(), cache_interval=0.1)
        health.add("database", sql_check(pg_factory(pg.port)))
        health.add("cache", redis_check(client))
        health.add("queue", rabbitmq_check(AMQP_URL))
        app = Starlette(routes=[Mount("/health", health.asgi_app())])
        try:
            response, _ = await probe(app)
            assert response.status_code == 200
            body = response.json()
            jsonschema.validate(body, SEED_SCHEMA)
            assert body == SEED_READY
            ietf, _ = await probe(app, headers={"Accept": "application/health+json"})
            jsonschema.validate(ietf.json(), IETF_SCHEMA)
            assert ietf.json()["status"] == "pass"
            assert ietf.json()["checks"]["database:responseTime"][0]["componentType"] == "datastore"

            for proxy, name in ((pg, "database"), (rd, "cache")):
                proxy.stop()
                await asyncio.sleep(0.15)  # past the cache interval
                response, elapsed = await probe(app)
                assert response.status_code == 503, response.text
                assert elapsed < health.deadline + 0.2
                body = response.json()
                jsonschema.validate(body, SEED_SCHEMA)
                assert body["status"] == "not_ready"
                assert body["services"][name] == "disconnected", body
                assert {k: v for k, v in body["services"].items() if k != name} == {
                    k: "connected" for k in ("database", "cache", "queue") if k != name
                }
                live, _ = await probe(app, "/health/live")
                assert live.status_code == 200 and live.json()["status"] == "alive"
                proxy.start()
                back = await until(app, lambda r: r.status_code == 200)
                assert back.json() == SEED_READY
        finally:
            client.close()
            assert isinstance(client, redis.Redis)


async def test_async_clients_engine_and_aio_pika(services):
    import redis.asyncio
    from redis.backoff import NoBackoff
    from redis.retry import Retry
    from sqlalchemy import create_engine

    with proxies(REDIS) as (rd,):
        engine = create_engine("postgresql+psycopg://postgres@127.0.0.1:5432/test", pool_size=1)
        client = redis.asyncio.Redis(host="127.0.0.1", port=rd.port, retry=Retry(NoBackoff(), 0), socket_timeout=1)
        health = HealthChecks(registry=CollectorRegistry(), cache_interval=0.0)
        health.add("database", sql_check(engine))
        health.add("cache", redis_check(client))
        health.add("queue", rabbitmq_check(AMQP_URL, asynchronous=True))
        health.add("broker_port", tcp_check(*AMQP), critical=False)
        try:
            report = await health.ready()
            assert report.body()["services"] == {**SEED_READY["services"], "broker_port": "connected"}
            rd.stop()
            report = await health.ready()
            assert report.status_code == 503 and report.body()["services"]["cache"] == "disconnected"
            rd.start()
            for _ in range(50):
                report = await health.ready()
                if report.ok:
                    break
                await asyncio.sleep(0.05)
            assert report.ok
        finally:
            await client.aclose()
            engine.dispose()


async def test_a_hanging_dependency_is_a_timeout_within_the_check_timeout(services):
    hanging = Hanging()
    client = fast_redis(hanging.port, socket_timeout=30)
    health = HealthChecks(registry=CollectorRegistry(), cache_interval=0.0)
    health.add("database", sql_check(pg_factory(5432)))
    health.add("cache", redis_check(client), timeout=0.3)
    health.add("queue", rabbitmq_check(AMQP_URL))
    app = Starlette(routes=[Mount("/health", health.asgi_app())])
    try:
        response, elapsed = await probe(app)
        assert response.status_code == 503
        assert response.json() == {
            "status": "not_ready", "services": {"database": "connected", "cache": "timeout", "queue": "connected"},
        }  # fmt: skip
        assert 0.28 <= elapsed < health.deadline  # cut at its 0.3 s timeout, before the 0.8 s deadline
        for _ in range(3):  # the hung PING keeps its one slot; liveness is unaffected
            live, live_elapsed = await probe(app, "/health/live")
            assert live.status_code == 200 and live_elapsed < 0.25  # never waits for the hung check
            again, _ = await probe(app)
            assert again.json()["services"]["cache"] == "timeout"
            await asyncio.sleep(0.1)
        assert health.executions("cache") == 1
    finally:
        hanging.close()
        client.close()


def _serve(app):
    import uvicorn

    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off", backlog=2048)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    end = time.monotonic() + 10
    while not server.started and time.monotonic() < end:
        time.sleep(0.01)
    assert server.started
    port = server.servers[0].sockets[0].getsockname()[1]
    return server, thread, port


def test_load_1000_concurrent_requests_run_each_real_check_once_per_interval(services):
    pytest.importorskip("uvicorn")
    counts = {"database": 0, "cache": 0, "queue": 0}

    def counted(name, check):
        def run():
            counts[name] += 1
            return check()

        return run

    client = fast_redis(REDIS[1])
    interval = 2.0
    # Generous timeouts: 1000 connections at once keep a 2-core machine busy; the count is the point.
    health = HealthChecks(registry=CollectorRegistry(), cache_interval=interval, deadline=10.0, timeout=8.0)
    health.add("database", counted("database", sql_check(pg_factory(5432))))
    health.add("cache", counted("cache", redis_check(client)))
    health.add("queue", counted("queue", rabbitmq_check(AMQP_URL)))
    server, thread, port = _serve(Starlette(routes=[Mount("/health", health.asgi_app())]))

    async def flood():
        limits = httpx.Limits(max_connections=1000, max_keepalive_connections=0)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", limits=limits, timeout=30) as http:
            started = time.monotonic()
            responses = await asyncio.gather(*(http.get("/health/ready") for _ in range(1000)))
            return responses, time.monotonic() - started

    try:
        responses, elapsed = asyncio.run(flood())
        assert [r.status_code for r in responses] == [200] * 1000
        assert all(r.json() == SEED_READY for r in responses)
        allowed = int(elapsed // interval) + 1
        assert all(1 <= n <= allowed for n in counts.values()), (counts, elapsed)
        assert counts == {n: health.executions(n) for n in counts}
    finally:
        server.should_exit = True
        thread.join(10)
        client.close()


async def test_rabbitmq_and_async_sql_checks_unreachable_then_back(services):
    from sqlalchemy.ext.asyncio import create_async_engine

    with proxies(PG, AMQP) as (pg, mq):
        import psycopg

        async def connect():
            return await psycopg.AsyncConnection.connect(
                host="127.0.0.1", port=pg.port, user="postgres", dbname="test", connect_timeout=2
            )

        engine = create_async_engine(f"postgresql+psycopg://postgres@127.0.0.1:{pg.port}/test", pool_size=1)
        url = f"amqp://guest:guest@127.0.0.1:{mq.port}/%2F"
        health = HealthChecks(registry=CollectorRegistry(), cache_interval=0.0)
        health.add("database", sql_check(connect))
        health.add("engine", sql_check(engine))
        health.add("queue", rabbitmq_check(url))
        health.add("queue_aio", rabbitmq_check(url, asynchronous=True))
        everything = {"database": "connected", "engine": "connected", "queue": "connected", "queue_aio": "connected"}
        try:
            report = await health.ready()
            assert report.body() == {"status": "ready", "services": everything}
            assert report.health_json()["checks"]["engine:responseTime"][0]["componentType"] == "datastore"
            for proxy, names in ((pg, ("database", "engine")), (mq, ("queue", "queue_aio"))):
                proxy.stop()
                await engine.dispose()  # pooled connections went down with the proxy
                started = time.monotonic()
                report = await health.ready()
                assert time.monotonic() - started < health.deadline + 0.2
                assert report.status_code == 503
                assert report.body()["services"] == {**everything, **{n: "disconnected" for n in names}}
                proxy.start()
                for _ in range(50):
                    report = await health.ready()
                    if report.ok:
                        break
                    await asyncio.sleep(0.05)
                assert report.body() == {"status": "ready", "services": everything}
        finally:
            await engine.dispose()
