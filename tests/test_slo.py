"""The SLO model, the SLO file format and the error-budget maths; latency thresholds as buckets."""

from __future__ import annotations

import math
from datetime import timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest

import bakhmach_obs
from bakhmach_obs import _runtime
from bakhmach_obs import conventions as c
from bakhmach_obs.errors import ConfigurationError
from bakhmach_obs.metrics import metric_set
from bakhmach_obs.slo import (
    SLO,
    SLOFileError,
    budget_remaining,
    burn_rate,
    error_budget,
    error_ratio,
    format_duration,
    load_slos,
    parse_duration,
    parse_slos,
)

# --- the budget maths ---------------------------------------------------------------------------


def test_three_nines_over_thirty_days_is_43_minutes_12_seconds():
    assert error_budget(0.999, "30d") == timedelta(minutes=43, seconds=12)
    assert format_duration(error_budget(0.999)) == "43m12s"
    # the seed's "9 hours 26 minutes downtime/month" is not 99.9%: it is about 98.69%
    assert format_duration(error_budget(0.999, "365d")) == "8h45m36s"
    assert 0.9868 < 1 - (9 * 3600 + 26 * 60) / (30 * 86400) < 0.9870
    assert format_duration(error_budget(0.99, "30d")) == "7h12m"


def test_budget_remaining_and_burn_rate_examples():
    assert budget_remaining(good=1000, total=1000, target=0.999) == 1.0
    assert math.isclose(budget_remaining(good=9995, total=10000, target=0.999), 0.5)
    assert math.isclose(budget_remaining(good=9990, total=10000, target=0.999), 0.0, abs_tol=1e-9)
    assert math.isclose(budget_remaining(good=9980, total=10000, target=0.999), -1.0)
    assert budget_remaining(good=0, total=0, target=0.999) == 1.0  # no traffic spends nothing
    assert math.isclose(burn_rate(0.0144, 0.999), 14.4)
    with pytest.raises(ValueError):
        error_ratio(good=11, total=10)
    with pytest.raises(ValueError):
        burn_rate(0.1, 1.0)


targets = st.floats(min_value=1e-6, max_value=1 - 1e-6)
counts = st.integers(min_value=0, max_value=10**12)


@given(targets, st.floats(min_value=1.0, max_value=10 * 365 * 86400.0))
def test_error_budget_is_the_budget_share_of_the_window(target, seconds):
    budget = error_budget(target, seconds).total_seconds()
    assert math.isclose(budget, (1 - target) * seconds, rel_tol=1e-9, abs_tol=1e-5)
    assert 0 <= budget <= seconds


@given(targets, counts, counts)
def test_remaining_is_one_minus_burn_rate_and_monotone_in_failures(target, a, b):
    total = max(a, b)
    good = min(a, b)
    remaining = budget_remaining(good, total, target)
    assert math.isclose(remaining, 1 - burn_rate(error_ratio(good, total), target), rel_tol=1e-12, abs_tol=1e-12)
    assert remaining <= 1.0
    if good < total:  # one more failure never leaves more budget
        assert budget_remaining(good, total + 1, target) <= remaining + 1e-12
        assert remaining < 1.0


@given(targets, st.integers(min_value=1, max_value=10**9))
def test_exactly_the_allowed_failures_spend_exactly_the_budget(target, total):
    allowed = (1 - target) * total
    # spending the budget exactly: error ratio == budget ratio -> remaining 0, burn rate 1
    assert math.isclose(burn_rate(allowed / total, target), 1.0, rel_tol=1e-9)
    bad = math.floor(allowed)
    assert budget_remaining(total - bad, total, target) >= -1e-9


@given(st.integers(min_value=1, max_value=10**6), st.sampled_from(["ms", "s", "m", "h", "d", "w"]))
def test_durations_round_trip(n, unit):
    seconds = parse_duration(f"{n}{unit}")
    assert parse_duration(format_duration(seconds)) == pytest.approx(seconds)


@pytest.mark.parametrize("bad", ["", "5", "m5", "5mm", "-5m", "0s", "1.5h", "5 m"])
def test_bad_durations_are_rejected(bad):
    with pytest.raises(ValueError):
        parse_duration(bad)


# --- the model ------------------------------------------------------------------------------------


