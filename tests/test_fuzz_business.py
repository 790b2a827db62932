"""Fuzzing the business metrics with whatever user input reaches them.

Feature names, funnel steps, transaction types, currencies, amounts and user ids of any type: the
hot-path calls never raise, never add a series (every child is created at declaration, so the set
of series is the same before and after), count exactly what a model of the documented rules says,
and keep revenue an exact integer sum of minor units.
"""

from __future__ import annotations

import contextlib
import math
from collections import Counter
from collections.abc import Iterator
from decimal import Decimal
from fractions import Fraction
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from bakhmach_obs import business
from bakhmach_obs import conventions as c
from bakhmach_obs.testing import capture

PROPERTY = settings(max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
OTHER = c.BUSINESS_OTHER
FEATURES = ("search", "export", "a.b:c/d-e_f")
STEPS = ("cart", "payment", "confirmed")
TYPES = ("purchase", "refund")
CURRENCIES = {"USD": 2, "JPY": 0, "KWD": 3, "CLF": 4}


class BadRepr:
    """User input whose repr, str, hash and equality all raise (while armed: Hypothesis reprs examples too)."""

    armed = False

    def __repr__(self) -> str:
        if BadRepr.armed:
            raise RuntimeError("repr")
        return "BadRepr()"

    __str__ = __repr__

    def __hash__(self) -> int:
        if BadRepr.armed:
            raise RuntimeError("hash")
        return 0

    def __eq__(self, other: object) -> bool:
        if BadRepr.armed:
            raise RuntimeError("eq")
        return self is other


@contextlib.contextmanager
def armed() -> Iterator[None]:
    BadRepr.armed = True
    try:
        yield
    finally:
        BadRepr.armed = False


class LookAlike(str):
    """A str subclass equal to a declared value: still not a declared value (type is checked)."""


ANY = st.one_of(
    st.none(), st.booleans(), st.integers(), st.just(10**400), st.just(-(10**400)), st.floats(),
    st.decimals(allow_nan=True, allow_infinity=True), st.just(Decimal("sNaN")), st.just(Decimal("1e999999")),
    st.text(max_size=20), st.binary(max_size=8), st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=2), st.none(), max_size=1),
    st.tuples(st.integers()), st.fractions(), st.complex_numbers(), st.builds(BadRepr), st.builds(object),
    st.sampled_from([LookAlike(v) for v in (*FEATURES, *STEPS, *TYPES, *CURRENCIES)]), st.just("x" * 10_000),
)  # fmt: skip


def _series(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for m in registry.collect()
        for s in m.samples
        if s.name.startswith("business_") and not s.name.endswith("_created")
    }


def _label_values(registry: CollectorRegistry, label: str) -> set[str]:
    return {dict(labels)[label] for (_, labels) in _series(registry) if label in dict(labels)}


def _declared(value: Any, names: Any) -> str:
    return value if type(value) is str and value in names else OTHER


# --- features and funnels -----------------------------------------------------------------------------


@PROPERTY
@given(st.lists(st.tuples(st.sampled_from(FEATURES) | ANY, st.integers(-3, 1000) | ANY), max_size=30))
def test_features_count_declared_names_or_other_and_never_add_a_series(calls):
    registry = CollectorRegistry()
    features = business.Features(FEATURES, registry=registry)
    before = set(_series(registry))
    expected: Counter[str] = Counter()
    exact = True
    for feature, count in calls:
        with armed():
            features.use(feature, count)
        if type(count) is int and count >= 0:
            expected[_declared(feature, FEATURES)] += count
            exact = exact and count <= 2**53
    assert set(_series(registry)) == before  # no new series, whatever the input
    assert _label_values(registry, c.LABEL_FEATURE) == {*FEATURES, OTHER}
    if exact:
        for name in (*FEATURES, OTHER):
            got = registry.get_sample_value(c.BUSINESS_FEATURE_USAGE.name, {c.LABEL_FEATURE: name})
            assert got == expected[name], (name, got, expected[name])


