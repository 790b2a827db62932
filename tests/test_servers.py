"""The example services through real servers on 127.0.0.1: uvicorn (one and two workers) and gunicorn.

Each test starts a server as a subprocess of this interpreter (``-m uvicorn`` / ``-m gunicorn``, on
a free port, output to a file that is printed when the test fails), drives it over real sockets,
then scrapes ``/metrics`` the way Prometheus does. The totals must be exact: every request counted
once, whichever worker served it, and nothing else counted (health and metrics paths excluded).

An observation is recorded just after the last byte of its response was handed to the server, so a
scrape racing the final response can miss it for a few microseconds; scrapes are therefore repeated
until the total is reached (never past it) before the exact assertions run.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.trace import SpanKind
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

import bakhmach_obs
from bakhmach_obs import conventions as c
from bakhmach_obs.http_client import instrument_httpx
from bakhmach_obs.testing import capture

from .otlp_receiver import running_receiver

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="pre-fork servers and process groups: POSIX only")

ROOT = Path(__file__).resolve().parent.parent
DURATION = "http_server_request_duration_seconds"
ACTIVE = "http_server_active_requests"
START_TIMEOUT = 30.0
#: Variables of the developer's shell that would change what the servers do.
_INHERITED_OUT = ("OTEL_", "BAKHMACH_OBS_", "PROMETHEUS_MULTIPROC_DIR", "prometheus_multiproc_dir", "FASTAPI_OTEL")
_INHERITED_OUT_EXACT = ("DOWNSTREAM_URL", "PORT", "PAYMENT_LIMIT_CENTS", "WEB_CONCURRENCY", "GUNICORN_CMD_ARGS")

#: Route label each kind of request must get, per framework (templates only, never a raw path).
ROUTES = {
    "fastapi": {"users": "/users/{user_id}", "orders": "/orders", "payments": "/payments", "boom": "/boom",
                "slow": "/slow"},
    "flask": {"users": "/users/<int:user_id>", "orders": "/orders", "payments": "/payments", "boom": "/boom",
              "slow": "/slow"},
}  # fmt: skip


def _require(*modules: str) -> None:
    for name in modules:
        if importlib.util.find_spec(name) is None:
            pytest.skip(f"{name} is not installed")


def _free_port() -> int:
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            return int(sock.getsockname()[1])
    except OSError as exc:
        pytest.skip(f"cannot bind a loopback port here: {exc}")


def _server_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(_INHERITED_OUT) and k not in _INHERITED_OUT_EXACT}
    env.update(PYTHONUNBUFFERED="1", BAKHMACH_OBS_LOG_FORMAT="json", BAKHMACH_OBS_LOG_LEVEL="INFO")
    env.update(extra)
    return env


class Server:
    """A server subprocess bound to 127.0.0.1:port, its output going to a file."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_path: Path, port: int) -> None:
        self.name = name
        self.port = port
        self.base_url = f"http://127.0.0.1:{port}"
        self.log_path = log_path
        self._log = log_path.open("wb")
        try:
            self.proc = subprocess.Popen(
                argv, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: workers can be cleaned up with it
            )  # fmt: skip
        except BaseException:
            self._log.close()
            raise

    def output(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def json_lines(self) -> list[dict[str, Any]]:
        """The JSON log records the server wrote so far."""
        records = []
        for line in self.output().splitlines():
            if line.startswith("{"):
                with contextlib.suppress(ValueError):
                    records.append(json.loads(line))
        return records

    def stop(self) -> None:
        """SIGTERM to the master, then SIGKILL to whatever is left of its process group."""
        try:
            if self.proc.poll() is None:
                self.proc.terminate()
                try:
                    self.proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(self.proc.pid, signal.SIGKILL)
                    self.proc.wait(timeout=10)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)  # orphaned workers, if any
        finally:
            self._log.close()


