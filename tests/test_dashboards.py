"""The generated Grafana dashboards: structure, names, PromQL validity and data from a real Prometheus.

* Structure: valid dashboard JSON models (schema version, stable uids, unique ids, a 24-wide grid
  without overlaps, the ``${datasource}`` variable everywhere, a unit and a description on every
  panel, the service / environment / instance variables, exemplars on latency queries).
* Names: every series any expression or variable query references is one the SDK emits, an
  exporter listed in ``conventions.EXTERNAL_METRICS`` emits, or an SLO recording rule.
* Parsing: every expression, Grafana variables substituted, passes ``promtool check rules``.
* End to end: an instrumented shop (``tests/dashboards_app.py``: uvicorn, SQLite, PostgreSQL pool,
  RabbitMQ, business and runtime metrics) under traffic, scraped by a real Prometheus that also
  evaluates the SLO rules ``bakhmach_obs.rules`` generates; every key query of every dashboard
  (those on the SDK's own metrics) returns data, and latency exemplars carry trace ids.
"""

from __future__ import annotations

import json
import math
import re
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from bakhmach_obs import conventions as c
from bakhmach_obs import dashboards
from bakhmach_obs.cli import main
from bakhmach_obs.errors import ConfigurationError

from .conftest import need, need_binary

MODELS = dashboards.generate()
SLO_SERIES = frozenset(
    {c.SLO_OBJECTIVE, c.SLO_ERROR_BUDGET, c.SLO_PERIOD_BURN_RATE, c.SLO_BUDGET_REMAINING}
    | {c.slo_sli_error(w) for w in (*c.SLO_WINDOWS, "30d", "28d", "7d")}
)
ALLOWED = c.known_series_names() | SLO_SERIES
#: Concrete values for Grafana's variables: what a dashboard sends after interpolation.
SUBSTITUTIONS = {
    "$__rate_interval": "30s",
    "$__range": "2m",
    "$__interval": "15s",
    "$service": ".*",
    "$environment": ".*",
    "$instance": ".*",
    "$node": ".*",
    "$namespace": ".*",
    "$funnel": ".*",
    "$slo": ".*",
}


def panels(model: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in model["panels"] if p["type"] != "row"]


def all_targets() -> list[tuple[str, str, dict[str, Any]]]:
    return [(name, p["title"], t) for name, m in MODELS.items() for p in panels(m) for t in p["targets"]]


def substitute(expr: str, **overrides: str) -> str:
    values = {**SUBSTITUTIONS, **{f"${k}": v for k, v in overrides.items()}}
    for var in sorted(values, key=len, reverse=True):  # $__range before $__rate...
        expr = expr.replace(var, values[var])
    assert "$" not in expr, expr
    return expr


_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_KEYWORDS = frozenset(("by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless"))
_KEYWORDS |= {"offset", "inf", "nan"}


def referenced_names(expr: str) -> set[str]:
    """Series names a PromQL expression selects (strings, matchers, ranges and grouping labels removed)."""
    s = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    s = re.sub(r"\{[^}]*\}", "{}", s)
    s = _GROUPING.sub(" ", s)
    s = re.sub(r"\[[^\]]*\]", "[]", s)
    names = set()
    for m in re.finditer(r"(?<![\w.])[a-zA-Z_:][a-zA-Z0-9_:]*", s):
        if s[m.end() :].lstrip().startswith("(") or m.group(0).lower() in _KEYWORDS:
            continue  # a function, an aggregation or an operator keyword
        names.add(m.group(0))
    return names


def variable_selectors(model: dict[str, Any]) -> list[str]:
    """The series selector inside each ``label_values(<selector>, <label>)`` variable query."""
    out = []
    for var in model["templating"]["list"]:
        if var["type"] == "query":
            m = re.fullmatch(r"label_values\((.*), *(\w+)\)", var["definition"])
            assert m, var["definition"]
            out.append(m.group(1))
    return out


# --- structure ----------------------------------------------------------------------------------


def test_five_dashboards_with_stable_unique_uids_and_schema():
    assert sorted(MODELS) == [
        "application-performance.json",
        "business-metrics.json",
        "infrastructure.json",
        "slo.json",
        "system-overview.json",
    ]
    uids = [m["uid"] for m in MODELS.values()]
    assert len(set(uids)) == 5 and all(u.startswith("bakhmach-obs-") and len(u) <= 40 for u in uids)
    again = dashboards.generate()
    assert json.dumps(again, sort_keys=True) == json.dumps(MODELS, sort_keys=True)  # deterministic
    for model in MODELS.values():
        assert model["schemaVersion"] == dashboards.SCHEMA_VERSION
        assert model["title"] and model["description"] and model["time"]["to"] == "now"
        json.dumps(model)  # serialisable


