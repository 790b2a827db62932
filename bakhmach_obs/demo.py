"""``bakhmach-obs demo``: the instrumented checkout service under synthetic traffic, then a report.

The service is :mod:`bakhmach_obs.demo_app`, ordinary FastAPI code with a database (SQLite in
memory, or PostgreSQL), a product cache (in-process, or Redis) and an orders queue with a worker
(in-process, or RabbitMQ). :func:`run_demo` drives seeded traffic through it in process
(``httpx.ASGITransport``: no port is opened) — product lookups, orders, payments with declines
(402) and injected provider failures (503), unknown products (404) and slow requests — then
reads the three signals back: RED metrics per route with p50/p95/p99 from the histogram buckets,
the cache hit ratio, database and queue counts, the error budget two SLOs consumed, the health
probes, one trace as a tree (HTTP span, cache and database spans, the publish and the worker's
consume) and sample JSON log lines.

:func:`run_demo` records into a fresh registry, an in-memory span exporter and a log buffer; it
installs its runtime only for the run (as :func:`bakhmach_obs.testing.capture` does) and puts the
previous one back, so it never changes the application's configuration; the environment
(``OTEL_*``, ``BAKHMACH_OBS_*``) is ignored. :func:`serve` (``bakhmach-obs demo --serve``) owns
its process instead: it configures the SDK, serves the app with uvicorn on 127.0.0.1, keeps light
traffic going so that dashboards and rules have data, and optionally starts a local Prometheus
loaded with the rules generated for :data:`SLOS` (``--with-prometheus``).

Example:
    >>> from bakhmach_obs.demo import run_demo
    >>> summary = run_demo(requests=40, seed=7)
    >>> summary["requests"], sum(r["requests"] for r in summary["routes"])
    (40, 40)
    >>> sorted(summary["backends"])
    ['cache', 'database', 'queue']
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
import logging
import math
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO, TypeVar

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import StatusCode
from prometheus_client import CollectorRegistry

import bakhmach_obs

from . import conventions as c
from ._runtime import build_runtime, swap
from .config import load_settings
from .demo_app import CARD_DECLINED, CARD_OK, CARD_PROVIDER_DOWN, PRODUCT_COUNT, Services, create_app, validate_urls
from .logs import JsonFormatter
from .slo import SLO, burn_rate, error_ratio

__all__ = [
    "SERVICE_NAME",
    "SLOS",
    "DemoRequest",
    "Progress",
    "expected_status",
    "histogram_quantile",
    "make_traffic",
    "prometheus_config",
    "prometheus_rules",
    "render_text",
    "run_demo",
    "serve",
    "tty_progress",
]

#: The demo service's name: ``service`` log field, ``service.name`` and the Prometheus job.
SERVICE_NAME = "checkout"
#: The SLOs the report computes and ``--with-prometheus`` generates rules for (the seed's two HTTP SLOs).
SLOS: tuple[SLO, ...] = (
    SLO(name="checkout-availability", service=SERVICE_NAME, target=0.99, sli="availability", source="http",
        description="99% of requests are answered without a server error"),
    SLO(name="checkout-latency", service=SERVICE_NAME, target=0.99, sli="latency", source="http", threshold=0.5,
        description="99% of requests are answered within 500 ms"),
)  # fmt: skip

#: Shares of the synthetic traffic.
PAYMENT_DECLINE_SHARE = 0.12
PAYMENT_PROVIDER_DOWN_SHARE = 0.04
UNKNOWN_PRODUCT_SHARE = 0.04
_MIX = (("product", 0.50), ("order", 0.22), ("payment", 0.23), ("slow", 0.05))
_SAMPLE_LOG_LINES = 6
_MAX_CAPTURED_LINES = 20_000
_DRAIN_TIMEOUT = 10.0
_HIDDEN_ATTRIBUTES = frozenset({c.ATTR_CODE_FUNCTION_NAME, c.ATTR_CODE_NAMESPACE})
#: Span attributes the text report shows (the JSON summary has them all).
_TEXT_ATTRIBUTES = (
    c.ATTR_HTTP_STATUS,
    c.ATTR_CACHE_RESULT,
    c.ATTR_DB_SYSTEM,
    c.ATTR_MESSAGING_SYSTEM,
    c.ATTR_ERROR_TYPE,
    "exception.message",
)

_T = TypeVar("_T")
#: ``progress(done, total)``, called while traffic runs.
Progress = Callable[[int, int], None]


# --- synthetic traffic ----------------------------------------------------------------------------


@dataclass(frozen=True)
class DemoRequest:
    """One synthetic request: ``kind`` is ``product``, ``order``, ``payment`` or ``slow``."""

    kind: str
    method: str
    path: str
    correlation_id: str
    body: Mapping[str, Any] | None = None


def make_traffic(requests: int, seed: int, start: int = 1) -> list[DemoRequest]:
    """The synthetic requests, drawn from ``random.Random(seed)``; correlation ids count from ``start``.

    Product ids are skewed (a few popular products, so the cache hits); a share of product
    lookups asks for ids that do not exist (404); payments use :data:`~bakhmach_obs.demo_app.CARD_DECLINED`
    (402) and :data:`~bakhmach_obs.demo_app.CARD_PROVIDER_DOWN` (503) at fixed shares; slow
    requests wait 0.1 to 0.6 s.

    Example:
        >>> [(r.method, r.path) for r in make_traffic(3, seed=7)]
        [('GET', '/products/3'), ('POST', '/payments'), ('GET', '/products/4')]
    """
    rng = random.Random(seed)
    ids = list(range(1, PRODUCT_COUNT + 1))
    weights = [1.0 / i for i in ids]
    kinds = [k for k, _ in _MIX]
    shares = [s for _, s in _MIX]
    traffic = []
    for i in range(start, start + requests):
        kind = rng.choices(kinds, shares)[0]
        cid = f"req-{i:05d}"
        user = f"user-{rng.randint(100, 999)}"
        product = rng.choices(ids, weights)[0]
        if kind == "product":
            if rng.random() < UNKNOWN_PRODUCT_SHARE:
                product = PRODUCT_COUNT + rng.randint(1, 1000)
            traffic.append(DemoRequest(kind, "GET", f"/products/{product}", cid))
        elif kind == "order":
            body = {"user_id": user, "product_id": product, "quantity": rng.randint(1, 3)}
            traffic.append(DemoRequest(kind, "POST", "/orders", cid, body))
        elif kind == "payment":
            r = rng.random()
            card = (
                CARD_DECLINED
                if r < PAYMENT_DECLINE_SHARE
                else CARD_PROVIDER_DOWN
                if r < PAYMENT_DECLINE_SHARE + PAYMENT_PROVIDER_DOWN_SHARE
                else CARD_OK
            )
            body = {"user_id": user, "amount_cents": rng.randint(500, 20000), "card_token": card}
            traffic.append(DemoRequest(kind, "POST", "/payments", cid, body))
        else:
            traffic.append(DemoRequest(kind, "GET", f"/slow?delay={rng.uniform(0.1, 0.6):.3f}", cid))
    return traffic


def expected_status(request: DemoRequest) -> int:
    """The status the demo service answers ``request`` with (the traffic decides every outcome).

    Example:
        >>> expected_status(DemoRequest("product", "GET", "/products/999", "req-1"))
        404
    """
    if request.kind == "product":
        return 200 if int(request.path.rsplit("/", 1)[1]) <= PRODUCT_COUNT else 404
    if request.kind == "payment":
        card = (request.body or {}).get("card_token")
        return {CARD_DECLINED: 402, CARD_PROVIDER_DOWN: 503}.get(str(card), 201)
    if request.kind == "order":
        return 201
    return 200


async def _send(client: Any, request: DemoRequest) -> int:
    headers = {"X-Correlation-ID": request.correlation_id}
    response = await client.request(request.method, request.path, json=request.body, headers=headers)
    return int(response.status_code)


async def _drive(
    client: Any, traffic: Sequence[DemoRequest], concurrency: int, progress: Progress | None
) -> tuple[list[int], float]:
    """Send ``traffic`` with at most ``concurrency`` requests in flight; return the statuses and the time."""
    slots = asyncio.Semaphore(concurrency)
    done = 0
    total = len(traffic)

    async def one(request: DemoRequest) -> int:
        nonlocal done
        async with slots:
            status = await _send(client, request)
        done += 1
        return status

    async def report() -> None:
        while True:
            if progress is not None:
                progress(done, total)
            await asyncio.sleep(0.1)

    reporter = asyncio.create_task(report())
    t0 = time.perf_counter()
    try:
        statuses = await asyncio.gather(*(one(r) for r in traffic))
    finally:
        elapsed = time.perf_counter() - t0
        reporter.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reporter
    if progress is not None:
        progress(total, total)
    return list(statuses), elapsed


# --- reading the signals back ---------------------------------------------------------------------


def histogram_quantile(q: float, buckets: Iterable[tuple[float, float]]) -> float | None:
    """Estimate the ``q``-quantile from cumulative histogram buckets, as PromQL's ``histogram_quantile``.

    Args:
        q: the quantile, from 0 to 1.
        buckets: ``(upper_bound, cumulative_count)`` pairs, one with bound ``+Inf``.

    Returns:
        The estimate (linear interpolation inside the bucket holding the rank; the lowest bucket
        starts at 0; a rank in the ``+Inf`` bucket gives the highest finite bound), or ``None``
        when there are no observations or no ``+Inf`` bucket.

    Raises:
        ValueError: ``q`` is outside [0, 1].

    Example:
        >>> histogram_quantile(0.5, [(0.1, 4.0), (0.2, 8.0), (float("inf"), 8.0)])
        0.1
        >>> round(histogram_quantile(0.75, [(0.1, 4.0), (0.2, 8.0), (float("inf"), 8.0)]), 6)
        0.15
    """
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"quantile must be between 0 and 1, got {q}")
    ordered = sorted(buckets)
    if not ordered or not math.isinf(ordered[-1][0]):
        return None
    total = ordered[-1][1]
    if total <= 0:
        return None
    rank = q * total
    # PromQL takes the first bucket with count >= rank; skipping empty buckets only changes q=0,
    # where PromQL divides 0 by 0 and answers NaN.
    index = next(i for i, (_, count) in enumerate(ordered) if count >= rank and count > 0)
    if index == len(ordered) - 1:
        return ordered[-2][0] if len(ordered) > 1 else None
    upper, count = ordered[index]
    if index == 0 and upper <= 0:
        return upper
    lower, below = (0.0, 0.0) if index == 0 else ordered[index - 1]
    return lower + (upper - lower) * (rank - below) / (count - below)


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000.0, 2)


def _quantiles(buckets: Mapping[float, float]) -> dict[str, float | None]:
    pairs = list(buckets.items())
    return {f"p{round(q * 100)}_ms": _ms(histogram_quantile(q, pairs)) for q in (0.5, 0.95, 0.99)}


class _Samples:
    """The registry's samples, read once."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.by_name: dict[str, list[tuple[dict[str, str], float]]] = {}
        for metric in registry.collect():
            for s in metric.samples:
                self.by_name.setdefault(s.name, []).append((s.labels, s.value))

    def get(self, name: str) -> list[tuple[dict[str, str], float]]:
        return self.by_name.get(name, [])