def _wait_ready(server: Server, workers: int) -> None:
    """Poll ``/health/live`` on fresh connections until ``workers`` distinct worker pids answered."""
    deadline = time.monotonic() + START_TIMEOUT
    pids: set[int] = set()
    with httpx.Client(base_url=server.base_url, timeout=2.0, limits=httpx.Limits(max_keepalive_connections=0)) as hc:
        while time.monotonic() < deadline:
            if server.proc.poll() is not None:
                raise RuntimeError(f"{server.name} exited with {server.proc.returncode}")
            try:
                response = hc.get("/health/live")
            except httpx.TransportError:
                time.sleep(0.05)
                continue
            if response.status_code == 200:
                pids.add(response.json()["pid"])
                if len(pids) >= workers:
                    return
            time.sleep(0.02)
    raise RuntimeError(f"{server.name} not ready after {START_TIMEOUT}s (worker pids seen: {sorted(pids)})")


@contextlib.contextmanager
def serve(name: str, argv: Callable[[int], list[str]], env: dict[str, str], tmp_path: Path,
          workers: int = 1) -> Iterator[Server]:  # fmt: skip
    """Start a server on a free port, wait until every worker answers, stop it afterwards.

    Retries on another port when the chosen one was taken in between. The server's output is
    printed when the block fails (pytest shows it with the failure).
    """
    for attempt in range(3):
        port = _free_port()
        server = Server(name, argv(port), env, tmp_path / f"{name}-{attempt}.log", port)
        try:
            _wait_ready(server, workers)
        except BaseException as exc:
            server.stop()
            output = server.output()
            if isinstance(exc, RuntimeError) and re.search(r"in use|Errno 98", output) and attempt < 2:
                continue
            print(f"----- {name} output -----\n{output}")
            if isinstance(exc, RuntimeError) and re.search(r"No module named (uvicorn|gunicorn)\b", output):
                pytest.skip(f"{name} cannot start here: {output.strip().splitlines()[-1]}")
            raise
        break
    try:
        yield server
    except BaseException:
        print(f"----- {name} output -----\n{server.output()}")
        raise
    finally:
        server.stop()


def uvicorn_argv(*extra: str) -> Callable[[int], list[str]]:
    def argv(port: int) -> list[str]:
        return [sys.executable, "-m", "uvicorn", "examples.fastapi_service:app", "--host", "127.0.0.1",
                "--port", str(port), "--no-access-log", "--timeout-graceful-shutdown", "5", *extra]  # fmt: skip

    return argv


# --- traffic and scrapes ---------------------------------------------------------------------------


def _plan(framework: str) -> list[tuple[str, str, Any, int, str | None]]:
    """(method, path, json body, expected status, route kind: a key of ROUTES, None when nothing
    matches (``__unmatched__``), "excluded" for paths that are never measured)."""
    plan: list[tuple[str, str, Any, int, str | None]] = []
    plan += [("GET", f"/users/{i}", None, 200, "users") for i in range(1, 21)]
    # An invalid path parameter: FastAPI validates it (422 on the route), Flask's converter does
    # not match (404, unmatched). Either way the value never becomes a label.
    invalid_status, invalid_kind = (422, "users") if framework == "fastapi" else (404, None)
    plan += [("GET", f"/users/x{i}", None, invalid_status, invalid_kind) for i in range(2)]
    plan += [("POST", "/orders", {"user_id": f"user-{i}", "sku": "A-1"}, 201, "orders") for i in range(10)]
    plan += [("POST", "/payments", {"user_id": "user-788", "amount_cents": 2_500}, 201, "payments")] * 6
    plan += [("POST", "/payments", {"user_id": "user-789", "amount_cents": 24_500}, 402, "payments")] * 4
    plan += [("GET", "/boom", None, 500, "boom")] * 3
    plan += [("GET", f"/scan/{i}", None, 404, None) for i in range(1000)]
    plan += [("GET", "/health/live", None, 200, "excluded")] * 5
    plan += [("GET", "/metrics", None, 200, "excluded")] * 2
    random.Random(7).shuffle(plan)
    return plan


