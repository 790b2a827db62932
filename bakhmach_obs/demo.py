"""``bakhmach-obs demo``: an instrumented checkout service under synthetic traffic, then a report.

Everything runs in process on embedded defaults: a fresh ``CollectorRegistry``, an in-memory span
exporter and JSON log records captured in a buffer. The demo installs its own runtime only for
the run (the :mod:`bakhmach_obs.testing` pattern) and puts the previous one back afterwards, so
calling :func:`run_demo` never changes the application's configuration; the environment
(``OTEL_*``, ``BAKHMACH_OBS_*``) is ignored.

The service is ordinary user code: ``place_order`` (async) calls ``validate_cart`` (sync),
``reserve_inventory`` (async), ``charge_payment`` (sync, run in a thread like a blocking payment
SDK; it declines a seeded share of requests with ``PaymentError("Insufficient funds")``,
``error_code="PAYMENT_001"``), a ``persist_order`` block (``bakhmach_obs.operation``) and the
``stream_order_lines`` generator.

Example:
    >>> from bakhmach_obs.demo import run_demo
    >>> summary = run_demo(requests=20, seed=7)
    >>> [f["function"] for f in summary["functions"]][:2]
    ['place_order', 'validate_cart']
    >>> summary["functions"][0]["calls"]
    20
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import math
import random
import time
from collections.abc import Coroutine, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import StatusCode
from prometheus_client import CollectorRegistry

import bakhmach_obs

from . import conventions
from ._runtime import Runtime, build_runtime, swap
from .config import load_settings
from .context import set_correlation_id
from .logs import JsonFormatter

__all__ = [
    "DECLINED_CARD",
    "CheckoutRequest",
    "Latency",
    "Order",
    "OrderLine",
    "PaymentError",
    "histogram_quantile",
    "make_traffic",
    "place_order",
    "render_text",
    "run_demo",
]

#: Name the demo's telemetry is recorded under (``service`` log field, ``service.name``).
SERVICE_NAME = "checkout"
#: The ``module`` label of the demo service's metrics.
MODULE = __name__
#: Card token the fake payment provider declines with "Insufficient funds".
DECLINED_CARD = "tok_insufficient_funds"
#: Share of requests paying with :data:`DECLINED_CARD`.
DECLINE_SHARE = 0.12
#: Functions and operations of the service, in call order (the report's row order).
FUNCTIONS = (
    "place_order",
    "validate_cart",
    "reserve_inventory",
    "charge_payment",
    "persist_order",
    "stream_order_lines",
)
_SAMPLE_LOG_LINES = 5
_MAX_CAPTURED_LINES = 20_000
_HIDDEN_ATTRIBUTES = frozenset({conventions.ATTR_CODE_FUNCTION_NAME, conventions.ATTR_CODE_NAMESPACE})

log = logging.getLogger(__name__)
_T = TypeVar("_T")


# --- the example service ------------------------------------------------------------------------


class PaymentError(Exception):
    """The payment provider refused the charge; ``error_code`` lands in the failure log record."""

    def __init__(self, message: str, error_code: str) -> None:
        super().__init__(message)
        self.error_code = error_code


@dataclass(frozen=True)
class OrderLine:
    """One cart line."""

    sku: str
    quantity: int
    unit_price_cents: int


@dataclass(frozen=True)
class Latency:
    """Simulated latencies of the service's dependencies for one request, in seconds."""

    inventory: float
    payment: float
    database: float


@dataclass(frozen=True)
class CheckoutRequest:
    """One synthetic checkout request."""

    order_id: str
    correlation_id: str
    user_id: str
    lines: tuple[OrderLine, ...]
    card_token: str
    latency: Latency


@dataclass(frozen=True)
class Order:
    """What ``place_order`` returns: ``status`` is ``placed`` or ``declined``."""

    order_id: str
    status: str
    total_cents: int
    receipt: tuple[str, ...] = ()


@bakhmach_obs.instrument
def validate_cart(lines: Sequence[OrderLine]) -> int:
    """Check the cart and return its total in cents."""
    if not lines:
        raise ValueError("empty cart")
    total = 0
    for line in lines:
        if line.quantity <= 0 or line.unit_price_cents < 0:
            raise ValueError(f"invalid cart line {line.sku}")
        total += line.quantity * line.unit_price_cents
    return total


