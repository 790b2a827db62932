"""Per-record cost of logging through bakhmach_obs's JSON formatter against its peers.

Run: ``python benchmarks/bench_logs.py`` (``--quick`` for a smoke run). Not a test: prints ratios.

Rows (all in one process, interleaved repeats, median ns per call):

1. stdlib text ``logging.Formatter`` — ``logger.info(msg, extra={8 fields})`` to a null stream;
2. python-json-logger's default ``JsonFormatter`` — the same call;
3. bakhmach_obs ``JsonFormatter`` — the same call, with bound context, a correlation id, trace
   correlation inside a sampled span and the redaction policy on every field;
4. ``logger.debug`` below the threshold, plain logging (no SDK);
5. ``logger.debug`` below the threshold with ``bakhmach_obs.configure(log_format="json")`` in force.

Targets: 3 / 2 <= 0.6 and 5 / 4 <= 2.
"""

from __future__ import annotations

import argparse
import io
import logging
import statistics
import sys
import time

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.sampling import ALWAYS_ON
from pythonjsonlogger.json import JsonFormatter as PJLJsonFormatter

import bakhmach_obs
from bakhmach_obs.logs import JsonFormatter

EXTRA = {
    "user_id": "user-789",
    "action": "payment_processing",
    "order_id": "ord-12345",
    "amount_cents": 2450,
    "currency": "EUR",
    "items": 3,
    "duration_ms": 245.7,
    "retry": False,
}


class NullStream(io.TextIOBase):
    def write(self, s: str) -> int:
        return len(s)


def make_logger(name: str, formatter: logging.Formatter | None) -> logging.Logger:
    logger = logging.getLogger(name)
    logger.handlers[:] = []
    logger.propagate = False
    logger.setLevel(logging.INFO)
    if formatter is not None:
        handler = logging.StreamHandler(NullStream())
        handler.setFormatter(formatter)
        logger.addHandler(handler)
    return logger


def time_loop(fn, loops: int) -> float:
    start = time.perf_counter_ns()
    for _ in range(loops):
        fn()
    return (time.perf_counter_ns() - start) / loops


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    repeats, loops, debug_loops = (3, 2000, 20000) if args.quick else (9, 10000, 200000)

    bakhmach_obs.configure(service_name="bench", log_format="none", tracing_enabled=False)
    text = make_logger("bench.text", logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    pjl = make_logger("bench.pjl", PJLJsonFormatter())
    ours = make_logger("bench.ours", JsonFormatter())
    plain_debug = make_logger("bench.plain_debug", None)
    sdk_debug = make_logger("bench.sdk_debug", JsonFormatter())
    tracer = TracerProvider(sampler=ALWAYS_ON).get_tracer("bench")

    def ours_call() -> None:
        ours.info("order %s paid", "ord-12345", extra=EXTRA)

    rows = {
        "1 stdlib text Formatter": lambda: text.info("order %s paid", "ord-12345", extra=EXTRA),
        "2 python-json-logger JsonFormatter": lambda: pjl.info("order %s paid", "ord-12345", extra=EXTRA),
        "3 bakhmach_obs JsonFormatter (context, span, redaction)": ours_call,
    }
    debug_rows = {
        "4 logger.debug below threshold, plain": lambda: plain_debug.debug("x %s", 1),
        "5 logger.debug below threshold, SDK configured": lambda: sdk_debug.debug("x %s", 1),
    }
    results: dict[str, list[float]] = {name: [] for name in [*rows, *debug_rows]}
    with (
        bakhmach_obs.correlation_scope("req-12345"),
        bakhmach_obs.log_context(tenant="acme", region="eu"),
        tracer.start_as_current_span("request"),
    ):
        for _ in range(repeats):
            for name, fn in rows.items():
                time_loop(fn, loops // 10)
                results[name].append(time_loop(fn, loops))
            for name, fn in debug_rows.items():
                results[name].append(time_loop(fn, debug_loops))

    med = {name: statistics.median(values) for name, values in results.items()}
    print(f"python {sys.version.split()[0]}; repeats {repeats}, loops {loops} (debug {debug_loops})\n")
    print(f"{'variant':60} {'ns/call':>10}")
    for name, value in med.items():
        print(f"{name:60} {value:10,.0f}")
    names = list(med)
    a = [o / p for o, p in zip(results[names[2]], results[names[1]], strict=True)]
    b = [s / p for s, p in zip(results[names[4]], results[names[3]], strict=True)]
    ra, rb = statistics.median(a), statistics.median(b)
    print("\nRatios (median of paired per-repeat ratios):")
    print(f"  ours / python-json-logger default   {ra:5.2f}  target <= 0.6  {'PASS' if ra <= 0.6 else 'MISS'}")
    print(f"  ours / stdlib text                  {med[names[2]] / med[names[0]]:5.2f}  (informational)")
    print(f"  disabled debug, SDK / plain         {rb:5.2f}  target <= 2    {'PASS' if rb <= 2 else 'MISS'}")
    print("\nNot a test: exit status is 0 whatever the ratios.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
