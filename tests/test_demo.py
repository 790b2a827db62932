"""``bakhmach-obs demo``: the in-process run and its summary, the backends, ``--serve`` with a real Prometheus."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from pathlib import Path

import pytest
import yaml

import bakhmach_obs
from bakhmach_obs import _runtime
from bakhmach_obs import conventions as c
from bakhmach_obs.cli import main
from bakhmach_obs.demo import (
    SERVICE_NAME,
    SLOS,
    expected_status,
    histogram_quantile,
    make_traffic,
    prometheus_rules,
    render_text,
    run_demo,
    serve,
    tty_progress,
)
from bakhmach_obs.demo_app import CARD_DECLINED, CARD_PROVIDER_DOWN
from tests.conftest import need
from tests.prometheus_server import PrometheusServer, free_port

SEED_LOG_FIELDS = ("timestamp", "service", "level", "message", "correlation_id")
POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"
REDIS_URL = "redis://127.0.0.1:6379/0"
AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"
ROUTES = {"product": "/products/{product_id}", "order": "/orders", "payment": "/payments", "slow": "/slow"}


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "BAKHMACH_OBS_"))}


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


def _walk(node: dict):
    yield node
    for child in node["children"]:
        yield from _walk(child)


def _expected(requests: int, seed: int) -> Counter:
    """(route, status) counts the traffic must produce."""
    return Counter((ROUTES[r.kind], expected_status(r)) for r in make_traffic(requests, seed))


@pytest.fixture(scope="module")
def summary() -> dict:
    """One JSON run through the command line, shared by the structural tests (200 requests, seed 7)."""
    captured: list[str] = []

    class _Out:
        def write(self, text: str) -> int:
            captured.append(text)
            return len(text)

        def flush(self) -> None:
            return None

    saved, sys.stdout = sys.stdout, _Out()
    try:
        code = main(["demo", "--json"])
    finally:
        sys.stdout = saved
    assert code == 0
    return json.loads("".join(captured))


# --- the in-process summary ---------------------------------------------------------------------


def test_statuses_per_route_follow_the_seeded_traffic(summary):
    assert summary["requests"] == 200
    assert summary["seed"] == 7
    got = Counter()
    for route in summary["routes"]:
        for status, n in route["status"].items():
            got[(route["route"], int(status))] += n
    expected = _expected(200, 7)
    assert got == expected
    # The traffic has every kind of outcome: declines, injected provider failures, 404s, slow requests.
    assert {402, 503, 404} <= {status for _, status in expected}
    assert summary["statuses"] == {str(s): n for s, n in sorted(Counter(s for _, s in expected.elements()).items())}


def test_red_per_route(summary):
    routes = {(r["method"], r["route"]): r for r in summary["routes"]}
    assert set(routes) == {
        ("GET", "/products/{product_id}"), ("POST", "/orders"), ("POST", "/payments"), ("GET", "/slow"),
    }  # fmt: skip
    for r in routes.values():
        assert r["requests"] == sum(r["status"].values())
        assert r["rate_per_s"] == pytest.approx(r["requests"] / summary["elapsed_s"], rel=0.02)
        assert r["server_errors"] == sum(n for s, n in r["status"].items() if s.startswith("5"))
        assert r["client_errors"] == sum(n for s, n in r["status"].items() if s.startswith("4"))
        assert 0 <= r["p50_ms"] <= r["p95_ms"] <= r["p99_ms"]
    payments = routes[("POST", "/payments")]
    assert payments["server_errors"] > 0
    assert payments["error_pct"] == pytest.approx(100 * payments["server_errors"] / payments["requests"], abs=0.01)
    assert routes[("GET", "/slow")]["p50_ms"] > 100  # slow requests wait 0.1-0.6 s
    assert summary["elapsed_s"] < 5  # the default run stays quick


def test_cache_database_and_queue_counts(summary):
    traffic = make_traffic(200, 7)
    lookups = sum(r.kind in ("product", "order") for r in traffic)
    orders = sum(r.kind == "order" for r in traffic)
    not_found = sum(r.kind == "product" and expected_status(r) == 404 for r in traffic)
    cache = summary["cache"]
    assert cache["lookups"] == cache["hits"] + cache["misses"] == lookups
    assert cache["hit_ratio"] == pytest.approx(cache["hits"] / lookups, abs=1e-4)
    assert 0.3 < cache["hit_ratio"] < 0.95  # skewed products, a small LRU: mostly hits, some misses
    assert cache["errors"] == 0
    db = summary["database"]
    assert db["system"] == "sqlite"
    ops = db["operations"]
    assert ops["SELECT"]["count"] == cache["misses"]  # cache-aside: the database only on a miss
    assert cache["sets"] == cache["misses"] - not_found  # unknown products are not cached
    assert ops["INSERT"]["count"] == ops["UPDATE"]["count"] == orders  # the worker fulfilled every order
    assert all(v["errors"] == 0 for v in ops.values())
    queue = summary["queue"]
    assert (queue["system"], queue["destination"]) == ("asyncio", "orders")
    assert queue["published"] == queue["consumed"] == queue["processed"] == orders
    assert queue["failed"] == queue["in_flight"] == 0
    assert queue["drained"] is True


def test_slo_budget_consumed(summary):
    traffic = make_traffic(200, 7)
    provider_down = sum((r.body or {}).get("card_token") == CARD_PROVIDER_DOWN for r in traffic)
    slos = {s["name"]: s for s in summary["slos"]}
    assert list(slos) == [s.name for s in SLOS]
    availability = slos["checkout-availability"]
    assert availability["events"] == 200
    assert availability["bad_events"] == provider_down > 0  # only the injected 503s are server errors
    assert availability["error_ratio"] == pytest.approx(provider_down / 200)
    assert availability["budget_consumed_pct"] == pytest.approx(100 * (provider_down / 200) / 0.01, abs=0.1)
    latency = slos["checkout-latency"]
    delays = [float(r.path.split("=")[1]) for r in traffic if r.kind == "slow"]
    # Every request asked to wait more than 0.5 s is bad; nothing else comes near 0.5 s.
    assert sum(d > 0.5 for d in delays) <= latency["bad_events"] <= sum(d > 0.45 for d in delays)
    assert latency["budget_consumed_pct"] == pytest.approx(100 * latency["error_ratio"] / 0.01, abs=0.1)


def test_health_probes(summary):
    live, ready = summary["health"]["live"], summary["health"]["ready"]
    assert live["status_code"] == 200
    assert live["body"]["status"] == "alive"
    assert ready == {
        "status_code": 200,
        "body": {"status": "ready", "services": {"database": "connected", "cache": "connected", "queue": "connected"}},
    }


def test_sample_trace_spans_http_cache_database_and_queue(summary):
    trace = summary["trace"]
    assert len(trace["trace_id"]) == 32
    root = trace["root"]
    assert (root["name"], root["kind"], root["parent_span_id"]) == ("POST /orders", "SERVER", None)
    assert root["attributes"][c.ATTR_HTTP_STATUS] == 201
    assert root["attributes"][c.ATTR_CORRELATION_ID] == trace["correlation_id"]
    nodes = list(_walk(root))
    assert len(nodes) == trace["span_count"]
    for node in nodes:
        for child in node["children"]:
            assert child["parent_span_id"] == node["span_id"]
    by_name = {n["name"]: n for n in nodes}
    load = by_name["load_product"]
    assert [n["name"] for n in load["children"]][:1] == ["get products"]  # the cache first
    assert by_name["get products"]["attributes"][c.ATTR_CACHE_RESULT] == "miss"  # the richest trace: a miss
    assert by_name["SELECT products"]["kind"] == "CLIENT"
    assert by_name["SELECT products"]["attributes"][c.ATTR_DB_SYSTEM] == "sqlite"
    assert by_name["INSERT orders"]["parent_span_id"] == root["span_id"]
    publish = by_name["publish orders"]
    assert (publish["kind"], publish["parent_span_id"]) == ("PRODUCER", root["span_id"])
    process = by_name["process orders"]
    assert (process["kind"], process["parent_span_id"]) == ("CONSUMER", publish["span_id"])
    assert [n["name"] for n in process["children"]] == ["UPDATE orders"]
    assert all(n["status"] == "ok" for n in nodes)


def test_sample_log_lines(summary):
    records = [json.loads(line) for line in summary["logs"]]
    assert 3 <= len(records) <= 6
    assert summary["log_lines_total"] > len(records)
    for record in records:
        for field in SEED_LOG_FIELDS:
            assert field in record, (field, record)
        assert record["service"] == SERVICE_NAME
        assert record["timestamp"].endswith("Z")
    # The sample trace's own lines come first: the access log and the order's log line.
    first = [r for r in records if r["correlation_id"] == summary["trace"]["correlation_id"]]
    assert {r["message"] for r in first} >= {"order accepted", "POST /orders 201"}
    assert all(r["trace_id"] == summary["trace"]["trace_id"] for r in first)
    declined = next(r for r in records if r.get("error_code") == "PAYMENT_001")
    assert declined["level"] == "ERROR"
    assert declined["error"] == "Insufficient funds"
    assert declined["action"] == "payment_processing"
    assert declined["user_id"].startswith("user-")
    assert "RuntimeError" not in declined["stacktrace"]  # no unrelated exception chained into it


def test_instrumented_functions(summary):
    traffic = make_traffic(200, 7)
    failed_charges = sum((r.body or {}).get("card_token") in (CARD_DECLINED, CARD_PROVIDER_DOWN) for r in traffic)
    functions = {f["function"]: f for f in summary["functions"]}
    assert functions["charge"]["calls"] == sum(r.kind == "payment" for r in traffic)
    assert functions["charge"]["errors"] == failed_charges
    assert functions["load_product"]["errors"] == 0


def test_text_report(summary):
    text = render_text(summary)
    for heading in ("RED metrics per route", "Dependencies", "SLOs over this run", "Health probes", "Sample trace",
                    "Sample log lines", "Next steps"):  # fmt: skip
        assert heading in text
    assert "hit ratio" in text and "budget consumed" in text
    assert "`-- process orders  [consumer]" in text
    assert len(text.splitlines()) < 70
    # Stack traces are cut to their last line in the text, kept whole in the JSON.
    assert '"stacktrace":"... bakhmach_obs.demo_app.PaymentError: Insufficient funds"' in text


def test_same_seed_same_outcomes():
    first, second = run_demo(requests=40, seed=3), run_demo(requests=40, seed=3)
    assert first["statuses"] == second["statuses"]
    assert first["slos"][0] == second["slos"][0]  # availability: decided by the traffic alone
    assert first["cache"]["lookups"] == second["cache"]["lookups"]
    assert first["queue"]["published"] == second["queue"]["published"]
    assert make_traffic(40, 4) != make_traffic(40, 3)


def test_without_traces_still_reports(capsys):
    assert main(["demo", "--requests", "5", "--sample-ratio", "0"]) == 0
    assert "no trace was sampled" in capsys.readouterr().out


# --- isolation and progress -----------------------------------------------------------------------


def test_run_demo_leaves_global_state_alone():
    before = _runtime.CURRENT[0]
    loggers = [logging.getLogger(n) for n in ("bakhmach_obs", "bakhmach_obs.demo_app", "bakhmach_obs.access")]
    state = [(lg.level, lg.propagate, list(lg.handlers)) for lg in loggers]
    root_handlers = list(logging.getLogger().handlers)
    run_demo(requests=10)
    assert _runtime.CURRENT[0] is before
    assert [(lg.level, lg.propagate, list(lg.handlers)) for lg in loggers] == state
    assert list(logging.getLogger().handlers) == root_handlers
    assert bakhmach_obs.correlation_id() is None
    assert dict(bakhmach_obs.bound_fields()) == {}


def test_run_demo_restores_global_state_when_it_raises():
    before = _runtime.CURRENT[0]
    logger = logging.getLogger("bakhmach_obs")
    state = (logger.level, logger.propagate, list(logger.handlers))
    port = free_port()  # nothing listens there
    with pytest.raises(ConnectionError, match="cannot start the database"):
        run_demo(requests=5, database_url=f"postgresql://postgres@127.0.0.1:{port}/test")
    assert _runtime.CURRENT[0] is before
    assert (logger.level, logger.propagate, list(logger.handlers)) == state


def test_a_failing_prometheus_exits_1_and_leaves_no_temporary_directory(tmp_path):
    script = (
        "import sys; from bakhmach_obs.demo import serve; "
        "sys.exit(serve(port=0, rate=0, with_prometheus=True, prometheus_binary='false'))"
    )
    env = {**_clean_env(), "TMPDIR": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, env=env, check=False
    )
    assert proc.returncode == 1, proc.stderr
    assert "prometheus exited with code 1" in proc.stderr
    assert list(tmp_path.iterdir()) == []  # its configuration, rules and log removed


def test_sigterm_while_waiting_for_prometheus_stops_at_once(tmp_path):
    fake = tmp_path / "bin" / "prometheus"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\nexec sleep 60\n")  # runs, never becomes ready
    fake.chmod(0o755)
    script = (
        "import sys; from bakhmach_obs.demo import serve; "
        f"sys.exit(serve(port=0, rate=0, with_prometheus=True, prometheus_binary={str(fake)!r}))"
    )
    temp = tmp_path / "tmp"
    temp.mkdir()
    proc = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**_clean_env(), "TMPDIR": str(temp)}, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while not any(temp.iterdir()) and time.monotonic() < deadline:  # Prometheus's directory: it was started
            time.sleep(0.05)
        assert any(temp.iterdir())
        time.sleep(0.3)
        stopped = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=15)
        assert time.monotonic() - stopped < 12  # not the 20 s readiness wait
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
    assert proc.returncode == 0, err
    assert "bakhmach-obs demo: stopped" in out
    assert list(temp.iterdir()) == []  # the fake Prometheus stopped, its directory removed


def test_demo_inside_a_capture_records_nothing_there(obs_capture):
    run_demo(requests=10)
    assert obs_capture.sample("http_server_request_duration_seconds_count", http_route="/orders") is None
    assert obs_capture.spans() == []
    assert obs_capture.records == []


async def test_demo_from_a_running_event_loop():
    data = run_demo(requests=5)
    assert sum(r["requests"] for r in data["routes"]) == 5


def test_progress_on_a_terminal_only():
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert tty_progress(io.StringIO()) is None
    stream = Terminal()
    progress = tty_progress(stream)
    assert progress is not None
    run_demo(requests=30, progress=progress)
    out = stream.getvalue()
    assert out.startswith("\r  traffic: ")
    assert out.endswith("\r  traffic: 30/30 requests (100%)\n")
    assert "\n" not in out[:-1]  # one line, updated in place


def test_cli_json_is_quiet_on_a_pipe():
    proc = subprocess.run(
        [sys.executable, "-m", "bakhmach_obs.cli", "demo", "--requests", "20", "--json"],
        capture_output=True, text=True, timeout=60, env=_clean_env(), check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""  # no progress display when stderr is not a terminal
    assert json.loads(proc.stdout)["requests"] == 20


# --- command-line options ---------------------------------------------------------------------------


def test_bad_backend_urls_exit_2(capsys):
    assert main(["demo", "--database-url", "mysql://root@127.0.0.1/test"]) == 2
    assert "database_url" in capsys.readouterr().err
    assert main(["demo", "--redis-url", "http://127.0.0.1:6379"]) == 2
    assert "redis_url" in capsys.readouterr().err
    assert main(["demo", "--amqp-url", "127.0.0.1:5672"]) == 2
    assert "amqp_url" in capsys.readouterr().err


def test_unreachable_backend_exits_1_with_the_reason(capsys):
    port = free_port()  # nothing listens there
    assert main(["demo", "--requests", "5", "--database-url", f"postgresql://postgres@127.0.0.1:{port}/test"]) == 1
    err = capsys.readouterr().err
    assert "cannot start the database" in err and str(port) in err


def test_with_prometheus_without_the_binary(capsys):
    before = _runtime.CURRENT[0]
    assert serve(with_prometheus=True, prometheus_binary="no-such-prometheus-binary") == 1
    assert "needs the Prometheus server binary" in capsys.readouterr().err
    assert _runtime.CURRENT[0] is before  # refused before configuring anything


def test_missing_extra_names_it(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "fastapi", None)  # as if the demo extra was not installed
    before = _runtime.CURRENT[0]
    assert main(["demo", "--requests", "5"]) == 1
    assert "python3 -m pip install 'bakhmach-obs[demo]'" in capsys.readouterr().err
    assert _runtime.CURRENT[0] is before


def test_help_lists_the_options(capsys):
    assert main(["demo", "--help"]) == 0
    out = capsys.readouterr().out
    for option in ("--database-url", "--redis-url", "--amqp-url", "--serve", "--port", "--with-prometheus", "--json"):
        assert option in out


# --- real backends ----------------------------------------------------------------------------------


def test_postgresql_backend():
    need(_listening(5432), "PostgreSQL is not listening on 127.0.0.1:5432")
    data = run_demo(requests=40, database_url=POSTGRES_URL)
    orders = sum(r.kind == "order" for r in make_traffic(40, 7))
    assert data["backends"]["database"].startswith("postgresql")
    assert data["database"]["system"] == "postgresql"
    assert (
        data["database"]["operations"]["INSERT"]["count"] == data["database"]["operations"]["UPDATE"]["count"] == orders
    )
    assert data["statuses"] == {
        str(s): n for s, n in sorted(Counter(expected_status(r) for r in make_traffic(40, 7)).items())
    }
    assert data["health"]["ready"]["body"]["services"]["database"] == "connected"
    spans = {n["name"]: n for n in _walk(data["trace"]["root"])}
    assert spans["INSERT orders"]["attributes"][c.ATTR_DB_SYSTEM] == "postgresql"


def test_redis_backend():
    need(_listening(6379), "Redis is not listening on 127.0.0.1:6379")
    data = run_demo(requests=40, redis_url=REDIS_URL)
    cache = data["cache"]
    assert data["backends"]["cache"].startswith("redis")
    assert cache["lookups"] == sum(r.kind in ("product", "order") for r in make_traffic(40, 7))
    assert cache["hits"] > 0 and cache["misses"] > 0  # each run uses keys of its own: it starts cold
    assert data["database"]["operations"]["SELECT"]["count"] == cache["misses"]
    spans = [n for n in _walk(data["trace"]["root"]) if n["attributes"].get(c.ATTR_DB_SYSTEM) == "redis"]
    assert [s["name"] for s in spans][:1] == ["GET"]


def test_rabbitmq_backend():
    need(_listening(5672), "RabbitMQ is not listening on 127.0.0.1:5672")
    data = run_demo(requests=40, amqp_url=AMQP_URL)
    orders = sum(r.kind == "order" for r in make_traffic(40, 7))
    queue = data["queue"]
    assert (queue["system"], queue["destination"]) == ("rabbitmq", "bakhmach-demo-orders")
    assert queue["published"] == queue["consumed"] == queue["processed"] == orders
    assert queue["drained"] is True
    spans = {n["name"]: n for n in _walk(data["trace"]["root"])}
    process = spans["process bakhmach-demo-orders"]
    assert process["parent_span_id"] == spans["publish bakhmach-demo-orders"]["span_id"]
    assert [n["name"] for n in process["children"]] == ["UPDATE orders"]


async def test_restarted_services_keep_their_health_checks_current():
    need(_listening(6379) and _listening(5672), "Redis and RabbitMQ must listen on 127.0.0.1:6379 and :5672")
    from bakhmach_obs.demo_app import Services
    from bakhmach_obs.testing import capture

    with capture():
        services = Services(redis_url=REDIS_URL, amqp_url=AMQP_URL)
        for _ in range(2):  # the second start opens new connections: the checks must look at those
            await services.start()
            try:
                await asyncio.sleep(services.health.cache_interval + 0.05)  # never a cached answer from the last start
                report = await services.health.ready()
            finally:
                await services.stop()
            assert report.body() == {
                "status": "ready", "services": {"database": "connected", "cache": "connected", "queue": "connected"},
            }  # fmt: skip
        assert services.health.names() == ("database", "cache", "queue")


# --- --serve and a real Prometheus -------------------------------------------------------------------


class _Demo:
    """``python -m bakhmach_obs.cli demo <args>`` in a subprocess; its stdout collected by a thread."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bakhmach_obs.cli", "demo", *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_clean_env(), start_new_session=True,
        )  # fmt: skip
        self.lines: list[str] = []
        self.err = ""
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    def wait_for(self, text: str, timeout: float = 30) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if text in line:
                    return line
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"no {text!r} in the demo's output: {''.join(self.lines)}")

    def stderr(self) -> str:
        return self.err if self.proc.poll() is not None else ""

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(20)
        finally:
            if self.proc.poll() is None:  # stuck: kill its whole session, Prometheus child included
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
            self._reader.join(5)
            assert self.proc.stdout is not None and self.proc.stderr is not None
            self.err = self.proc.stderr.read()
            self.proc.stdout.close()
            self.proc.stderr.close()


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError:  # not listening (yet)
        return 0, ""


