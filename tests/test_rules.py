"""Generated rules: promtool accepts every format, a promtool test suite proves each alert fires and
stays silent when it should, and every metric a rule reads is one the library (or a listed exporter)
emits."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from bakhmach_obs import conventions as c
from bakhmach_obs.cli import main
from bakhmach_obs.errors import ConfigurationError
from bakhmach_obs.rules import (
    BURN_RATE_WINDOWS,
    alert_names,
    catalogue,
    error_ratio_expr,
    generate,
    prometheus_rule,
    render,
    runbook_url,
    sloth_specs,
)
from bakhmach_obs.slo import SLO

from .conftest import need_binary

ROOT = Path(__file__).resolve().parent.parent
H = f"{c.HTTP_SERVER_DURATION.name}_count"
HB = f"{c.HTTP_SERVER_DURATION.name}_bucket"
FD = c.FUNCTION_CALLS_DURATION.name
CACHE = c.CACHE_OPERATIONS.name
LAG = c.MESSAGING_QUEUE_LAG.name

SLOS = [
    SLO(name="api-availability", service="api", target=0.999, sli="availability", source="http"),
    SLO(name="api-success", service="api", target=0.99, sli="success_ratio", feature="/orders"),
    SLO(name="api-latency", service="api", target=0.99, sli="latency", threshold=0.3, window="7d"),
    SLO(name="api-health", service="api", target=0.999, sli="availability", feature="database"),
    SLO(name="charge-ok", service="worker", target=0.99, sli="success_ratio", source="function", feature="charge"),
    SLO(name="charge-fast", service="worker", target=0.95, sli="latency", source="function", threshold=0.5),
    SLO(name="mixed", service="mixed", target=0.999, sli="availability", source="http"),
    SLO(name="quiet", service="quiet", target=0.999, sli="availability", source="http"),
    SLO(name="slow", service="slow", target=0.999, sli="availability", source="http"),
    SLO(name="healthy", service="healthy", target=0.999, sli="availability", source="http"),
    SLO(name="ghost", service="ghost", target=0.999, sli="availability", source="http"),
    SLO(name="restart", service="restart", target=0.99, sli="availability", source="http"),
]


def _rules_file(tmp_path: Path, name: str = "rules.yml", **options: Any) -> Path:
    path = tmp_path / name
    path.write_text(render("prometheus", SLOS, **options), encoding="utf-8")
    return path


def _promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([need_binary("promtool"), *args], capture_output=True, text=True, timeout=120, cwd=cwd)


# --- promtool check rules -----------------------------------------------------------------------------


def test_every_format_passes_promtool_check_rules(tmp_path):
    plain = _rules_file(tmp_path)
    operator = yaml.safe_load(render("operator", SLOS, namespace="monitoring"))
    assert operator["kind"] == "PrometheusRule" and operator["apiVersion"] == "monitoring.coreos.com/v1"
    assert operator["metadata"]["namespace"] == "monitoring"
    spec = tmp_path / "operator-spec.yml"
    spec.write_text(yaml.safe_dump(operator["spec"]), encoding="utf-8")
    # sloth specs: the SLI queries must parse too, with sloth's window placeholder filled in
    sloth = list(yaml.safe_load_all(render("sloth", SLOS)))
    assert {d["service"] for d in sloth} == {s.service for s in SLOS}
    recordings = [
        {"record": f"sloth_check:{kind}:{i}", "expr": query.replace("{{.window}}", "5m")}
        for i, (doc, entry) in enumerate((d, e) for d in sloth for e in d["slos"])
        for kind, query in entry["sli"]["events"].items()
    ]
    sloth_rules = tmp_path / "sloth-queries.yml"
    sloth_rules.write_text(yaml.safe_dump({"groups": [{"name": "sloth", "rules": recordings}]}), encoding="utf-8")
    result = _promtool("check", "rules", str(plain), str(spec), str(sloth_rules), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("SUCCESS") == 3


def test_sloth_spec_matches_the_slo():
    [spec] = sloth_specs([SLOS[1]])
    assert spec["version"] == "prometheus/v1" and spec["service"] == "api"
    [entry] = spec["slos"]
    assert entry["objective"] == 99.0 and entry["labels"] == {c.LABEL_SLO_FEATURE: "/orders"}
    assert entry["alerting"]["page_alert"]["labels"]["severity"] == "critical"
    assert "[{{.window}}]" in entry["sli"]["events"]["error_query"]


# --- the names a rule reads ---------------------------------------------------------------------------

_KEYWORDS = {
    "and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset",
    "inf", "nan", "atan2",
    # aggregation operators may be followed by a by/without clause before their parenthesis
    "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values", "bottomk", "topk", "quantile",
}  # fmt: skip
_TOKEN = re.compile(
    r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`'  # strings
    r"|\{[^}]*\}"  # label matchers
    r"|\[[^\]]*\]"  # ranges and subqueries
    r"|\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)"  # label lists
    r"|\b\d+(?:ms|[smhdwy])(?:\d+(?:ms|[smhdwy]))*\b"  # durations (offset 1h)
    r"|(?P<number>\d+(?:\.\d*)?(?:[eE][+-]?\d+)?)"
    r"|(?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)(?P<call>\s*\()?"
)


def metric_names(expr: str) -> set[str]:
    """The metric names an expression selects: identifiers that are not functions, keywords or labels."""
    names = set()
    for m in _TOKEN.finditer(expr):
        ident = m.group("ident")
        if ident and not m.group("call") and ident.lower() not in _KEYWORDS:
            names.add(ident)
    return names


def test_tokenizer_skips_labels_strings_functions_and_keywords():
    expr = (
        'sum by (job, le) (rate(a_total{x="b_total",y=~"c|d"}[5m] offset 1h)) / on() group_left(z) '
        "histogram_quantile(0.95, b_bucket) > 1e-3 and bool c:rec:ratio"
    )
    assert metric_names(expr) == {"a_total", "b_bucket", "c:rec:ratio"}


def _all_rules(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return [r for g in doc["groups"] for r in g["rules"]]


def test_every_metric_a_rule_reads_is_emitted_by_the_library_or_a_listed_exporter(tmp_path):
    doc = generate(SLOS)
    rules = _all_rules(doc)
    recorded = {r["record"] for r in rules if "record" in r}
    known = c.known_series_names() | recorded
    used: set[str] = set()
    for rule in rules:
        names = metric_names(rule["expr"])
        assert names or rule["expr"].startswith("vector("), rule
        assert names <= known, (rule.get("record") or rule.get("alert"), names - known)
        used |= names
    # the check is not vacuous: the SLIs read the SDK's own series, the catalogue the exporters'
    assert {H, HB, c.FUNCTION_CALLS.name, c.HEALTH_CHECK_RUNS.name, "pg_up", "node_memory_MemTotal_bytes"} <= used
    assert {c.slo_sli_error(w) for w in c.SLO_WINDOWS} <= used
    # and promtool agrees that every expression parses
    result = _promtool("check", "rules", str(_rules_file(tmp_path)), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_drifted_name_is_caught():
    assert "http_requests_total" not in c.known_series_names()
    assert metric_names('rate(http_requests_total{status=~"5.."}[5m])') - c.known_series_names()


def test_recording_rules_use_the_convention_names_and_every_window():
    doc = generate([SLOS[2]], catalogue_alerts=False)
    [group] = doc["groups"]
    records = [r["record"] for r in group["rules"] if "record" in r]
    windows = [*c.SLO_WINDOWS, "7d"]
    assert records == [
        c.SLO_SLI_EVENTS_RATE,
        c.SLO_SLI_ERROR_EVENTS_RATE,
        *(c.slo_sli_error(w) for w in windows),
        c.SLO_OBJECTIVE,
        c.SLO_ERROR_BUDGET,
        c.SLO_PERIOD_BURN_RATE,
        c.SLO_BUDGET_REMAINING,
    ]
    assert all(r["labels"] == {"slo": "api-latency", "service": "api"} for r in group["rules"] if "record" in r)
    exprs = {r["record"]: r["expr"] for r in group["rules"] if "record" in r}
    # up to 3d: a ratio of increases over the window itself, never an average of shorter ratios
    assert "[3d]" in exprs[c.slo_sli_error("3d")] and "increase(" in exprs[c.slo_sli_error("3d")]
    assert f'{HB}{{job="api",le="0.3"}}' in exprs[c.slo_sli_error("3d")]
    # longer: no raw range vector over days of every series, but the ratio of the summed recorded rates
    long = exprs[c.slo_sli_error("7d")]
    assert long == (
        f'sum_over_time({c.SLO_SLI_ERROR_EVENTS_RATE}{{slo="api-latency",service="api"}}[7d]) '
        f'/ sum_over_time({c.SLO_SLI_EVENTS_RATE}{{slo="api-latency",service="api"}}[7d])'
    )
    assert "increase(" not in long and "avg_over_time" not in long
    assert f'{HB}{{job="api",le="0.3"}}[5m]' in exprs[c.SLO_SLI_ERROR_EVENTS_RATE]


def test_every_alert_has_severity_summary_description_and_an_existing_runbook():
    doc = generate(SLOS)
    alerts = [r for r in _all_rules(doc) if "alert" in r]
    assert {a["alert"] for a in alerts} == set(alert_names())
    for alert in alerts:
        assert alert["labels"]["severity"] in ("critical", "warning")
        assert alert["annotations"]["summary"] and alert["annotations"]["description"]
        url = alert["annotations"]["runbook_url"]
        assert url == runbook_url(alert["alert"])
        assert (ROOT / url).is_file(), f"missing runbook page {url}"
        assert "{threshold" not in alert["annotations"]["summary"] + alert["annotations"]["description"]
    # sloth's single alert name has its page too
    assert (ROOT / runbook_url("ErrorBudgetBurn")).is_file()
    custom = generate(SLOS[:1], runbook_base_url="https://runbooks.example/")
    assert {a["annotations"]["runbook_url"] for a in _all_rules(custom) if "alert" in a} == {
        f"https://runbooks.example/{page}.md"
        for page in (
            "error-budget-burn-fast", "error-budget-burn-slow", "slo-metric-absent", "high-error-rate",
            "database-down", "high-memory-usage", "high-latency", "low-cache-hit-ratio",
            "database-connections-high", "disk-usage-high", "queue-lag-high",
        )
    }  # fmt: skip


def test_high_error_rate_is_a_ratio_not_an_absolute_rate():
    [alert] = [r for r in _all_rules(generate()) if r.get("alert") == "HighErrorRate"]
    expr = alert["expr"]
    assert f'{H}{{{c.LABEL_HTTP_STATUS}=~"5.."}}[5m]' in expr and " / " in expr and "> 0.05" in expr
    assert alert["for"] == "5m" and alert["labels"]["severity"] == "critical"


def test_overrides_change_thresholds_durations_and_can_disable():
    doc = generate(
        overrides={
            "HighErrorRate": {"threshold": 0.02, "for": "10m"},
            "DiskUsageHigh": {"enabled": False},
            "QueueLagHigh": {"severity": "critical"},
        }
    )
    alerts = {r["alert"]: r for r in _all_rules(doc)}
    assert "> 0.02" in alerts["HighErrorRate"]["expr"] and alerts["HighErrorRate"]["for"] == "10m"
    assert "2%" in alerts["HighErrorRate"]["annotations"]["description"]
    assert "DiskUsageHigh" not in alerts
    assert alerts["QueueLagHigh"]["labels"]["severity"] == "critical"
    slo_doc = generate(SLOS[:1], overrides={"SLOMetricAbsent": {"for": "30m"}}, catalogue_alerts=False)
    assert {r["alert"]: r for r in _all_rules(slo_doc) if "alert" in r}["SLOMetricAbsent"]["for"] == "30m"


@pytest.mark.parametrize(
    ("options", "setting"),
    [
        ({"overrides": {"NoSuchAlert": {"for": "5m"}}}, "overrides"),
        ({"overrides": {"HighErrorRate": {"treshold": 1}}}, "overrides['HighErrorRate']"),
        ({"overrides": {"HighErrorRate": {"for": "soon"}}}, "overrides['HighErrorRate'].for"),
        ({"min_rate": -1}, "min_rate"),
    ],
)
def test_bad_options_fail_loudly(options, setting):
    with pytest.raises(ConfigurationError) as info:
        generate(SLOS[:1], **options)
    assert info.value.setting == setting


def test_latency_threshold_outside_the_default_buckets_is_refused_when_strict():
    on_bucket = SLO(name="ok", service="api", target=0.99, sli="latency", threshold=0.25)
    generate([on_bucket], strict_buckets=True)
    with pytest.raises(ConfigurationError, match="threshold"):
        generate([SLOS[2]], strict_buckets=True)
    with pytest.raises(ConfigurationError, match="unique"):
        generate([SLOS[0], SLOS[0]])


def test_low_traffic_guard_is_in_every_burn_rate_condition_and_can_be_turned_off():
    guarded = {r["alert"]: r["expr"] for r in _all_rules(generate(SLOS[:1])) if "alert" in r}
    assert guarded["ErrorBudgetBurnFast"].count(">= 0.05") == 2
    recorded = f'{c.SLO_SLI_EVENTS_RATE}{{slo="api-availability",service="api"}}'
    assert f"sum(avg_over_time({recorded}[1h])) >= 0.05" in guarded["ErrorBudgetBurnFast"]
    assert f"sum(avg_over_time({recorded}[3d])) >= 0.05" in guarded["ErrorBudgetBurnSlow"]
    unguarded = {r["alert"]: r["expr"] for r in _all_rules(generate(SLOS[:1], min_rate=0)) if "alert" in r}
    assert (
        c.SLO_SLI_EVENTS_RATE not in unguarded["ErrorBudgetBurnFast"] and ">=" not in unguarded["ErrorBudgetBurnFast"]
    )


# --- promtool test rules --------------------------------------------------------------------------


def _http(job: str, status: str, values: str, route: str = "/orders") -> dict[str, str]:
    labels = f'job="{job}",{c.LABEL_HTTP_METHOD}="GET",{c.LABEL_HTTP_ROUTE}="{route}",{c.LABEL_HTTP_STATUS}="{status}"'
    return {"series": f"{H}{{{labels}}}", "values": values}


def _s(metric: str, values: str, **labels: str) -> dict[str, str]:
    matchers = ",".join(f'{k}="{v}"' for k, v in labels.items())
    return {"series": f"{metric}{{{matchers}}}", "values": values}


def _firing(alert: str, at: str, **labels: str) -> dict[str, Any]:
    matchers = ",".join([f'alertname="{alert}"', 'alertstate="firing"', *(f'{k}="{v}"' for k, v in labels.items())])
    return {"expr": f"count(ALERTS{{{matchers}}})", "eval_time": at, "exp_samples": [{"labels": "{}", "value": 1}]}


def _silent(alert: str, at: str, **labels: str) -> dict[str, Any]:
    return {**_firing(alert, at, **labels), "exp_samples": []}


def _value(expr: str, at: str, value: float) -> dict[str, Any]:
    return {"expr": f"sum({expr})", "eval_time": at, "exp_samples": [{"labels": "{}", "value": value}]}


def _suite(rule_file: str) -> dict[str, Any]:
    """Synthetic series and expectations (1 sample per minute) for every alert of the file."""
    burn_ok = "0+1000x120 120900+900x59"  # 1000/min healthy, then 900/min ok ...
    burn_err = "0x120 100+100x59"  # ... and 100/min 5xx from minute 121: 10% errors
    tests: list[dict[str, Any]] = [
        {  # fast burn pages within its window; slow burn opens a ticket; healthy traffic is silent
            "interval": "1m",
            "input_series": [
                _http("api", "200", burn_ok),
                _http("api", "500", burn_err),
                _http("slow", "200", "0+995x240"),  # 0.5% errors: 5x the budget
                _http("slow", "503", "0+5x240"),
                _http("healthy", "200", "0+19990x240"),  # 0.05% errors: half the budget
                _http("healthy", "500", "0+10x240"),
            ],
            "promql_expr_test": [
                _silent("ErrorBudgetBurnFast", "119m", slo="api-availability"),
                _silent("ErrorBudgetBurnFast", "125m", slo="api-availability"),  # 5m burns, 1h not yet
                _firing("ErrorBudgetBurnFast", "135m", slo="api-availability", severity="critical"),
                _firing("ErrorBudgetBurnSlow", "3h", slo="slow", severity="warning"),
                _silent("ErrorBudgetBurnFast", "1h", slo="slow"),
                _silent("ErrorBudgetBurnFast", "4h", slo="slow"),
                _silent("ErrorBudgetBurnFast", "4h", slo="healthy"),
                _silent("ErrorBudgetBurnSlow", "4h", slo="healthy"),
                _value('round(slo:sli_error:ratio_rate5m{slo="api-availability"}, 0.0001)', "150m", 0.1),
                _value('round(slo:sli_error:ratio_rate1h{slo="slow"}, 0.0001)', "3h", 0.005),
                _value('round(slo:period_burn_rate:ratio{slo="slow"}, 0.0001)', "3h", 5),
                _value('round(slo:period_error_budget_remaining:ratio{slo="slow"}, 0.0001)', "3h", -4),
                _value('slo:objective:ratio{slo="slow"}', "3h", 0.999),
                _value('slo:error_budget:ratio{slo="slow"}', "3h", 0.001),
            ],
        },
        {  # a low-traffic service does not page on one failed request
            "interval": "1m",
            "input_series": [_http("quiet", "200", "0+0.2x180"), _http("quiet", "500", "0x90 1x89")],
            "promql_expr_test": [
                _silent("ErrorBudgetBurnFast", "95m", slo="quiet"),
                _silent("ErrorBudgetBurnSlow", "95m", slo="quiet"),
                # the ratio is far over the threshold: only the traffic guard keeps it quiet
                _value('slo:sli_error:ratio_rate5m{slo="quiet"} > bool 0.0144', "95m", 1),
            ],
        },
        {  # the window ratio is a ratio of increases: 300 errors in 60 600 requests, not mean(5m ratios)
            "interval": "1m",
            "input_series": [_http("mixed", "200", "0+1000x60 60005+5x59"), _http("mixed", "500", "0x60 5+5x59")],
            "promql_expr_test": [
                _value('round(slo:sli_error:ratio_rate2h{slo="mixed"}, 0.0001)', "120m", 0.005),
                _value('avg_over_time(slo:sli_error:ratio_rate5m{slo="mixed"}[2h]) > bool 0.2', "120m", 1),
            ],
        },
        {  # the 30-day ratio from recorded rates: weighted by traffic and unharmed by a counter reset
            "interval": "1m",
            # 1000 ok + 10 errors a minute for an hour, then the process restarts (counters back to
            # zero) and serves 100 ok + 50 errors a minute: 3550 errors in 69450 requests = 5.11 %;
            # the mean of the two phases' ratios would be 17 %
            "input_series": [
                _http("restart", "200", "0+1000x60 0+100x59"),
                _http("restart", "500", "0+10x60 0+50x59"),
            ],
            "promql_expr_test": [
                # the raw 2h ratio is exact; the recorded one under-weights the last 5 minutes (each
                # 5m rate is sampled fewer than 5 times), 4 % of a 2h window but 0.01 % of 30 days
                _value('abs(slo:sli_error:ratio_rate2h{slo="restart"} - 3550 / 69450) < bool 0.0001', "120m", 1),
                _value('abs(slo:sli_error:ratio_rate30d{slo="restart"} - 3550 / 69450) < bool 0.0025', "120m", 1),
                _value('abs(slo:period_burn_rate:ratio{slo="restart"} - 5.11) < bool 0.25', "120m", 1),
            ],
        },
        {  # the other SLI kinds record the expected ratios
            "interval": "1m",
            "input_series": [
                _http("api", "200", "0+80x60", route="/orders"),
                _http("api", "404", "0+20x60", route="/orders"),
                _http("api", "500", "0+1000x60", route="/other"),  # another route: not in the /orders SLO
                _s(HB, "0+900x60", job="api", le="0.3"),
                _s(HB, "0+1100x60", job="api", le="+Inf"),
                _s(c.HEALTH_CHECK_RUNS.name, "0+59x60", job="api", check="database", result="pass"),
                _s(c.HEALTH_CHECK_RUNS.name, "0+1x60", job="api", check="database", result="timeout"),
                _s(c.FUNCTION_CALLS.name, "0+98x60", job="worker", function="charge", module="m", result="ok"),
                _s(c.FUNCTION_CALLS.name, "0+2x60", job="worker", function="charge", module="m", result="error"),
                _s(f"{FD}_bucket", "0+45x60", job="worker", function="f", module="m", le="0.5"),
                _s(f"{FD}_count", "0+50x60", job="worker", function="f", module="m"),
            ],
            "promql_expr_test": [
                _value('round(slo:sli_error:ratio_rate30m{slo="api-success"}, 0.0001)', "30m", 0.2),
                _value('round(slo:sli_error:ratio_rate30m{slo="api-latency"}, 0.0001)', "30m", round(200 / 1100, 4)),
                _value('round(slo:sli_error:ratio_rate30m{slo="api-health"}, 0.0001)', "30m", round(1 / 60, 4)),
                _value('round(slo:sli_error:ratio_rate30m{slo="charge-ok"}, 0.0001)', "30m", 0.02),
                _value('round(slo:sli_error:ratio_rate30m{slo="charge-fast"}, 0.0001)', "30m", 0.1),
                _value('round(slo:sli_error:ratio_rate7d{slo="api-latency"}, 0.0001)', "30m", round(200 / 1100, 4)),
                _silent("SLOMetricAbsent", "30m", slo="api-latency"),
                _firing("SLOMetricAbsent", "30m", slo="ghost", severity="warning"),
            ],
        },
        {  # HighErrorRate: a 5xx ratio over 5% for 5 minutes; 6% fires, 4% does not
            "interval": "1m",
            "input_series": [
                _http("six", "200", "0+94x30"),
                _http("six", "500", "0+6x30"),
                _http("four", "200", "0+96x30"),
                _http("four", "500", "0+4x30"),
            ],
            "promql_expr_test": [
                _silent("HighErrorRate", "4m", job="six"),  # pending: "for: 5m"
                _firing("HighErrorRate", "10m", job="six", severity="critical"),
                _silent("HighErrorRate", "30m", job="four"),
            ],
        },
        {  # the rest of the catalogue, each with a firing and a silent case
            "interval": "1m",
            "input_series": [
                _s(c.HEALTH_CHECK_STATUS.name, "0x10", job="a", check="database"),
                _s(c.HEALTH_CHECK_STATUS.name, "1x10", job="b", check="database"),
                _s("pg_up", "0x10", job="postgres", instance="db:9187"),
                _s("pg_up", "1x10", job="postgres", instance="db2:9187"),
                _s("node_memory_MemTotal_bytes", "100x20", instance="full"),
                _s("node_memory_MemAvailable_bytes", "5x20", instance="full"),
                _s("node_memory_MemTotal_bytes", "100x20", instance="fine"),
                _s("node_memory_MemAvailable_bytes", "20x20", instance="fine"),
                _s(HB, "0+10x20", job="slowapp", le="0.5"),
                _s(HB, "0+50x20", job="slowapp", le="1.0"),
                _s(HB, "0+100x20", job="slowapp", le="2.5"),
                _s(HB, "0+100x20", job="slowapp", le="+Inf"),
                _s(HB, "0+99x20", job="fastapp", le="0.5"),
                _s(HB, "0+100x20", job="fastapp", le="1.0"),
                _s(HB, "0+100x20", job="fastapp", le="+Inf"),
                _s(CACHE, "0+60x20", job="a", cache_name="cold", cache_operation="get", cache_result="hit"),
                _s(CACHE, "0+40x20", job="a", cache_name="cold", cache_operation="get", cache_result="miss"),
                _s(CACHE, "0+80x20", job="a", cache_name="warm", cache_operation="get", cache_result="hit"),
                _s(CACHE, "0+20x20", job="a", cache_name="warm", cache_operation="get", cache_result="miss"),
                # a cache that never hit has no hit series at all
                _s(CACHE, "0+50x20", job="a", cache_name="empty", cache_operation="get", cache_result="miss"),
                _s(c.DB_CONNECTION_COUNT.name, "9x20", job="a", pool_name="busy", state="used"),
                _s(c.DB_CONNECTION_COUNT.name, "1x20", job="a", pool_name="busy", state="idle"),
                _s(c.DB_CONNECTION_MAX.name, "10x20", job="a", pool_name="busy"),
                _s(c.DB_CONNECTION_COUNT.name, "5x20", job="a", pool_name="calm", state="used"),
                _s(c.DB_CONNECTION_COUNT.name, "5x20", job="a", pool_name="calm", state="idle"),
                _s(c.DB_CONNECTION_MAX.name, "10x20", job="a", pool_name="calm"),
                _s("node_filesystem_avail_bytes", "10x20", instance="n", mountpoint="/data", fstype="ext4"),
                _s("node_filesystem_size_bytes", "100x20", instance="n", mountpoint="/data", fstype="ext4"),
                _s("node_filesystem_avail_bytes", "50x20", instance="n", mountpoint="/", fstype="ext4"),
                _s("node_filesystem_size_bytes", "100x20", instance="n", mountpoint="/", fstype="ext4"),
                _s(LAG, "400x20", job="w", messaging_system="rabbitmq", messaging_destination_name="orders"),
                _s(LAG, "100x20", job="w", messaging_system="rabbitmq", messaging_destination_name="emails"),
            ],
            "promql_expr_test": [
                _silent("DatabaseDown", "1m", job="a"),  # for: 2m
                _firing("DatabaseDown", "3m", job="a", severity="critical"),
                _firing("DatabaseDown", "3m", instance="db:9187"),
                _silent("DatabaseDown", "10m", job="b"),
                _silent("DatabaseDown", "10m", instance="db2:9187"),
                _silent("HighMemoryUsage", "9m", instance="full"),  # for: 10m
                _firing("HighMemoryUsage", "11m", instance="full", severity="critical"),
                _silent("HighMemoryUsage", "20m", instance="fine"),
                _firing("HighLatency", "16m", job="slowapp", severity="warning"),
                _silent("HighLatency", "16m", job="fastapp"),
                _firing("LowCacheHitRatio", "20m", cache_name="cold", severity="warning"),
                _silent("LowCacheHitRatio", "20m", cache_name="warm"),
                _firing("LowCacheHitRatio", "20m", cache_name="empty"),
                _firing("DatabaseConnectionsHigh", "15m", pool_name="busy", severity="warning"),
                _silent("DatabaseConnectionsHigh", "15m", pool_name="calm"),
                _firing("DiskUsageHigh", "16m", mountpoint="/data", severity="warning"),
                _silent("DiskUsageHigh", "16m", mountpoint="/"),
                _firing("QueueLagHigh", "6m", messaging_destination_name="orders", severity="warning"),
                _silent("QueueLagHigh", "6m", messaging_destination_name="emails"),
            ],
        },
    ]
    return {"rule_files": [rule_file], "evaluation_interval": "1m", "tests": tests}


def _run_suite(tmp_path: Path, suite: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    assert suite["tests"]
    tests = tmp_path / "rules_test.yml"
    tests.write_text(yaml.safe_dump(suite, sort_keys=False, width=1 << 20), encoding="utf-8")
    return _promtool("test", "rules", str(tests), cwd=tmp_path)


def test_promtool_suite_proves_every_alert_fires_and_stays_silent(tmp_path):
    _rules_file(tmp_path)
    suite = _suite("rules.yml")
    covered = {
        re.search(r'alertname="(\w+)"', t["expr"]).group(1)
        for test in suite["tests"]
        for t in test["promql_expr_test"]
        if "ALERTS" in t["expr"]
    }
    assert covered == set(alert_names()), set(alert_names()) - covered
    result = _run_suite(tmp_path, suite)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_suite_can_fail_without_the_traffic_guard_the_quiet_service_pages(tmp_path):
    _rules_file(tmp_path, "unguarded.yml", min_rate=0)
    suite = _suite("unguarded.yml")
    suite["tests"] = [t for t in suite["tests"] if '"quiet"' in t["input_series"][0]["series"]]
    result = _run_suite(tmp_path, suite)
    assert result.returncode == 1
    assert 'alertname=\\"ErrorBudgetBurnFast\\",alertstate=\\"firing\\",slo=\\"quiet\\"' in result.stderr


def test_the_suite_can_fail_a_wrong_threshold_is_caught(tmp_path):
    _rules_file(tmp_path, "loose.yml", overrides={"HighErrorRate": {"threshold": 0.07}})
    suite = _suite("loose.yml")
    suite["tests"] = [t for t in suite["tests"] if '"six"' in t["input_series"][0]["series"]]
    result = _run_suite(tmp_path, suite)
    assert result.returncode == 1


def test_burn_rate_windows_are_the_sre_workbook_ones():
    pairs = [(w.alert, w.severity, w.long_window, w.short_window, w.factor) for w in BURN_RATE_WINDOWS]
    assert pairs == [
        ("ErrorBudgetBurnFast", "critical", "1h", "5m", 14.4),
        ("ErrorBudgetBurnFast", "critical", "6h", "30m", 6.0),
        ("ErrorBudgetBurnSlow", "warning", "1d", "2h", 3.0),
        ("ErrorBudgetBurnSlow", "warning", "3d", "6h", 1.0),
    ]
    assert [a.name for a in catalogue()][:3] == ["HighErrorRate", "DatabaseDown", "HighMemoryUsage"]


def test_error_ratio_expression_counts_missing_error_series_as_zero():
    expr = error_ratio_expr(SLOS[0], "1h")
    assert expr.startswith("(sum(increase(") and "or vector(0)" in expr


# --- command line -----------------------------------------------------------------------------------------

SLO_FILE = """\
defaults:
  service: api
