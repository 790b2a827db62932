"""Per-request cost of HTTP middleware, in process (no network), against the peers, in one run.

Run: ``python benchmarks/bench_http.py [--quick] [--repeats N] [--json PATH]``.

Each request calls the app directly: ASGI apps get a prebuilt scope (copied per request), a
``receive`` that returns one ``http.request`` message and a ``send`` that discards what it is
given, awaited N times in a loop inside one event loop; WSGI apps are called with a prebuilt
environ (copied per request) and their iterable is consumed and closed. No TestClient, no httpx.

Every app serves the same route, ``GET /users/{user_id}`` returning a small JSON body built by the
same function. Overheads are per-repeat paired differences against the bare app of the same
framework (Starlette rows over 1, FastAPI rows over 4, WSGI rows over 7); repeats are interleaved
(each repeat times every variant once, in a rotated order) and medians are reported, with the
min-max spread. Only ratios within one run mean anything (see
``/work/shared/design/PERFORMANCE.md``). Span exporters do no I/O.

Rows 6f and 9f are lower bounds (``benchmarks/_floor.py``): the cheapest code that emits the same
signals (metrics, a 10 % span, a correlation id, a JSON access line) with none of the safety. Their
ratios, (a'), (b') and (c'), are what no complete implementation on this stack can go under.

A second part measures the event-loop stall a ``/metrics`` scrape of a 500-series histogram
registry causes: ``bakhmach_obs.metrics_asgi_app`` (renders in a worker thread) against
prometheus_client's ``make_asgi_app`` (renders on the loop), with a concurrent task issuing a tiny
request every 1 ms and recording each one's latency from its due time.

This is a measurement, not a test: it always exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib
import io
import json
import platform
import statistics
import sys
import time
import traceback
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from time import perf_counter_ns
from typing import Any

from _common import DropExporter
from _floor import FloorASGIMiddleware, floor_wsgi
from fastapi import FastAPI
from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware as OTelASGIMiddleware
from opentelemetry.instrumentation.wsgi import OpenTelemetryMiddleware as OTelWSGIMiddleware
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased, TraceIdRatioBased
from prometheus_client import CollectorRegistry, Histogram, generate_latest, make_asgi_app
from prometheus_fastapi_instrumentator import Instrumentator
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette_exporter import PrometheusMiddleware

import bakhmach_obs
from bakhmach_obs.tracing import BoundedBatchSpanProcessor

ASGIApp = Callable[[dict[str, Any], Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]], Awaitable[None]]

TARGETS = {"a": 0.25, "b": 0.05, "c": 0.05}
SAMPLER_RATIO = 0.1


# --- no-I/O sinks ------------------------------------------------------------------------------


class NullStream(io.TextIOBase):
    """A text stream that drops what is written (and counts the writes: one per log record)."""

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, s: str) -> int:
        self.writes += 1
        return len(s)

    def writable(self) -> bool:
        return True


LOG_STREAM = NullStream()  # the SDK's log handler writes here; counted per variant
CURRENT = [""]  # key of the variant being run: spans and log records are attributed to it


class SpanCounter(SpanProcessor):
    """Counts ended (sampled) spans per variant; ``on_end`` runs synchronously in ``span.end()``."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def on_end(self, span: ReadableSpan) -> None:
        key = CURRENT[0]
        self.counts[key] = self.counts.get(key, 0) + 1


SPANS = SpanCounter()  # added to every tracer provider in this benchmark


# --- OUR middleware: the hook to adjust ----------------------------------------------------------
# Modules tried, in order, for ``ObservabilityMiddleware`` (the design doc also mentions adapters/).
OURS_MODULES = {"asgi": ("bakhmach_obs.asgi", "bakhmach_obs.adapters.asgi"),
                "wsgi": ("bakhmach_obs.wsgi", "bakhmach_obs.adapters.wsgi")}  # fmt: skip
# Keyword options passed to ObservabilityMiddleware(app, **OURS_OPTIONS) (ASGI and WSGI alike).
OURS_OPTIONS: dict[str, Any] = {}
OURS_EXPORTERS: list[DropExporter] = []