def _rules_healthy(groups: list[dict]) -> list[dict] | None:
    """The groups once every rule was evaluated at least once; None before that."""
    rules = [r for g in groups for r in g["rules"]]
    if not rules or any(r["health"] == "unknown" or not r.get("lastEvaluation", "").startswith("2") for r in rules):
        return None
    return groups


@pytest.mark.services
def test_serve_scraped_by_prometheus_with_the_generated_rules(tmp_path):
    port = free_port()
    rules = tmp_path / "rules.yml"
    rules.write_text(yaml.safe_dump(prometheus_rules()))
    demo = _Demo("--serve", "--port", str(port), "--rate", "20")
    try:
        demo.wait_for("Press Ctrl-C")
        assert _get(f"http://127.0.0.1:{port}/health/ready")[0] == 200
        status, exposition = _get(f"http://127.0.0.1:{port}/metrics/")
        assert status == 200 and c.HTTP_SERVER_DURATION.name in exposition
        with PrometheusServer(
            tmp_path, scrape_targets=[f"127.0.0.1:{port}"], rule_files=[rules], job=SERVICE_NAME
        ) as prom:
            targets = prom.wait_for_targets_up(timeout=30)
            assert [(t["labels"]["job"], t["health"], t["lastError"]) for t in targets] == [(SERVICE_NAME, "up", "")]
            groups = prom.wait_until(lambda: _rules_healthy(prom.rule_groups()), timeout=30, what="rules evaluated")
            expected = {g["name"] for g in prometheus_rules()["groups"]}
            assert {g["name"] for g in groups} == expected
            bad = [(r["name"], r["health"], r.get("lastError")) for g in groups for r in g["rules"]
                   if r["health"] != "ok" or r.get("lastError")]  # fmt: skip
            assert bad == []
            # Our metrics are scraped, with the demo's routes and errors, and the SLO rules compute from them.
            routes = prom.wait_until(
                lambda: {r["metric"][c.LABEL_HTTP_ROUTE] for r in prom.query(
                    f'sum by ({c.LABEL_HTTP_ROUTE}) ({c.HTTP_SERVER_DURATION.name}_count{{job="{SERVICE_NAME}"}})'
                )} >= set(ROUTES.values()) or None,
                timeout=20, what="every route scraped",
            )  # fmt: skip
            assert routes
            prom.wait_until(
                lambda: prom.query('slo:sli_error:ratio_rate5m{slo="checkout-availability"}'),
                timeout=20, what="the SLO recording rule",
            )  # fmt: skip
            assert prom.query_values(f'sum({c.CACHE_OPERATIONS.name}{{job="{SERVICE_NAME}"}})')[0] > 0
    finally:
        code = demo.stop(signal.SIGTERM)
    assert code == 0, demo.stderr()
    assert "bakhmach-obs demo: stopped" in "".join(demo.lines)


