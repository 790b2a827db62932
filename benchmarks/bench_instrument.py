"""Per-call cost of ``@bakhmach_obs.instrument`` against hand-rolled equivalents, in one process.

Run: ``python benchmarks/bench_instrument.py [--quick] [--repeats N] [--json PATH]``.

Every variant is timed in the same process and run; repeats are interleaved (each repeat times
every variant once, in a rotated order) so drift on a noisy machine hits all variants alike, and
the median over repeats is reported. Only ratios within one run mean anything (see
``/work/shared/design/PERFORMANCE.md``). Exporters do no I/O: spans go through a batch processor
to an exporter whose ``export`` returns SUCCESS and drops the batch.

This is a measurement, not a test: it always exits 0.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from time import perf_counter, perf_counter_ns
from typing import Any

from _common import DropExporter
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased, Sampler, TraceIdRatioBased
from opentelemetry.trace import SpanKind
from prometheus_client import CollectorRegistry, Counter, Histogram

import bakhmach_obs
from bakhmach_obs import conventions
from bakhmach_obs.tracing import BoundedBatchSpanProcessor

TARGET = 1.2
WARMUP = 1_000


# --- no-I/O exporter ---------------------------------------------------------------------------


# --- the function under test -------------------------------------------------------------------
def f(x: int) -> int:
    return x


def _plain(x: int) -> int:
    return x


# One decorated function per @instrument variant (distinct names: distinct metric series). They
# are decorated before any configure(); each configure() re-binds them lazily on the next call.
@bakhmach_obs.instrument(name="f_tracing_off")
def f_tracing_off(x: int) -> int:
    return x


@bakhmach_obs.instrument(name="f_ratio_10")
def f_ratio_10(x: int) -> int:
    return x


@bakhmach_obs.instrument(name="f_always_on")
def f_always_on(x: int) -> int:
    return x


# --- hand-rolled equivalents -------------------------------------------------------------------
_NAME = "f"
_MODULE = __name__
# The same two span attributes @instrument sets, so both sides build the same span.
_ATTRS = {
    conventions.ATTR_CODE_FUNCTION_NAME: f"{_MODULE}.{_NAME}",
    conventions.ATTR_CODE_NAMESPACE: _MODULE,
}
_INTERNAL = SpanKind.INTERNAL


def _hand_metrics() -> tuple[Any, Any, Any]:
    """Pre-bound ok/error counter children and histogram child in a fresh registry."""
    reg = CollectorRegistry()
    calls = Counter("hand_calls", "calls", ["function", "module", "result"], registry=reg)
    hist = Histogram(
        "hand_calls_duration_seconds", "duration", ["function", "module"],
        buckets=conventions.DURATION_BUCKETS, registry=reg,
    )  # fmt: skip
    return calls.labels(_NAME, _MODULE, "ok"), calls.labels(_NAME, _MODULE, "error"), hist.labels(_NAME, _MODULE)


def hand_metrics(func: Callable[..., Any]) -> Callable[..., Any]:
    """2: timer pair + pre-bound Counter child ``inc`` + pre-bound Histogram child ``observe``."""
    ok, err, hist = _hand_metrics()

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        t0 = perf_counter()
        try:
            result = func(*args, **kwargs)
        except BaseException:
            err.inc()
            hist.observe(perf_counter() - t0)
            raise
        ok.inc()
        hist.observe(perf_counter() - t0)
        return result

    return wrapper


def hand_span_cm(func: Callable[..., Any], tracer: trace.Tracer) -> Callable[..., Any]:
    """6/7: metrics as in 2, span via ``tracer.start_as_current_span``."""
    ok, err, hist = _hand_metrics()

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with tracer.start_as_current_span(_NAME, kind=_INTERNAL, attributes=_ATTRS):
            t0 = perf_counter()
            try:
                result = func(*args, **kwargs)
            except BaseException:
                err.inc()
                hist.observe(perf_counter() - t0)
                raise
            ok.inc()
            hist.observe(perf_counter() - t0)
            return result

    return wrapper


def hand_span_manual(func: Callable[..., Any], tracer: trace.Tracer) -> Callable[..., Any]:
    """6b/7b: metrics as in 2, span via ``start_span`` + manual context attach/detach + ``end``."""
    ok, err, hist = _hand_metrics()
    attach, detach, in_context = otel_context.attach, otel_context.detach, trace.set_span_in_context

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        span = tracer.start_span(_NAME, kind=_INTERNAL, attributes=_ATTRS)
        token = attach(in_context(span))
        t0 = perf_counter()
        try:
            result = func(*args, **kwargs)
        except BaseException:
            duration = perf_counter() - t0
            detach(token)
            span.end()
            err.inc()
            hist.observe(duration)
            raise
        duration = perf_counter() - t0
        detach(token)
        span.end()
        ok.inc()
        hist.observe(duration)
        return result

    return wrapper


def sdk_tracer(sampler: Sampler) -> tuple[TracerProvider, trace.Tracer, DropExporter]:
    """A plain SDK provider with the standard BatchSpanProcessor around the drop exporter."""
    exporter = DropExporter()
    provider = TracerProvider(sampler=sampler, shutdown_on_exit=False)
    provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider, provider.get_tracer("bench"), exporter


# --- @instrument configurations ----------------------------------------------------------------
_REGISTRIES: dict[str, CollectorRegistry] = {}


def configure_for(key: str, **settings: Any) -> tuple[Callable[[], None], list[DropExporter]]:
    """A setup step that (re)configures bakhmach_obs for one variant, as production would.

    Each configure() gets a fresh BoundedBatchSpanProcessor (configure() shuts the previous
    provider down, processors included); the exporters are kept to count delivered spans.
    """
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


# --- the harness -------------------------------------------------------------------------------
@dataclass
class Variant:
    key: str
    label: str
    fn: Callable[[int], Any]
    n: int
    setup: Callable[[], None] | None = None
    exporters: list[DropExporter] = field(default_factory=list)  # to check the sampled fraction
    samples: list[float] = field(default_factory=list)
    calls: int = 0

    @property
    def exported(self) -> float | None:
        """Spans delivered to the exporter per call (sanity check of the sampler), or None."""
        if not self.exporters:
            return None
        return sum(e.spans for e in self.exporters) / self.calls

    @property
    def median(self) -> float:
        return statistics.median(self.samples)


def _loop(fn: Callable[[int], Any], n: int) -> int:
    rng = range(n)
    t0 = perf_counter_ns()
    for _ in rng:
        fn(1)
    return perf_counter_ns() - t0


def _empty_loop(n: int) -> int:
    rng = range(n)
    t0 = perf_counter_ns()
    for _ in rng:
        pass
    return perf_counter_ns() - t0


def time_variant(v: Variant) -> float:
    if v.setup is not None:
        v.setup()
    v.calls += WARMUP + v.n
    for _ in range(WARMUP):  # also performs the lazy re-bind after configure()
        v.fn(1)
    gc.collect()
    enabled = gc.isenabled()
    gc.disable()  # as timeit does
    try:
        elapsed = _loop(v.fn, v.n)
    finally:
        if enabled:
            gc.enable()
    return elapsed / v.n


def build_variants(scale: float) -> tuple[list[Variant], list[TracerProvider]]:
    big, small = max(1000, int(100_000 * scale)), max(1000, int(20_000 * scale))
    # One SDK provider (and exporter) per hand-rolled span variant, so each can be checked.
    sdk = {k: sdk_tracer(s) for k, s in (("6", ParentBased(TraceIdRatioBased(0.1))),
                                          ("6b", ParentBased(TraceIdRatioBased(0.1))),
                                          ("7", ALWAYS_ON), ("7b", ALWAYS_ON))}  # fmt: skip
    cfg_off, _ = configure_for("off", tracing_enabled=False)
    cfg_10, exp_10 = configure_for("ratio", traces_sampler="parentbased_traceidratio", traces_sampler_arg=0.1)
    cfg_on, exp_on = configure_for("on", traces_sampler="always_on")
    variants = [
        Variant("1", "bare f(1)", f, big),
        Variant("2", "hand-rolled ideal (timer + inc + observe)", hand_metrics(_plain), big),
        Variant("3", "@instrument, tracing off", f_tracing_off, big, cfg_off),
        Variant("4", "@instrument, parentbased_traceidratio 0.1", f_ratio_10, small, cfg_10, exp_10),
        Variant("5", "@instrument, always_on", f_always_on, small, cfg_on, exp_on),
        Variant("6", "hand-rolled + SDK span 10%, start_as_current_span",
                hand_span_cm(_plain, sdk["6"][1]), small, None, [sdk["6"][2]]),
        Variant("6b", "hand-rolled + SDK span 10%, manual attach/detach",
                hand_span_manual(_plain, sdk["6b"][1]), small, None, [sdk["6b"][2]]),
        Variant("7", "hand-rolled + SDK span always_on, start_as_current_span",
                hand_span_cm(_plain, sdk["7"][1]), small, None, [sdk["7"][2]]),
        Variant("7b", "hand-rolled + SDK span always_on, manual attach/detach",
                hand_span_manual(_plain, sdk["7b"][1]), small, None, [sdk["7b"][2]]),
    ]  # fmt: skip
    return variants, [p for p, _, _ in sdk.values()]


def _version(dist: str) -> str:
    try:
        return version(dist)
    except PackageNotFoundError:
        return "not installed"


def versions() -> dict[str, str]:
    return {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "prometheus_client": _version("prometheus_client"),
        "opentelemetry-api": _version("opentelemetry-api"),
        "opentelemetry-sdk": _version("opentelemetry-sdk"),
        "bakhmach_obs": _version("bakhmach_obs")
        if _version("bakhmach_obs") != "not installed"
        else _version("bakhmach-obs"),
    }


def _verdict(ratio: float) -> str:
    return f"PASS (<= {TARGET})" if ratio <= TARGET else f"MISS (> {TARGET})"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 1/10 of the loops, 3 repeats")
    parser.add_argument("--repeats", type=int, default=None, help="repeats (default 11, --quick 3)")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH")
    args = parser.parse_args(argv)
    repeats = args.repeats or (3 if args.quick else 11)
    scale = 0.1 if args.quick else 1.0

    vers = versions()
    print("versions: " + ", ".join(f"{k} {v}" for k, v in vers.items()))
    variants, providers = build_variants(scale)
    print(f"repeats: {repeats}, loops: " + ", ".join(f"{v.key}={v.n}" for v in variants) + f", warm-up {WARMUP}")

    started = time.monotonic()
    empty: list[float] = []
    for r in range(repeats):
        order = variants[r % len(variants) :] + variants[: r % len(variants)]  # rotate: no fixed position
        for v in order:
            v.samples.append(time_variant(v))
        empty.append(_empty_loop(variants[0].n) / variants[0].n)
        print(f"  repeat {r + 1}/{repeats} done ({time.monotonic() - started:.1f} s)", file=sys.stderr)
    elapsed = time.monotonic() - started

    bakhmach_obs.shutdown(timeout=2.0)  # flushes the last @instrument processor
    for p in providers:
        p.shutdown()  # flushes the BatchSpanProcessors

    by = {v.key: v for v in variants}
    bare = by["1"].median
    loop = statistics.median(empty)
    print()
    print(f"{'#':<3} {'variant':<58} {'ns/call':>9} {'min':>9} {'max':>9} {'x bare':>8} {'spans/call':>11}")
    print("-" * 112)
    for v in variants:
        spans = "" if v.exported is None else f"{v.exported:.3f}"
        print(
            f"{v.key:<3} {v.label:<58} {v.median:>9,.0f} {min(v.samples):>9,.0f} {max(v.samples):>9,.0f}"
            f" {v.median / bare:>8.1f} {spans:>11}"
        )
    print(f"{'':<3} {'(empty for-loop, included in every row)':<58} {loop:>9,.0f}")
    print()

    def ratio(a: str, b: str) -> float:
        """Median of the per-repeat ratios: each pair was timed in the same repeat (paired)."""
        return statistics.median(x / y for x, y in zip(by[a].samples, by[b].samples, strict=True))

    def ratio_of_medians(a: str, b: str) -> float:
        return by[a].median / by[b].median

    pairs = {
        "a_tracing_off_vs_ideal": ("(a) @instrument tracing off / hand-rolled ideal", "3", "2"),
        "b_ratio10_vs_hand_cm": ("(b) @instrument 10% / hand-rolled + span, cm", "4", "6"),
        "b_ratio10_vs_hand_manual": ("(b) @instrument 10% / hand-rolled + span, manual", "4", "6b"),
        "always_on_vs_hand_cm": ("    @instrument always_on / hand-rolled + span, cm", "5", "7"),
        "always_on_vs_hand_manual": ("    @instrument always_on / hand-rolled + span, manual", "5", "7b"),
    }
    results = {k: (ratio(a, b), ratio_of_medians(a, b)) for k, (_, a, b) in pairs.items()}
    print(f"Ratios: median of per-repeat (paired) ratios; in brackets, ratio of the medians. Target <= {TARGET}.")
    for k, (text, a, b) in pairs.items():
        paired, of_medians = results[k]
        verdict = _verdict(paired) if k.startswith(("a_", "b_")) else "(informational)"
        if k == "always_on_vs_hand_cm":
            print("always-on, no target:")
        print(f"  {text:<56} [{a:>2} / {b:<2}]  {paired:5.2f}  ({of_medians:4.2f})  {verdict}")
    print(f"\ntimed section: {elapsed:.1f} s. Not a test: exit status is 0 whatever the ratios.")

    if args.json:
        doc = {
            "versions": vers,
            "repeats": repeats,
            "quick": args.quick,
            "warmup": WARMUP,
            "elapsed_s": round(elapsed, 2),
            "empty_loop_ns": loop,
            "variants": [
                {
                    "key": v.key,
                    "label": v.label,
                    "loops": v.n,
                    "median_ns": v.median,
                    "ratio_vs_bare": v.median / bare,
                    "spans_exported_per_call": v.exported,
                    "samples_ns": v.samples,
                }
                for v in variants
            ],
            "ratios": {
                k: {
                    "variants": [a, b],
                    "paired_median": results[k][0],
                    "ratio_of_medians": results[k][1],
                    "target": TARGET if k.startswith(("a_", "b_")) else None,
                }
                for k, (_, a, b) in pairs.items()
            },
        }
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(doc, fh, indent=2)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
