"""Per-statement overhead of ``bakhmach_obs.dbapi`` against opentelemetry-instrumentation-dbapi, in one process.

Run: ``python benchmarks/bench_dbapi.py [--quick] [--repeats N] [--json PATH]``.

The statement is ``cursor.execute("SELECT 1")`` + ``cursor.fetchone()`` on an in-memory sqlite3
connection: the cheapest real DB-API round trip, so the instrumentation's cost is as visible as it
gets. Every variant has its own connection and cursor. Repeats are interleaved (each repeat times
every variant once, in a rotated order) and the median over repeats is reported; overhead is
``variant - bare`` per repeat, and the ratios are medians of per-repeat (paired) ratios. Only
ratios within one run mean anything (see ``/work/shared/design/PERFORMANCE.md``).

Variants:

* bare sqlite3;
* bakhmach_obs with tracing off (the histogram only);
* bakhmach_obs with its default sampler, ``parentbased_traceidratio`` 0.1: histogram + spans
  through a ``BoundedBatchSpanProcessor`` to a no-I/O exporter (as ``bench_instrument.py``);
* opentelemetry-instrumentation-dbapi (``instrument_connection``) with an SDK ``TracerProvider``
  at ``ParentBased(TraceIdRatioBased(0.1))``, ``BatchSpanProcessor`` to the same kind of exporter.
  It records **no metric** unless ``OTEL_SEMCONV_STABILITY_OPT_IN=database`` is set and a
  ``MeterProvider`` is configured, so it does less work than the bakhmach_obs row it is compared to;
* both again at always-on sampling (informational).

This is a measurement, not a test: it always exits 0.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import sqlite3
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from time import perf_counter_ns
from typing import Any

from _common import DropExporter
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased, Sampler, TraceIdRatioBased
from prometheus_client import CollectorRegistry

import bakhmach_obs
from bakhmach_obs.dbapi import instrument_connection
from bakhmach_obs.tracing import BoundedBatchSpanProcessor

WARMUP = 1_000
QUERY = "SELECT 1"


_REGISTRIES: dict[str, CollectorRegistry] = {}


def configure_for(key: str, **settings: Any) -> tuple[Callable[[], None], list[DropExporter]]:
    """A setup step that (re)configures bakhmach_obs for one variant, as production would."""
    registry = _REGISTRIES.setdefault(key, CollectorRegistry())
    exporters: list[DropExporter] = []

    def setup() -> None:
        processors = []
        if settings.get("tracing_enabled", True):
            exporter = DropExporter()
            exporters.append(exporter)
            processors = [BoundedBatchSpanProcessor(exporter)]
        bakhmach_obs.configure(
            service_name="bench", log_format="none", traces_exporter="none",
            registry=registry, span_processors=processors, **settings,
        )  # fmt: skip

    return setup, exporters


def otel_connection(sampler: Sampler) -> tuple[Any, TracerProvider, DropExporter]:
    from opentelemetry.instrumentation.dbapi import instrument_connection as otel_instrument

    exporter = DropExporter()
    provider = TracerProvider(sampler=sampler, shutdown_on_exit=False)
    provider.add_span_processor(BatchSpanProcessor(exporter))
    conn = otel_instrument("bench", sqlite3.connect(":memory:"), "sqlite", tracer_provider=provider)
    return conn, provider, exporter


@dataclass
class Variant:
    key: str
    label: str
    conn: Any
    setup: Callable[[], None] | None = None
    exporters: list[DropExporter] = field(default_factory=list)
    samples: list[float] = field(default_factory=list)
    calls: int = 0
    cursor: Any = None

    @property
    def exported(self) -> float | None:
        if not self.exporters or not self.calls:
            return None
        return sum(e.spans for e in self.exporters) / self.calls

    @property
    def median(self) -> float:
        return statistics.median(self.samples)


def _loop(cur: Any, n: int) -> int:
    execute, fetchone, q = cur.execute, cur.fetchone, QUERY
    t0 = perf_counter_ns()
    for _ in range(n):
        execute(q)
        fetchone()
    return perf_counter_ns() - t0


def time_variant(v: Variant, n: int) -> float:
    if v.setup is not None:
        v.setup()
    if v.cursor is None:
        v.cursor = v.conn.cursor()
    v.calls += WARMUP + n
    _loop(v.cursor, WARMUP)  # also performs the lazy re-bind after configure()
    gc.collect()
    enabled = gc.isenabled()
    gc.disable()
    try:
        elapsed = _loop(v.cursor, n)
    finally:
        if enabled:
            gc.enable()
    return elapsed / n


def build_variants() -> tuple[list[Variant], list[TracerProvider]]:
    cfg_off, _ = configure_for("off", tracing_enabled=False)
    cfg_10, exp_10 = configure_for("ratio", traces_sampler="parentbased_traceidratio", traces_sampler_arg=0.1)
    cfg_on, exp_on = configure_for("on", traces_sampler="always_on")

    def ours() -> Any:
        return instrument_connection(sqlite3.connect(":memory:"), db_system="sqlite", db_namespace="main")

    otel_10, prov_10, oexp_10 = otel_connection(ParentBased(TraceIdRatioBased(0.1)))
    otel_on, prov_on, oexp_on = otel_connection(ALWAYS_ON)
    variants = [
        Variant("1", "bare sqlite3", sqlite3.connect(":memory:")),
        Variant("2", "bakhmach_obs, tracing off (histogram only)", ours(), cfg_off),
        Variant("3", "bakhmach_obs, traceidratio 0.1 (histogram + spans)", ours(), cfg_10, exp_10),
        Variant("4", "OTel dbapi, traceidratio 0.1 (spans only, no metric)", otel_10, None, [oexp_10]),
        Variant("5", "bakhmach_obs, always_on (histogram + spans)", ours(), cfg_on, exp_on),
        Variant("6", "OTel dbapi, always_on (spans only, no metric)", otel_on, None, [oexp_on]),
    ]
    return variants, [prov_10, prov_on]


def _version(dist: str) -> str:
    try:
        return version(dist)
    except PackageNotFoundError:
        return "not installed"


def versions() -> dict[str, str]:
    return {
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "opentelemetry-sdk": _version("opentelemetry-sdk"),
        "opentelemetry-instrumentation-dbapi": _version("opentelemetry-instrumentation-dbapi"),
        "wrapt": _version("wrapt"),
        "bakhmach-obs": _version("bakhmach-obs"),
        "OTEL_SEMCONV_STABILITY_OPT_IN": os.environ.get("OTEL_SEMCONV_STABILITY_OPT_IN", "(unset)"),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 1/10 of the loops, 3 repeats")
    parser.add_argument("--repeats", type=int, default=None, help="repeats (default 11, --quick 3)")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH")
    args = parser.parse_args(argv)
    repeats = args.repeats or (3 if args.quick else 11)
    n = 2_000 if args.quick else 20_000

    vers = versions()
    print("versions: " + ", ".join(f"{k} {v}" for k, v in vers.items()))
    try:
        variants, providers = build_variants()
    except ImportError as exc:
        print(f"cannot run: {exc} (pip install opentelemetry-instrumentation-dbapi)")
        return 0
    print(f"repeats: {repeats}, statements per sample: {n}, warm-up {WARMUP}")

    started = time.monotonic()
    for r in range(repeats):
        order = variants[r % len(variants) :] + variants[: r % len(variants)]
        for v in order:
            v.samples.append(time_variant(v, n))
        print(f"  repeat {r + 1}/{repeats} done ({time.monotonic() - started:.1f} s)", file=sys.stderr)
    elapsed = time.monotonic() - started

    bakhmach_obs.shutdown(timeout=2.0)
    for p in providers:
        p.shutdown()
    for v in variants:
        v.conn.close()

    by = {v.key: v for v in variants}
    bare = by["1"]

    def overheads(key: str) -> list[float]:
        return [x - b for x, b in zip(by[key].samples, bare.samples, strict=True)]

    print()
    print(f"{'#':<3} {'variant':<56} {'ns/stmt':>9} {'overhead':>9} {'min':>9} {'max':>9} {'spans/stmt':>11}")
    print("-" * 112)
    for v in variants:
        spans = "" if v.exported is None else f"{v.exported:.3f}"
        over = "" if v is bare else f"{statistics.median(overheads(v.key)):>9,.0f}"
        print(
            f"{v.key:<3} {v.label:<56} {v.median:>9,.0f} {over:>9} {min(v.samples):>9,.0f} {max(v.samples):>9,.0f}"
            f" {spans:>11}"
        )
    print()

    def paired(a: str, b: str) -> float:
        """Median of per-repeat overhead ratios (both overheads measured against the same repeat's bare)."""
        ratios = [x / y for x, y in zip(overheads(a), overheads(b), strict=True) if y > 0]
        return statistics.median(ratios) if ratios else float("nan")

    pairs = {
        "ratio10_ours_vs_otel": ("overhead: bakhmach_obs 10% / OTel dbapi 10%", "3", "4"),
        "always_on_ours_vs_otel": ("overhead: bakhmach_obs always_on / OTel dbapi always_on", "5", "6"),
        "metrics_only_vs_otel10": ("overhead: bakhmach_obs tracing off / OTel dbapi 10%", "2", "4"),
    }
    results = {k: paired(a, b) for k, (_, a, b) in pairs.items()}
    print("Paired ratios of overhead (median over repeats; < 1 means bakhmach_obs costs less):")
    for k, (text, a, b) in pairs.items():
        verdict = ""
        if k == "ratio10_ours_vs_otel":
            verdict = "PASS (< 1)" if results[k] < 1 else "MISS (>= 1)"
        print(f"  {text:<60} [{a} / {b}]  {results[k]:5.2f}  {verdict}")
    print(
        "\nNote: OTel dbapi emitted no metric in this run (it needs OTEL_SEMCONV_STABILITY_OPT_IN=database and a"
        " MeterProvider); bakhmach_obs rows 2, 3 and 5 also record db_client_operation_duration_seconds."
    )
    print(f"timed section: {elapsed:.1f} s. Not a test: exit status is 0 whatever the ratios.")

    if args.json:
        doc = {
            "versions": vers,
            "repeats": repeats,
            "quick": args.quick,
            "statements_per_sample": n,
            "elapsed_s": round(elapsed, 2),
            "variants": [
                {
                    "key": v.key,
                    "label": v.label,
                    "median_ns": v.median,
                    "overhead_ns": None if v is bare else statistics.median(overheads(v.key)),
                    "spans_exported_per_statement": v.exported,
                    "samples_ns": v.samples,
                }
                for v in variants
            ],
            "ratios": {k: {"variants": [a, b], "paired_median": results[k]} for k, (_, a, b) in pairs.items()},
        }
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(doc, fh, indent=2)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