@PROPERTY
@given(st.lists(st.sampled_from(STEPS) | ANY, max_size=30))
def test_funnel_steps_count_declared_steps_or_other_and_never_add_a_series(steps):
    registry = CollectorRegistry()
    funnel = business.Funnel("checkout", steps=STEPS, registry=registry)
    before = set(_series(registry))
    with armed():
        for step in steps:
            funnel.step(step)
    assert set(_series(registry)) == before
    expected = Counter(_declared(s, STEPS) for s in steps)
    for step in (*STEPS, OTHER):
        labels = {c.LABEL_FUNNEL: "checkout", c.LABEL_FUNNEL_STEP: step}
        assert registry.get_sample_value(c.BUSINESS_FUNNEL_STEP.name, labels) == expected[step]


# --- transactions and revenue ---------------------------------------------------------------------------


@PROPERTY
@given(st.lists(st.tuples(st.sampled_from(TYPES) | ANY, st.sampled_from(sorted(CURRENCIES)) | ANY, ANY | st.none(),
                          ANY | st.none()), max_size=20))  # fmt: skip
def test_any_transaction_is_counted_once_under_declared_labels_and_revenue_stays_whole(calls):
    registry = CollectorRegistry()
    sales = business.Transactions(types=TYPES, currencies=CURRENCIES, registry=registry)
    before = _series(registry)
    expected: Counter[tuple[str, str]] = Counter()
    for transaction_type, currency, amount, minor_units in calls:
        with armed():
            sales.record(transaction_type, currency, amount=amount, minor_units=minor_units)
        expected[(_declared(transaction_type, TYPES), _declared(currency, CURRENCIES))] += 1
    after = _series(registry)
    assert set(after) == set(before)
    assert _label_values(registry, c.LABEL_CURRENCY) == {*CURRENCIES, OTHER}
    assert _label_values(registry, c.LABEL_TRANSACTION_TYPE) == {*TYPES, OTHER}
    for (name, labels), value in after.items():
        key = (dict(labels)[c.LABEL_TRANSACTION_TYPE], dict(labels)[c.LABEL_CURRENCY])
        if name == c.BUSINESS_TRANSACTIONS.name:
            assert value == expected[key], (key, value, expected[key])
        elif name == c.BUSINESS_REVENUE.name:
            assert value >= 0 and value.is_integer() and value <= 2**53 * len(calls)
            if key[1] == OTHER:  # minor units of unknown currencies are never added up
                assert value == 0


@st.composite
def exact_amounts(draw: st.DrawFn, exponent: int) -> tuple[Any, int | None, dict[str, Any]]:
    """(amount or minor units as the caller may give it, the minor units it is worth or None, kwargs)."""
    units = draw(st.integers(0, 10**12))
    major = Decimal(units).scaleb(-exponent)
    form = draw(st.sampled_from(["decimal", "str", "float", "int", "minor", "fraction_of_unit", "negative", "nan"]))
    if form == "decimal":
        return major, units, {"amount": major}
    if form == "str":
        text = draw(st.sampled_from([str(major), f" {major} ", format(major, "f"), format(major, "e")]))
        return text, units, {"amount": text}
    if form == "float":
        value = float(major)
        exact = Decimal(repr(value)) == major  # a float is read through its shortest repr
        return value, units if exact else None, {"amount": value}
    if form == "int":
        whole = units // 10**exponent
        return whole, whole * 10**exponent, {"amount": whole}
    if form == "minor":
        return units, units, {"minor_units": units}
    if form == "fraction_of_unit":  # one digit more than the currency has
        value = major + Decimal(draw(st.integers(1, 9))).scaleb(-exponent - 1)
        return value, None, {"amount": value}
    if form == "negative":
        value = -(major + Decimal(1))
        return value, None, {"amount": value}
    value = draw(st.sampled_from([Decimal("NaN"), Decimal("Infinity"), math.nan, math.inf, "NaN", "-Infinity"]))
    return value, None, {"amount": value}


@PROPERTY
@given(st.data())
def test_revenue_is_the_exact_integer_sum_of_the_valid_amounts(data):
    registry = CollectorRegistry()
    sales = business.Transactions(types=TYPES, currencies=CURRENCIES, registry=registry)
    totals: Counter[str] = Counter()
    for _ in range(data.draw(st.integers(1, 15))):
        currency = data.draw(st.sampled_from(sorted(CURRENCIES)))
        _, units, kwargs = data.draw(exact_amounts(CURRENCIES[currency]))
        sales.record("purchase", currency, **kwargs)
        totals[currency] += units or 0
    for currency, exponent in CURRENCIES.items():
        labels = {c.LABEL_TRANSACTION_TYPE: "purchase", c.LABEL_CURRENCY: currency}
        got = registry.get_sample_value(c.BUSINESS_REVENUE.name, labels)
        assert got == totals[currency] and totals[currency] < 2**53  # exact: no float rounding
        if totals[currency]:
            assert business.to_minor_units(Decimal(totals[currency]).scaleb(-exponent), exponent) == totals[currency]