def test_grid_ids_units_descriptions_and_datasources():
    for name, model in MODELS.items():
        ids = [p["id"] for p in model["panels"]]
        assert len(ids) == len(set(ids)), name
        cells: set[tuple[int, int]] = set()
        for p in model["panels"]:
            g = p["gridPos"]
            assert g["x"] >= 0 and g["x"] + g["w"] <= 24 and g["h"] >= 1, (name, p["title"])
            area = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
            assert not cells & area, f"{name}: {p['title']} overlaps another panel"
            cells |= area
        for p in panels(model):
            assert len(p["description"]) > 20, (name, p["title"])
            unit = p["options"]["yAxis"]["unit"] if p["type"] == "heatmap" else p["fieldConfig"]["defaults"]["unit"]
            assert unit, (name, p["title"])
            assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
            assert p["targets"], (name, p["title"])
            for t in p["targets"]:
                assert t["datasource"] == p["datasource"] and t["refId"] and t["expr"]
            if p["type"] == "table":
                assert len(p["fieldConfig"]["overrides"]) == len(p["targets"])


def test_variables_datasource_service_environment_instance():
    for name, model in MODELS.items():
        variables = {v["name"]: v for v in model["templating"]["list"]}
        assert list(variables)[:4] == ["datasource", "service", "environment", "instance"], name
        assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
        for v in list(variables.values())[1:]:
            assert v["includeAll"] and v["allValue"] == ".*" and v["datasource"]["uid"] == "${datasource}"
        assert f"{c.LABEL_DEPLOYMENT_ENVIRONMENT}" in variables["environment"]["definition"]
    # every expression on the service's own metrics is scoped by the three variables
    for _, title, t in all_targets():
        for name in referenced_names(t["expr"]):
            if name in c.emitted_series_names() and "topk" not in t["expr"]:
                assert '$service"' in t["expr"] and '$instance"' in t["expr"] and '$environment"' in t["expr"], title


def test_latency_queries_ask_for_exemplars_and_the_datasource_links_them_to_traces():
    latency = 0
    for name, model in MODELS.items():
        for p in panels(model):
            for t in p["targets"]:
                if p["type"] == "timeseries" and re.search(r"histogram_quantile.*_duration_seconds_bucket", t["expr"]):
                    if c.GC_PAUSE.name in t["expr"] or c.CACHE_DURATION.name in t["expr"]:
                        continue  # no span around a GC pause or an in-process cache lookup: no exemplar
                    assert t["exemplar"] is True, (name, p["title"])
                    latency += 1
    assert latency >= 6
    heatmap = next(p for p in panels(MODELS["application-performance.json"]) if p["type"] == "heatmap")
    assert heatmap["targets"][0]["format"] == "heatmap" and heatmap["targets"][0]["exemplar"]
    assert heatmap["options"]["calculate"] is False
    config = dashboards.prometheus_datasource_json_data("tempo")
    assert config["exemplarTraceIdDestinations"] == [{"name": "trace_id", "datasourceUid": "tempo"}]
    from bakhmach_obs.metrics import _LazyExemplar  # the label the SDK's exemplars carry

    assert "trace_id" in _LazyExemplar(1, 2, 0.1, 0.0).labels


def test_apdex_target_needs_buckets_at_t_and_4t():
    assert dashboards.APDEX_TARGETS == (0.025, 0.25, 2.5)
    for t in dashboards.APDEX_TARGETS:
        assert any(math.isclose(4 * t, b) for b in c.DURATION_BUCKETS)
    with pytest.raises(ConfigurationError) as info:
        dashboards.generate(apdex_target=0.3)
    assert info.value.setting == "apdex_target" and "0.025, 0.25, 2.5" in str(info.value)
    apdex = [
        t["expr"]
        for _, title, t in all_targets()
        if title.startswith("Apdex") and "le=~" in t["expr"]  # default T = 0.25
    ]
    assert apdex and all('le=~"0\\\\.25"' in e and 'le=~"1|1\\\\.0"' in e for e in apdex)
    fast = dashboards.generate(apdex_target=0.025)["application-performance.json"]
    titles = [p["title"] for p in panels(fast)]
    assert "Apdex (T = 0.025 s)" in titles
    assert any('le=~"0\\\\.1"' in t["expr"] for p in panels(fast) for t in p["targets"])