@bakhmach_obs.instrument
async def reserve_inventory(lines: Sequence[OrderLine], delay: float) -> None:
    """Reserve stock for every line (simulated: an awaited call to an inventory service)."""
    trace.get_current_span().set_attribute("inventory.skus", len(lines))
    await asyncio.sleep(delay)


@bakhmach_obs.instrument(action="payment_processing", attributes={"payment.provider": "demo-psp"})
def charge_payment(user_id: str, amount_cents: int, card_token: str, delay: float) -> str:
    """Charge the card through a blocking payment SDK (simulated); return the charge id."""
    time.sleep(delay)
    if card_token == DECLINED_CARD:
        raise PaymentError("Insufficient funds", error_code="PAYMENT_001")
    return f"ch_{user_id}_{amount_cents}"


@bakhmach_obs.instrument
def stream_order_lines(order_id: str, lines: Sequence[OrderLine]) -> Iterator[str]:
    """Yield the order's receipt lines one at a time (a generator: one span for the whole stream)."""
    for line in lines:
        yield f"{order_id},{line.sku},{line.quantity},{line.unit_price_cents}"


@bakhmach_obs.instrument
async def place_order(request: CheckoutRequest) -> Order:
    """Validate, reserve, charge, persist: the service's entry point for one checkout."""
    trace.get_current_span().set_attribute("order.id", request.order_id)
    log.info("order received", extra={"order_id": request.order_id, "items": len(request.lines)})
    total = validate_cart(request.lines)
    await reserve_inventory(request.lines, request.latency.inventory)
    try:
        # A blocking SDK runs in a worker thread; to_thread carries the trace and log context.
        charge_id = await asyncio.to_thread(
            charge_payment, request.user_id, total, request.card_token, request.latency.payment
        )
    except PaymentError as exc:
        log.warning(
            "order declined",
            extra={"order_id": request.order_id, "error": str(exc), "error_code": exc.error_code},
        )
        return Order(request.order_id, "declined", total)
    with bakhmach_obs.operation("persist_order", **{"db.system": "postgresql", "db.table": "orders"}):
        await asyncio.sleep(request.latency.database)
    receipt = tuple(stream_order_lines(request.order_id, request.lines))
    log.info("order placed", extra={"order_id": request.order_id, "charge_id": charge_id, "total_cents": total})
    return Order(request.order_id, "placed", total, receipt)


# --- synthetic traffic ----------------------------------------------------------------------------

_CATALOGUE = (("sku-book", 1299), ("sku-mug", 850), ("sku-shirt", 2400), ("sku-lamp", 4999), ("sku-pen", 199))


def make_traffic(requests: int, seed: int) -> list[CheckoutRequest]:
    """The synthetic requests: users, carts, declines and latencies drawn from ``random.Random(seed)``."""
    rng = random.Random(seed)
    traffic = []
    for i in range(1, requests + 1):
        lines = tuple(
            OrderLine(sku, rng.randint(1, 3), price) for sku, price in rng.sample(_CATALOGUE, rng.randint(1, 4))
        )
        declined = rng.random() < DECLINE_SHARE
        slow = rng.random() < 0.04
        latency = Latency(
            inventory=rng.uniform(0.002, 0.02),
            payment=rng.uniform(0.2, 0.32) if slow else min(0.015 + rng.expovariate(1 / 0.03), 0.18),
            database=rng.uniform(0.001, 0.008),
        )
        traffic.append(
            CheckoutRequest(
                order_id=f"ord-{i:05d}",
                correlation_id=f"req-{i:05d}",
                user_id=f"user-{rng.randint(100, 999)}",
                lines=lines,
                card_token=DECLINED_CARD if declined else "tok_visa",
                latency=latency,
            )
        )
    return traffic


async def _handle(request: CheckoutRequest, slots: asyncio.Semaphore) -> Order:
    """What a web framework middleware does per request: bind the correlation id and user."""
    async with slots:
        set_correlation_id(request.correlation_id)
        with bakhmach_obs.log_context(user_id=request.user_id):
            return await place_order(request)