def _route_stats(samples: _Samples, elapsed: float) -> list[dict[str, Any]]:
    """RED per route from ``http_server_request_duration_seconds``: counts by status class and quantiles."""
    name = c.HTTP_SERVER_DURATION.name
    counts: dict[tuple[str, str], dict[int, float]] = {}
    buckets: dict[tuple[str, str], dict[float, float]] = {}
    for labels, value in samples.get(name + "_count"):
        key = (labels[c.LABEL_HTTP_METHOD], labels[c.LABEL_HTTP_ROUTE])
        status = int(labels[c.LABEL_HTTP_STATUS])
        counts.setdefault(key, {})[status] = counts.setdefault(key, {}).get(status, 0.0) + value
    for labels, value in samples.get(name + "_bucket"):
        key = (labels[c.LABEL_HTTP_METHOD], labels[c.LABEL_HTTP_ROUTE])
        le = float(labels["le"])
        buckets.setdefault(key, {})[le] = buckets.setdefault(key, {}).get(le, 0.0) + value
    stats = []
    for (method, route), by_status in sorted(counts.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        total = int(sum(by_status.values()))
        errors_5xx = int(sum(v for s, v in by_status.items() if s >= 500))
        errors_4xx = int(sum(v for s, v in by_status.items() if 400 <= s < 500))
        stats.append(
            {
                "method": method,
                "route": route,
                "requests": total,
                "rate_per_s": round(total / elapsed, 2) if elapsed > 0 else 0.0,
                "status": {str(s): int(v) for s, v in sorted(by_status.items())},
                "client_errors": errors_4xx,
                "server_errors": errors_5xx,
                "error_pct": round(100.0 * errors_5xx / total, 2) if total else 0.0,
                **_quantiles(buckets.get((method, route), {})),
            }
        )
    return stats


def _cache_stats(samples: _Samples) -> dict[str, Any]:
    results: dict[str, float] = {}
    for labels, value in samples.get(c.CACHE_OPERATIONS.name):
        if labels[c.LABEL_CACHE_OPERATION] == "get" or labels[c.LABEL_CACHE_RESULT] == "error":
            results[labels[c.LABEL_CACHE_RESULT]] = results.get(labels[c.LABEL_CACHE_RESULT], 0.0) + value
        else:
            results[labels[c.LABEL_CACHE_OPERATION]] = results.get(labels[c.LABEL_CACHE_OPERATION], 0.0) + value
    hits, misses = int(results.get("hit", 0)), int(results.get("miss", 0))
    lookups = hits + misses
    return {
        "name": "products",
        "lookups": lookups,
        "hits": hits,
        "misses": misses,
        "hit_ratio": round(hits / lookups, 4) if lookups else None,
        "sets": int(results.get("set", 0)),
        "errors": int(results.get("error", 0)),
    }


def _database_stats(samples: _Samples) -> dict[str, Any]:
    name = c.DB_CLIENT_DURATION.name
    ops: dict[str, dict[str, Any]] = {}
    system = None
    for labels, value in samples.get(name + "_count"):
        if labels[c.LABEL_DB_SYSTEM] == "redis":
            continue
        system = labels[c.LABEL_DB_SYSTEM]
        op = ops.setdefault(labels[c.LABEL_DB_OPERATION], {"count": 0, "errors": 0, "buckets": {}})
        op["count"] += int(value)
        if labels[c.LABEL_ERROR_TYPE]:
            op["errors"] += int(value)
    for labels, value in samples.get(name + "_bucket"):
        op_name = labels[c.LABEL_DB_OPERATION]
        if labels[c.LABEL_DB_SYSTEM] == "redis" or op_name not in ops:
            continue
        le = float(labels["le"])
        ops[op_name]["buckets"][le] = ops[op_name]["buckets"].get(le, 0.0) + value
    operations = {
        op: {"count": v["count"], "errors": v["errors"], "p95_ms": _quantiles(v["buckets"])["p95_ms"]}
        for op, v in sorted(ops.items())
    }
    return {"system": system, "operations": operations}


def _queue_stats(samples: _Samples, published: int, processed: int, failed: int) -> dict[str, Any]:
    def total(spec: c.MetricSpec) -> tuple[int, str | None, str | None]:
        n, system, destination = 0, None, None
        for labels, value in samples.get(spec.name):
            n += int(value)
            system, destination = labels[c.LABEL_MESSAGING_SYSTEM], labels[c.LABEL_MESSAGING_DESTINATION]
        return n, system, destination

    sent, system, destination = total(c.MESSAGING_SENT)
    consumed, _, _ = total(c.MESSAGING_CONSUMED)
    process = c.MESSAGING_PROCESS_DURATION.name
    buckets: dict[float, float] = {}
    for labels, value in samples.get(process + "_bucket"):
        le = float(labels["le"])
        buckets[le] = buckets.get(le, 0.0) + value
    return {
        "system": system,
        "destination": destination,
        "published": sent,
        "consumed": consumed,
        "processed": processed,
        "failed": failed,
        "in_flight": published - processed - failed,
        "process_p95_ms": _quantiles(buckets)["p95_ms"],
    }


def _slo_stats(samples: _Samples) -> list[dict[str, Any]]:
    """Each SLO's error ratio over the run and the share of its error budget that ratio uses."""
    name = c.HTTP_SERVER_DURATION.name
    counts = samples.get(name + "_count")
    total = sum(v for _, v in counts)
    out = []
    for slo in SLOS:
        if slo.sli == "latency":
            good = sum(v for labels, v in samples.get(name + "_bucket") if float(labels["le"]) == slo.threshold)
        else:
            good = sum(v for labels, v in counts if not labels[c.LABEL_HTTP_STATUS].startswith("5"))
        ratio = error_ratio(good, total)
        burn = burn_rate(ratio, slo.target)
        out.append(
            {
                "name": slo.name,
                "sli": slo.sli,
                "target": slo.target,
                "threshold_s": slo.threshold,
                "description": slo.description,
                "events": int(total),
                "bad_events": int(total - good),
                "error_ratio": round(ratio, 6),
                "budget_consumed_pct": round(100.0 * burn, 1),
            }
        )
    return out


def _function_stats(samples: _Samples) -> list[dict[str, Any]]:
    """Calls per instrumented function of the demo app."""
    from . import demo_app

    module = demo_app.__name__
    calls: dict[str, dict[str, int]] = {}
    for labels, value in samples.get(c.FUNCTION_CALLS.name):
        if labels.get(c.LABEL_MODULE) == module:
            calls.setdefault(labels[c.LABEL_FUNCTION], {})[labels[c.LABEL_RESULT]] = int(value)
    return [
        {
            "function": fn,
            "module": module,
            "calls": sum(r.values()),
            "ok": r.get(c.RESULT_OK, 0),
            "errors": r.get(c.RESULT_ERROR, 0),
        }
        for fn, r in sorted(calls.items())
    ]


def _status(span: ReadableSpan) -> str:
    return "error" if span.status.status_code is StatusCode.ERROR else "ok"


def _span_node(span: ReadableSpan, children: Mapping[int, list[ReadableSpan]]) -> dict[str, Any]:
    ctx = span.get_span_context()
    span_id = ctx.span_id if ctx is not None else 0
    attributes = {
        k: (list(v) if isinstance(v, tuple) else v)
        for k, v in (span.attributes or {}).items()
        if k not in _HIDDEN_ATTRIBUTES
    }
    for event in span.events:
        if event.name == "exception" and event.attributes:
            attributes["exception.message"] = event.attributes.get("exception.message")
    start, end = span.start_time or 0, span.end_time or 0
    return {
        "name": span.name,
        "kind": span.kind.name,
        "span_id": f"{span_id:016x}",
        "parent_span_id": f"{span.parent.span_id:016x}" if span.parent is not None else None,
        "duration_ms": round((end - start) / 1e6, 2),
        "status": _status(span),
        "attributes": attributes,
        "children": [_span_node(s, children) for s in children.get(span_id, [])],
    }


def _sample_trace(spans: Sequence[ReadableSpan]) -> dict[str, Any] | None:
    """The richest order trace (HTTP, cache, database, publish, consume), else the first trace by correlation id."""
    traces: dict[int, list[ReadableSpan]] = {}
    for span in spans:
        ctx = span.get_span_context()
        if ctx is not None:
            traces.setdefault(ctx.trace_id, []).append(span)
    candidates = []
    for trace_id, members in traces.items():
        roots = [s for s in members if s.parent is None]
        if len(roots) != 1:
            continue
        cid = str((roots[0].attributes or {}).get(c.ATTR_CORRELATION_ID, ""))
        consumed = any(s.name.startswith("process ") for s in members)
        kinds = len({s.name.split(" ")[0] for s in members})
        candidates.append(((not consumed, -kinds, -len(members), cid), cid, trace_id, roots[0], members))
    if not candidates:
        return None
    _, cid, trace_id, root, members = min(candidates, key=lambda x: x[0])
    children: dict[int, list[ReadableSpan]] = {}
    for span in sorted(members, key=lambda s: s.start_time or 0):
        if span.parent is not None:
            children.setdefault(span.parent.span_id, []).append(span)
    return {
        "trace_id": f"{trace_id:032x}",
        "correlation_id": cid or None,
        "span_count": len(members),
        "root": _span_node(root, children),
    }


def _sample_logs(lines: Sequence[str], correlation_id: str | None) -> list[str]:
    """A few raw lines: the sample trace's request, an error and a warning, then other messages."""
    parsed = []
    for line in lines:
        try:
            parsed.append((line, json.loads(line)))
        except ValueError:
            continue
    chosen: list[str] = []
    seen: set[tuple[str, str]] = set()

    def take(line: str, data: Mapping[str, Any]) -> None:
        key = (str(data.get("level", "")), str(data.get("message", "")))
        if key not in seen and line not in chosen:
            chosen.append(line)
            seen.add(key)

    for line, data in parsed:
        if correlation_id is not None and data.get("correlation_id") == correlation_id:
            take(line, data)
    for level in ("ERROR", "WARNING"):
        for line, data in parsed:
            if data.get("level") == level and data.get("error_code"):
                take(line, data)
                break
    for line, data in parsed:
        if len(chosen) >= _SAMPLE_LOG_LINES:
            break
        take(line, data)
    return chosen[:_SAMPLE_LOG_LINES]


class _LineBuffer(logging.Handler):
    """Keeps formatted log lines in memory (bounded) instead of writing them out."""

    def __init__(self, limit: int = _MAX_CAPTURED_LINES) -> None:
        super().__init__(logging.INFO)
        self.limit = limit
        self.lines: list[str] = []
        self.total = 0

    def emit(self, record: logging.LogRecord) -> None:
        """Format and keep ``record`` (``Handler.handle`` holds the handler lock)."""
        try:
            line = self.format(record)
        except Exception:  # noqa: BLE001 - a logging failure must not reach the service
            self.handleError(record)
            return
        self.total += 1
        if len(self.lines) < self.limit:
            self.lines.append(line)


def _run_loop(coro: Coroutine[Any, Any, _T]) -> _T:
    """Run ``coro`` on a new event loop in an empty context (a thread if a loop is running here)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        running = False
    else:
        running = True
    if not running:  # outside the except block: the demo's exceptions must not chain a RuntimeError
        return contextvars.Context().run(asyncio.run, coro)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="bakhmach-obs-demo") as pool:
        return pool.submit(contextvars.Context().run, asyncio.run, coro).result()


# --- the in-process run ---------------------------------------------------------------------------


@dataclass
class _Outcome:
    statuses: list[int]
    elapsed: float
    drained: bool
    health: dict[str, Any]
    backends: dict[str, str]
    queue: tuple[int, int, int]


async def _in_process(
    services: Services, registry: CollectorRegistry, traffic: Sequence[DemoRequest], concurrency: int,
    progress: Progress | None,
) -> _Outcome:  # fmt: skip
    import httpx

    app = create_app(services, registry=registry)
    await services.start()
    try:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://checkout", timeout=30.0) as client:
            statuses, elapsed = await _drive(client, traffic, concurrency, progress)
            drained = await services.queue.drain(_DRAIN_TIMEOUT)
            health = {}
            for probe in ("live", "ready"):
                response = await client.get(f"/health/{probe}")
                health[probe] = {"status_code": response.status_code, "body": response.json()}
        q = services.queue
        return _Outcome(statuses, elapsed, drained, health, services.describe(), (q.published, q.processed, q.failed))
    finally:
        await services.stop()


def run_demo(
    requests: int = 200,
    seed: int = 7,
    concurrency: int = 16,
    sample_ratio: float = 1.0,
    *,
    database_url: str | None = None,
    redis_url: str | None = None,
    amqp_url: str | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Run the checkout service under synthetic traffic, in process, and summarise the three signals.

    The previous runtime (whatever ``configure()`` installed) is restored before returning, the
    demo's log records never reach the application's handlers, and the environment is ignored.

    Args:
        requests: number of requests.
        seed: seed of the traffic (routes, products, cards, delays) and of the simulated latencies.
        concurrency: requests in flight at most.
        sample_ratio: head sampling ratio of the demo's traces.
        database_url: ``postgresql://...`` (default: SQLite in memory).
        redis_url: ``redis://...`` for the product cache (default: in process).
        amqp_url: ``amqp://...`` for the orders queue (default: in process).
        progress: called as ``progress(done, total)`` about ten times a second while traffic runs.

    Returns:
        A JSON-serialisable summary: ``routes`` (RED per route), ``cache``, ``database``,
        ``queue``, ``slos`` (budget consumed), ``health``, ``trace`` (one trace as a tree),
        ``logs`` (raw JSON lines) and run facts.

    Raises:
        ValueError: ``requests`` or ``concurrency`` below 1.
        ConfigurationError: a URL with an unsupported scheme.
    """
    if requests < 1 or concurrency < 1:
        raise ValueError("requests and concurrency must be at least 1")
    validate_urls(database_url, redis_url, amqp_url)
    settings = load_settings(
        {
            "service_name": SERVICE_NAME,
            "service_version": bakhmach_obs.__version__,
            "environment": "demo",
            "traces_exporter": "memory",
            "traces_sampler": "parentbased_traceidratio",
            "traces_sampler_arg": sample_ratio,
            "log_format": "none",
        },
        environ={},
    )
    registry = CollectorRegistry()
    runtime = build_runtime(settings, registry, slos=SLOS)
    buffer = _LineBuffer()
    buffer.setFormatter(JsonFormatter(service=SERVICE_NAME))
    # Every record of the demo comes from a bakhmach_obs.* logger (the app, the access log,
    # health): keep them in the buffer, away from the application's handlers.
    logger = logging.getLogger("bakhmach_obs")
    saved = (logger.level, logger.propagate)
    traffic = make_traffic(requests, seed)
    previous = swap(runtime)
    try:  # from here on, every change to global state is undone on every path
        logger.addHandler(buffer)
        logger.setLevel(logging.INFO)
        logger.propagate = False
        services = Services(database_url, redis_url, amqp_url, seed=seed)  # binds to the demo's runtime
        outcome = _run_loop(_in_process(services, registry, traffic, concurrency, progress))
    finally:
        swap(previous)
        logger.removeHandler(buffer)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]
        if runtime.provider is not None:
            runtime.provider.shutdown()
    spans = list(runtime.memory.get_finished_spans()) if runtime.memory is not None else []
    sample = _sample_trace(spans)
    samples = _Samples(registry)
    elapsed = outcome.elapsed
    return {
        "service": SERVICE_NAME,
        "requests": requests,
        "seed": seed,
        "concurrency": concurrency,
        "sample_ratio": sample_ratio,
        "elapsed_s": round(elapsed, 3),
        "backends": outcome.backends,
        "statuses": {str(s): outcome.statuses.count(s) for s in sorted(set(outcome.statuses))},
        "routes": _route_stats(samples, elapsed),
        "cache": _cache_stats(samples),
        "database": _database_stats(samples),
        "queue": {**_queue_stats(samples, *outcome.queue), "drained": outcome.drained},
        "slos": _slo_stats(samples),
        "functions": _function_stats(samples),
        "health": outcome.health,
        "spans_recorded": len(spans),
        "trace": sample,
        "log_lines_total": buffer.total,
        "logs": _sample_logs(buffer.lines, sample["correlation_id"] if sample else None),
        "next_steps": NEXT_STEPS,
    }