def exercise(base_url: str, framework: str, *, concurrency: int) -> Counter[tuple[str, str, str]]:
    """Send the plan (new connection per request, so every worker gets some); the expected series."""
    routes = ROUTES[framework]
    expected: Counter[tuple[str, str, str]] = Counter()
    plan = _plan(framework)

    local = threading.local()
    clients: list[httpx.Client] = []

    def send(item: tuple[str, str, Any, int, str | None]) -> int:
        # One client per worker thread: sharing a pooled client across threads with keep-alive off
        # raced inside httpcore ("Bad file descriptor") on a loaded machine, and a retry could
        # double-count a request the server did process.
        client = getattr(local, "client", None)
        if client is None:
            client = local.client = httpx.Client(base_url=base_url, timeout=10.0, follow_redirects=True,
                                                 limits=httpx.Limits(max_keepalive_connections=0))  # fmt: skip
            clients.append(client)
        method, path, body, _, _ = item
        return client.request(method, path, json=body).status_code

    try:
        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            statuses = list(pool.map(send, plan))
    finally:
        for client in clients:
            client.close()
    for (method, path, _, status, kind), got in zip(plan, statuses, strict=True):
        assert got == status, f"{method} {path}: {got}, expected {status}"
        if kind == "excluded":
            continue
        route = c.HTTP_ROUTE_UNMATCHED if kind is None else routes[kind]
        expected[(method, route, str(status))] += 1
    return expected


def scrape(base_url: str) -> dict[str, Any]:
    """GET /metrics as Prometheus does (following a redirect); families by name."""
    response = httpx.get(base_url + "/metrics", timeout=10.0, follow_redirects=True)
    assert response.status_code == 200, response.text
    return {f.name: f for f in text_string_to_metric_families(response.text)}


def counts(families: dict[str, Any]) -> dict[tuple[str, str, str], float]:
    """``http_server_request_duration_seconds_count`` by (method, route, status)."""
    fam = families.get(DURATION)
    if fam is None:
        return {}
    return {
        (s.labels["http_request_method"], s.labels["http_route"], s.labels["http_response_status_code"]): s.value
        for s in fam.samples
        if s.name == DURATION + "_count"
    }


def scrape_until(base_url: str, total: int, timeout: float = 10.0) -> dict[str, Any]:
    """Scrape until the request count reaches ``total`` (failing at once if it goes past it)."""
    deadline = time.monotonic() + timeout
    while True:
        families = scrape(base_url)
        seen = sum(counts(families).values())
        assert seen <= total, f"{seen} requests counted, only {total} were made: {counts(families)}"
        if seen == total and all(s.value == 0 for s in _samples(families, ACTIVE)):
            return families
        if time.monotonic() > deadline:
            return families  # the exact assertions that follow say what is wrong
        time.sleep(0.05)


def _samples(families: dict[str, Any], name: str) -> list[Any]:
    fam = families.get(name)
    return list(fam.samples) if fam is not None else []


def assert_exact(families: dict[str, Any], expected: Counter[tuple[str, str, str]], framework: str) -> None:
    got = counts(families)
    assert sum(got.values()) == sum(expected.values())
    assert got == {key: float(n) for key, n in expected.items()}
    # Bounded: 1,000 scanned paths are one series; every route label is a template.
    assert len(got) < 30
    assert [route for _, route, _ in got].count(c.HTTP_ROUTE_UNMATCHED) == 1
    allowed = {*ROUTES[framework].values(), c.HTTP_ROUTE_UNMATCHED}
    for name, fam in families.items():
        if name.startswith("http_server_"):
            for s in fam.samples:
                route = s.labels.get("http_route")
                if route is not None:
                    assert route in allowed, s
                    assert not re.search(r"\d", route), s
    # At rest nothing is in flight.
    active = _samples(families, ACTIVE)
    assert active, "http_server_active_requests is missing"
    assert all(s.value == 0 for s in active), active


def assert_aggregated(families: dict[str, Any], metrics_dir: Path) -> None:
    """Multiprocess exposition: one series per label set, live gauges summed, build info maxed."""
    for fam in families.values():
        for s in fam.samples:
            assert "pid" not in s.labels, s
    build = _samples(families, "bakhmach_obs_build_info")
    assert [s.value for s in build] == [1.0], build
    # histogram_<pid>.db holds request histograms; the runtime metrics' own files carry a suffix
    # (histogram_<pid>-gc.db, counter_<pid>-<start>-io.db) and say nothing about traffic.
    stems = [p.stem.rsplit("_", 1)[1] for p in metrics_dir.glob("histogram_*.db")]
    pids = {int(stem) for stem in stems if stem.isdigit()}
    assert len(pids) >= 2, f"only {sorted(pids)} recorded requests: the traffic did not reach both workers"


