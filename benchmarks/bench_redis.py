"""Per-command overhead of instrumenting redis-py, and of the in-process cache wrapper, in one process.

Run: ``python benchmarks/bench_redis.py [--quick] [--repeats N] [--json PATH] [--host H] [--port P]``.

Redis rows time a real ``GET`` of an existing key on a local Redis (sync client), for

1. the bare client;
2. ``instrument_redis(client)``: a CLIENT span at the default sampler (``parentbased_traceidratio``
   0.1) and ``db_client_operation_duration_seconds``;
3. the same with ``cache_name=``: plus ``cache_operations_total`` and ``cache_operation_duration_seconds``;
4. opentelemetry-instrumentation-redis (``RedisInstrumentor().instrument(tracer_provider=...)``, a
   global patch of ``redis.Redis``, applied before its row and removed after) with an SDK provider at
   ``ParentBased(TraceIdRatioBased(0.1))``. It records spans only: no metrics at all.

Cache rows time ``get`` of a present key on a bare ``dict``, the same dict wrapped by
``instrument_cache`` (metrics only, the default), a bare ``cachetools.LRUCache`` and the wrapped one.

Repeats are interleaved (each repeat times every row once, in a rotated order) and the median is
reported; overheads are the median of the per-repeat differences to the bare row of the same
repeat (paired). Span exporters do no I/O. Only figures from one run compare (see
``/work/shared/design/PERFORMANCE.md``). This is a measurement, not a test: it always exits 0.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import statistics
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from time import perf_counter_ns
from typing import Any

from _common import DropExporter
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from prometheus_client import CollectorRegistry

import bakhmach_obs
from bakhmach_obs.cache import instrument_cache
from bakhmach_obs.tracing import BoundedBatchSpanProcessor

WARMUP_REDIS = 200
WARMUP_CACHE = 2_000


@dataclass
class Row:
    key: str
    label: str
    fn: Callable[[], Any]
    n: int
    warmup: int
    setup: Callable[[], None] | None = None
    teardown: Callable[[], None] | None = None
    exporters: list[DropExporter] = field(default_factory=list)
    samples: list[float] = field(default_factory=list)
    calls: int = 0

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def spans_per_call(self) -> float | None:
        if not self.exporters:
            return None
        return sum(e.spans for e in self.exporters) / max(self.calls, 1)


def time_row(row: Row) -> float:
    if row.setup is not None:
        row.setup()
    try:
        fn = row.fn
        for _ in range(row.warmup):
            fn()
        gc.collect()
        enabled = gc.isenabled()
        gc.disable()
        try:
            rng = range(row.n)
            t0 = perf_counter_ns()
            for _ in rng:
                fn()
            elapsed = perf_counter_ns() - t0
        finally:
            if enabled:
                gc.enable()
        row.calls += row.warmup + row.n
        return elapsed / row.n
    finally:
        if row.teardown is not None:
            row.teardown()


_REGISTRY = CollectorRegistry()


def configure_ours() -> tuple[Callable[[], None], list[DropExporter]]:
    """(Re)configure bakhmach_obs with its defaults (10% sampling) and a no-I/O span processor."""
    exporters: list[DropExporter] = []

    def setup() -> None:
        exporter = DropExporter()
        exporters.append(exporter)
        bakhmach_obs.configure(
            service_name="bench", log_format="none", traces_exporter="none", registry=_REGISTRY,
            span_processors=[BoundedBatchSpanProcessor(exporter)],
        )  # fmt: skip

    return setup, exporters


def build_rows(args: argparse.Namespace, scale: float) -> tuple[list[Row], list[Row], list[Callable[[], None]]]:
    import cachetools
    import redis

    from bakhmach_obs.redis import instrument_redis

    n_redis = max(100, int(3_000 * scale))
    n_cache = max(10_000, int(300_000 * scale))
    key = f"bakhmach-obs-bench:{uuid.uuid4().hex}"
    closers: list[Callable[[], None]] = []

    def client() -> Any:
        c = redis.Redis(host=args.host, port=args.port)
        closers.append(c.close)
        return c

    bare, ours, ours_cache, otel = client(), client(), client(), client()
    bare.set(key, "v" * 64)
    closers.append(lambda: bare.delete(key))
    instrument_redis(ours)
    instrument_redis(ours_cache, cache_name="bench")
    setup_r2, exp_r2 = configure_ours()  # one per row: each row's exporter counts its own spans
    setup_r3, exp_r3 = configure_ours()
    setup_ours, _ = configure_ours()

    from opentelemetry.instrumentation.redis import RedisInstrumentor

    otel_exporter = DropExporter()
    provider = TracerProvider(sampler=ParentBased(TraceIdRatioBased(0.1)), shutdown_on_exit=False)
    provider.add_span_processor(BatchSpanProcessor(otel_exporter))
    closers.append(provider.shutdown)
    instrumentor = RedisInstrumentor()

    def otel_on() -> None:
        instrumentor.instrument(tracer_provider=provider)

    def otel_off() -> None:
        instrumentor.uninstrument()

    redis_rows = [
        Row("r1", "bare redis GET", lambda: bare.get(key), n_redis, WARMUP_REDIS),
        Row("r2", "instrument_redis: span 10% + db metric", lambda: ours.get(key), n_redis, WARMUP_REDIS,
            setup_r2, None, exp_r2),
        Row("r3", "instrument_redis(cache_name=): + cache metrics", lambda: ours_cache.get(key), n_redis,
            WARMUP_REDIS, setup_r3, None, exp_r3),
        Row("r4", "OTel RedisInstrumentor: span 10%, no metrics", lambda: otel.get(key), n_redis, WARMUP_REDIS,
            otel_on, otel_off, [otel_exporter]),
    ]  # fmt: skip

    plain: dict[str, str] = {"k": "v"}
    wrapped = instrument_cache(dict(plain), name="bench_dict")
    lru: Any = cachetools.LRUCache(maxsize=128)
    lru["k"] = "v"
    lru_wrapped = instrument_cache(cachetools.LRUCache(maxsize=128), name="bench_lru")
    lru_wrapped["k"] = "v"
    cache_rows = [
        Row("c1", "dict.get (hit)", lambda: plain.get("k"), n_cache, WARMUP_CACHE),
        Row("c2", "instrument_cache(dict).get (hit), metrics", lambda: wrapped.get("k"), n_cache, WARMUP_CACHE,
            setup_ours),
        Row("c3", "LRUCache[k] (hit)", lambda: lru["k"], n_cache, WARMUP_CACHE),
        Row("c4", "instrument_cache(LRUCache)[k] (hit), metrics", lambda: lru_wrapped["k"], n_cache, WARMUP_CACHE,
            setup_ours),
    ]  # fmt: skip
    return redis_rows, cache_rows, closers


def _version(dist: str) -> str:
    try:
        return version(dist)
    except PackageNotFoundError:
        return "not installed"


def run(rows: list[Row], repeats: int, title: str) -> None:
    started = time.monotonic()
    for r in range(repeats):
        order = rows[r % len(rows) :] + rows[: r % len(rows)]
        for row in order:
            row.samples.append(time_row(row))
        print(f"  {title}: repeat {r + 1}/{repeats} ({time.monotonic() - started:.1f} s)", file=sys.stderr)


def report(rows: list[Row], bare: Row, unit: str, scale: float) -> dict[str, Any]:
    print(f"{'#':<3} {'variant':<52} {unit:>10} {'min':>10} {'max':>10} {'overhead':>10} {'spans/call':>10}")
    print("-" * 110)
    out: dict[str, Any] = {}
    for row in rows:
        paired = statistics.median(a - b for a, b in zip(row.samples, bare.samples, strict=True))
        spans = "" if row.spans_per_call is None else f"{row.spans_per_call:.3f}"
        over = "" if row is bare else f"{paired / scale:+,.2f}"
        print(
            f"{row.key:<3} {row.label:<52} {row.median / scale:>10,.2f} {min(row.samples) / scale:>10,.2f}"
            f" {max(row.samples) / scale:>10,.2f} {over:>10} {spans:>10}"
        )
        out[row.key] = {
            "label": row.label,
            "median_ns": row.median,
            "paired_overhead_ns": paired,
            "spans_per_call": row.spans_per_call,
            "samples_ns": row.samples,
        }
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 1/10 of the loops, 3 repeats")
    parser.add_argument("--repeats", type=int, default=None, help="repeats (default 11, --quick 3)")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=6379)
    args = parser.parse_args(argv)
    repeats = args.repeats or (3 if args.quick else 11)
    scale = 0.1 if args.quick else 1.0

    vers = {
        "python": platform.python_version(),
        "redis": _version("redis"),
        "cachetools": _version("cachetools"),
        "prometheus_client": _version("prometheus_client"),
        "opentelemetry-sdk": _version("opentelemetry-sdk"),
        "opentelemetry-instrumentation-redis": _version("opentelemetry-instrumentation-redis"),
    }
    print("versions: " + ", ".join(f"{k} {v}" for k, v in vers.items()))
    try:
        import redis

        probe = redis.Redis(host=args.host, port=args.port, socket_connect_timeout=1)
        try:
            probe.ping()
        finally:
            probe.close()
        have_redis = True
    except Exception as exc:
        print(f"no Redis at {args.host}:{args.port} ({exc}); redis rows skipped")
        have_redis = False

    doc: dict[str, Any] = {"versions": vers, "repeats": repeats, "quick": args.quick}
    redis_rows, cache_rows, closers = build_rows(args, scale) if have_redis else ([], [], [])
    if not have_redis:
        _, cache_rows, _ = _cache_only(scale)
    try:
        if redis_rows:
            run(redis_rows, repeats, "redis")
        run(cache_rows, repeats, "cache")
    finally:
        bakhmach_obs.shutdown(timeout=2.0)
        for close in reversed(closers):
            try:
                close()
            except Exception as exc:
                print(f"cleanup: {exc}", file=sys.stderr)

    if redis_rows:
        print(f"\nRedis GET, µs per command (loops of {redis_rows[0].n}, {repeats} repeats):")
        doc["redis"] = report(redis_rows, redis_rows[0], "µs/cmd", 1000.0)
        by = doc["redis"]
        ours, otel = by["r2"]["paired_overhead_ns"], by["r4"]["paired_overhead_ns"]
        verdict = "PASS" if ours < otel else "MISS"
        print(
            f"\nours (span + metric) {ours / 1000:+.2f} µs vs OTel (span only) {otel / 1000:+.2f} µs per command:"
            f" {verdict} (target: ours lower). OTel's redis instrumentation emits no metrics."
        )
        doc["target_ours_below_otel"] = ours < otel
    print(f"\nIn-process cache get, ns per call (loops of {cache_rows[0].n}, {repeats} repeats):")
    doc["cache"] = report(cache_rows[:2], cache_rows[0], "ns/call", 1.0)
    print()
    doc["cache"].update(report(cache_rows[2:], cache_rows[2], "ns/call", 1.0))
    print("\nNot a test: exit status is 0 whatever the figures.")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(doc, fh, indent=2)
        print(f"wrote {args.json}")
    return 0


def _cache_only(scale: float) -> tuple[list[Row], list[Row], list[Callable[[], None]]]:
    """The cache rows alone (no Redis reachable)."""
    import cachetools

    n_cache = max(10_000, int(300_000 * scale))
    setup_ours, _ = configure_ours()
    plain = {"k": "v"}
    wrapped = instrument_cache(dict(plain), name="bench_dict")
    lru: Any = cachetools.LRUCache(maxsize=128)
    lru["k"] = "v"
    lru_wrapped = instrument_cache(cachetools.LRUCache(maxsize=128), name="bench_lru")
    lru_wrapped["k"] = "v"
    rows = [
        Row("c1", "dict.get (hit)", lambda: plain.get("k"), n_cache, WARMUP_CACHE),
        Row("c2", "instrument_cache(dict).get (hit), metrics", lambda: wrapped.get("k"), n_cache, WARMUP_CACHE,
            setup_ours),
        Row("c3", "LRUCache[k] (hit)", lambda: lru["k"], n_cache, WARMUP_CACHE),
        Row("c4", "instrument_cache(LRUCache)[k] (hit), metrics", lambda: lru_wrapped["k"], n_cache, WARMUP_CACHE,
            setup_ours),
    ]  # fmt: skip
    return [], rows, []


if __name__ == "__main__":
    sys.exit(main())