@pytest.mark.services
def test_with_prometheus_starts_one_loaded_with_the_rules():
    need(_which("prometheus"), "`prometheus` is not installed (apt-get install prometheus)")
    demo = _Demo("--with-prometheus", "--port", "0", "--rate", "20")
    workdir = None
    try:
        url = demo.wait_for("  prometheus http://").split()[1]
        workdir = Path(demo.wait_for("config and rules in").rsplit(" ", 1)[1].rstrip(")\n"))
        assert (workdir / "rules.yml").is_file() and (workdir / "prometheus.yml").is_file()
        deadline = time.monotonic() + 30
        targets: list = []
        while time.monotonic() < deadline:
            status, body = _get(f"{url}/api/v1/targets")
            targets = json.loads(body)["data"]["activeTargets"] if status == 200 else []
            if targets and all(t["health"] == "up" for t in targets):
                break
            time.sleep(0.25)
        assert [(t["labels"]["job"], t["health"]) for t in targets] == [(SERVICE_NAME, "up")]
        groups = json.loads(_get(f"{url}/api/v1/rules")[1])["data"]["groups"]
        assert {g["name"] for g in groups} == {g["name"] for g in prometheus_rules()["groups"]}
    finally:
        code = demo.stop(signal.SIGINT)  # Ctrl-C
    assert code == 0, demo.stderr()
    assert workdir is not None and not workdir.exists()  # Prometheus stopped and its temporary directory removed