async def _drive(
    traffic: Sequence[CheckoutRequest], concurrency: int, runtime: Runtime
) -> tuple[list[Order], float, dict[str, float]]:
    """Send the traffic with at most ``concurrency`` requests in flight; sample the concurrency gauge."""
    loop = asyncio.get_running_loop()
    loop.set_default_executor(ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="checkout-sdk"))
    slots = asyncio.Semaphore(concurrency)
    peaks: dict[str, float] = {}
    done = asyncio.Event()

    async def sample_concurrency() -> None:
        gauge = runtime.metric_set.get(conventions.FUNCTION_CALLS_CONCURRENT)
        while not done.is_set():
            for metric in gauge.collect():
                for s in metric.samples:
                    if s.labels.get(conventions.LABEL_MODULE) == MODULE:
                        fn = s.labels[conventions.LABEL_FUNCTION]
                        peaks[fn] = max(peaks.get(fn, 0.0), s.value)
            await asyncio.sleep(0.005)

    sampler = asyncio.create_task(sample_concurrency())
    t0 = time.perf_counter()
    try:
        orders = await asyncio.gather(*(_handle(r, slots) for r in traffic))
    finally:
        elapsed = time.perf_counter() - t0
        done.set()
        await sampler
    return list(orders), elapsed, peaks


def _run_loop(coro: Coroutine[Any, Any, _T]) -> _T:
    """Run ``coro`` on a new event loop in an empty context (a thread if a loop is running here)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return contextvars.Context().run(asyncio.run, coro)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="bakhmach-obs-demo") as pool:
        return pool.submit(contextvars.Context().run, asyncio.run, coro).result()


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


# --- reading the signals back -------------------------------------------------------------------


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


def _function_stats(registry: CollectorRegistry, elapsed: float, peaks: Mapping[str, float]) -> list[dict[str, Any]]:
    """RED numbers per function of the demo module, read from ``registry.collect()``."""
    calls_name = conventions.FUNCTION_CALLS.name
    bucket_name = conventions.FUNCTION_CALLS_DURATION.name + "_bucket"
    concurrent_name = conventions.FUNCTION_CALLS_CONCURRENT.name
    counts: dict[str, dict[str, float]] = {}
    buckets: dict[str, list[tuple[float, float]]] = {}
    concurrent: dict[str, float] = {}
    for metric in registry.collect():
        for s in metric.samples:
            if s.labels.get(conventions.LABEL_MODULE) != MODULE:
                continue
            fn = s.labels[conventions.LABEL_FUNCTION]
            if s.name == calls_name:
                counts.setdefault(fn, {})[s.labels[conventions.LABEL_RESULT]] = s.value
            elif s.name == bucket_name:
                buckets.setdefault(fn, []).append((float(s.labels["le"]), s.value))
            elif s.name == concurrent_name:
                concurrent[fn] = s.value
    order = {name: i for i, name in enumerate(FUNCTIONS)}
    stats = []
    for fn in sorted(counts, key=lambda f: (order.get(f, len(order)), f)):
        ok = int(counts[fn].get(conventions.RESULT_OK, 0))
        errors = int(counts[fn].get(conventions.RESULT_ERROR, 0))
        calls = ok + errors
        quantiles = {
            f"p{round(q * 100)}_ms": _ms(histogram_quantile(q, buckets.get(fn, []))) for q in (0.5, 0.95, 0.99)
        }
        stats.append(
            {
                "function": fn,
                "module": MODULE,
                "calls": calls,
                "ok": ok,
                "errors": errors,
                "error_pct": round(100.0 * errors / calls, 2) if calls else 0.0,
                "rate_per_s": round(calls / elapsed, 2) if elapsed > 0 else 0.0,
                **quantiles,
                "concurrent": int(concurrent.get(fn, 0)),
                "peak_concurrent": int(peaks.get(fn, 0)),
            }
        )
    return stats


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000.0, 2)


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
        "span_id": f"{span_id:016x}",
        "parent_span_id": f"{span.parent.span_id:016x}" if span.parent is not None else None,
        "duration_ms": round((end - start) / 1e6, 2),
        "status": _status(span),
        "attributes": attributes,
        "children": [_span_node(c, children) for c in children.get(span_id, [])],
    }


def _sample_trace(spans: Sequence[ReadableSpan]) -> dict[str, Any] | None:
    """The trace of the first request (by correlation id) that failed somewhere, else the first one."""
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
        cid = str((roots[0].attributes or {}).get(conventions.ATTR_CORRELATION_ID, ""))
        failed = any(s.status.status_code is StatusCode.ERROR for s in members)
        candidates.append((not failed, cid, trace_id, roots[0], members))
    if not candidates:
        return None
    _, cid, trace_id, root, members = min(candidates, key=lambda c: (c[0], c[1]))
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
    """A few raw lines: the sample trace's request, then other levels and messages for variety."""
    chosen: list[str] = []
    seen: set[tuple[str, str]] = set()
    parsed = []
    for line in lines:
        try:
            parsed.append((line, json.loads(line)))
        except ValueError:
            continue
    for line, data in parsed:
        if correlation_id is not None and data.get("correlation_id") == correlation_id:
            chosen.append(line)
            seen.add((data.get("level", ""), data.get("message", "")))
    for line, data in parsed:
        key = (data.get("level", ""), data.get("message", ""))
        if len(chosen) >= _SAMPLE_LOG_LINES:
            break
        if key not in seen:
            chosen.append(line)
            seen.add(key)
    return chosen[:_SAMPLE_LOG_LINES]