def test_defaults_and_selector():
    slo = SLO(name="checkout-availability", service="checkout", target=0.999, sli="availability")
    assert (slo.source, slo.window, slo.budget) == ("health", "30d", 0.001)
    assert slo.label_selector() == {"job": "checkout"}
    assert slo.labels() == {c.LABEL_SLO: "checkout-availability", c.LABEL_SLO_SERVICE: "checkout"}
    custom = SLO(name="x", service="checkout", target=0.99, feature="/orders", selector={"namespace": "shop"})
    assert custom.label_selector() == {"namespace": "shop"}
    assert custom.labels()[c.LABEL_SLO_FEATURE] == "/orders"
    same = SLO(name="x", service="checkout", target=0.99, feature="/orders", selector={"namespace": "shop"})
    assert hash(custom) == hash(same) and custom == same
    assert custom != SLO(name="x", service="checkout", target=0.99, feature="/orders")


@pytest.mark.parametrize(
    ("kwargs", "setting"),
    [
        ({"target": 1.0}, "target"),
        ({"target": 0}, "target"),
        ({"target": True}, "target"),
        ({"name": "-bad"}, "name"),
        ({"service": " "}, "service"),
        ({"sli": "uptime"}, "sli"),
        ({"sli": "availability", "source": "function"}, "source"),
        ({"sli": "latency"}, "threshold"),
        ({"sli": "latency", "threshold": -1}, "threshold"),
        ({"threshold": 0.5}, "threshold"),
        ({"window": "a month"}, "window"),
        ({"selector": {}}, "selector"),
        ({"selector": {"__name__": "x"}}, "selector"),
    ],
)
def test_invalid_slo_names_the_field(kwargs, setting):
    args = {"name": "api", "service": "api", "target": 0.99, **kwargs}
    with pytest.raises(ConfigurationError) as info:
        SLO(**args)
    assert info.value.setting.endswith(setting)


# --- the YAML file ---------------------------------------------------------------------------------

GOOD = """\
version: 1
defaults:
  service: checkout
  window: 28d
slos:
  - name: checkout-availability
    description: Readiness checks pass
    target: 99.9%
    sli: availability
  - name: orders-success
    target: 0.99
    feature: /orders
    sli: {kind: success_ratio, source: http}
  - name: orders-latency
    service: orders
    target: 0.99
    window: 7d
    selector: {namespace: shop, app: orders}
    sli:
      kind: latency
      threshold: 300ms
  - name: charge
    target: 0.995
    feature: charge_payment
    sli: {kind: success_ratio, source: function}
"""


def test_a_valid_file_loads(tmp_path):
    path = tmp_path / "slo.yaml"
    path.write_text(GOOD, encoding="utf-8")
    slos = load_slos(path)
    assert [s.name for s in slos] == ["checkout-availability", "orders-success", "orders-latency", "charge"]
    assert slos[0] == SLO(
        name="checkout-availability", service="checkout", target=0.999, sli="availability", window="28d",
        description="Readiness checks pass",
    )  # fmt: skip
    assert (slos[2].service, slos[2].window, slos[2].threshold) == ("orders", "7d", 0.3)
    assert slos[2].label_selector() == {"app": "orders", "namespace": "shop"}
    assert (slos[3].source, slos[3].feature) == ("function", "charge_payment")