@PROPERTY
@given(ANY, st.integers(0, 4))
def test_to_minor_units_answers_a_non_negative_int_or_none_for_anything(amount, exponent):
    with armed():
        units = business.to_minor_units(amount, exponent)
    assert units is None or (type(units) is int and 0 <= units <= 2**53)
    if units is not None:  # and it is exactly the amount
        assert not isinstance(amount, (bool, Fraction, complex))
        assert (
            Decimal(units).scaleb(-exponent)
            == Decimal(repr(amount) if isinstance(amount, float) else amount).normalize()
        )


# --- segments and active users -------------------------------------------------------------------------


@PROPERTY
@given(st.lists(st.tuples(st.sampled_from(["free", "pro"]) | ANY, st.floats() | ANY, st.booleans()), max_size=20))
def test_segment_gauges_take_only_finite_numbers_under_declared_segments(calls):
    registry = CollectorRegistry()
    segments = business.Segments(["free", "pro"], registry=registry)
    before = set(_series(registry))
    for segment, value, churn in calls:
        with armed():
            (segments.set_churn_ratio if churn else segments.set_engagement_score)(segment, value)
    assert set(_series(registry)) == before
    for (name, _), value in _series(registry).items():
        assert math.isfinite(value)
        if name == c.BUSINESS_CHURN_RATIO.name:
            assert 0.0 <= value <= 1.0


USER_IDS = st.one_of(
    st.text(), st.text(st.characters(codec=None, categories=("Cs",)), max_size=3), st.binary(), st.integers(),
    st.just(10**400), st.floats(), st.tuples(st.integers(), st.text(max_size=3)), st.uuids(), st.decimals(),
    st.builds(BadRepr), st.none(), st.frozensets(st.integers(), max_size=3),
)  # fmt: skip


@PROPERTY
@given(st.lists(USER_IDS, max_size=40))
def test_active_users_accept_any_user_id_and_keep_four_windows(users):
    registry = CollectorRegistry()
    clock = iter(range(10**9))  # one second per call: windows rotate
    active = business.ActiveUsers(precision=6, registry=registry, clock=lambda: float(next(clock)))
    with armed():
        for user in users:
            active.seen(user)
    windows = _series(registry)
    assert {dict(labels)[c.LABEL_WINDOW] for (_, labels) in windows} <= set(c.ACTIVE_USER_WINDOWS)
    assert all(v >= 0 and math.isfinite(v) for v in windows.values())
    hashable = [u for u in users if not isinstance(u, BadRepr)]
    if hashable:  # every id other than one whose repr raises is counted
        assert active.estimate("1d") > 0


def test_the_runtime_registry_gets_no_user_series_and_counts_the_rejections():
    with capture() as cap:
        features = business.Features(FEATURES)
        sales = business.Transactions(types=TYPES, currencies=CURRENCIES)
        active = business.ActiveUsers()
        features.use("search")
        sales.record("purchase", "USD", amount=1)
        active.seen("user-1")
        before = set(_series(cap.registry))
        for junk in ("'; DROP TABLE", BadRepr(), LookAlike("search"), "x" * 10_000, None, math.nan):
            with armed():
                features.use(junk)
                sales.record(junk, junk, amount=junk)
                active.seen(junk)
        after = _series(cap.registry)
        assert set(after) - before <= {
            (c.BUSINESS_ACTIVE_USERS.name, ((c.LABEL_WINDOW, w),)) for w in c.ACTIVE_USER_WINDOWS
        }
        assert _label_values(cap.registry, c.LABEL_FEATURE) == {*FEATURES, OTHER}
        assert cap.sample(c.BUSINESS_FEATURE_USAGE.name, feature=OTHER) == 6
        assert cap.sample(c.BUSINESS_TRANSACTIONS.name, transaction_type=OTHER, currency=OTHER) == 6
        assert cap.sample(c.TELEMETRY_ERRORS.name, component="business") >= 12