# --- names and parsing ----------------------------------------------------------------------------


def test_name_extraction_finds_every_selected_series_and_nothing_else():
    expr = (
        'histogram_quantile(0.9, sum by (le, job) (rate(a_bucket{le=~"1", x="by (y)"}[5m]))) '
        "/ on (slo) group_left() b:rule:ratio offset 5m + vector(1) and sum without (z) (c_total)"
    )
    assert referenced_names(expr) == {"a_bucket", "b:rule:ratio", "c_total"}


def test_every_expression_references_only_known_series():
    unknown = []
    checked = 0
    for name, title, t in all_targets():
        names = referenced_names(t["expr"])
        assert names, (name, title, t["expr"])
        unknown += [(name, title, n) for n in names - ALLOWED]
        checked += 1
    for name, model in MODELS.items():
        for selector in variable_selectors(model):
            unknown += [(name, "variable", n) for n in referenced_names(selector) - ALLOWED]
    assert checked > 100
    assert not unknown, unknown
    # and the check does reject a name nobody emits
    assert referenced_names("sum(rate(http_requests_total[5m]))") - ALLOWED == {"http_requests_total"}


def test_every_name_from_the_sdk_exists_in_conventions_metrics():
    external = {n for names in c.EXTERNAL_METRICS.values() for n in names}
    used = {n for _, _, t in all_targets() for n in referenced_names(t["expr"])}
    families = {m.name for m in c.METRICS}
    for n in used - external - SLO_SERIES:
        assert any(n == f or n.startswith(f + "_") for f in families), n


def _promtool_check(tmp_path: Path, exprs: list[str]) -> subprocess.CompletedProcess[str]:
    promtool = need_binary("promtool")
    rules = {
        "groups": [
            {"name": "dashboards", "rules": [{"record": f"dashboard:q{i}", "expr": e} for i, e in enumerate(exprs)]}
        ]
    }
    path = tmp_path / "exprs.yml"
    path.write_text(json.dumps(rules))  # JSON is YAML
    return subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)


def test_every_expression_parses_with_promtool(tmp_path):
    exprs = [substitute(t["expr"]) for _, _, t in all_targets()]
    exprs += [substitute(s) for m in MODELS.values() for s in variable_selectors(m)]
    result = _promtool_check(tmp_path, exprs)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(exprs)} rules found" in result.stdout
    broken = _promtool_check(tmp_path, ["sum(rate(x[5m])"])
    assert broken.returncode != 0


# --- what the expressions compute (promtool's PromQL engine on synthetic series) ----------------------


def _query(file_name: str, title: str, index: int = 0, *, apdex_target: float = 0.25) -> str:
    """The PromQL of one panel's query, Grafana variables substituted (a 5-minute rate window and range)."""
    for d in dashboards.dashboards(apdex_target=apdex_target):
        if d.file_name == file_name:
            panel = next(p for p in d.panels() if p.title == title)
            return substitute(panel.queries[index].expr, __rate_interval="5m", __range="5m")
    raise KeyError(file_name)


def _http(route: str, status: str, buckets: dict[str, int]) -> list[dict[str, str]]:
    """Per-minute increments of one label set of the server duration histogram (cumulative buckets)."""
    h = c.HTTP_SERVER_DURATION.name
    labels = f'{c.LABEL_HTTP_ROUTE}="{route}", {c.LABEL_HTTP_STATUS}="{status}"'
    out = [{"series": f'{h}_bucket{{{labels}, le="{le}"}}', "values": f"0+{n}x20"} for le, n in buckets.items()]
    out.append({"series": f"{h}_count{{{labels}}}", "values": f"0+{buckets['+Inf']}x20"})
    return out


def _expect(expr: str, samples: dict[str, float]) -> dict[str, Any]:
    """``expr`` at 10 minutes gives exactly ``samples`` (label set -> value, compared to 6 decimals)."""
    return {
        "expr": f"round(({expr}) * 1000000)",
        "eval_time": "10m",
        "exp_samples": [{"labels": labels, "value": round(v * 1_000_000)} for labels, v in samples.items()],
    }