def _active_total(families: dict[str, Any]) -> float:
    return sum(s.value for s in _samples(families, ACTIVE))


def _slow_requests(base_url: str, n: int, delay: float) -> tuple[ThreadPoolExecutor, list[Any]]:
    pool = ThreadPoolExecutor(max_workers=n)

    def one() -> int:
        with httpx.Client(base_url=base_url, timeout=15.0) as hc:
            return hc.get("/slow", params={"delay": delay}).status_code

    return pool, [pool.submit(one) for _ in range(n)]


# --- uvicorn -------------------------------------------------------------------------------------------


def test_uvicorn_single_process_counts_every_request_once_by_template(tmp_path):
    _require("uvicorn", "fastapi")
    with serve("uvicorn", uvicorn_argv(), _server_env(), tmp_path) as server:
        expected = exercise(server.base_url, "fastapi", concurrency=8)
        families = scrape_until(server.base_url, sum(expected.values()))
        assert_exact(families, expected, "fastapi")
        # One CLIENT observation per loaded user, towards the downstream profile service.
        client = {
            s.labels["server_address"]: s.value
            for s in _samples(families, "http_client_request_duration_seconds")
            if s.name.endswith("_count")
        }
        assert client == {"profiles.internal": 20.0}


def test_uvicorn_workers_aggregate_exactly_across_processes(tmp_path):
    _require("uvicorn", "fastapi")
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    env = _server_env(PROMETHEUS_MULTIPROC_DIR=str(metrics_dir))
    with serve("uvicorn-workers", uvicorn_argv("--workers", "2"), env, tmp_path, workers=2) as server:
        expected = exercise(server.base_url, "fastapi", concurrency=8)
        total = sum(expected.values())
        families = scrape_until(server.base_url, total)
        assert_exact(families, expected, "fastapi")
        assert_aggregated(families, metrics_dir)

        # In flight: the live sum over both workers, whichever of them serves the scrape.
        # Slow enough that all three are surely in flight together on a loaded 2-core machine.
        pool, futures = _slow_requests(server.base_url, 3, delay=6.0)
        with pool:
            deadline = time.monotonic() + 8
            while (in_flight := _active_total(scrape(server.base_url))) != 3 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert in_flight == 3
            assert [f.result() for f in futures] == [200] * 3
        expected[("GET", "/slow", "200")] += 3
        assert_exact(scrape_until(server.base_url, total + 3), expected, "fastapi")


# --- gunicorn ------------------------------------------------------------------------------------------


def _children(pid: int) -> set[int]:
    """Live child pids of ``pid`` (Linux /proc)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid and fields[0] != "Z":
            found.add(int(entry.name))
    return found


def _stale_files(metrics_dir: Path) -> None:
    """What a previous run leaves behind: a busy live gauge and a thousand requests of a gone route."""
    from prometheus_client.mmap_dict import MmapedDict, mmap_key

    labels = ("http_request_method", "http_route", "http_response_status_code")
    histogram = MmapedDict(str(metrics_dir / "histogram_999999.db"))
    for le in ("0.005", "+Inf"):
        key = mmap_key(DURATION, DURATION + "_bucket", (*labels, "le"), ("GET", "/stale", "200", le), "stale")
        histogram.write_value(key, 1000.0, 0.0)
    histogram.close()
    gauge = MmapedDict(str(metrics_dir / "gauge_livesum_999999.db"))
    gauge.write_value(mmap_key(ACTIVE, ACTIVE, ("http_request_method",), ("GET",), "stale"), 5.0, 0.0)
    gauge.close()


def _dir_active(metrics_dir: Path) -> float:
    """The live sum of in-flight requests, read straight from the workers' files."""
    total = 0.0
    for fam in MultiProcessCollector(CollectorRegistry(), path=str(metrics_dir)).collect():
        if fam.name == ACTIVE:
            total += sum(s.value for s in fam.samples)
    return total