def _which(name: str) -> bool:
    import shutil

    return shutil.which(name) is not None


# --- histogram_quantile ---------------------------------------------------------------------------

INF = float("inf")


def test_histogram_quantile_interpolates_like_promql():
    buckets = [(0.1, 4.0), (0.2, 8.0), (INF, 8.0)]
    assert histogram_quantile(0.5, buckets) == pytest.approx(0.1)
    assert histogram_quantile(0.25, buckets) == pytest.approx(0.05)  # the lowest bucket starts at 0
    assert histogram_quantile(0.75, buckets) == pytest.approx(0.15)
    assert histogram_quantile(1.0, buckets) == pytest.approx(0.2)


def test_histogram_quantile_edges():
    # A rank in the +Inf bucket gives the highest finite bound.
    assert histogram_quantile(0.99, [(0.1, 1.0), (INF, 10.0)]) == 0.1
    assert histogram_quantile(0.5, [(0.1, 0.0), (INF, 0.0)]) is None  # no observations
    assert histogram_quantile(0.5, [(0.1, 3.0)]) is None  # no +Inf bucket
    assert histogram_quantile(0.5, []) is None
    assert histogram_quantile(0.0, [(0.1, 0.0), (0.2, 2.0), (INF, 2.0)]) == pytest.approx(0.1)
    # Unsorted input is fine.
    assert histogram_quantile(0.75, [(INF, 8.0), (0.2, 8.0), (0.1, 4.0)]) == pytest.approx(0.15)
    with pytest.raises(ValueError, match="quantile"):
        histogram_quantile(1.5, [(INF, 1.0)])