def configure_ours() -> None:
    """HOOK: configure bakhmach_obs before the apps with our middleware are built.

    Every signal is paid for, as in production: HTTP metrics into a fresh registry, spans at
    parentbased_traceidratio 0.1 through the production ``BoundedBatchSpanProcessor`` to a no-I/O
    exporter, and the JSON access log written to a null stream. Adjust here if the middleware
    needs something else (for example a handler on a dedicated access logger).
    """
    exporter = DropExporter()
    OURS_EXPORTERS.append(exporter)
    bakhmach_obs.configure(
        service_name="bench",
        log_format="json",
        log_stream=LOG_STREAM,
        traces_exporter="none",
        traces_sampler="parentbased_traceidratio",
        traces_sampler_arg=SAMPLER_RATIO,
        span_processors=[BoundedBatchSpanProcessor(exporter), SPANS],
        registry=CollectorRegistry(),
    )


def load_ours(kind: str) -> tuple[Any, str]:
    """``(ObservabilityMiddleware, module name)`` or ``(None, reason)``."""
    reasons = []
    for name in OURS_MODULES[kind]:
        try:
            module = importlib.import_module(name)
        except ImportError as exc:
            reasons.append(f"{name}: {exc}")
            continue
        cls = getattr(module, "ObservabilityMiddleware", None)
        if cls is None:
            reasons.append(f"{name} has no ObservabilityMiddleware")
            continue
        return cls, name
    return None, "; ".join(reasons)


# --- the shared handler logic --------------------------------------------------------------------
def user_payload(user_id: str) -> dict[str, Any]:
    return {"id": user_id, "name": "Ada", "active": True}


async def starlette_user(request: Request) -> JSONResponse:
    return JSONResponse(user_payload(request.path_params["user_id"]))


def starlette_app() -> Starlette:
    return Starlette(routes=[Route("/users/{user_id}", starlette_user)])


def fastapi_app(native_telemetry: bool = False) -> FastAPI:
    """FastAPI app; its native OpenTelemetry telemetry (FastAPI >= 0.16x) is off unless asked for.

    FastAPI's native telemetry turns itself on as soon as a global tracer (or meter, logger)
    provider is set, which ``bakhmach_obs.configure`` does: left on, the "bare" app would make
    its own spans in the rows measured after our configure().
    """
    try:
        app = FastAPI() if native_telemetry else FastAPI(telemetry={"tracing": False, "metrics": False, "logs": False})
    except TypeError:  # a FastAPI without native telemetry
        app = FastAPI()

    @app.get("/users/{user_id}")
    async def get_user(user_id: str) -> dict[str, Any]:
        return user_payload(user_id)

    return app


_USERS = "/users/"
_JSON_HEADERS = [("Content-Type", "application/json")]


def wsgi_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """A bare WSGI app with a tiny hand-written router for ``/users/<id>``."""
    path = environ.get("PATH_INFO", "")
    if path.startswith(_USERS) and len(path) > len(_USERS) and "/" not in path[len(_USERS) :]:
        body = json.dumps(user_payload(path[len(_USERS) :]), separators=(",", ":")).encode()
        start_response("200 OK", [*_JSON_HEADERS, ("Content-Length", str(len(body)))])
        return [body]
    start_response("404 Not Found", [("Content-Type", "text/plain"), ("Content-Length", "10")])
    return [b"not found\n"]


# --- requests ------------------------------------------------------------------------------------
USER_ID = "42"
HEADERS = [
    (b"host", b"localhost:8000"),
    (b"user-agent", b"bench-http/1.0"),
    (b"accept", b"application/json"),
    (b"accept-encoding", b"gzip, deflate"),
    (b"connection", b"keep-alive"),
    (b"x-forwarded-for", b"10.0.0.7"),
]
SCOPE: dict[str, Any] = {
    "type": "http",
    "asgi": {"version": "3.0", "spec_version": "2.3"},
    "http_version": "1.1",
    "method": "GET",
    "scheme": "http",
    "path": f"/users/{USER_ID}",
    "raw_path": f"/users/{USER_ID}".encode(),
    "root_path": "",
    "query_string": b"",
    "headers": HEADERS,
    "client": ("127.0.0.1", 54321),
    "server": ("127.0.0.1", 8000),
}
ENVIRON: dict[str, Any] = {
    "REQUEST_METHOD": "GET",
    "SCRIPT_NAME": "",
    "PATH_INFO": f"/users/{USER_ID}",
    "QUERY_STRING": "",
    "SERVER_NAME": "localhost",
    "SERVER_PORT": "8000",
    "SERVER_PROTOCOL": "HTTP/1.1",
    "REMOTE_ADDR": "127.0.0.1",
    "REMOTE_PORT": "54321",
    **{"HTTP_" + k.decode().upper().replace("-", "_"): v.decode() for k, v in HEADERS},
    "wsgi.version": (1, 0),
    "wsgi.url_scheme": "http",
    "wsgi.input": io.BytesIO(b""),
    "wsgi.errors": sys.stderr,
    "wsgi.multithread": True,
    "wsgi.multiprocess": False,
    "wsgi.run_once": False,
}
EXPECTED_BODY = json.dumps(user_payload(USER_ID), separators=(",", ":")).encode()
_REQUEST_MESSAGE = {"type": "http.request", "body": b"", "more_body": False}