def test_gunicorn_workers_aggregate_and_forget_dead_workers(tmp_path):
    _require("gunicorn", "flask")
    if not Path("/proc/self/stat").exists():
        pytest.skip("needs Linux /proc to find gunicorn's workers")
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    _stale_files(metrics_dir)
    conf = tmp_path / "gunicorn.conf.py"
    conf.write_text(
        "from bakhmach_obs.gunicorn import child_exit, on_starting  # noqa: F401\n"
        "workers = 2\n"
        "worker_class = 'sync'\n"
        "graceful_timeout = 5\n"
        "control_socket_disable = True  # gunicorn >= 25: no control socket in ~/.gunicorn\n",
        encoding="utf-8",
    )

    def argv(port: int) -> list[str]:
        return [sys.executable, "-m", "gunicorn", "-c", str(conf), "-b", f"127.0.0.1:{port}",
                "examples.flask_service:app"]  # fmt: skip

    env = _server_env(PROMETHEUS_MULTIPROC_DIR=str(metrics_dir))
    with serve("gunicorn", argv, env, tmp_path, workers=2) as server:
        assert not list(metrics_dir.glob("*_999999.db")), "on_starting did not wipe the stale files"
        expected = exercise(server.base_url, "flask", concurrency=8)
        total = sum(expected.values())
        families = scrape_until(server.base_url, total)
        assert_exact(families, expected, "flask")
        assert_aggregated(families, metrics_dir)

        # Kill a worker in the middle of a request: its in-flight gauge would stay at 1 forever,
        # were it not for child_exit (mark_process_dead). Its counters stay in the totals.
        workers = _children(server.proc.pid)
        assert len(workers) == 2, workers
        pool, futures = _slow_requests(server.base_url, 2, delay=5.0)  # long enough on a loaded machine
        with pool:
            deadline = time.monotonic() + 8
            while (in_flight := _dir_active(metrics_dir)) != 2 and time.monotonic() < deadline:
                time.sleep(0.02)
            assert in_flight == 2  # each sync worker holds one slow request
            victim = sorted(workers)[0]
            served_before = (metrics_dir / f"histogram_{victim}.db").exists()
            os.kill(victim, signal.SIGKILL)
            deadline = time.monotonic() + 10
            while (metrics_dir / f"gauge_livesum_{victim}.db").exists() and time.monotonic() < deadline:
                time.sleep(0.02)
            assert not (metrics_dir / f"gauge_livesum_{victim}.db").exists(), "child_exit did not run"
            outcomes = []
            for future in futures:
                try:
                    outcomes.append(future.result())
                except httpx.TransportError as exc:  # the killed worker's request
                    outcomes.append(type(exc).__name__)
        assert outcomes.count(200) == 1 and len(outcomes) == 2, outcomes  # the other one was cut off
        assert (metrics_dir / f"histogram_{victim}.db").exists() == served_before

        expected[("GET", "/slow", "200")] += 1
        families = scrape_until(server.base_url, total + 1)
        assert_exact(families, expected, "flask")  # includes: nothing in flight, dead worker forgotten
        assert_aggregated(families, metrics_dir)
        deadline = time.monotonic() + 10  # gunicorn replaced the worker
        while len(_children(server.proc.pid)) != 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert victim not in _children(server.proc.pid) and len(_children(server.proc.pid)) == 2


# --- spans and logs across the wire ---------------------------------------------------------------------