# --- the run ---------------------------------------------------------------------------------------


def run_demo(requests: int = 200, seed: int = 7, concurrency: int = 16, sample_ratio: float = 1.0) -> dict[str, Any]:
    """Run the checkout service under synthetic traffic and summarise the three signals.

    The previous runtime (whatever ``configure()`` installed) is restored before returning, the
    demo's log records never reach the application's handlers, and the environment is ignored.

    Args:
        requests: number of checkout requests.
        seed: seed of the traffic generator (users, carts, declines, latencies).
        concurrency: requests in flight at most (also the size of the payment thread pool).
        sample_ratio: head sampling ratio of the demo's traces.

    Returns:
        A JSON-serialisable summary: ``functions`` (RED metrics per function), ``trace`` (one
        trace as a tree), ``logs`` (raw JSON lines) and run facts.
    """
    if requests < 1 or concurrency < 1:
        raise ValueError("requests and concurrency must be at least 1")
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
    runtime = build_runtime(settings, registry)
    buffer = _LineBuffer()
    buffer.setFormatter(JsonFormatter(service=SERVICE_NAME))
    saved = (log.level, log.propagate)
    log.addHandler(buffer)
    log.setLevel(logging.INFO)
    log.propagate = False
    previous = swap(runtime)
    try:
        orders, elapsed, peaks = _run_loop(_drive(make_traffic(requests, seed), concurrency, runtime))
    finally:
        swap(previous)
        log.removeHandler(buffer)
        log.setLevel(saved[0])
        log.propagate = saved[1]
        if runtime.provider is not None:
            runtime.provider.shutdown()
    spans = list(runtime.memory.get_finished_spans()) if runtime.memory is not None else []
    sample = _sample_trace(spans)
    return {
        "service": SERVICE_NAME,
        "requests": requests,
        "seed": seed,
        "concurrency": concurrency,
        "sample_ratio": sample_ratio,
        "elapsed_s": round(elapsed, 3),
        "orders": {
            "placed": sum(o.status == "placed" for o in orders),
            "declined": sum(o.status == "declined" for o in orders),
        },
        "functions": _function_stats(registry, elapsed, peaks),
        "spans_recorded": len(spans),
        "trace": sample,
        "log_lines_total": buffer.total,
        "logs": _sample_logs(buffer.lines, sample["correlation_id"] if sample else None),
        "next_steps": NEXT_STEPS,
    }


NEXT_STEPS = (
    'In your service: bakhmach_obs.configure(service_name="checkout") once at start-up '
    "(JSON logs on stdout; OTLP traces when OTEL_EXPORTER_OTLP_ENDPOINT is set, 10% sampled by default).",
    "Decorate entry points and calls to dependencies with @bakhmach_obs.instrument "
    "(sync, async, generators); wrap blocks in bakhmach_obs.operation(name).",
    'Expose metrics: app.mount("/metrics", bakhmach_obs.metrics_asgi_app()) '
    "(or bakhmach_obs.serve_metrics(9464) for workers without a web server).",
)


