"""Per-call cost of the business-metric helpers (one process, fresh registry), against the peer.

Run: ``python benchmarks/bench_business.py [--calls N]``. Prints the median of 5 timed runs of
``N`` calls per row, in microseconds per call. The peer is what a user writes by hand with
prometheus_client: ``Counter.labels(value).inc()`` (no validation of the value against a declared
set, so no cardinality protection) and, for distinct users, a plain ``set`` per window (exact, but
memory grows with the users). Ratios are ours / peer. This is a measurement, not a test: it always
exits 0.
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable
from decimal import Decimal
from time import perf_counter

from prometheus_client import CollectorRegistry, Counter, generate_latest

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
    peer = CollectorRegistry()
    peer_features = Counter("peer_feature_usage", "uses", ["feature"], registry=peer)
    peer_sales = Counter("peer_transactions", "count", ["transaction_type", "currency"], registry=peer)
    peer_revenue = Counter("peer_revenue", "cents", ["transaction_type", "currency"], registry=peer)
    peer_funnel = Counter("peer_funnel_step", "steps", ["funnel", "funnel_step"], registry=peer)
    windows: list[set[str]] = [set(), set(), set(), set()]

    def peer_record(i: int) -> None:
        peer_sales.labels("purchase", "USD").inc()
        peer_revenue.labels("purchase", "USD").inc(1999)

    def peer_seen(i: int) -> None:
        user = f"user-{i}"
        for window in windows:
            window.add(user)

    peers = {
        "Features.use (declared)": lambda i: peer_features.labels("search").inc(),
        "Funnel.step": lambda i: peer_funnel.labels("checkout", "cart").inc(),
        "Transactions.record(minor_units=)": peer_record,
        "ActiveUsers.seen (4 windows)": peer_seen,
    }
    print(f"{'variant':40s} {'ours':>8s} {'peer':>8s} {'ratio':>6s}")
    for name, fn in rows:
        ours = per_call(fn, calls)
        if name in peers:
            theirs = per_call(peers[name], calls)
            print(f"{name:40s} {ours:6.2f}µs {theirs:6.2f}µs {ours / theirs:6.2f}")
        else:
            print(f"{name:40s} {ours:6.2f}µs")
    print(
        f"(peer of ActiveUsers: exact sets hold {len(windows[0]):,} ids each; "
        "ours holds fixed-size HyperLogLog registers)"
    )
    start = perf_counter()
    for _ in range(20):
        generate_latest(registry)
    print(f"{'scrape (generate_latest) of these':40s} {(perf_counter() - start) / 20 * 1e3:6.2f} ms")


if __name__ == "__main__":
    main()