NEXT_STEPS = (
    'In your service: bakhmach_obs.configure(service_name="checkout") once at start-up '
    "(JSON logs on stdout; OTLP traces when OTEL_EXPORTER_OTLP_ENDPOINT is set, 10% sampled by default).",
    "app.add_middleware(bakhmach_obs.asgi.ObservabilityMiddleware); instrument the database connection, "
    "cache and queue (bakhmach_obs.dbapi, .cache/.redis, .messaging/.rabbitmq); decorate the service "
    "layer with @bakhmach_obs.instrument.",
    'Expose metrics: app.mount("/metrics", bakhmach_obs.metrics_asgi_app()); health: '
    'app.mount("/health", health.asgi_app()). Try: bakhmach-obs demo --serve --with-prometheus',
)


# --- the text report -------------------------------------------------------------------------------


_LOWEST_BOUND_MS = c.DURATION_BUCKETS[0] * 1000.0


def _fmt_ms(value: Any, lowest: float = _LOWEST_BOUND_MS) -> str:
    """A quantile for the table; inside the lowest bucket the estimate says nothing, so show ``<bound``."""
    if value is None:
        return "-"
    return f"<{lowest:g}" if value <= lowest else f"{value:.1f}"


def _fmt_duration(ms: float) -> str:
    return f"{ms:.2f}" if ms < 1 else f"{ms:.1f}"