slos:
  - name: api-availability
    target: 99.9%
    sli: {kind: availability, source: http}
  - name: api-latency
    target: 0.99
    sli: {kind: latency, threshold: 300ms}
"""


def test_cli_writes_each_format_and_promtool_accepts_it(tmp_path, capsys):
    slo = tmp_path / "slo.yaml"
    slo.write_text(SLO_FILE, encoding="utf-8")
    out = tmp_path / "rules.yml"
    assert main(["rules", "--slo", str(slo), "-o", str(out), "--set", "HighErrorRate.threshold=0.1"]) == 0
    err = capsys.readouterr().err
    assert "api-latency" in err and 'le="0.3"' in err and "configure(slo_file=" in err
    doc = yaml.safe_load(out.read_text())
    assert {g["name"] for g in doc["groups"]} >= {"bakhmach_slo_api-availability", "bakhmach_critical"}
    assert any("> 0.1" in r["expr"] for r in _all_rules(doc) if r.get("alert") == "HighErrorRate")
    result = _promtool("check", "rules", str(out), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert main(["rules", "--slo", str(slo), "--format", "operator", "--namespace", "mon"]) == 0
    operator = yaml.safe_load(capsys.readouterr().out)
    assert operator["kind"] == "PrometheusRule" and operator["spec"]["groups"]
    assert operator == prometheus_rule(
        [SLO(name="api-availability", service="api", target=0.999, sli="availability", source="http"),
         SLO(name="api-latency", service="api", target=0.99, sli="latency", threshold=0.3)],
        namespace="mon",
    )  # fmt: skip
    assert main(["rules", "--slo", str(slo), "--format", "sloth"]) == 0
    captured = capsys.readouterr()
    assert yaml.safe_load(captured.out)["service"] == "api"
    assert "do not apply" not in captured.err
    assert main(["rules", "--slo", str(slo), "--format", "sloth", "--set", "HighErrorRate.threshold=0.1"]) == 0
    assert "warning: --set do not apply to --format sloth" in capsys.readouterr().err
    assert main(["rules", "--slo", str(slo), "--strict-buckets"]) == 2
    assert "threshold" in capsys.readouterr().err


def test_cli_reports_a_bad_slo_file_with_its_line(tmp_path, capsys):
    slo = tmp_path / "slo.yaml"
    slo.write_text(SLO_FILE.replace("99.9%", "150%"), encoding="utf-8")
    assert main(["rules", "--slo", str(slo)]) == 2
    assert f"{slo}:5: slos[0].target" in capsys.readouterr().err
    assert main(["rules", "--set", "HighErrorRate=1"]) == 2
    assert main(["rules", "--disable", "Nope"]) == 2


def test_generate_reads_slo_files_for_the_stack_generator(tmp_path):
    slo = tmp_path / "slo.yaml"
    slo.write_text(SLO_FILE, encoding="utf-8")
    doc = generate(slo_file=slo)
    assert [g["name"] for g in doc["groups"]][:2] == ["bakhmach_slo_api-availability", "bakhmach_slo_api-latency"]
    assert generate(slo_file=[slo], catalogue_alerts=False) == generate(slo_file=str(slo), catalogue_alerts=False)


def test_the_example_slo_file_holds_the_seeds_three_slos_and_generates_valid_rules(tmp_path, capsys):
    from datetime import timedelta

    from bakhmach_obs.slo import error_budget, load_slos

    example = Path(__file__).resolve().parent.parent / "examples" / "slo.yaml"
    slos = {s.name: s for s in load_slos(example)}
    assert {(s.sli, s.target, s.threshold) for s in slos.values()} == {
        ("availability", 0.999, None),
        ("latency", 0.99, 0.5),
        ("success_ratio", 0.99, None),
    }
    availability = slos["backend-availability"]
    assert error_budget(availability.target, availability.window) == timedelta(minutes=43, seconds=12)  # not 9h26m
    out = tmp_path / "rules.yml"
    assert main(["rules", "--slo", str(example), "--strict-buckets", "-o", str(out)]) == 0  # 0.5 s is a bucket
    capsys.readouterr()
    result = _promtool("check", "rules", str(out), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    recorded = {r.get("record") for r in _all_rules(yaml.safe_load(out.read_text()))}
    assert c.slo_sli_error("30d") in recorded
