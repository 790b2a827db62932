from __future__ import annotations

import asyncio
import gzip
import os
import subprocess
import sys
import textwrap
import urllib.request

import pytest
from prometheus_client import CollectorRegistry, generate_latest

import bakhmach_obs
from bakhmach_obs import conventions, metrics
from bakhmach_obs.exposition import metrics_asgi_app, metrics_wsgi_app, serve_metrics
from bakhmach_obs.testing import capture

from .conftest import need_binary

OVERFLOW = {"otel_metric_overflow": "true"}


def test_overflow_series_collects_label_sets_past_the_limit(registry):
    calls = metrics.family(conventions.FUNCTION_CALLS, registry=registry, cardinality_limit=3)
    for i in range(10):
        calls.labels(f"f{i}", "m", "ok").inc()
    calls.labels("f0", "m", "ok").inc()  # an existing series keeps working past the limit
    values = {
        tuple(s.labels.items()): s.value
        for m in registry.collect() if m.name == "function_calls"
        for s in m.samples if s.name == "function_calls_total"
    }  # fmt: skip
    assert len(values) == 4  # 3 real series + 1 overflow series
    assert registry.get_sample_value("function_calls_total", {"function": "f0", "module": "m", "result": "ok"}) == 2
    assert registry.get_sample_value("function_calls_total", OVERFLOW) == 7.0
    # nothing dropped: the overflow series holds every measurement past the limit
    assert sum(values.values()) == 11.0
    assert registry.get_sample_value("bakhmach_obs_metric_overflow_total", {"metric": "function_calls_total"}) == 7


def test_overflow_works_for_histograms_and_gauges(registry):
    hist = metrics.family(conventions.FUNCTION_CALLS_DURATION, registry=registry, cardinality_limit=1)
    gauge = metrics.family(conventions.FUNCTION_CALLS_CONCURRENT, registry=registry)
    hist.labels("a", "m").observe(0.2)
    hist.labels("b", "m").observe(0.3)
    hist.labels("c", "m").observe(20)
    gauge.labels("a", "m").inc()
    gauge.labels("b", "m").inc()
    assert registry.get_sample_value("function_calls_duration_seconds_count", OVERFLOW) == 2
    assert registry.get_sample_value("function_calls_duration_seconds_bucket", {**OVERFLOW, "le": "+Inf"}) == 2
    assert registry.get_sample_value("function_calls_duration_seconds_sum", OVERFLOW) == pytest.approx(20.3)
    assert registry.get_sample_value("function_calls_concurrent", OVERFLOW) == 1


def test_keyword_labels_and_non_string_values(registry):
    calls = metrics.family(conventions.FUNCTION_CALLS, registry=registry)
    calls.labels(function="f", module="m", result="ok").inc()
    calls.labels("f", "m", "ok").inc()
    calls.labels(1, None, True).inc()
    assert registry.get_sample_value("function_calls_total", {"function": "f", "module": "m", "result": "ok"}) == 2
    assert registry.get_sample_value("function_calls_total", {"function": "1", "module": "None", "result": "True"}) == 1


def test_wrong_label_names_are_a_programming_error(registry):
    calls = metrics.family(conventions.FUNCTION_CALLS, registry=registry)
    with pytest.raises(ValueError, match="Incorrect label"):
        calls.labels(function="f")


def test_families_are_registered_once_per_registry(registry):
    a = metrics.family(conventions.FUNCTION_CALLS, registry=registry)
    b = metrics.family(conventions.FUNCTION_CALLS, registry=registry)
    other = metrics.family(conventions.FUNCTION_CALLS, registry=CollectorRegistry())
    assert a is b and a is not other