def test_expressions_compute_apdex_error_ratio_heatmap_and_money_correctly(tmp_path):
    """Exact results of the subtle queries on known traffic, from Prometheus's own engine (promtool)."""
    promtool = need_binary("promtool")
    app, biz = "application-performance.json", "business-metrics.json"
    route = c.LABEL_HTTP_ROUTE
    rev, tx = c.BUSINESS_REVENUE.name, c.BUSINESS_TRANSACTIONS.name
    series = [
        # /a a minute: 6 requests within T = 0.25 s, 3 more within 4T, 1 slower; one fast 500
        *_http("/a", "200", {"0.1": 2, "0.25": 6, "1.0": 9, "+Inf": 10}),
        *_http("/a", "500", {"0.1": 1, "0.25": 1, "1.0": 1, "+Inf": 1}),
        # /boom fails every request, quickly: frustrated all the same (Apdex 0, not absent)
        *_http("/boom", "503", {"0.1": 2, "0.25": 2, "1.0": 2, "+Inf": 2}),
        # /c is scraped by Prometheus 3 / OTLP, which write the bound 1.0 as "1"
        *_http("/c", "200", {"0.1": 0, "0.25": 2, "1": 4, "+Inf": 4}),
        *(
            {"series": f'{rev}{{transaction_type="purchase", currency="{cur}"}}', "values": f"0+{n}x20"}
            for cur, n in (("USD", 1999), ("JPY", 500), ("KWD", 1250), ("XTS", 7))
        ),
        *(
            {"series": f'{tx}{{transaction_type="purchase", currency="{cur}"}}', "values": "0+1x20"}
            for cur in ("USD", "JPY", "KWD", "XTS")
        ),
    ]
    tests = [
        # Apdex = (satisfied + tolerating / 2) / all = (le=T + le=4T) / 2 / all, 5xx frustrated
        _expect(_query(app, "Apdex (T = 0.25 s)"), {"{}": (6 + 9 + 2 + 4) / 2 / 17}),
        _expect(
            _query(app, "Apdex over time", 1),
            {
                f'{{{route}="/a"}}': (6 + 9) / 2 / 11,
                f'{{{route}="/boom"}}': 0.0,
                f'{{{route}="/c"}}': (2 + 4) / 2 / 4,
            },
        ),
        _expect(_query(app, "Error rate"), {"{}": 3 / 17}),
        # the heatmap's cells are per-bucket rates of the cumulative buckets (Grafana de-accumulates)
        _expect(
            _query(app, "Request latency distribution"),
            {
                '{le="0.1"}': 5 / 60,
                '{le="0.25"}': 11 / 60,
                '{le="1.0"}': 12 / 60,
                '{le="1"}': 4 / 60,
                '{le="+Inf"}': 17 / 60,
            },
        ),
        # money in each currency's major unit (ISO 4217 exponent), never added across currencies
        _expect(
            _query(biz, "Revenue in range"),
            {'{currency="USD"}': 99.95, '{currency="JPY"}': 2500, '{currency="KWD"}': 6.25},
        ),
        _expect(_query(biz, "Revenue in range", 1), {'{currency="XTS"}': 35}),  # not in the ISO table: minor units
        _expect(
            _query(biz, "Average transaction value"),
            {'{currency="USD"}': 19.99, '{currency="JPY"}': 500, '{currency="KWD"}': 1.25},
        ),
        _expect(
            _query(biz, "Revenue per hour"),
            {
                f'{{transaction_type="purchase", currency="{cur}"}}': v
                for cur, v in (("USD", 1199.4), ("JPY", 30000), ("KWD", 75))
            },
        ),
    ]
    suite = {"rule_files": [], "evaluation_interval": "1m", "tests": [
        {"interval": "1m", "input_series": series, "promql_expr_test": tests}
    ]}  # fmt: skip
    path = tmp_path / "dashboards_test.yml"
    path.write_text(json.dumps(suite))
    result = subprocess.run([promtool, "test", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_legends_keep_every_grouping_label_and_money_is_never_stacked():
    """Series of a panel differ only by their grouping labels: a legend without one shows look-alike lines."""
    for d in dashboards.dashboards():
        for p in d.panels():
            if p.kind in ("table", "heatmap"):
                continue
            for q in p.queries:
                if not q.legend:
                    continue
                outer = re.match(r"(?:topk\(\d+, |sort_desc\()?(?:sum|max|min|avg) by \(([^)]*)\)", q.expr)
                for label in outer.group(1).split(", ") if outer else ():
                    assert "{{" + label + "}}" in q.legend, (d.file_name, p.title, label, q.legend)
            if any(c.BUSINESS_REVENUE.name in q.expr for q in p.queries):
                assert not p.stacked, (p.title, "amounts in different currencies do not add up")


# --- CLI ------------------------------------------------------------------------------------------


def test_cli_writes_the_dashboards(tmp_path, capsys):
    assert main(["dashboards", "-o", str(tmp_path / "out"), "--apdex-target", "2.5"]) == 0
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert written == sorted(MODELS)
    printed = capsys.readouterr().out.split()
    assert len(printed) == 5
    app = json.loads((tmp_path / "out" / "application-performance.json").read_text())
    assert app == dashboards.generate(apdex_target=2.5)["application-performance.json"]
    assert main(["dashboards", "-o", str(tmp_path / "bad"), "--apdex-target", "0.3"]) == 2
    assert "apdex_target" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists() or not any((tmp_path / "bad").iterdir())


# --- end to end ------------------------------------------------------------------------------------


def _reachable(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def key_queries() -> list[tuple[str, str, dict[str, Any]]]:
    return [(n, title, t) for n, title, t in all_targets() if _is_key(n, title, t)]


def _is_key(name: str, title: str, target: dict[str, Any]) -> bool:
    model = dashboards.dashboards()
    for d in model:
        if d.file_name != name:
            continue
        for p in d.panels():
            if p.title == title:
                return any(q.key and q.expr == target["expr"] for q in p.queries)
    return False


@pytest.mark.services
def test_key_queries_return_data_from_a_real_prometheus(tmp_path):
    from bakhmach_obs import rules
    from bakhmach_obs.slo import SLO
    from tests.dashboards_app import drive, running_shop
    from tests.prometheus_server import PrometheusServer

    need(_reachable(5432), "PostgreSQL is not running on 127.0.0.1:5432")
    need(_reachable(5672), "RabbitMQ is not running on 127.0.0.1:5672")
    slos = [
        SLO(name="shop-availability", service="shop", target=0.99, sli="availability", source="http"),
        SLO(name="shop-latency", service="shop", target=0.95, sli="latency", threshold=0.5, source="http"),
    ]
    rule_file = tmp_path / "rules.yml"
    rule_file.write_text(rules.render("prometheus", slos))
    with running_shop(
        tmp_path,
        pg_dsn="host=127.0.0.1 port=5432 user=postgres dbname=test",
        amqp_url="amqp://guest:guest@127.0.0.1:5672/%2F",
    ) as address:
        with PrometheusServer(
            tmp_path,
            scrape_targets=[address],
            rule_files=[rule_file],
            job="shop",
            extra_args=["--enable-feature=exemplar-storage"],
        ) as prom:
            prom.wait_for_targets_up()
            counts = drive(address, seconds=8)
            assert counts.get("200", 0) > 50 and counts.get("500", 0) > 0 and counts.get("404", 0) > 0
            # the last scrape and a rule evaluation after the traffic
            prom.wait_until(lambda: prom.query_values(f"sum({c.SLO_BUDGET_REMAINING})"), timeout=20, what="SLO rules")
            time.sleep(2)
            keys = key_queries()
            assert len(keys) > 60
            empty = []
            for name, title, t in keys:
                expr = substitute(t["expr"], service="shop", instance=address)
                values = prom.query_values(expr)
                if not values or not any(math.isfinite(v) for v in values):
                    empty.append((name, title, expr))
            assert not empty, "key queries without data:\n" + "\n".join(map(str, empty))
            for model in MODELS.values():  # the variables list the shop
                service, _environment, instance = variable_selectors(model)[:3]
                assert prom.query(substitute(service)), service
                assert prom.query(substitute(instance, service="shop")), instance
            # exemplars of the latency histograms carry the trace id the trace view opens
            now = time.time()
            for spec in (c.HTTP_SERVER_DURATION, c.FUNCTION_CALLS_DURATION, c.DB_CLIENT_DURATION):
                exemplars = prom.api(
                    "query_exemplars", query=f'{spec.name}_bucket{{job="shop"}}', start=str(now - 300), end=str(now)
                )
                ids = [e["labels"].get("trace_id", "") for s in exemplars for e in s["exemplars"]]
                assert ids and all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids), spec.name