async def receive() -> dict[str, Any]:
    return _REQUEST_MESSAGE


async def discard(message: Any) -> None:
    return None


def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Callable[[bytes], None]:
    return _write


def _write(data: bytes) -> None:
    return None


def new_scope() -> dict[str, Any]:
    scope = SCOPE.copy()
    scope["state"] = {}
    return scope


async def asgi_loop(app: ASGIApp, n: int) -> int:
    """Time ``n`` requests to ``app`` (ns in total). The scope copy is part of every row."""
    base, rcv, snd = SCOPE, receive, discard
    t0 = perf_counter_ns()
    for _ in range(n):
        scope = base.copy()
        scope["state"] = {}
        await app(scope, rcv, snd)
    return perf_counter_ns() - t0


def wsgi_loop(app: Callable[..., Iterable[bytes]], n: int) -> int:
    """Time ``n`` requests to ``app`` (ns in total): call, consume the iterable, close it."""
    base, sr = ENVIRON, start_response
    t0 = perf_counter_ns()
    for _ in range(n):
        result = app(base.copy(), sr)
        try:
            for _chunk in result:
                pass
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()
    return perf_counter_ns() - t0


async def check_asgi(app: ASGIApp) -> None:
    """One request with a recording send: the app must answer 200 with the expected JSON."""
    status: list[int] = []
    body = bytearray()

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            status.append(message["status"])
        elif message["type"] == "http.response.body":
            body.extend(message.get("body", b""))

    await app(new_scope(), receive, send)
    if status != [200] or json.loads(body) != json.loads(EXPECTED_BODY):
        raise RuntimeError(f"unexpected response: status {status}, body {bytes(body)[:200]!r}")