def test_instrumented_calls_overflow_instead_of_exploding():
    with capture(cardinality_limit=5) as cap:
        for i in range(20):
            with bakhmach_obs.operation(f"op-{i}"):  # a dynamic name: exactly what the guard is for
                pass
        assert cap.sample("function_calls_total", otel_metric_overflow="true") is not None
        series = [
            s for m in cap.registry.collect() if m.name == "function_calls"
            for s in m.samples if s.name == "function_calls_total"
        ]  # fmt: skip
        assert len(series) == 6
        assert sum(s.value for s in series) == 20.0
        assert cap.sample("bakhmach_obs_metric_overflow_total", metric="function_calls_total") > 0


def test_promtool_finds_nothing_to_lint(tmp_path, registry):
    promtool = need_binary("promtool")
    with capture(registry=registry, cardinality_limit=2) as cap:

        @bakhmach_obs.instrument
        def work(fail):
            if fail:
                raise ValueError("x")

        work(False)
        with pytest.raises(ValueError):
            work(True)
        for i in range(4):
            with bakhmach_obs.operation(f"overflowing-{i}"):
                pass
        cap.runtime.report_error("exporter", RuntimeError("simulated"))
        cap.runtime.report_dropped(3)
        text = generate_latest(cap.registry)
    c = conventions
    core = [c.FUNCTION_CALLS, c.FUNCTION_CALLS_DURATION, c.FUNCTION_CALLS_CONCURRENT, c.BUILD_INFO,
            c.TELEMETRY_ERRORS, c.DROPPED_SPANS, c.METRIC_OVERFLOW, c.LOG_RECORDS_DROPPED]  # fmt: skip
    for spec in core:
        assert f"# TYPE {spec.name} " in text.decode(), spec.name
    result = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, timeout=60)
    assert result.returncode == 0, (result.stdout + result.stderr).decode()
    assert result.stdout.strip() == b"" and result.stderr.strip() == b""


# --- exposition -----------------------------------------------------------------------------------


def _asgi_get(app, headers=(), method="GET"):
    sent = []

    async def receive():
        return {"type": "http.request", "body": b""}

    async def send(message):
        sent.append(message)

    scope = {
        "type": "http", "method": method, "path": "/metrics",
        "headers": [(k.encode(), v.encode()) for k, v in headers],
    }  # fmt: skip
    asyncio.run(app(scope, receive, send))
    start, body = sent
    return start["status"], {k.decode(): v.decode() for k, v in start["headers"]}, body["body"]


def _filled(registry):
    fam = metrics.family(conventions.FUNCTION_CALLS, registry=registry)
    for i in range(60):
        fam.labels(f"function_{i}", "module", "ok").inc()
    return registry


def test_asgi_app_negotiates_format_and_gzip(registry):
    app = metrics_asgi_app(_filled(registry))
    status, headers, body = _asgi_get(app)
    assert status == 200
    assert headers["content-type"].startswith("text/plain; version=0.0.4")
    assert b'function_calls_total{function="function_1"' in body

    status, headers, body = _asgi_get(app, [("Accept", "application/openmetrics-text; version=1.0.0")])
    assert headers["content-type"].startswith("application/openmetrics-text")
    assert body.rstrip().endswith(b"# EOF")

    status, headers, body = _asgi_get(app, [("Accept-Encoding", "gzip")])
    assert headers["content-encoding"] == "gzip"
    assert b"function_calls_total" in gzip.decompress(body)

    assert _asgi_get(app, method="HEAD")[2] == b""
    assert _asgi_get(app, method="POST")[0] == 405


def test_wsgi_app_negotiates_format_and_gzip(registry):
    app = metrics_wsgi_app(_filled(registry))
    captured = {}

    def start_response(status, headers):
        captured["status"], captured["headers"] = status, dict(headers)

    body = b"".join(app({"REQUEST_METHOD": "GET", "HTTP_ACCEPT_ENCODING": "gzip"}, start_response))
    assert captured["status"] == "200 OK"
    assert captured["headers"]["Content-Encoding"] == "gzip"
    assert b"function_calls_total" in gzip.decompress(body)
    body = b"".join(app({"REQUEST_METHOD": "GET", "HTTP_ACCEPT": "application/openmetrics-text"}, start_response))
    assert captured["headers"]["Content-Type"].startswith("application/openmetrics-text")
    assert body.rstrip().endswith(b"# EOF")
    app({"REQUEST_METHOD": "DELETE"}, start_response)
    assert captured["status"].startswith("405")