@pytest.mark.parametrize(
    ("edit", "line", "field"),
    [
        (("target: 0.99\n    feature", "target: 1.5\n    feature"), 11, "slos[1].target"),
        (("threshold: 300ms", "threshold: fast"), 21, "slos[2].sli.threshold"),
        (("kind: latency", "kind: speed"), 20, "slos[2].sli.kind"),
        (("source: http}", "source: health}"), 13, "slos[1].sli.source"),
        (("window: 7d", "window: 7 days"), 17, "slos[2].window"),
        (("    feature: /orders\n", "    feature: /orders\n    owner: me\n"), 13, "slos[1].owner"),
        (("name: charge", "name: orders-success"), 22, "slos[3].name"),
        (("version: 1", "version: 2"), 1, "version"),
        (("  window: 28d", "  window: 28d\n  target: 0.9"), 5, "defaults.target"),
        (("selector: {namespace: shop, app: orders}", "selector: [shop]"), 18, "slos[2].selector"),
        (
            ("    sli:\n      kind: latency\n      threshold: 300ms\n", "    sli:\n      kind: latency\n"),
            20,
            "slos[2].sli.threshold",
        ),
        (("target: 99.9%", "target: [99.9]"), 8, "slos[0].target"),
        (("- name: charge", "- name: charge\n    sli: {kind: success_ratio, source: function}"), 26, "slos[3].sli"),
    ],
)
def test_a_bad_file_gets_an_error_naming_the_line_and_field(tmp_path, edit, line, field):
    old, new = edit
    assert old in GOOD
    path = tmp_path / "slo.yaml"
    path.write_text(GOOD.replace(old, new, 1), encoding="utf-8")
    with pytest.raises(SLOFileError) as info:
        load_slos(path)
    assert (info.value.line, info.value.field) == (line, field), str(info.value)
    assert str(info.value).startswith(f"{path}:{line}: {field}: ")
    assert isinstance(info.value, ConfigurationError)


@pytest.mark.parametrize(
    ("text", "line", "field"),
    [
        ("slos:\n  - name: a\n    target: 0.9\n   sli: x\n", 4, "(syntax)"),
        ("", 1, "slos"),
        ("slos: []\n", 1, "slos"),
        ("- a\n", 1, "(top level)"),
        ("slos:\n  - name: a\n    target: 0.9\n    sli: availability\n", 2, "slos[0].service"),
        ("slos:\n  - target: 0.9\n    service: a\n    sli: availability\n", 2, "slos[0].name"),
    ],
)
def test_structural_errors(text, line, field):
    with pytest.raises(SLOFileError) as info:
        parse_slos(text, source="s.yaml")
    assert (info.value.line, info.value.field) == (line, field), str(info.value)


def test_a_missing_file_is_a_configuration_error(tmp_path):
    with pytest.raises(SLOFileError, match="readable"):
        load_slos(tmp_path / "nope.yaml")


# --- latency thresholds become buckets at configure() --------------------------------------------------


def _le_values(registry: CollectorRegistry, name: str) -> set[str]:
    text = generate_latest(registry).decode()
    return {line.split('le="')[1].split('"')[0] for line in text.splitlines() if line.startswith(name + "_bucket{")}


def test_configure_adds_latency_thresholds_as_bucket_boundaries(registry):
    slos = [
        SLO(name="api-latency", service="api", target=0.99, sli="latency", threshold=0.3),
        SLO(name="fn-latency", service="api", target=0.99, sli="latency", source="function", threshold=0.04),
    ]
    bakhmach_obs.configure(registry=registry, slos=slos, log_format="none", tracing_enabled=False)
    assert _runtime.current().slos == tuple(slos)

    @bakhmach_obs.instrument
    def work() -> int:
        return 1

    work()
    assert {"0.04", "0.05", "+Inf"} <= _le_values(registry, c.FUNCTION_CALLS_DURATION.name)
    ms = metric_set(registry)
    assert 0.3 in ms.buckets(c.HTTP_SERVER_DURATION) and 0.3 not in (c.HTTP_SERVER_DURATION.buckets or ())
    ms.get(c.HTTP_SERVER_DURATION).labels("GET", "/", "200").observe(0.29)
    assert "0.3" in _le_values(registry, c.HTTP_SERVER_DURATION.name)
    sample = registry.get_sample_value(
        f"{c.HTTP_SERVER_DURATION.name}_bucket",
        {c.LABEL_HTTP_METHOD: "GET", c.LABEL_HTTP_ROUTE: "/", c.LABEL_HTTP_STATUS: "200", "le": "0.3"},
    )
    assert sample == 1.0


