"""Business metrics: exact money, declared label sets, distinct users over sliding windows."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap
import time
import tracemalloc
from decimal import Decimal

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from bakhmach_obs import _runtime, business
from bakhmach_obs import conventions as c
from bakhmach_obs.errors import ConfigurationError
from bakhmach_obs.testing import capture
from tests.conftest import need_binary


def series(registry: CollectorRegistry, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {tuple(sorted(s.labels.items())): s.value for m in registry.collect() for s in m.samples if s.name == name}


def errors(registry: CollectorRegistry) -> float:
    return registry.get_sample_value(c.TELEMETRY_ERRORS.name, {"component": "business"}) or 0.0


# --- money ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("amount", "exponent", "expected"),
    [
        (Decimal("19.99"), 2, 1999),
        ("19.99", 2, 1999),
        (" 7 ", 2, 700),
        (500, 0, 500),
        ("1.250", 3, 1250),
        (0.1 + 0.2, 2, None),  # 0.30000000000000004: not a whole number of cents
        (19.99, 2, 1999),  # repr is "19.99": exact
        (1e-7, 2, None),
        ("0.001", 2, None),
        ("1.5", 0, None),
        (Decimal("-1"), 2, None),
        ("NaN", 2, None),
        (math.inf, 2, None),
        ("twelve", 2, None),
        (True, 2, None),
        (None, 2, None),
        (Decimal("123456789012.34"), 2, 12345678901234),
        ("90071992547409.92", 2, 2**53),  # the largest amount a float64 counter adds exactly
        ("90071992547409.93", 2, None),
        ("1e300", 2, None),  # would jump the counter beyond any exact value for good
        ("1e99999", 0, None),  # and this one costs no big-number arithmetic (see below)
    ],
)
def test_to_minor_units_is_exact_or_nothing(amount, exponent, expected):
    assert business.to_minor_units(amount, exponent) == expected


def test_huge_amounts_are_rejected_cheaply():
    start = time.perf_counter()
    for _ in range(100):
        assert business.to_minor_units("9e99999", 2) is None
    assert time.perf_counter() - start < 0.05  # a user-typed amount cannot stall the request


def test_currency_table_has_iso_exponents():
    e = business.CURRENCY_EXPONENTS
    assert (e["USD"], e["EUR"], e["UAH"], e["JPY"], e["KRW"], e["KWD"], e["BHD"], e["CLF"]) == (2, 2, 2, 0, 0, 3, 3, 4)


def test_transactions_count_and_add_exact_minor_units(registry):
    sales = business.Transactions(types=["purchase", "refund"], currencies=["USD", "JPY", "KWD"], registry=registry)
    for _ in range(1000):
        sales.record("purchase", "USD", amount=Decimal("0.10"))  # 1000 x 10 cents: float sums would drift
    sales.record("purchase", "USD", amount=19.99)
    sales.record("purchase", "JPY", minor_units=500)
    sales.record("refund", "KWD", amount="1.005")
    sales.record("purchase", "USD")  # counted, no amount
    count = series(registry, c.BUSINESS_TRANSACTIONS.name)
    revenue = series(registry, c.BUSINESS_REVENUE.name)
    key = (("currency", "USD"), ("transaction_type", "purchase"))
    assert count[key] == 1002
    assert revenue[key] == 100_00 + 1999
    assert revenue[(("currency", "JPY"), ("transaction_type", "purchase"))] == 500
    assert revenue[(("currency", "KWD"), ("transaction_type", "refund"))] == 1005
    assert errors(registry) == 0
    # every declared combination (and other) exists from the start, nothing else
    assert len(count) == 3 * 4 and len(revenue) == 3 * 4


def test_transactions_bad_input_is_reported_never_raised_and_never_a_new_series(registry):
    with capture(registry=registry):
        sales = business.Transactions(types=["purchase"], currencies=["USD"], registry=registry)
        before = set(series(registry, c.BUSINESS_TRANSACTIONS.name))
        sales.record("purchase", "USD", amount="0.001")  # a tenth of a cent: counted, revenue untouched
        sales.record("purchase", "USD", amount=-5)
        sales.record("purchase", "USD", amount="1", minor_units=100)  # both: ambiguous
        sales.record("purchase", "USD", minor_units=2.5)  # type: ignore[arg-type]
        sales.record("purchase", "USD", minor_units=2**53 + 1)  # beyond exact float64 counting
        sales.record("user-typed-type-123", "USD", amount="2.00")  # undeclared type: other, amount kept
        sales.record("purchase", "XBT", amount="3.00")  # undeclared currency: other, amount dropped
        sales.record(None, object(), amount=object())  # type: ignore[arg-type]
        assert set(series(registry, c.BUSINESS_TRANSACTIONS.name)) == before
        revenue = series(registry, c.BUSINESS_REVENUE.name)
        count = series(registry, c.BUSINESS_TRANSACTIONS.name)
        assert revenue[(("currency", "USD"), ("transaction_type", "purchase"))] == 0
        assert count[(("currency", "USD"), ("transaction_type", "purchase"))] == 5
        assert revenue[(("currency", "USD"), ("transaction_type", "other"))] == 200
        assert count[(("currency", "other"), ("transaction_type", "purchase"))] == 1
        assert count[(("currency", "other"), ("transaction_type", "other"))] == 1
        assert sum(revenue.values()) == 200
        assert errors(registry) == 9  # one per problem: the last call has two


@pytest.mark.parametrize(
    ("kwargs", "setting"),
    [
        ({"types": "purchase", "currencies": ["USD"]}, "transaction types"),
        ({"types": ["purchase", "purchase"], "currencies": ["USD"]}, "transaction types"),
        ({"types": ["other"], "currencies": ["USD"]}, "transaction types"),
        ({"types": [], "currencies": ["USD"]}, "transaction types"),
        ({"types": ["a b"], "currencies": ["USD"]}, "transaction types"),
        ({"types": ["purchase"], "currencies": ["usd"]}, "currencies"),
        ({"types": ["purchase"], "currencies": ["XYZ"]}, "currencies"),
        ({"types": ["purchase"], "currencies": {"XTS": 7}}, "currencies"),
        ({"types": ["purchase"], "currencies": "USD"}, "currencies"),
        ({"types": ["purchase"], "currencies": {"JPY": 2}}, "currencies"),  # the dashboards divide JPY by 1
    ],
)
def test_invalid_declarations_fail_loudly(kwargs, setting):
    with pytest.raises(ConfigurationError) as info:
        business.Transactions(**kwargs, registry=CollectorRegistry())
    assert info.value.setting == setting


# --- declared sets ------------------------------------------------------------------------------------
def test_undeclared_feature_does_not_create_a_series(registry, monkeypatch):
    monkeypatch.setattr(_runtime._rate_limited, "_last", {})  # forget warnings earlier tests logged
    with capture(registry=registry) as cap:
        features = business.Features(["search", "export"], registry=registry)
        features.use("search")
        exposition_before = set(series(registry, c.BUSINESS_FEATURE_USAGE.name))
        for i in range(500):
            features.use(f"attacker-supplied-{i}")
        features.use(None)  # type: ignore[arg-type]
        assert set(series(registry, c.BUSINESS_FEATURE_USAGE.name)) == exposition_before
        assert exposition_before == {(("feature", "search"),), (("feature", "export"),), (("feature", "other"),)}
        assert registry.get_sample_value("business_feature_usage_total", {"feature": "other"}) == 501
        assert "attacker-supplied" not in generate_latest(registry).decode()
        assert errors(registry) == 501
        warnings = [r for r in cap.records if "business" in r.getMessage()]
        assert len(warnings) == 1  # rate-limited: one warning a minute for 501 undeclared values
        assert "not declared" in warnings[0].getMessage()


def test_funnel_steps_and_other(registry):
    checkout = business.Funnel("checkout", steps=["cart", "shipping", "payment", "confirmed"], registry=registry)
    for step, n in (("cart", 100), ("shipping", 60), ("payment", 40), ("confirmed", 35), ("typo", 2)):
        for _ in range(n):
            checkout.step(step)
    got = {dict(k)["funnel_step"]: v for k, v in series(registry, c.BUSINESS_FUNNEL_STEP.name).items()}
    assert got == {"cart": 100, "shipping": 60, "payment": 40, "confirmed": 35, "other": 2}
    with pytest.raises(ConfigurationError):
        business.Funnel("checkout", steps=["cart", "other"])


def test_segment_gauges_validate_values(registry):
    segments = business.Segments(["free", "pro"], registry=registry)
    segments.set_churn_ratio("pro", 0.021)
    segments.set_churn_ratio("pro", 1.5)  # out of range: kept at the last good value
    segments.set_churn_ratio("pro", float("nan"))
    segments.set_engagement_score("free", 63.5)
    segments.set_engagement_score("enterprise", 80)  # undeclared: other
    segments.set_engagement_score("free", "high")  # type: ignore[arg-type]
    segments.set_engagement_score("free", float("inf"))
    segments.set_engagement_score("free", -math.inf)
    assert registry.get_sample_value("business_churn_ratio", {"segment": "pro"}) == 0.021
    assert registry.get_sample_value("business_user_engagement_score", {"segment": "free"}) == 63.5
    assert registry.get_sample_value("business_user_engagement_score", {"segment": "other"}) == 80
    assert len(series(registry, c.BUSINESS_CHURN_RATIO.name)) == 3


def test_follows_configure_and_does_nothing_when_disabled():
    features = business.Features(["search"])  # no registry: the configured one, followed
    with capture() as first:
        features.use("search")
    with capture() as second:
        features.use("search")
        features.use("search")
    assert first.sample("business_feature_usage_total", feature="search") == 1
    assert second.sample("business_feature_usage_total", feature="search") == 2
    with capture(metrics_enabled=False) as off:
        features.use("search")
        active = business.ActiveUsers()
        active.seen("u1")
    assert off.sample("business_feature_usage_total", feature="search") is None
    assert off.sample("business_active_users", window="1m") is None


def test_exposition_passes_promtool(registry, tmp_path):
    promtool = need_binary("promtool")
    business.Transactions(types=["purchase"], currencies=["UAH"], registry=registry).record(
        "purchase", "UAH", amount="10"
    )
    business.Features(["search"], registry=registry).use("search")
    business.Funnel("signup", steps=["start", "done"], registry=registry).step("start")
    business.Segments(["pro"], registry=registry).set_churn_ratio("pro", 0.1)
    active = business.ActiveUsers(registry=registry)  # trackers are weakly held: keep it
    active.seen("u")
    body = generate_latest(registry)
    for spec in (c.BUSINESS_TRANSACTIONS, c.BUSINESS_REVENUE, c.BUSINESS_FEATURE_USAGE, c.BUSINESS_FUNNEL_STEP):
        assert f"# TYPE {spec.name} counter" in body.decode()
    assert "# TYPE business_active_users gauge" in body.decode()
    result = subprocess.run([promtool, "check", "metrics"], input=body, capture_output=True, timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr


# --- distinct users ---------------------------------------------------------------------------------------
class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


DAY = 86400.0
T_END = 100 * DAY  # a multiple of every bucket width (5 s, 25 s, 300 s, 7200 s): windows end exactly here


def feed(active: business.ActiveUsers, clock: Clock, first: int, count: int, start: float, end: float) -> None:
    """Users ``first..first+count-1``, each seen once, at 50 instants evenly spread over ``[start, end)``.

    (Instants rather than one time per user: a simulated day then costs 50 bucket rotations, not 17,000.)
    """
    instants = 50
    for k in range(count):
        clock.now = start + (k * instants // count) * (end - start) / instants
        active.seen(f"user-{first + k}")


def test_sliding_windows_within_stated_error_on_100k_users_each(registry):
    """100,000 distinct users in the last minute, 200,000 in 5 min, 300,000 in the hour, 400,000 in the day."""
    clock = Clock(T_END - 3 * DAY)
    active = business.ActiveUsers(registry=registry, clock=clock)
    n = 100_000
    feed(active, clock, 10 * n, n // 2, T_END - 3 * DAY, T_END - 2 * DAY)  # left every window
    feed(active, clock, 3 * n, n, T_END - DAY, T_END - 3600)
    feed(active, clock, 2 * n, n, T_END - 3600, T_END - 300)
    feed(active, clock, 1 * n, n, T_END - 300, T_END - 60)
    feed(active, clock, 0, n, T_END - 60, T_END - 30)
    feed(active, clock, 0, n, T_END - 30, T_END)  # the same 100,000 again: distinct, not visits
    clock.now = T_END
    truth = {"1m": n, "5m": 2 * n, "1h": 3 * n, "1d": 4 * n}
    bound = 3 * active.relative_error  # 99.7 % of estimates; the estimates are deterministic
    assert active.relative_error == pytest.approx(0.01625)
    for window, exact in truth.items():
        gauge = registry.get_sample_value("business_active_users", {"window": window})
        assert abs(gauge / exact - 1) < bound, (window, gauge, exact)
    # 65 s later the last minute's users have left 1m; 5m now starts at T_END - 250 s (10 buckets of 25 s
    # back from the one in progress), so it holds them and the part of the next layer seen since then
    clock.now = T_END + 65
    assert registry.get_sample_value("business_active_users", {"window": "1m"}) == 0
    exact = n + sum(1 for k in range(n) if T_END - 300 + (k * 50 // n) * 240 / 50 >= T_END - 250)
    assert abs(registry.get_sample_value("business_active_users", {"window": "5m"}) / exact - 1) < bound
    clock.now = T_END + 2 * DAY
    assert all(registry.get_sample_value("business_active_users", {"window": w}) == 0 for w in truth)


def test_error_matches_the_stated_standard_error():
    """Root-mean-square error over 30 independent sets of 20,000 users is close to 1.04/sqrt(m)."""
    errors_ = []
    for trial in range(30):
        sketch = business.HyperLogLog(12)
        for i in range(20_000):
            sketch.add(f"trial-{trial}-user-{i}")
        errors_.append(sketch.estimate() / 20_000 - 1)
    rms = math.sqrt(sum(e * e for e in errors_) / len(errors_))
    assert rms < 1.5 * sketch.relative_error
    assert max(abs(e) for e in errors_) < 3.5 * sketch.relative_error
    assert abs(sum(errors_) / len(errors_)) < 0.6 * sketch.relative_error  # no bias


@pytest.mark.parametrize("n", [0, 1, 7, 100, 2_000])
def test_small_counts_are_exact_or_nearly(n):
    sketch = business.HyperLogLog(12)
    for i in range(n):
        sketch.add(f"u{i}")
        sketch.add(f"u{i}")
    assert round(sketch.estimate()) == pytest.approx(n, rel=0.02, abs=0)


def test_memory_is_bounded_whatever_the_number_of_users(registry):
    clock = Clock(T_END - DAY)
    active = business.ActiveUsers(registry=registry, clock=clock)
    limit = len(c.ACTIVE_USER_WINDOWS) * (12 + 2) * 4096
    tracemalloc.start()
    try:
        feed(active, clock, 0, 90_000, T_END - DAY, T_END - 65)
        feed(active, clock, 90_000, 10_000, T_END - 65, T_END)  # now every bucket of every window holds users
        after_first, _ = tracemalloc.get_traced_memory()
        assert active.register_bytes() <= limit
        feed(active, clock, 100_000, 90_000, T_END, T_END + DAY - 65)
        feed(active, clock, 190_000, 10_000, T_END + DAY - 65, T_END + DAY)
        after_second, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert active.register_bytes() <= limit
    assert after_first <= limit + 64 * 1024
    assert after_second - after_first < 16 * 1024  # another 100,000 users cost nothing more
    assert peak <= limit + 128 * 1024


def test_many_request_threads_and_concurrent_scrapes(registry):
    """seen() from 8 threads while another thread scrapes: no error, nothing lost beyond the stated error."""
    import threading

    active = business.ActiveUsers(registry=registry)
    stop = threading.Event()
    scraped: list[float] = []

    def scrape() -> None:
        while not stop.is_set():
            scraped.append(registry.get_sample_value("business_active_users", {"window": "1h"}) or 0.0)

    def requests(worker: int) -> None:
        for i in range(5000):
            active.seen(f"w{worker}-u{i}")

    scraper = threading.Thread(target=scrape)
    scraper.start()
    workers = [threading.Thread(target=requests, args=(w,)) for w in range(8)]
    for t in workers:
        t.start()
    for t in workers:
        t.join(60)
    stop.set()
    scraper.join(10)
    assert len(scraped) > 1 and all(0 <= v <= 40_000 * (1 + 3 * active.relative_error) for v in scraped)
    for window in c.ACTIVE_USER_WINDOWS:
        estimate = registry.get_sample_value("business_active_users", {"window": window})
        assert abs(estimate / 40_000 - 1) < 3 * active.relative_error, window
    assert errors(registry) == 0


def test_user_ids_never_reach_the_exposition_or_the_tracker(registry):
    active = business.ActiveUsers(registry=registry)
    active.seen("alice@example.com")
    active.seen(b"bob")
    active.seen(42)
    assert "alice" not in generate_latest(registry).decode()
    assert registry.get_sample_value("business_active_users", {"window": "1m"}) == 3
    held = b"".join(bytes(w.merged) + b"".join(r or b"" for r in w.rings) for w in active.windows.values())
    assert b"alice" not in held and set(held) <= set(range(0, 54))


def test_several_trackers_on_one_registry_count_their_union(registry):
    web = business.ActiveUsers(registry=registry)
    api = business.ActiveUsers(registry=registry, windows=["1m"])
    for i in range(1000):
        web.seen(f"u{i}")
        api.seen(f"u{i + 500}")  # 500 shared
    assert registry.get_sample_value("business_active_users", {"window": "1m"}) == pytest.approx(1500, rel=0.03)
    assert registry.get_sample_value("business_active_users", {"window": "1d"}) == pytest.approx(1000, rel=0.03)
    with pytest.raises(ConfigurationError):
        business.ActiveUsers(registry=registry, precision=10)
    with pytest.raises(ConfigurationError):
        business.ActiveUsers(windows=["2m"])


WORKER = textwrap.dedent("""
    import sys
    from bakhmach_obs import business, configure
    configure(service_name="w", log_format="none")
    import time
    active = business.ActiveUsers(refresh=0.2)
    first, count = int(sys.argv[1]), int(sys.argv[2])
    for i in range(first, first + count):
        active.seen(f"user-{i}")
    time.sleep(0.25)
    active.seen(f"user-{first}")  # a later request: the estimate is refreshed
""")


def test_multiprocess_workers_write_livemax_estimates(tmp_path):
    """Real worker processes: the aggregate is the largest worker's distinct users (a lower bound)."""
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    runs = [(0, 3000), (2000, 6000)]  # 8,000 distinct users in all; the busier worker saw 6,000
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(a), str(b)], env=env) for a, b in runs]
    assert [p.wait(timeout=60) for p in procs] == [0, 0]
    values = {}
    for family in MultiProcessCollector(CollectorRegistry(), path=str(tmp_path)).collect():
        for s in family.samples:
            if s.name == "business_active_users":
                values[s.labels["window"]] = s.value
    # livemax files of exited workers are kept until mark_process_dead: both are still counted here
    assert set(values) == set(c.ACTIVE_USER_WINDOWS)
    for window, value in values.items():
        assert value == pytest.approx(6000, rel=0.05), window