def _tree_lines(node: Mapping[str, Any], prefix: str = "", last: bool = True, root: bool = True) -> list[str]:
    shown = {k: node["attributes"][k] for k in _TEXT_ATTRIBUTES if k in node["attributes"]}
    attrs = "  ".join(f"{k}={v}" for k, v in shown.items())
    status = "ERROR" if node["status"] == "error" else "ok"
    head = "" if root else prefix + ("`-- " if last else "|-- ")
    kind = node.get("kind", "INTERNAL")
    lines = [
        f"{head}{node['name']}  [{kind.lower()}]  {_fmt_duration(node['duration_ms'])} ms  {status}"
        + (f"  {attrs}" if attrs else "")
    ]
    child_prefix = "" if root else prefix + ("    " if last else "|   ")
    children = node["children"]
    for i, child in enumerate(children):
        lines.extend(_tree_lines(child, child_prefix, i == len(children) - 1, root=False))
    return lines


def _short_stacktrace(line: str) -> str:
    """The log line with its ``stacktrace`` cut to the last line (the JSON summary keeps it whole)."""
    try:
        data = json.loads(line)
    except ValueError:
        return line
    trace = data.get("stacktrace")
    if not isinstance(trace, str):
        return line
    data["stacktrace"] = "... " + trace.strip().splitlines()[-1]
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False)