def test_trace_and_correlation_id_continue_from_client_to_server(tmp_path):
    _require("uvicorn", "fastapi")
    with running_receiver() as rx:
        env = _server_env(
            OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{rx.port}",
            OTEL_TRACES_SAMPLER="always_on",
            OTEL_BSP_SCHEDULE_DELAY="100",
        )
        with serve("uvicorn-otlp", uvicorn_argv(), env, tmp_path) as server:
            with capture() as cap, instrument_httpx(httpx.Client(base_url=server.base_url, timeout=10.0)) as hc:
                with bakhmach_obs.correlation_scope("req-12345"):
                    response = hc.get("/users/42")
            assert response.status_code == 200
            assert response.headers["x-correlation-id"] == "req-12345"
            assert response.json()["correlation_id"] == "req-12345"
            [client] = [s for s in cap.spans() if s.kind is SpanKind.CLIENT]
            trace_id, client_span_id = f"{client.context.trace_id:032x}", f"{client.context.span_id:016x}"

            # The server's spans of this trace: SERVER, the instrumented service function, its
            # downstream CLIENT call; exported within OTEL_BSP_SCHEDULE_DELAY.
            deadline = time.monotonic() + 15
            while len(ours := {s.name: s for s in rx.spans if s.trace_id == trace_id}) < 3:
                assert time.monotonic() < deadline, [(s.name, s.trace_id) for s in rx.spans]
                time.sleep(0.05)
            servers = [(s.name, s.scope_name) for s in rx.spans if s.trace_id == trace_id and s.kind == "SERVER"]
            assert servers == [("GET /users/{user_id}", "bakhmach_obs")], "FastAPI's own telemetry is on?"
            server_span, load_user, downstream = ours["GET /users/{user_id}"], ours["load_user"], ours["GET"]
            assert (server_span.kind, load_user.kind, downstream.kind) == ("SERVER", "INTERNAL", "CLIENT")
            assert server_span.parent_span_id == client_span_id
            assert server_span.attributes[c.ATTR_HTTP_ROUTE] == "/users/{user_id}"
            assert server_span.attributes[c.ATTR_CORRELATION_ID] == "req-12345"
            assert server_span.resource_attributes["service.name"] == "backend"
            assert load_user.parent_span_id == server_span.span_id
            assert downstream.parent_span_id == load_user.span_id
            assert downstream.attributes["server.address"] == "profiles.internal"

            # The JSON access-log line on the server's stdout joins the same trace and correlation id.
            [access] = [r for r in server.json_lines() if r.get("logger") == "bakhmach_obs.access"]
            assert access["path"] == "/users/42" and access["http_route"] == "/users/{user_id}"
            assert access["trace_id"] == trace_id
            assert access["span_id"] == server_span.span_id
            assert access["correlation_id"] == "req-12345"
            assert access["service"] == "backend"
            [loaded] = [r for r in server.json_lines() if r.get("message") == "user loaded"]
            assert loaded["trace_id"] == trace_id
            assert (loaded["correlation_id"], loaded["user_id"]) == ("req-12345", "user-42")

            # Stopped, the server has flushed everything: one SERVER span in all. (FastAPI's own
            # telemetry, left on, would add its own SERVER spans, health probes included.)
            server.stop()
            servers = [(s.name, s.scope_name) for s in rx.spans if s.kind == "SERVER"]
            assert servers == [("GET /users/{user_id}", "bakhmach_obs")]


def test_fastapi_example_publishes_orders_for_the_worker_with_trace_and_correlation(tmp_path):
    """POST /orders on the real server publishes what examples/worker.py consumes, trace included."""
    _require("uvicorn", "fastapi", "pika")
    import uuid

    import pika

    from bakhmach_obs._http import parse_traceparent

    from .conftest import need

    url = "amqp://guest:guest@127.0.0.1:5672/%2F"
    try:
        probe = pika.BlockingConnection(pika.URLParameters(url + "?connection_attempts=1&socket_timeout=2"))
    except pika.exceptions.AMQPError as exc:
        need(False, f"RabbitMQ is not reachable on 127.0.0.1:5672 ({exc!r})")
    queue = f"orders-{uuid.uuid4().hex}"
    channel = probe.channel()
    channel.queue_declare(queue, durable=True)
    try:
        env = _server_env(AMQP_URL=url, QUEUE=queue, OTEL_TRACES_SAMPLER="always_on")
        with serve("uvicorn-publish", uvicorn_argv(), env, tmp_path) as server:
            response = httpx.post(server.base_url + "/orders", json={"user_id": "u1", "sku": "sku-9", "quantity": 2},
                                  headers={"X-Correlation-ID": "req-pub-1"}, timeout=10.0)  # fmt: skip
            assert response.status_code == 201, response.text
            deadline = time.monotonic() + 10
            method = None
            while method is None and time.monotonic() < deadline:
                method, properties, body = channel.basic_get(queue, auto_ack=True)
                if method is None:
                    time.sleep(0.05)
            assert method is not None, "nothing was published"
            assert json.loads(body) == {"order_id": "ord_u1_sku-9", "sku": "sku-9", "quantity": 2}
            headers = properties.headers
            assert headers["x-correlation-id"] == "req-pub-1"
            assert parse_traceparent(headers["traceparent"]) is not None
            assert float(headers["x-published-at"]) > 0
    finally:
        channel.queue_delete(queue)
        probe.close()
