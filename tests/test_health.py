"""Health checks: registry, probes, formats, caching and single-flight, timeouts, metrics, logs, glue.

Everything here runs in process without external services; the checks against real PostgreSQL,
Redis and RabbitMQ are in test_health_services.py.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from importlib import resources

import django
import httpx
import jsonschema
import pytest
from django.conf import settings
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.routing import Mount

from bakhmach_obs import conventions as c
from bakhmach_obs.errors import ConfigurationError
from bakhmach_obs.health import CheckResult, HealthChecks, Unavailable, checks
from bakhmach_obs.testing import capture

if not settings.configured:  # test_django.py configures the same way when it runs first
    settings.configure(
        DEBUG=False, SECRET_KEY="not-a-secret", ALLOWED_HOSTS=["testserver"], ROOT_URLCONF=__name__,
        MIDDLEWARE=[], INSTALLED_APPS=[], DATABASES={}, LOGGING_CONFIG=None, USE_TZ=True,
    )  # fmt: skip
    django.setup()

from django.test import AsyncClient, Client, override_settings

SEED_SCHEMA = json.loads(resources.files("bakhmach_obs").joinpath("assets/health_seed.schema.json").read_text())
IETF_SCHEMA = json.loads(resources.files("bakhmach_obs").joinpath("assets/health_json.schema.json").read_text())
SEED_READY = {"status": "ready", "services": {"database": "connected", "cache": "connected", "queue": "connected"}}


def seed_valid(body):
    jsonschema.validate(body, SEED_SCHEMA)
    return body


def ietf_valid(body):
    jsonschema.validate(body, IETF_SCHEMA)
    return body


class Counted:
    """A check that counts its executions; ``result`` and ``delay`` can change between calls."""

    def __init__(self, result=True, delay=0.0):
        self.result, self.delay, self.calls = result, delay, 0
        self._lock = threading.Lock()

    def __call__(self):
        with self._lock:
            self.calls += 1
        if self.delay:
            time.sleep(self.delay)
        if isinstance(self.result, BaseException):
            raise self.result
        return self.result


class CountedAsync(Counted):
    async def __call__(self):
        self.calls += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        if isinstance(self.result, BaseException):
            raise self.result
        return self.result


def seed_registry(registry=None, **options):
    health = HealthChecks(registry=registry or CollectorRegistry(), **options)
    db, cache, queue = Counted(), CountedAsync(), Counted()
    health.add("database", db)
    health.add("cache", cache)
    health.add("queue", queue)
    return health, (db, cache, queue)


async def get(app, *paths, headers=None):
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://app") as client:
        return [await client.get(p, headers=headers or {}) for p in paths]


def mounted(health):
    return Starlette(routes=[Mount("/health", health.asgi_app())])


# --- configuration -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "setting"),
    [
        ({"deadline": 0}, "health.deadline"),
        ({"deadline": -1}, "health.deadline"),
        ({"deadline": float("nan")}, "health.deadline"),
        ({"timeout": -0.1}, "health.timeout"),
        ({"timeout": 0.9}, "health.timeout"),  # above the default 0.8 s deadline
        ({"cache_interval": -1}, "health.cache_interval"),
        ({"verbose": ""}, "health.verbose"),
        ({"verbose": 3}, "health.verbose"),
    ],
)
def test_bad_registry_configuration_names_the_setting(options, setting):
    with pytest.raises(ConfigurationError) as info:
        HealthChecks(**options)
    assert info.value.setting == setting
    assert "accepted" in str(info.value)


@pytest.mark.parametrize(
    ("args", "options", "setting"),
    [
        (("database", lambda: True), {"timeout": 1.5}, "health.timeout"),
        (("database", lambda: True), {"timeout": 0}, "health.timeout"),
        (("database", lambda: True), {"cache_interval": -2}, "health.cache_interval"),
        (("data base", lambda: True), {}, "health check name"),
        (("db:conn", lambda: True), {}, "health check name"),
        (("", lambda: True), {}, "health check name"),
        (("database", "not callable"), {}, "health check"),
        (("database", lambda: True), {"critical": "yes"}, "health.critical"),
    ],
)
def test_bad_check_registration_names_the_setting(args, options, setting):
    with pytest.raises(ConfigurationError) as info:
        HealthChecks().add(*args, **options)
    assert info.value.setting == setting


def test_duplicate_names_are_rejected():
    health = HealthChecks()
    health.add("database", lambda: True)
    with pytest.raises(ConfigurationError, match="not registered yet"):
        health.add("database", lambda: True)
    with pytest.raises(ConfigurationError):
        health.asgi_app(probes=["ready", "metrics"])


# --- bodies and formats --------------------------------------------------------------------------------


def test_seed_bodies_status_codes_and_headers():
    health, _ = seed_registry()
    live, ready, startup = asyncio.run(get(mounted(health), "/health/live", "/health/ready", "/health/startup"))
    assert ready.status_code == 200 and seed_valid(ready.json()) == SEED_READY
    assert list(ready.json()) == ["status", "services"]
    assert live.status_code == 200
    body = seed_valid(live.json())
    assert list(body) == ["status", "uptime_seconds", "memory_usage_mb"] and body["status"] == "alive"
    assert type(body["uptime_seconds"]) is int and type(body["memory_usage_mb"]) is int
    assert 1 <= body["memory_usage_mb"] < 4096  # the RSS of this test process, in MiB
    assert startup.status_code == 200 and seed_valid(startup.json())["status"] == "started"
    for response in (live, ready, startup):
        assert response.headers["cache-control"] == "no-store"
        assert response.headers["content-type"] == "application/json"


def test_critical_failure_is_503_with_the_failing_state_and_non_critical_keeps_200():
    health = HealthChecks(registry=CollectorRegistry(), cache_interval=0)
    health.add("database", Counted(Unavailable("refused")))
    health.add("cache", Counted(ValueError("postgresql://admin:s3cret@db:5432/prod version 15.2")), critical=False)
    health.add("queue", Counted(False), critical=False)
    (response,) = asyncio.run(get(mounted(health), "/health/ready"))
    assert response.status_code == 503
    assert seed_valid(response.json()) == {
        "status": "not_ready", "services": {"database": "disconnected", "cache": "error", "queue": "disconnected"},
    }  # fmt: skip
    assert "s3cret" not in response.text and "5432" not in response.text and "Traceback" not in response.text

    relaxed = HealthChecks(registry=CollectorRegistry())
    relaxed.add("database", lambda: True)
    relaxed.add("cache", Counted(RuntimeError("boom")), critical=False)
    (response,) = asyncio.run(get(mounted(relaxed), "/health/ready"))
    assert response.status_code == 200
    assert response.json() == {"status": "ready", "services": {"database": "connected", "cache": "error"}}


def test_ietf_format_by_accept_header_or_query_and_verbose_durations():
    health = HealthChecks(registry=CollectorRegistry(), verbose=True)
    health.add("database", lambda: True, component_type="datastore")
    health.add("cache", Counted(ConnectionRefusedError(111, "refused")), critical=False)
    health.add("disk", checks.disk_check("/", min_free_ratio=0.0))
    app = mounted(health)
    by_header, by_query, encoded, verbose, liveness = asyncio.run(_ietf_requests(app))
    for response in (by_header, by_query, encoded):
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/health+json"
        body = ietf_valid(response.json())
        assert body["status"] == "warn"  # a non-critical failure
        assert set(body["checks"]) == {"database:responseTime", "cache:responseTime", "disk:free"}
        assert body["checks"]["cache:responseTime"][0] == {
            "componentType": "component", "status": "warn", "time": body["checks"]["cache:responseTime"][0]["time"],
            "output": "disconnected",
        }  # fmt: skip
        assert body["checks"]["database:responseTime"][0]["componentType"] == "datastore"
        disk = body["checks"]["disk:free"][0]
        assert disk["componentType"] == "system" and disk["observedUnit"] == "bytes" and disk["observedValue"] > 0
        assert "observedValue" not in body["checks"]["database:responseTime"][0]
    body = ietf_valid(verbose.json())
    database = body["checks"]["database:responseTime"][0]
    assert database["observedUnit"] == "ms" and 0 <= database["observedValue"] < 800
    assert body["checks"]["disk:responseTime"][0]["observedUnit"] == "ms"
    live = ietf_valid(liveness.json())
    assert live["status"] == "pass" and live["checks"]["uptime"][0]["observedUnit"] == "s"


async def _ietf_requests(app):
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://app") as client:
        return [
            await client.get("/health/ready", headers={"Accept": "application/health+json"}),
            await client.get("/health/ready?format=health+json"),
            await client.get("/health/ready?format=health%2Bjson"),
            await client.get("/health/ready?format=health+json&verbose"),
            await client.get("/health/live", headers={"Accept": "application/health+json, application/json;q=0.5"}),
        ]


def test_ietf_fail_is_503_and_seed_verbose_details():
    health = HealthChecks(registry=CollectorRegistry(), verbose=True)
    health.add("database", Counted(TimeoutError()))
    r1, r2 = asyncio.run(get(mounted(health), "/health/ready?format=health+json", "/health/ready?verbose=1"))
    assert r1.status_code == 503 and ietf_valid(r1.json())["status"] == "fail"
    assert r1.json()["checks"]["database:responseTime"][0]["output"] == "timeout"
    details = seed_valid(r2.json())["details"]["database"]
    assert details["critical"] is True and details["cached"] is True and details["duration_seconds"] >= 0


def test_verbose_is_off_by_default_and_behind_the_token_when_one_is_set():
    plain = HealthChecks(registry=CollectorRegistry())
    plain.add("database", lambda: True)
    (r,) = asyncio.run(get(mounted(plain), "/health/ready?verbose"))
    assert "details" not in r.json()

    guarded = HealthChecks(registry=CollectorRegistry(), verbose="t0ken")
    guarded.add("database", lambda: True)
    app = mounted(guarded)
    (anonymous,) = asyncio.run(get(app, "/health/ready?verbose"))
    (wrong,) = asyncio.run(get(app, "/health/ready?verbose", headers={"Authorization": "Bearer nope"}))
    (right,) = asyncio.run(get(app, "/health/ready?verbose", headers={"Authorization": "Bearer t0ken"}))
    assert "details" not in anonymous.json() and "details" not in wrong.json()
    assert "details" in seed_valid(right.json())


def test_methods_paths_and_head():
    health, _ = seed_registry()
    app = mounted(health)

    async def calls():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://app") as client:
            return (
                await client.post("/health/ready"),
                await client.head("/health/ready"),
                await client.get("/health/other"),
                await client.get("/health/ready/"),
            )

    post, head, other, slash = asyncio.run(calls())
    assert post.status_code == 405 and post.headers["allow"] == "GET, HEAD"
    assert head.status_code == 200 and head.content == b""
    assert other.status_code == 404
    assert slash.status_code == 200
    # the app is also a whole server (a probe-only port): /health/<probe> there
    (standalone,) = asyncio.run(get(health.asgi_app(), "/health/ready"))
    assert standalone.json() == SEED_READY


# --- caching, single-flight, timeouts -------------------------------------------------------------------


def test_1000_concurrent_probes_run_each_check_once_per_interval():
    # The in-process client shares the server's event loop, which 1000 requests keep busy for about
    # a second here: generous timeouts, so that the count, not the loop's lag, is what is measured.
    health = HealthChecks(registry=CollectorRegistry(), cache_interval=30.0, deadline=10.0, timeout=8.0)
    db, cache, queue = Counted(delay=0.05), CountedAsync(delay=0.05), Counted()
    health.add("database", db)
    health.add("cache", cache)
    health.add("queue", queue)
    app = mounted(health)

    async def flood():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://app") as client:
            return await asyncio.gather(*(client.get("/health/ready") for _ in range(1000)))

    started = time.monotonic()
    responses = asyncio.run(flood())
    elapsed = time.monotonic() - started
    assert [r.status_code for r in responses] == [200] * 1000
    assert all(r.json() == SEED_READY for r in responses)
    assert (db.calls, cache.calls, queue.calls) == (1, 1, 1), elapsed
    assert [health.executions(n) for n in ("database", "cache", "queue")] == [1, 1, 1]


def test_sustained_probes_run_a_check_at_most_once_per_interval():
    interval = 0.1
    health = HealthChecks(registry=CollectorRegistry(), cache_interval=interval)
    sync, coro = Counted(delay=0.01), CountedAsync(delay=0.01)
    health.add("database", sync)
    health.add("cache", coro)

    async def hammer(seconds):
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            reports = await asyncio.gather(*(health.ready() for _ in range(50)))
            assert all(r.ok for r in reports)
            await asyncio.sleep(0.002)

    started = time.monotonic()
    asyncio.run(hammer(1.0))
    elapsed = time.monotonic() - started
    for check in (sync, coro):
        # runs start at least `interval` after the previous one finished
        assert 3 <= check.calls <= elapsed / interval + 1, (check.calls, elapsed)


def test_a_hung_sync_check_times_out_keeps_its_one_thread_and_reports_timeout_again():
    release = threading.Event()
    calls = []

    def hung():
        calls.append(1)
        release.wait(10)
        return True

    health = HealthChecks(registry=CollectorRegistry(), cache_interval=0.0, deadline=0.8, timeout=0.2)
    health.add("database", hung)
    health.add("cache", lambda: True, timeout=0.1)
    threads_before = threading.active_count()
    try:
        started = time.monotonic()
        first = asyncio.run(health.ready())
        assert 0.18 <= time.monotonic() - started < 0.6  # its 0.2 s timeout, not the 0.8 s deadline
        assert first.status_code == 503 and first.body()["services"] == {"database": "timeout", "cache": "connected"}
        for _ in range(5):
            time.sleep(0.05)
            again = health.ready_sync()
            assert again.body()["services"]["database"] == "timeout"
        assert len(calls) == 1  # no new run while the hung one holds the slot
        assert threading.active_count() <= threads_before + 1
        # each timeout is observed at the check's timeout, not at the hung run's growing age
        registry = health.registry
        count = registry.get_sample_value(f"{c.HEALTH_CHECK_DURATION.name}_count", {"check": "database"})
        total = registry.get_sample_value(f"{c.HEALTH_CHECK_DURATION.name}_sum", {"check": "database"})
        assert count is not None and count >= 2 and total is not None
        assert total <= count * 0.2 + 0.2  # the first one, from the run itself, may exceed it slightly
    finally:
        release.set()
    deadline = time.monotonic() + 2
    while health._checks["database"].run is not None and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.2)  # a timeout is reused for at least the check's timeout
    recovered = health.ready_sync()
    assert recovered.ok and len(calls) == 2


def test_an_async_check_is_cancelled_at_its_timeout():
    cancelled = []

    async def hangs():
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise
        return True

    health = HealthChecks(registry=CollectorRegistry(), cache_interval=0.0)
    health.add("cache", hangs, timeout=0.15)

    async def probe():
        started = time.monotonic()
        report = await health.ready()
        return report, time.monotonic() - started

    report, elapsed = asyncio.run(probe())
    assert report.body() == {"status": "not_ready", "services": {"cache": "timeout"}}
    assert 0.14 <= elapsed < 0.6  # cut at its 0.15 s timeout, well before the 0.8 s deadline
    assert cancelled == [True]
    assert health._checks["cache"].run is None  # the slot is free again


def test_ready_sync_runs_async_checks_on_its_background_loop():
    health = HealthChecks(registry=CollectorRegistry())
    loops = []

    async def cache():
        loops.append(asyncio.get_running_loop())
        return True

    health.add("cache", cache)
    health.add("database", lambda: True)
    try:
        assert health.ready_sync().body() == {
            "status": "ready",
            "services": {"cache": "connected", "database": "connected"},
        }
        assert len(loops) == 1 and loops[0] is health._background
    finally:
        health.close()
    assert loops[0].is_closed()


def test_a_bad_return_value_or_awaitable_from_a_sync_callable_is_an_error():
    health = HealthChecks(registry=CollectorRegistry())
    health.add("weird", lambda: "yes")

    async def coro():
        return True

    health.add("forgot", lambda: coro(), asynchronous=False)
    health.add("warned", lambda: CheckResult("warn"))
    report = health.ready_sync()
    assert report.body()["services"] == {"weird": "error", "forgot": "error", "warned": "connected"}
    assert report.health_json()["checks"]["warned:responseTime"][0]["status"] == "warn"


# --- startup --------------------------------------------------------------------------------------------


def test_startup_waits_for_its_checks_then_stays_started():
    ready = Counted(False)
    health = HealthChecks(registry=CollectorRegistry(), cache_interval=0.0)
    health.add("migrations", ready, startup=True)
    health.add("database", lambda: True)
    app = mounted(health)
    (first,) = asyncio.run(get(app, "/health/startup"))
    assert first.status_code == 503 and seed_valid(first.json()) == {
        "status": "starting",
        "services": {"migrations": "disconnected"},
    }
    ready.result = True
    (second,) = asyncio.run(get(app, "/health/startup"))
    assert second.status_code == 200 and second.json()["status"] == "started"
    ready.result = False
    calls = ready.calls
    (third,) = asyncio.run(get(app, "/health/startup"))
    assert third.status_code == 200 and ready.calls == calls  # started for ever, no more runs
    (readiness,) = asyncio.run(get(app, "/health/ready"))
    assert readiness.json() == {"status": "ready", "services": {"database": "connected"}}  # startup checks excluded


def test_startup_can_require_mark_started():
    health = HealthChecks(registry=CollectorRegistry(), require_mark_started=True)
    assert health.startup_sync().status_code == 503
    health.mark_started()
    assert health.startup_sync().status_code == 200 and health.started


# --- metrics and logs ---------------------------------------------------------------------------------


def test_metrics_count_runs_not_cached_answers(registry):
    health = HealthChecks(registry=registry, cache_interval=30.0)
    health.add("database", lambda: True)
    health.add("cache", Counted(Unavailable()), critical=False)
    for _ in range(5):
        health.ready_sync()
    assert registry.get_sample_value(c.HEALTH_CHECK_STATUS.name, {"check": "database"}) == 1.0
    assert registry.get_sample_value(c.HEALTH_CHECK_STATUS.name, {"check": "cache"}) == 0.0
    runs = c.HEALTH_CHECK_RUNS.name
    assert registry.get_sample_value(runs, {"check": "database", "result": "pass"}) == 1.0
    assert registry.get_sample_value(runs, {"check": "cache", "result": "fail"}) == 1.0
    count = c.HEALTH_CHECK_DURATION.name + "_count"
    assert registry.get_sample_value(count, {"check": "database"}) == 1.0


def test_timeouts_are_counted_and_the_configured_registry_is_the_default():
    with capture() as cap:
        health = HealthChecks(cache_interval=0.0)

        async def slow():
            await asyncio.sleep(1)

        health.add("cache", slow, timeout=0.05)
        asyncio.run(health.ready())
        assert cap.sample(c.HEALTH_CHECK_RUNS.name, check="cache", result="timeout") == 1.0
        assert cap.sample(c.HEALTH_CHECK_STATUS.name, check="cache") == 0.0


def test_state_changes_are_logged_once_each_with_details_only_in_the_log(caplog):
    check = Counted(True)
    health = HealthChecks(registry=CollectorRegistry(), cache_interval=0.0)
    health.add("database", check)
    caplog.set_level(logging.INFO, logger="bakhmach_obs.health")
    health.ready_sync()
    assert caplog.records == []  # starting healthy is not a change
    check.result = Unavailable("connection to 10.0.0.7:5432 refused")
    check.result.__cause__ = OSError("postgresql://app:pw@10.0.0.7/db refused")
    for _ in range(3):
        report = health.ready_sync()
    assert report.status_code == 503
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2, messages  # the check's change and the readiness change, once each
    assert "database" in messages[0] and "disconnected" in messages[0] and "OSError" in messages[0]
    assert caplog.records[1].health_status == "not_ready"
    check.result = True
    health.ready_sync()
    assert [r.levelname for r in caplog.records[2:]] == ["INFO", "INFO"]
    assert caplog.records[-1].getMessage() == "readiness changed: ready"


def test_liveness_never_runs_a_check():
    health, (db, cache, queue) = seed_registry()
    for _ in range(20):
        assert health.live()["status"] == "alive"
    (r,) = asyncio.run(get(mounted(health), "/health/live"))
    assert r.status_code == 200 and db.calls == cache.calls == queue.calls == 0


# --- mounting -------------------------------------------------------------------------------------------


def test_health_paths_are_excluded_from_request_telemetry():
    from fastapi import FastAPI

    from bakhmach_obs.asgi import ObservabilityMiddleware

    with capture() as cap:
        health, _ = seed_registry(cap.registry)
        app = FastAPI(telemetry={"tracing": False, "metrics": False, "logs": False, "auto_configure": False})
        app.add_middleware(ObservabilityMiddleware)
        app.mount("/health", health.asgi_app())

        @app.get("/users/{user_id}")
        async def user(user_id: int):
            return {"id": user_id}

        responses = asyncio.run(get(app, "/health/live", "/health/ready", "/health/startup", "/users/1"))
        assert [r.status_code for r in responses] == [200, 200, 200, 200]
        assert responses[1].json() == SEED_READY
        routes = {
            s.labels["http_route"]
            for m in cap.registry.collect()
            if m.name == c.HTTP_SERVER_DURATION.family
            for s in m.samples
        }
        assert routes == {"/users/{user_id}"}
        assert [s.name for s in cap.spans()] == ["GET /users/{user_id}"]
        # the check metrics are there, in the configured registry
        assert cap.sample(c.HEALTH_CHECK_STATUS.name, check="database") == 1.0


def test_wsgi_app_and_flask_blueprint():
    from flask import Flask
    from werkzeug.test import Client as WerkzeugClient

    health, (db, _, _) = seed_registry(cache_interval=0.0)
    try:
        client = WerkzeugClient(health.wsgi_app())
        ready = client.get("/ready")
        assert ready.status_code == 200 and seed_valid(ready.get_json()) == SEED_READY
        assert ready.headers["Cache-Control"] == "no-store"
        assert seed_valid(client.get("/live").get_json())["status"] == "alive"
        assert client.post("/ready").status_code == 405
        ietf = client.get("/ready?format=health+json")
        assert ietf.headers["Content-Type"] == "application/health+json" and ietf_valid(ietf.get_json())

        app = Flask("shop")
        app.register_blueprint(health.flask_blueprint())
        with app.test_client() as fc:
            assert fc.get("/health/ready").get_json() == SEED_READY
            assert seed_valid(fc.get("/health/live").get_json())["status"] == "alive"
            assert fc.get("/health/startup").status_code == 200
            assert fc.get("/health/ready").headers["Cache-Control"] == "no-store"
        db.result = Unavailable()
        with app.test_client() as fc:
            failing = fc.get("/health/ready")
            assert failing.status_code == 503 and failing.get_json()["services"]["database"] == "disconnected"
    finally:
        health.close()


_DJANGO_HEALTH, _ = seed_registry()
urlpatterns = [*_DJANGO_HEALTH.django_urls(), *_DJANGO_HEALTH.django_urls("async/health/", asynchronous=True)]


@override_settings(ROOT_URLCONF=__name__, MIDDLEWARE=[])
def test_django_urls_sync_and_async():
    try:
        client = Client()
        ready = client.get("/health/ready")
        assert ready.status_code == 200 and json.loads(ready.content) == SEED_READY
        assert ready["Cache-Control"] == "no-store"
        assert seed_valid(json.loads(client.get("/health/live").content))["status"] == "alive"
        assert client.post("/health/ready").status_code == 405
        ietf = client.get("/health/ready", HTTP_ACCEPT="application/health+json")
        assert ietf["Content-Type"] == "application/health+json" and ietf_valid(json.loads(ietf.content))

        async def async_calls():
            aclient = AsyncClient()
            return await aclient.get("/async/health/ready"), await aclient.get("/async/health/startup")

        aready, astartup = asyncio.run(async_calls())
        assert json.loads(aready.content) == SEED_READY and astartup.status_code == 200
    finally:
        _DJANGO_HEALTH.close()


# --- lifecycle: close(), cancelled probes, several event loops -------------------------------------------


def test_close_while_an_async_check_runs_on_the_background_loop_frees_its_slot():
    release_after = 0.3

    async def slow():
        await asyncio.sleep(release_after)
        return True

    health = HealthChecks(registry=CollectorRegistry(), cache_interval=0.0, deadline=0.8, timeout=0.6)
    health.add("cache", slow)
    prober = threading.Thread(target=health.ready_sync)
    prober.start()
    time.sleep(0.1)  # the run is in flight on the background loop
    old_loop = health._background
    health.close()
    prober.join(5)
    assert old_loop is not None and old_loop.is_closed()
    assert health._checks["cache"].run is None  # cancelled and recorded, not left holding the slot
    time.sleep(0.65)  # past the cached timeout
    try:
        report = health.ready_sync()  # a new run on a new loop, not "timeout" for ever
        assert report.body()["services"] == {"cache": "connected"}
        assert health.executions("cache") == 2
    finally:
        health.close()


def test_a_cancelled_probe_leaves_the_run_going_and_its_result_cached():
    check = CountedAsync(delay=0.15)
    health = HealthChecks(registry=CollectorRegistry(), cache_interval=30.0)
    health.add("cache", check)

    async def scenario():
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(health.ready(), 0.03)  # the client went away mid-probe
        await asyncio.sleep(0.3)
        return await health.ready()

    report = asyncio.run(scenario())
    assert report.body() == {"status": "ready", "services": {"cache": "connected"}}
    assert report.checks["cache"].cached and check.calls == 1
    assert health._checks["cache"].run is None


def test_one_registry_probed_from_several_event_loops_shares_one_run():
    check, sync = CountedAsync(delay=0.2), Counted(delay=0.1)
    health = HealthChecks(registry=CollectorRegistry(), cache_interval=30.0)
    health.add("cache", check)
    health.add("database", sync)
    bodies = []
    barrier = threading.Barrier(6)

    def worker():  # e.g. one event loop per server thread
        barrier.wait(5)
        bodies.append(asyncio.run(health.ready()).body())

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert bodies == [{"status": "ready", "services": {"cache": "connected", "database": "connected"}}] * 6
    assert (check.calls, sync.calls) == (1, 1)


def test_observed_values_that_json_cannot_carry_are_dropped():
    health = HealthChecks(registry=CollectorRegistry())
    health.add("nan", lambda: CheckResult("pass", observed_value=float("nan")))
    health.add("inf", lambda: CheckResult("pass", observed_value=float("inf")))
    health.add("obj", lambda: CheckResult("pass", observed_value=object()))  # type: ignore[arg-type]
    health.add("ok", lambda: CheckResult("pass", observed_value=3, observed_unit="items", measurement="depth"))
    body = ietf_valid(health.ready_sync().health_json())
    text = json.dumps(body, allow_nan=False)  # strict JSON: no NaN/Infinity, no repr of an object
    assert "object at" not in text
    assert body["checks"]["ok:depth"][0]["observedValue"] == 3
    assert all("observedValue" not in body["checks"][f"{n}:responseTime"][0] for n in ("nan", "inf", "obj"))


# --- built-in checks without external services --------------------------------------------------------


class _HttpDependency:
    """A real HTTP server on loopback answering GET /ok 200 and GET /broken 500."""

    def __init__(self):
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                status = 200 if self.path == "/ok" else 500
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def _refused_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again: nothing listens there


def test_http_tcp_memory_and_disk_checks_map_every_outcome():
    import socket

    dependency = _HttpDependency()
    hanging = socket.create_server(("127.0.0.1", 0))  # accepts (backlog) and never answers
    refused = _refused_port()
    health = HealthChecks(registry=CollectorRegistry(), cache_interval=0.0)
    health.add("http_ok", checks.http_check(f"http://127.0.0.1:{dependency.port}/ok"))
    health.add("http_500", checks.http_check(f"http://127.0.0.1:{dependency.port}/broken"))
    health.add("http_refused", checks.http_check(f"http://127.0.0.1:{refused}/"))
    health.add("http_hanging", checks.http_check(f"http://127.0.0.1:{hanging.getsockname()[1]}/"), timeout=0.2)
    health.add("tcp_ok", checks.tcp_check("127.0.0.1", dependency.port))
    health.add("tcp_refused", checks.tcp_check("127.0.0.1", refused))
    health.add("memory_low_limit", checks.memory_check(max_rss_bytes=1024))
    health.add("memory", checks.memory_check(max_rss_bytes=2**40))
    health.add("disk_full", checks.disk_check("/", min_free_bytes=2**62, min_free_ratio=None))
    try:

        async def probe():
            started = time.monotonic()
            report = await health.ready()
            return report, time.monotonic() - started

        report, elapsed = asyncio.run(probe())
    finally:
        dependency.close()
        hanging.close()
    assert report.body()["services"] == {
        "http_ok": "connected", "http_500": "error", "http_refused": "disconnected", "http_hanging": "timeout",
        "tcp_ok": "connected", "tcp_refused": "disconnected", "memory_low_limit": "error", "memory": "connected",
        "disk_full": "error",
    }  # fmt: skip
    assert 0.19 <= elapsed < 0.8  # the hanging GET is cut at its own 0.2 s, within the deadline
    body = ietf_valid(report.health_json())
    rss = body["checks"]["memory:rss"][0]
    assert rss["observedUnit"] == "bytes" and rss["observedValue"] > 1024 and rss["status"] == "pass"


def test_redis_check_recognises_a_subclassed_async_client_and_never_passes_an_unawaited_ping():
    import redis
    import redis.asyncio
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    class AppRedis(redis.asyncio.Redis):  # defined in application code: its module is not redis.asyncio
        pass

    port = _refused_port()
    client = AppRedis(host="127.0.0.1", port=port, retry=Retry(NoBackoff(), 0))
    health = HealthChecks(registry=CollectorRegistry(), cache_interval=0.0)
    health.add("cache", checks.redis_check(client))
    health.add("forced_sync", checks.redis_check(client, asynchronous=False))
    sync_client = redis.Redis(host="127.0.0.1", port=port, retry=Retry(NoBackoff(), 0))
    health.add("sync", checks.redis_check(sync_client))

    async def probe():
        try:
            return await health.ready()
        finally:
            await client.aclose()

    report = asyncio.run(probe())
    sync_client.close()
    # nothing listens: an async client mistaken for a sync one used to pass (bool of a coroutine)
    assert report.body()["services"] == {"cache": "disconnected", "forced_sync": "error", "sync": "disconnected"}


# --- Kubernetes snippet -----------------------------------------------------------------------------------


def test_kubernetes_probe_snippet_matches_the_endpoints_and_the_deadline():
    from pathlib import Path

    import yaml

    text = (Path(__file__).parent.parent / "docs" / "health.md").read_text()
    blocks = [b.split("```", 1)[0] for b in text.split("```yaml\n")[1:]]
    container = next(c for b in blocks for c in (yaml.safe_load(b) or {}).get("containers", []))
    probes = {k: container[k] for k in ("startupProbe", "livenessProbe", "readinessProbe")}
    paths = {k: p["httpGet"]["path"] for k, p in probes.items()}
    assert paths == {"startupProbe": "/health/startup", "livenessProbe": "/health/live",
                     "readinessProbe": "/health/ready"}  # fmt: skip
    assert {p["httpGet"]["port"] for p in probes.values()} == {container["ports"][0]["containerPort"]}
    defaults = HealthChecks()
    for probe in probes.values():
        assert probe["timeoutSeconds"] > defaults.deadline >= defaults.timeout  # an answer always fits
    assert probes["startupProbe"]["periodSeconds"] * probes["startupProbe"]["failureThreshold"] == 300
    assert defaults.cache_interval <= probes["readinessProbe"]["periodSeconds"]
    # the paths are served, with the seed's statuses, by the app the page mounts
    health, _ = seed_registry()
    responses = asyncio.run(get(mounted(health), *paths.values()))
    assert [r.status_code for r in responses] == [200, 200, 200]


def test_http_check_answers_from_the_status_line_without_reading_an_endless_body():
    import socket

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]
    stop = threading.Event()

    def serve():
        conn, _ = server.accept()
        with conn:
            conn.recv(4096)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 10000000000\r\n\r\n")
            while not stop.is_set():  # a body that never ends
                try:
                    conn.sendall(b"x" * 1024)
                except OSError:
                    return
                time.sleep(0.01)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        health = HealthChecks(registry=CollectorRegistry())
        health.add("upstream", checks.http_check(f"http://127.0.0.1:{port}/health"), timeout=0.5)
        started = time.monotonic()
        report = asyncio.run(health.ready())
        assert report.body()["services"] == {"upstream": "connected"}
        assert time.monotonic() - started < 0.5
    finally:
        stop.set()
        server.close()
        thread.join(2)


def test_a_failing_checks_secret_is_redacted_in_the_log_record_itself(caplog):
    def database():
        raise ConnectionError("could not connect to postgresql://app:S3cr3tPass@db:5432/shop")

    health = HealthChecks(registry=CollectorRegistry())
    health.add("database", database)
    with caplog.at_level(logging.WARNING, logger="bakhmach_obs.health"):
        report = asyncio.run(health.ready())
    assert report.status_code == 503
    failed = [r for r in caplog.records if "failed" in r.getMessage()]
    assert failed, caplog.records
    # the raw record (what any handler of the application sees), not only the SDK's JSON output
    assert all("S3cr3tPass" not in r.getMessage() for r in caplog.records)
    assert "REDACTED" in failed[0].getMessage()
