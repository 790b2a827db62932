"""Per-call cost of the business-metric helpers (one process, fresh registry).

Run: ``python benchmarks/bench_business.py [--calls N]``. Prints the median of 5 timed runs of
``N`` calls per row, in microseconds per call. This is a measurement, not a test: it always exits 0.
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable
from decimal import Decimal
from time import perf_counter

from prometheus_client import CollectorRegistry, generate_latest

from bakhmach_obs import business


def per_call(fn: Callable[[int], None], calls: int) -> float:
    runs = []
    for _ in range(5):
        start = perf_counter()
        for i in range(calls):
            fn(i)
        runs.append((perf_counter() - start) / calls * 1e6)
    return statistics.median(runs)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=100_000)
    calls = parser.parse_args().calls
    registry = CollectorRegistry()
    features = business.Features(["search", "export"], registry=registry)
    sales = business.Transactions(types=["purchase"], currencies=["USD"], registry=registry)
    funnel = business.Funnel("checkout", steps=["cart", "payment"], registry=registry)
    active = business.ActiveUsers(registry=registry)
    price = Decimal("19.99")
    rows: list[tuple[str, Callable[[int], None]]] = [
        ("Features.use (declared)", lambda i: features.use("search")),
        ("Funnel.step", lambda i: funnel.step("cart")),
        ("Transactions.record(minor_units=)", lambda i: sales.record("purchase", "USD", minor_units=1999)),
        ("Transactions.record(amount=Decimal)", lambda i: sales.record("purchase", "USD", amount=price)),
        ("Transactions.record(amount=str)", lambda i: sales.record("purchase", "USD", amount="19.99")),
        ("ActiveUsers.seen (4 windows)", lambda i: active.seen(f"user-{i}")),
    ]
    for name, fn in rows:
        print(f"{name:40s} {per_call(fn, calls):6.2f} µs/call")
    start = perf_counter()
    for _ in range(20):
        generate_latest(registry)
    print(f"{'scrape (generate_latest) of these':40s} {(perf_counter() - start) / 20 * 1e3:6.2f} ms")


if __name__ == "__main__":
    main()