def test_exposition_defaults_to_the_configured_registry():
    with capture() as cap:
        with bakhmach_obs.operation("visible"):
            pass
        status, _, body = _asgi_get(metrics_asgi_app())
        assert status == 200
        assert b"bakhmach_obs_build_info" in body
        assert body == generate_latest(cap.registry) or b"function_calls" in body


def test_serve_metrics_over_real_http(registry):
    server = serve_metrics(0, registry=_filled(registry))
    try:
        port = server.server_address[1]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            assert resp.status == 200
            assert b"function_calls_total" in resp.read()
    finally:
        server.shutdown()
        server.server_close()


MULTIPROCESS_WORKER = textwrap.dedent(
    """
    import sys
    import bakhmach_obs
    bakhmach_obs.configure(service_name="mp", log_format="none", tracing_enabled=False, cardinality_limit=3)

    @bakhmach_obs.instrument(name="handle")
    def handle():
        return 1

    for _ in range(int(sys.argv[1])):
        handle()
    for i in range(5):
        with bakhmach_obs.operation(f"dyn-{i}"):
            pass
    """
)


def test_multiprocess_mode_sums_workers(tmp_path):
    mp_dir = tmp_path / "mp"
    mp_dir.mkdir()
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(mp_dir)}
    for n in (3, 4, 5):
        subprocess.run([sys.executable, "-c", MULTIPROCESS_WORKER, str(n)], env=env, check=True, timeout=60)
    reader = textwrap.dedent(
        """
        from bakhmach_obs.exposition import render
        body, _, _ = render(None, accept="", accept_encoding="")
        print(body.decode())
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", reader], env=env, check=True, timeout=60, capture_output=True, text=True
    ).stdout
    assert 'function_calls_total{function="handle",module="__main__",result="ok"} 12.0' in out
    assert 'function_calls_concurrent{function="handle",module="__main__"} 0.0' in out
    # the overflow series aggregates across processes too. Limit 3: handle ok/error and dyn-0 ok
    # are real series; dyn-1..dyn-4 (4 calls per process) land in the overflow series.
    assert 'function_calls_total{otel_metric_overflow="true"} 12.0' in out
    assert 'function_calls_total{function="dyn-1"' not in out


def test_cells_bound_to_the_same_child_at_once_lose_nothing(registry):
    """Threads binding the same fresh child at the same moment (a new route's first burst) share one value."""
    import sys
    import threading

    from prometheus_client import Counter, Histogram

    from bakhmach_obs.metrics import GaugeCell, HistogramCell

    hist = Histogram("race_seconds", "race", ["route"], registry=registry)
    gauge = Counter("race", "race", ["route"], registry=registry)
    threads_n, rounds, per_thread = 8, 60, 20
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        for r in range(rounds):
            barrier = threading.Barrier(threads_n)

            def work(r=r, barrier=barrier):
                barrier.wait()
                h = HistogramCell(hist.labels(str(r)))
                g = GaugeCell(gauge.labels(str(r)))
                for _ in range(per_thread):
                    h.observe(0.1)
                    g.inc(1)

            threads = [threading.Thread(target=work) for _ in range(threads_n)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
    finally:
        sys.setswitchinterval(interval)
    expected = threads_n * per_thread
    for r in range(rounds):
        assert registry.get_sample_value("race_seconds_count", {"route": str(r)}) == expected
        assert registry.get_sample_value("race_seconds_sum", {"route": str(r)}) == pytest.approx(0.1 * expected)
        assert registry.get_sample_value("race_total", {"route": str(r)}) == expected