def render_text(summary: Mapping[str, Any]) -> str:
    """The human-readable report of a :func:`run_demo` summary."""
    backends = summary["backends"]
    out = [
        f"bakhmach-obs demo: service {summary['service']!r} (FastAPI), {summary['requests']} requests, "
        f"concurrency {summary['concurrency']}, seed {summary['seed']}, {summary['elapsed_s']:.2f} s",
        f"  database {backends['database']}; cache {backends['cache']}; queue {backends['queue']}",
        f"  in-process registry, {summary['spans_recorded']} spans in memory (sampling {summary['sample_ratio']:.0%}),"
        f" {summary['log_lines_total']} JSON log lines captured",
        "",
        f"RED metrics per route  (from {c.HTTP_SERVER_DURATION.name}; quantiles as PromQL histogram_quantile)",
        f"  {'route':<28} {'requests':>8} {'rate/s':>7} {'4xx':>5} {'5xx':>11} {'p50 ms':>7} {'p95 ms':>7} "
        f"{'p99 ms':>7}",
    ]
    for r in summary["routes"]:
        errors = f"{r['server_errors']} ({r['error_pct']:.1f}%)"
        out.append(
            f"  {r['method'] + ' ' + r['route']:<28} {r['requests']:>8} {r['rate_per_s']:>7.1f} "
            f"{r['client_errors']:>5} {errors:>11} {_fmt_ms(r['p50_ms']):>7} {_fmt_ms(r['p95_ms']):>7} "
            f"{_fmt_ms(r['p99_ms']):>7}"
        )
    cache, db, queue = summary["cache"], summary["database"], summary["queue"]
    ratio = "-" if cache["hit_ratio"] is None else f"{cache['hit_ratio']:.1%}"
    db_ops = ", ".join(
        f"{op} {v['count']}" + (f" ({v['errors']} failed)" if v["errors"] else "") for op, v in db["operations"].items()
    )
    db_lowest = c.DB_DURATION_BUCKETS[0] * 1000.0
    db_p95 = ", ".join(f"{op} {_fmt_ms(v['p95_ms'], db_lowest)}" for op, v in db["operations"].items())
    out += [
        "",
        "Dependencies",
        f"  cache {cache['name']!r}: {cache['lookups']} lookups, hit ratio {ratio} "
        f"({cache['hits']} hits, {cache['misses']} misses), {cache['sets']} sets",
        f"  database {db['system']}: {db_ops or 'no statements'}; p95 ms: {db_p95 or '-'}",
        f"  queue {queue['destination']!r} ({queue['system']}): {queue['published']} published, "
        f"{queue['consumed']} consumed, {queue['failed']} failed, {queue['in_flight']} in flight; "
        f"processing p95 {_fmt_ms(queue['process_p95_ms'])} ms",
        "",
        "SLOs over this run  (budget consumed: the run's error ratio over the SLO's allowed ratio)",
    ]
    for s in summary["slos"]:
        what = "requests without a 5xx" if s["sli"] == "availability" else f"requests under {s['threshold_s']:g} s"
        out.append(
            f"  {s['name']:<24} {s['target']:.0%} {what:<26} bad {s['bad_events']}/{s['events']} "
            f"({s['error_ratio']:.2%})  budget consumed {s['budget_consumed_pct']:.0f}%"
        )
    out += ["", "Health probes"]
    for probe, result in summary["health"].items():
        out.append(f"  GET /health/{probe}  {result['status_code']}  {json.dumps(result['body'])}")
    out += ["", "Sample trace"]
    sample = summary["trace"]
    if sample is None:
        out.append("  no trace was sampled (raise --sample-ratio)")
    else:
        out.append(
            f"  trace_id {sample['trace_id']}  correlation_id {sample['correlation_id']}  {sample['span_count']} spans"
        )
        out += ["  " + line for line in _tree_lines(sample["root"])]
    out += ["", f"Sample log lines ({len(summary['logs'])} of {summary['log_lines_total']}, JSON; stack traces cut)"]
    out += [f"  {_short_stacktrace(line)}" for line in summary["logs"]]
    out += ["", "Next steps"]
    out += [f"  {i}. {step}" for i, step in enumerate(summary["next_steps"], 1)]
    return "\n".join(out)