def check_wsgi(app: Callable[..., Iterable[bytes]]) -> None:
    statuses: list[str] = []

    def sr(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Callable[[bytes], None]:
        statuses.append(status)
        return _write

    result = app(ENVIRON.copy(), sr)
    try:
        body = b"".join(result)
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()
    if statuses != ["200 OK"] or json.loads(body) != json.loads(EXPECTED_BODY):
        raise RuntimeError(f"unexpected response: status {statuses}, body {body[:200]!r}")


# --- the variants --------------------------------------------------------------------------------
@dataclass
class Variant:
    key: str
    label: str
    kind: str  # "asgi" or "wsgi"
    app: Any
    bare: str | None  # key of the bare app this row's overhead is measured against
    exporters: list[DropExporter] = field(default_factory=list)  # to check that spans were delivered
    n: int = 0
    samples: list[float] = field(default_factory=list)  # ns per request
    requests: int = 0
    log_writes: int = 0

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def spans_per_request(self) -> float:
        return SPANS.counts.get(self.key, 0) / max(self.requests, 1)


def otel_providers() -> tuple[TracerProvider, MeterProvider, DropExporter]:
    """SDK providers as production would have them: 10% sampler, batch processor, metrics recorded."""
    exporter = DropExporter()
    tracer_provider = TracerProvider(sampler=ParentBased(TraceIdRatioBased(SAMPLER_RATIO)), shutdown_on_exit=False)
    tracer_provider.add_span_processor(BatchSpanProcessor(exporter))
    tracer_provider.add_span_processor(SPANS)
    meter_provider = MeterProvider(metric_readers=[InMemoryMetricReader()], shutdown_on_exit=False)
    return tracer_provider, meter_provider, exporter


def build_variants() -> tuple[list[Variant], list[str], list[Any]]:
    """The variants that could be built, notes (skipped rows and why, where ours came from), providers."""
    variants: list[Variant] = []
    skipped: list[str] = []
    providers: list[Any] = []

    variants.append(Variant("1", "Starlette bare", "asgi", starlette_app(), None))

    tp, mp, exp = otel_providers()
    providers += [tp, mp]
    app = starlette_app()
    app.add_middleware(OTelASGIMiddleware, tracer_provider=tp, meter_provider=mp)
    variants.append(Variant("2", "Starlette + OTel ASGI middleware (10%, metrics)", "asgi", app, "1", [exp]))

    app = starlette_app()
    # starlette-exporter has no registry option: its metrics go to the default REGISTRY.
    app.add_middleware(PrometheusMiddleware, group_paths=True)
    variants.append(Variant("3", "Starlette + starlette-exporter", "asgi", app, "1"))

    variants.append(Variant("4", "FastAPI bare", "asgi", fastapi_app(), None))

    app = fastapi_app()
    Instrumentator(registry=CollectorRegistry()).instrument(app)
    variants.append(Variant("5", "FastAPI + prometheus-fastapi-instrumentator", "asgi", app, "4"))

    ours_asgi, asgi_where = load_ours("asgi")
    ours_wsgi, wsgi_where = load_ours("wsgi")
    if ours_asgi is not None or ours_wsgi is not None:
        configure_ours()
    for kind, cls, where in (("ASGI", ours_asgi, asgi_where), ("WSGI", ours_wsgi, wsgi_where)):
        if cls is not None:
            skipped.append(f"ours ({kind}): {where}.ObservabilityMiddleware(app, **{OURS_OPTIONS!r})")

    if ours_asgi is None:
        rows = (("6", "Starlette"), ("6b", "FastAPI"), ("6c", "FastAPI, native OTel on,"))
        skipped += [f"{k:<2} {label} + ours: not available ({asgi_where})" for k, label in rows]
    else:
        for key, label, factory, bare in (
            ("6", "Starlette + ours", starlette_app, "1"),
            ("6b", "FastAPI + ours", fastapi_app, "4"),
            ("6c", "FastAPI, native OTel on, + ours", lambda: fastapi_app(native_telemetry=True), "4"),
        ):
            try:
                app = factory()
                app.add_middleware(ours_asgi, **OURS_OPTIONS)
                variants.append(Variant(key, label, "asgi", app, bare, OURS_EXPORTERS))
            except Exception as exc:
                skipped.append(f"{key:<2} {label}: could not be built: {exc!r}")

    variants.append(Variant("7", "WSGI bare (hand-written router)", "wsgi", wsgi_app, None))

    tp, mp, exp = otel_providers()
    providers += [tp, mp]
    otel_wsgi = OTelWSGIMiddleware(wsgi_app, tracer_provider=tp, meter_provider=mp)
    variants.append(Variant("8", "WSGI + OTel WSGI middleware (10%, metrics)", "wsgi", otel_wsgi, "7", [exp]))

    # Lower bounds (benchmarks/_floor.py): every signal at its cheapest, none of the safety.
    # The floor samples 10 % itself (random() < 0.1), so its provider records every span it is given.
    exp = DropExporter()
    tp = TracerProvider(sampler=ALWAYS_ON, shutdown_on_exit=False)
    tp.add_span_processor(BatchSpanProcessor(exp))
    tp.add_span_processor(SPANS)
    providers.append(tp)
    floor_tracer = tp.get_tracer("floor")
    app = starlette_app()
    app.add_middleware(FloorASGIMiddleware, tracer=floor_tracer, stream=LOG_STREAM, route="/users/{user_id}")
    variants.append(Variant("6f", "Starlette + lower bound (benchmarks/_floor.py)", "asgi", app, "1", [exp]))
    floor_app = floor_wsgi(wsgi_app, tracer=floor_tracer, stream=LOG_STREAM, route="/users/{user_id}")
    variants.append(Variant("9f", "WSGI + lower bound (benchmarks/_floor.py)", "wsgi", floor_app, "7", [exp]))

    if ours_wsgi is None:
        skipped.append(f"9  WSGI + ours: not available ({wsgi_where})")
    else:
        try:
            ours_app = ours_wsgi(wsgi_app, **OURS_OPTIONS)
            variants.append(Variant("9", "WSGI + ours", "wsgi", ours_app, "7", OURS_EXPORTERS))
        except Exception as exc:
            skipped.append(f"9  WSGI + ours: could not be built: {exc!r}")
    return variants, skipped, providers


# --- the harness ---------------------------------------------------------------------------------
def run_requests(loop: asyncio.AbstractEventLoop, v: Variant, n: int) -> int:
    """Run ``n`` requests (ns in total), attributing their spans and log records to ``v``."""
    CURRENT[0] = v.key
    writes = LOG_STREAM.writes
    elapsed = loop.run_until_complete(asgi_loop(v.app, n)) if v.kind == "asgi" else wsgi_loop(v.app, n)
    v.requests += n
    v.log_writes += LOG_STREAM.writes - writes
    return elapsed


def calibrate(loop: asyncio.AbstractEventLoop, v: Variant, sample_s: float, min_n: int) -> None:
    """Check the response, warm up for ~0.1 s, and pick n so one sample takes about ``sample_s``."""
    CURRENT[0] = v.key
    writes = LOG_STREAM.writes
    if v.kind == "asgi":
        loop.run_until_complete(check_asgi(v.app))
    else:
        check_wsgi(v.app)
    v.requests += 1
    v.log_writes += LOG_STREAM.writes - writes
    n, spent = 10, 0
    while True:
        spent = run_requests(loop, v, n)
        if spent > 50_000_000 or n >= 1_000_000:
            break
        n *= 4
    per_request = spent / n
    v.n = max(min_n, int(sample_s * 1e9 / per_request))


def time_variant(loop: asyncio.AbstractEventLoop, v: Variant) -> float:
    warmup = max(20, v.n // 20)
    run_requests(loop, v, warmup)
    gc.collect()
    enabled = gc.isenabled()
    gc.disable()  # as timeit does
    try:
        elapsed = run_requests(loop, v, v.n)
    finally:
        if enabled:
            gc.enable()
    return elapsed / v.n


def _pct(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


# --- event-loop stall during a scrape ------------------------------------------------------------
STALL_SERIES = 500
TICK_NS = 1_000_000
_TINY_START = {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]}
_TINY_BODY = {"type": "http.response.body", "body": b"ok"}


async def tiny_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    await send(_TINY_START)
    await send(_TINY_BODY)


def stall_registry() -> tuple[CollectorRegistry, int]:
    registry = CollectorRegistry()
    hist = Histogram("bench_stall_seconds", "500 histogram series, default buckets", ["series"], registry=registry)
    for i in range(STALL_SERIES):
        hist.labels(f"series-{i:03d}").observe((i % 37) / 100)
    return registry, generate_latest(registry).count(b"\n")


async def ticker(stop: asyncio.Event, due_and_latency: list[tuple[int, int]]) -> None:
    """A request is due every 1 ms (open loop); latency is measured from its due time to its end."""
    next_due = perf_counter_ns()
    while not stop.is_set():
        now = perf_counter_ns()
        if next_due > now:
            await asyncio.sleep((next_due - now) / 1e9)
            continue
        while next_due <= perf_counter_ns():  # catch up: every overdue request is issued now
            await tiny_app(new_scope(), receive, discard)
            due_and_latency.append((next_due, perf_counter_ns() - next_due))
            next_due += TICK_NS


class GCPauses:
    """Records every garbage-collection pause (start, end ns) while installed in ``gc.callbacks``."""

    def __init__(self) -> None:
        self.pauses: list[tuple[int, int, int]] = []
        self._start = 0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._start = perf_counter_ns()
        else:
            self.pauses.append((self._start, perf_counter_ns(), info["generation"]))

    def longest_within(self, t0: int, t1: int) -> float:
        """Longest pause (ms) overlapping [t0, t1]."""
        return max(((e - s) / 1e6 for s, e, _ in self.pauses if e >= t0 and s <= t1), default=0.0)


async def scrape_trial(metrics_app: ASGIApp, gc_pauses: GCPauses) -> dict[str, Any]:
    stop = asyncio.Event()
    samples: list[tuple[int, int]] = []
    tick = asyncio.create_task(ticker(stop, samples))
    await asyncio.sleep(0.1)  # baseline: no scrape
    body = bytearray()

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body":
            body.extend(message.get("body", b""))

    scope = new_scope()
    scope["path"], scope["raw_path"], scope["headers"] = "/metrics", b"/metrics", [(b"host", b"localhost:8000")]
    t0 = perf_counter_ns()
    await metrics_app(scope, receive, send)
    t1 = perf_counter_ns()
    await asyncio.sleep(0.05)
    stop.set()
    await tick
    return {
        "scrape_ms": (t1 - t0) / 1e6,
        "bytes": len(body),
        "during_ns": [lat for due, lat in samples if t0 <= due <= t1],
        "baseline_ns": [lat for due, lat in samples if due + lat < t0],  # finished before the scrape began
        "gc_pause_max_ms": gc_pauses.longest_within(t0, t1),
    }


def run_stall(trials: int) -> dict[str, Any]:
    """Scrapes with the garbage collector on (as in production) and off (the render alone).

    ``gc.collect()`` runs before every scrape so each starts from the same collector state. With
    GC on, a full collection can start during the scrape (the render allocates a lot) and hold the
    GIL for tens of ms whichever thread renders; the longest GC pause in the scrape window is shown.
    """
    registry, lines = stall_registry()
    renders = []
    for _ in range(max(3, trials)):
        t0 = perf_counter_ns()
        generate_latest(registry)
        renders.append((perf_counter_ns() - t0) / 1e6)
    apps = {
        "ours": ("bakhmach_obs.metrics_asgi_app (renders in a thread)", bakhmach_obs.metrics_asgi_app(registry)),
        "prometheus_client": ("prometheus_client.make_asgi_app (renders on the loop)", make_asgi_app(registry)),
    }
    modes = ("gc_on", "gc_off")
    results: dict[tuple[str, str], list[dict[str, Any]]] = {(m, k): [] for m in modes for k in apps}
    gc_pauses = GCPauses()
    gc.callbacks.append(gc_pauses)
    enabled = gc.isenabled()
    loop = asyncio.new_event_loop()
    try:
        for _, app in apps.values():  # warm-up: starts the executor thread, fills caches
            loop.run_until_complete(scrape_trial(app, gc_pauses))
        for mode in modes:
            for t in range(trials):
                order = list(apps) if t % 2 == 0 else list(reversed(apps))
                for key in order:
                    gc.collect()
                    if mode == "gc_off":
                        gc.disable()
                    try:
                        results[mode, key].append(loop.run_until_complete(scrape_trial(apps[key][1], gc_pauses)))
                    finally:
                        if enabled:
                            gc.enable()
    finally:
        loop.close()
        gc.callbacks.remove(gc_pauses)
    summary: dict[str, Any] = {
        "series": STALL_SERIES,
        "exposition_lines": lines,
        "generate_latest_ms": statistics.median(renders),
        "generate_latest_ms_samples": renders,
        "switch_interval_ms": sys.getswitchinterval() * 1e3,
        "tick_ms": TICK_NS / 1e6,
        "trials": trials,
        "rows": [],
    }
    for mode in modes:
        for key, (label, _) in apps.items():
            rs = results[mode, key]
            during = [x / 1e6 for r in rs for x in r["during_ns"]]
            baseline = [x / 1e6 for r in rs for x in r["baseline_ns"]]
            summary["rows"].append({
                "app": key,
                "gc": mode,
                "label": label,
                "scrape_ms": statistics.median(r["scrape_ms"] for r in rs),
                "body_bytes": rs[0]["bytes"],
                "requests_during": len(during),
                "during_max_ms": max(during) if during else float("nan"),
                "during_p99_ms": _pct(during, 0.99),
                "during_p50_ms": _pct(during, 0.5),
                "per_scrape_max_ms": [max(r["during_ns"]) / 1e6 if r["during_ns"] else float("nan") for r in rs],
                "gc_pause_max_ms": max(r["gc_pause_max_ms"] for r in rs),
                "baseline_max_ms": max(baseline) if baseline else float("nan"),
                "baseline_p99_ms": _pct(baseline, 0.99),
            })  # fmt: skip
    return summary


# --- reporting -----------------------------------------------------------------------------------
def _version(dist: str) -> str:
    try:
        return version(dist)
    except PackageNotFoundError:
        return "not installed"


def versions() -> dict[str, str]:
    dists = ["prometheus_client", "opentelemetry-api", "opentelemetry-sdk", "opentelemetry-instrumentation-asgi",
             "opentelemetry-instrumentation-wsgi", "starlette", "fastapi", "pydantic", "starlette_exporter",
             "prometheus-fastapi-instrumentator"]  # fmt: skip
    out = {"python": platform.python_version(), "implementation": platform.python_implementation()}
    out.update({d: _version(d) for d in dists})
    out["bakhmach_obs"] = bakhmach_obs.__version__
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: short samples, few repeats (~20 s)")
    parser.add_argument("--repeats", type=int, default=None, help="repeats (default 61, --quick 11)")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH")
    args = parser.parse_args(argv)
    repeats = args.repeats or (11 if args.quick else 61)
    sample_s = 0.04 if args.quick else 0.1
    stall_trials = 3 if args.quick else 7

    vers = versions()
    print("versions: " + ", ".join(f"{k} {v}" for k, v in vers.items()))
    variants, skipped, providers = build_variants()
    by = {v.key: v for v in variants}

    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    broken: list[str] = []
    for v in list(variants):
        try:
            calibrate(loop, v, sample_s, min_n=50)
        except Exception as exc:
            traceback.print_exc(file=sys.stderr)
            broken.append(f"{v.key:<2} {v.label}: failed: {exc!r}")
            variants.remove(v)
            del by[v.key]
    print(f"repeats: {repeats}, sample ~{sample_s * 1e3:.0f} ms, requests per sample: "
          + ", ".join(f"{v.key}={v.n}" for v in variants))  # fmt: skip

    started = time.monotonic()
    for r in range(repeats):
        order = variants[r % len(variants) :] + variants[: r % len(variants)]  # rotate: no fixed position
        for v in order:
            v.samples.append(time_variant(loop, v))
        print(f"  repeat {r + 1}/{repeats} done ({time.monotonic() - started:.1f} s)", file=sys.stderr)
    elapsed = time.monotonic() - started
    loop.close()

    bakhmach_obs.shutdown(timeout=2.0)  # flushes our processor
    for p in providers:
        if isinstance(p, TracerProvider):
            p.force_flush()
        p.shutdown()

    def overheads(key: str) -> list[float]:
        """Per-repeat paired differences (µs) against this row's bare app."""
        v = by[key]
        assert v.bare is not None
        return [(x - y) / 1e3 for x, y in zip(v.samples, by[v.bare].samples, strict=True)]

    rows: list[dict[str, Any]] = []
    print()
    header = (f"{'#':<3} {'variant':<50} {'µs/req':>8} {'min':>7} {'max':>7} {'overhead':>9}"
              f" {'ovh min..max':>17} {'ovh p25..p75':>15} {'spans/req':>9} {'logs/req':>8}")  # fmt: skip
    print(header)
    print("-" * len(header))
    for v in variants:
        row: dict[str, Any] = {
            "key": v.key, "label": v.label, "bare": v.bare, "requests_per_sample": v.n,
            "median_us": v.median / 1e3, "min_us": min(v.samples) / 1e3, "max_us": max(v.samples) / 1e3,
            "spans_per_request": v.spans_per_request, "log_records_per_request": v.log_writes / max(v.requests, 1),
            "samples_ns": v.samples,
        }  # fmt: skip
        ovh = ""
        if v.bare is not None and v.bare in by:
            d = overheads(v.key)
            row.update(overhead_us=statistics.median(d), overhead_min_us=min(d), overhead_max_us=max(d),
                       overhead_p25_us=_pct(d, 0.25), overhead_p75_us=_pct(d, 0.75),
                       overhead_samples_us=d)  # fmt: skip
            ovh = (f"{row['overhead_us']:>+9.1f} {min(d):>+8.1f}..{max(d):<+8.1f}"
                   f" {row['overhead_p25_us']:>+7.1f}..{row['overhead_p75_us']:<+7.1f}")  # fmt: skip
        else:
            ovh = f"{'—':>9} {'':>17} {'':>15}"
        spans = f"{v.spans_per_request:.3f}"
        logs = f"{row['log_records_per_request']:.2f}"
        print(f"{v.key:<3} {v.label[:50]:<50} {row['median_us']:>8.1f} {row['min_us']:>7.1f} {row['max_us']:>7.1f}"
              f" {ovh} {spans:>9} {logs:>8}")  # fmt: skip
        rows.append(row)
    for line in skipped + broken:
        print(f"{line}")
    exporters = {id(e): e for v in variants for e in v.exporters}
    ended, delivered = sum(SPANS.counts.values()), sum(e.spans for e in exporters.values())
    print("(spans/req: sampled spans ended per request; logs/req: records written by the SDK's log handler;"
          f" exporters received {delivered} of the {ended} spans ended)")  # fmt: skip
    print()

    ratio_defs = {
        "a": ("(a) ours / starlette-exporter, Starlette", "6", "3"),
        "b": ("(b) ours / OTel ASGI, Starlette", "6", "2"),
        "c": ("(c) ours WSGI / OTel WSGI", "9", "8"),
        "d": ("(d) ours / prometheus-fastapi-instrumentator, FastAPI", "6b", "5"),
        "e": ("(e) ours, FastAPI native OTel on / PFI", "6c", "5"),
        "fa": ("(a') lower bound / starlette-exporter", "6f", "3"),
        "fb": ("(b') lower bound / OTel ASGI", "6f", "2"),
        "fc": ("(c') lower bound WSGI / OTel WSGI", "9f", "8"),
    }
    ratios: dict[str, Any] = {}
    print("Overhead ratios: median of per-repeat ratios of paired overheads [min..max];"
          " in brackets, ratio of the median overheads.")  # fmt: skip
    for k, (text, a, b) in ratio_defs.items():
        target = TARGETS.get(k)
        if a not in by or b not in by:
            print(f"  {text:<54} [{a:>2} / {b:<2}]  skipped ({a if a not in by else b} not available)")
            ratios[k] = {"variants": [a, b], "skipped": True, "target": target}
            continue
        oa, ob = overheads(a), overheads(b)
        per = [x / y for x, y in zip(oa, ob, strict=True)]
        paired, of_medians = statistics.median(per), statistics.median(oa) / statistics.median(ob)
        verdict = "(informational)" if target is None else ("PASS" if paired <= target else "MISS") + f" (<= {target})"
        print(f"  {text:<54} [{a:>2} / {b:<2}]  {paired:6.3f} [{min(per):.3f}..{max(per):.3f}]"
              f"  ({of_medians:.3f})  {verdict}")  # fmt: skip
        ratios[k] = {"variants": [a, b], "paired_median": paired, "ratio_of_medians": of_medians,
                     "min": min(per), "max": max(per), "target": target}  # fmt: skip
    print("  (a'), (b'), (c'): the cheapest code emitting the same signals with none of the safety; a target")
    print("  below its lower bound cannot be met by any implementation on this stack.")
    print(f"\ntimed section: {elapsed:.1f} s")

    print("\nEvent-loop stall during a /metrics scrape")
    stall = run_stall(stall_trials)
    print(f"  registry: {stall['series']} histogram series, default buckets: {stall['exposition_lines']} exposition"
          f" lines; generate_latest() {stall['generate_latest_ms']:.1f} ms (median of"
          f" {len(stall['generate_latest_ms_samples'])})")  # fmt: skip
    print(
        f"  a tiny ASGI request is due every {stall['tick_ms']:.0f} ms; latency from due time to response;"
        f" {stall['trials']} scrapes per row, apps interleaved; GIL switch {stall['switch_interval_ms']:.0f} ms"
    )
    print(f"  {'app':<54} {'GC':>3} {'scrape ms':>9} {'reqs':>5} {'max ms':>8} {'p99 ms':>8} {'p50 ms':>7}"
          f" {'GC pause':>8} {'idle max/p99':>13}")  # fmt: skip
    for s in stall["rows"]:
        print(f"  {s['label']:<54} {s['gc'][3:]:>3} {s['scrape_ms']:>9.1f} {s['requests_during']:>5}"
              f" {s['during_max_ms']:>8.2f} {s['during_p99_ms']:>8.2f} {s['during_p50_ms']:>7.2f}"
              f" {s['gc_pause_max_ms']:>8.1f} {s['baseline_max_ms']:>6.2f}/{s['baseline_p99_ms']:<6.2f}")  # fmt: skip
    print(
        "  (max/p99/p50: requests due while the scrape ran; GC pause: longest garbage collection during a scrape;"
        " idle: requests\n   that finished before the scrape began)"
    )
    print("\nNot a test: exit status is 0 whatever the numbers.")

    if args.json:
        doc = {
            "versions": vers, "repeats": repeats, "quick": args.quick, "sample_s": sample_s,
            "elapsed_s": round(elapsed, 2), "variants": rows, "skipped": skipped + broken,
            "ratios": ratios, "stall": stall,
        }  # fmt: skip
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(doc, fh, indent=2)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