# --- the text report -------------------------------------------------------------------------------


_LOWEST_BOUND_MS = conventions.DURATION_BUCKETS[0] * 1000.0


def _fmt_ms(value: Any) -> str:
    """A quantile for the table; inside the lowest bucket the estimate says nothing, so show ``<bound``."""
    if value is None:
        return "-"
    return f"<{_LOWEST_BOUND_MS:g}" if value <= _LOWEST_BOUND_MS else f"{value:.1f}"


def _fmt_duration(ms: float) -> str:
    return f"{ms:.2f}" if ms < 1 else f"{ms:.1f}"


def _tree_lines(node: Mapping[str, Any], prefix: str = "", last: bool = True, root: bool = True) -> list[str]:
    # The correlation id is on every span; the heading shows it once.
    attrs = "  ".join(f"{k}={v}" for k, v in node["attributes"].items() if k != conventions.ATTR_CORRELATION_ID)
    status = "ERROR" if node["status"] == "error" else "ok"
    head = "" if root else prefix + ("`-- " if last else "|-- ")
    lines = [
        f"{head}{node['name']}  {_fmt_duration(node['duration_ms'])} ms  {status}" + (f"  {attrs}" if attrs else "")
    ]
    child_prefix = "" if root else prefix + ("    " if last else "|   ")
    children = node["children"]
    for i, child in enumerate(children):
        lines.extend(_tree_lines(child, child_prefix, i == len(children) - 1, root=False))
    return lines


def render_text(summary: Mapping[str, Any]) -> str:
    """The human-readable report of a :func:`run_demo` summary."""
    out = [
        f"bakhmach-obs demo: service {summary['service']!r}, {summary['requests']} requests, "
        f"concurrency {summary['concurrency']}, seed {summary['seed']}, {summary['elapsed_s']:.2f} s",
        f"  orders placed {summary['orders']['placed']}, declined {summary['orders']['declined']}; "
        f"in-process registry, {summary['spans_recorded']} spans in memory "
        f"(sampling {summary['sample_ratio']:.0%}), {summary['log_lines_total']} JSON log lines captured",
        "",
        "RED metrics per function",
        f"  from {conventions.FUNCTION_CALLS.name}, {conventions.FUNCTION_CALLS_DURATION.name} and "
        f"{conventions.FUNCTION_CALLS_CONCURRENT.name}; quantiles estimated from the histogram buckets "
        "like PromQL histogram_quantile",
        "",
        f"  {'function':<20} {'calls':>6} {'rate/s':>8} {'errors':>13} {'p50 ms':>8} {'p95 ms':>8} "
        f"{'p99 ms':>8} {'in-flight':>10}",
    ]
    for f in summary["functions"]:
        errors = f"{f['errors']} ({f['error_pct']:.1f}%)"
        inflight = f"{f['concurrent']} (max {f['peak_concurrent']})"
        out.append(
            f"  {f['function']:<20} {f['calls']:>6} {f['rate_per_s']:>8.1f} {errors:>13} "
            f"{_fmt_ms(f['p50_ms']):>8} {_fmt_ms(f['p95_ms']):>8} {_fmt_ms(f['p99_ms']):>8} {inflight:>10}"
        )
    out += ["", "Sample trace"]
    sample = summary["trace"]
    if sample is None:
        out.append("  no trace was sampled (raise --sample-ratio)")
    else:
        out.append(
            f"  trace_id {sample['trace_id']}  correlation_id {sample['correlation_id']}  {sample['span_count']} spans"
        )
        out += ["  " + line for line in _tree_lines(sample["root"])]
    out += ["", f"Sample log lines ({len(summary['logs'])} of {summary['log_lines_total']}, raw JSON)"]
    out += [f"  {line}" for line in summary["logs"]]
    out += ["", "Next steps"]
    out += [f"  {i}. {step}" for i, step in enumerate(summary["next_steps"], 1)]
    return "\n".join(out)