def tty_progress(stream: TextIO) -> Progress | None:
    """A one-line progress counter on ``stream`` when it is a terminal, else ``None`` (no output)."""
    if not stream.isatty():
        return None
    state = {"last": -1}

    def show(done: int, total: int) -> None:
        if done == state["last"]:
            return
        state["last"] = done
        end = "\n" if done >= total else ""
        stream.write(f"\r  traffic: {done}/{total} requests ({100 * done // max(total, 1)}%)" + end)
        stream.flush()

    return show


# --- serving: uvicorn, background traffic, a local Prometheus ----------------------------------------


def prometheus_rules() -> dict[str, Any]:
    """The rule file for the demo: :data:`SLOS`' recording rules and burn-rate alerts, and the alert catalogue."""
    from .rules import generate

    return generate(SLOS)


def prometheus_config(target: str, rule_file: str | Path, interval: str = "5s") -> dict[str, Any]:
    """A prometheus.yml scraping the demo at ``target`` (job :data:`SERVICE_NAME`) with ``rule_file``.

    Example:
        >>> prometheus_config("127.0.0.1:8080", "rules.yml")["scrape_configs"][0]["job_name"]
        'checkout'
    """
    return {
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "rule_files": [str(rule_file)],
        "scrape_configs": [
            {"job_name": SERVICE_NAME, "metrics_path": "/metrics", "static_configs": [{"targets": [target]}]}
        ],
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Prometheus:
    """A local Prometheus with a temporary directory (config, rules, data), stopped and removed on close."""

    def __init__(self, binary: str, target: str) -> None:
        import yaml

        self.dir = Path(tempfile.mkdtemp(prefix="bakhmach-obs-demo-prometheus-"))
        self.log: Any = None
        self.proc: subprocess.Popen[bytes] | None = None
        try:
            self.port = _free_port()
            self.url = f"http://127.0.0.1:{self.port}"
            rules = self.dir / "rules.yml"
            rules.write_text(yaml.safe_dump(prometheus_rules(), sort_keys=False))
            config = self.dir / "prometheus.yml"
            config.write_text(yaml.safe_dump(prometheus_config(target, rules), sort_keys=False))
            self.log = (self.dir / "prometheus.log").open("wb")
            self.proc = subprocess.Popen(
                [
                    binary, f"--config.file={config}", f"--storage.tsdb.path={self.dir / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                ],
                stdout=self.log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        except BaseException:  # nothing left behind: no log handle, no directory
            self.close()
            raise

    def wait_ready(self, timeout: float = 20.0, stop: threading.Event | None = None) -> str | None:
        """Block until Prometheus answers ``/-/ready``; None when ready, else why not (with its log's end).

        Gives up at once when ``stop`` is set (the demo was asked to stop meanwhile).
        """
        import urllib.error
        import urllib.request

        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if stop is not None and stop.is_set():
                return "stopped before prometheus was ready"
            if self.proc.poll() is not None:
                self.log.flush()
                tail = (self.dir / "prometheus.log").read_text(errors="replace")[-2000:]
                return f"prometheus exited with code {self.proc.returncode}:\n{tail}"
            try:
                with urllib.request.urlopen(self.url + "/-/ready", timeout=2) as resp:
                    if resp.status == 200:
                        return None
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.1)
        return f"prometheus did not become ready within {timeout:g} s"

    def close(self) -> None:
        """Stop Prometheus (SIGTERM, then SIGKILL after 10 s) and remove the directory, whatever fails."""
        try:
            if self.proc is not None and self.proc.poll() is None:
                self.proc.terminate()
                try:
                    self.proc.wait(10)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(5)
        finally:
            if self.log is not None:
                self.log.close()
            shutil.rmtree(self.dir, ignore_errors=True)


async def _background_traffic(base_url: str, rate: float, seed: int, stop: asyncio.Event) -> None:
    """Send the demo's traffic mix at about ``rate`` requests per second until ``stop`` is set."""
    import httpx

    batch = 0
    interval = 1.0 / rate
    pending: set[asyncio.Task[Any]] = set()

    def finished(task: asyncio.Task[Any]) -> None:
        pending.discard(task)
        if not task.cancelled():
            task.exception()  # a refused or timed-out request (the server stopping) is not an error here

    async with httpx.AsyncClient(base_url=base_url, timeout=10.0) as client:
        while not stop.is_set():
            for request in make_traffic(100, seed + batch, start=batch * 100 + 1):
                if stop.is_set():
                    break
                if len(pending) < 64:  # bounded: a stuck server does not pile up requests
                    task = asyncio.create_task(_send(client, request))
                    pending.add(task)
                    task.add_done_callback(finished)
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(stop.wait(), interval)
            batch += 1
        if pending:
            await asyncio.wait(set(pending), timeout=5.0)
        for task in set(pending):
            task.cancel()


def serve(
    *,
    host: str = "127.0.0.1",
    port: int = 8080,
    rate: float = 5.0,
    seed: int = 7,
    database_url: str | None = None,
    redis_url: str | None = None,
    amqp_url: str | None = None,
    with_prometheus: bool = False,
    prometheus_binary: str = "prometheus",
    out: TextIO = sys.stdout,
) -> int:
    """Serve the demo with uvicorn and drive background traffic until SIGINT or SIGTERM; return the exit code.

    Configures the SDK globally (this process is the demo's): JSON logs at WARNING on stdout, the
    environment's ``OTEL_*`` settings for traces, :data:`SLOS` declared. ``port=0`` picks a free port.
    With ``with_prometheus``, also starts ``prometheus_binary`` on a free loopback port with the
    generated configuration and rules (exit code 1 with a message when it is not installed).
    """
    binary = None
    if with_prometheus:
        binary = shutil.which(prometheus_binary)
        if binary is None:
            print(
                f"bakhmach-obs demo: --with-prometheus needs the Prometheus server binary ({prometheus_binary!r} "
                "not found on PATH). Install it (Debian/Ubuntu: apt-get install prometheus; or "
                "https://prometheus.io/download/) or run with --serve alone and point your Prometheus at /metrics.",
                file=sys.stderr,
            )
            return 1
    services = Services(database_url, redis_url, amqp_url, seed=seed)
    try:
        sock = socket.create_server((host, port), reuse_port=False)
    except OSError as exc:
        print(f"bakhmach-obs demo: cannot listen on {host}:{port}: {exc}", file=sys.stderr)
        return 1
    bakhmach_obs.configure(
        service_name=os.environ.get("OTEL_SERVICE_NAME", SERVICE_NAME), environment="demo", log_level="WARNING",
        slos=SLOS,
    )  # fmt: skip
    with sock:
        return asyncio.run(_serve(services, sock, rate, seed, binary, out))


async def _serve(
    services: Services, sock: socket.socket, rate: float, seed: int, binary: str | None, out: TextIO
) -> int:
    import uvicorn

    class _Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Any:  # ours below: a clean exit code instead of re-raising
            yield

    loop = asyncio.get_running_loop()
    stop = threading.Event()  # set by SIGINT/SIGTERM; also read by the thread waiting for Prometheus
    prometheus: _Prometheus | None = None
    host, bound = sock.getsockname()[:2]
    if host in ("0.0.0.0", "::"):  # listening everywhere: the traffic and Prometheus use loopback
        host = "127.0.0.1"
    config = uvicorn.Config(create_app(services), access_log=False, log_level="warning", lifespan="off")
    server = _Server(config)
    stopping = asyncio.Event()

    def shut_down() -> None:
        stop.set()
        stopping.set()
        server.should_exit = True

    handled = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, shut_down)
            handled.append(sig)
    serving: asyncio.Task[None] | None = None
    traffic: asyncio.Task[None] | None = None
    try:
        await services.start()
        serving = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started:
            if serving.done():
                await serving
                print("bakhmach-obs demo: the server did not start", file=sys.stderr)
                return 1
            await asyncio.sleep(0.02)
        base = f"http://{host}:{bound}"
        print(f"bakhmach-obs demo: serving {SERVICE_NAME!r} on {base}", file=out)
        print(f"  metrics  {base}/metrics", file=out)
        print(f"  health   {base}/health/live  {base}/health/ready", file=out)
        print("  routes   GET /products/{id}  POST /orders  POST /payments  GET /slow?delay=0.3", file=out)
        backends = services.describe()
        print(f"  database {backends['database']}; cache {backends['cache']}; queue {backends['queue']}", file=out)
        if rate > 0:
            traffic = asyncio.create_task(_background_traffic(base, rate, seed, stopping))
            print(f"  background traffic: about {rate:g} requests/s", file=out)
        if binary is not None and not stop.is_set():
            prometheus = _Prometheus(binary, f"{host}:{bound}")
            problem = await asyncio.to_thread(prometheus.wait_ready, 20.0, stop)
            if problem is not None and not stop.is_set():
                print(f"bakhmach-obs demo: {problem}", file=sys.stderr)
                return 1
            if problem is None:
                print(f"  prometheus {prometheus.url}  (config and rules in {prometheus.dir})", file=out)
                print(f"    try: {prometheus.url}/alerts  {prometheus.url}/rules  {prometheus.url}/targets", file=out)
        print("Press Ctrl-C to stop.", file=out)
        out.flush()
        await serving
    finally:
        shut_down()
        for sig in handled:
            loop.remove_signal_handler(sig)
        try:  # every step runs whatever the previous one did: no Prometheus or connection outlives the demo
            if prometheus is not None:
                prometheus.close()
        finally:
            try:
                if traffic is not None:
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(traffic, 10.0)
                if serving is not None and not serving.done():
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(serving, 10.0)
            finally:
                await services.stop()
                bakhmach_obs.shutdown()
    print("bakhmach-obs demo: stopped", file=out)
    return 0