def test_a_family_created_before_configure_is_rebuilt_with_the_boundary(registry):
    bakhmach_obs.configure(registry=registry, log_format="none", tracing_enabled=False)
    metric_set(registry).get(c.HTTP_SERVER_DURATION).labels("GET", "/", "200").observe(0.1)
    assert "0.3" not in _le_values(registry, c.HTTP_SERVER_DURATION.name)
    slo = SLO(name="api-latency", service="api", target=0.99, sli="latency", threshold=0.3)
    bakhmach_obs.configure(registry=registry, slos=[slo], log_format="none", tracing_enabled=False)
    metric_set(registry).get(c.HTTP_SERVER_DURATION).labels("GET", "/", "200").observe(0.1)
    assert "0.3" in _le_values(registry, c.HTTP_SERVER_DURATION.name)
    # configuring again with the same SLO keeps the family (nothing to add)
    family = metric_set(registry).get(c.HTTP_SERVER_DURATION)
    bakhmach_obs.configure(registry=registry, slos=[slo], log_format="none", tracing_enabled=False)
    assert metric_set(registry).get(c.HTTP_SERVER_DURATION) is family


def test_configure_reads_the_slo_file_setting_and_fails_loudly_on_a_bad_one(registry, tmp_path, monkeypatch):
    path = tmp_path / "slo.yaml"
    path.write_text(GOOD, encoding="utf-8")
    settings = bakhmach_obs.configure(registry=registry, slo_file=str(path), log_format="none", tracing_enabled=False)
    assert settings.slo_file == str(path)
    assert [s.name for s in _runtime.current().slos][2] == "orders-latency"
    assert 0.3 in metric_set(registry).buckets(c.HTTP_SERVER_DURATION)
    monkeypatch.setenv("BAKHMACH_OBS_SLO_FILE", str(path))
    other = CollectorRegistry()
    assert bakhmach_obs.configure(registry=other, log_format="none", tracing_enabled=False).slo_file == str(path)
    assert 0.3 in metric_set(other).buckets(c.HTTP_SERVER_DURATION)
    monkeypatch.delenv("BAKHMACH_OBS_SLO_FILE")
    path.write_text(GOOD.replace("300ms", "soon"), encoding="utf-8")
    before = _runtime.current()
    with pytest.raises(SLOFileError, match=r"slo.yaml:21: slos\[2\]\.sli\.threshold"):
        bakhmach_obs.configure(registry=registry, slo_file=str(path), log_format="none")
    assert _runtime.current() is before  # the running setup is untouched
    path.write_text(GOOD, encoding="utf-8")
    dup = SLO(name="orders-latency", service="x", target=0.9)
    with pytest.raises(ConfigurationError, match="unique"):
        bakhmach_obs.configure(registry=registry, slos=[dup], slo_file=str(path))
    with pytest.raises(SLOFileError, match="readable"):
        bakhmach_obs.configure(registry=registry, slo_file=str(tmp_path / "missing.yaml"))


def test_add_buckets_validates(registry):
    ms = metric_set(registry)
    with pytest.raises(ValueError):
        ms.add_buckets(c.FUNCTION_CALLS, [0.1])
    with pytest.raises(ValueError):
        ms.add_buckets(c.HTTP_SERVER_DURATION, [float("inf")])


@pytest.mark.parametrize("threshold", ["0.3", "0.30", "300ms", "1", "2.5", "0.0001", "1e-05", "12", "1000000"])
def test_the_rules_le_is_exactly_the_label_the_histogram_exposes(registry, threshold):
    """A latency SLI selects ``le="<threshold>"`` by equality: "0.3" must not become "0.30" (or "1" vs "1.0")."""
    from bakhmach_obs.rules import sli_query

    [slo] = parse_slos(
        f"slos:\n  - {{name: l, service: api, target: 0.99, sli: {{kind: latency, threshold: {threshold}}}}}\n"
    )
    bakhmach_obs.configure(registry=registry, slos=[slo], log_format="none", tracing_enabled=False)
    metric_set(registry).get(c.HTTP_SERVER_DURATION).labels("GET", "/", "200").observe(slo.threshold)
    exposed = _le_values(registry, c.HTTP_SERVER_DURATION.name)
    good = sli_query(slo).good
    assert good is not None
    le = good.split('le="')[1].split('"')[0]
    assert le in exposed, (le, sorted(exposed))
    sample = registry.get_sample_value(
        f"{c.HTTP_SERVER_DURATION.name}_bucket",
        {c.LABEL_HTTP_METHOD: "GET", c.LABEL_HTTP_ROUTE: "/", c.LABEL_HTTP_STATUS: "200", "le": le},
    )
    assert sample == 1.0  # an observation equal to the threshold is good (le is inclusive)
