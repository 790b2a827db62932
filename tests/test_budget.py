"""The deployment gate, and the whole chain end to end against a real Prometheus.

The end-to-end test serves an instrumented Starlette app with uvicorn (in a thread), lets a real
Prometheus scrape it with the generated rules loaded, injects 5xx errors and slow requests, reads
the recorded SLI ratios through the HTTP API and runs ``bakhmach-obs budget`` against it: the gate
passes while budget is left and fails once it is spent. SLO windows are 5 minutes so it takes
seconds, not days.
"""

from __future__ import annotations

import asyncio
import json
import math
import threading
import time

import httpx
import pytest
import yaml

import bakhmach_obs
from bakhmach_obs import conventions as c
from bakhmach_obs.budget import BudgetStatus, evaluate, exit_code, format_table, to_json
from bakhmach_obs.cli import main
from bakhmach_obs.rules import render
from bakhmach_obs.slo import SLO

from .prometheus_server import PrometheusServer, free_port

AVAILABILITY = SLO(name="shop-availability", service="shop", target=0.9, sli="availability", source="http", window="5m")
LATENCY = SLO(name="shop-latency", service="shop", target=0.5, sli="latency", threshold=0.3, window="5m")
SLO_YAML = """\
defaults: {service: shop, window: 5m}
slos:
  - name: shop-availability
    target: 0.9
    sli: {kind: availability, source: http}
  - name: shop-latency
    target: 50%
    sli: {kind: latency, threshold: 300ms}
"""

EXTRA_YAML = """\
defaults: {service: shop, window: 5m}
slos:
  - name: shop-typo           # the selector matches nothing
    service: shopp
    target: 0.9
    sli: {kind: availability, source: http}
  - name: shop-idle           # requested once, before the window
    feature: /once
    target: 0.9
    sli: {kind: availability, source: http}
"""

# --- the gate's arithmetic and report ----------------------------------------------------------------


def test_status_arithmetic_and_exit_code():
    fine = BudgetStatus(AVAILABILITY, error_ratio=0.025, burn_rates={"1h": 0.25, "6h": None})
    spent = BudgetStatus(AVAILABILITY, error_ratio=0.1, burn_rates={"1h": 1.0})
    quiet = BudgetStatus(LATENCY, error_ratio=None, events=0)
    missing = BudgetStatus(LATENCY, error_ratio=None)  # no series at all
    unrecorded = BudgetStatus(LATENCY, error_ratio=None, events=120)  # traffic, but no ratio (rules not loaded)
    assert math.isclose(fine.consumed, 0.25) and math.isclose(fine.remaining, 0.75)
    assert fine.passes() and fine.passes(0.75) and not fine.passes(0.8)
    assert math.isclose(spent.remaining, 0.0, abs_tol=1e-12) and not spent.passes()  # exactly spent is exhausted
    assert quiet.remaining is None and quiet.no_traffic and quiet.passes(0.99)  # no traffic: nothing spent
    # missing data never passes silently
    assert missing.no_data and unrecorded.no_data and not missing.passes() and not unrecorded.passes()
    assert missing.passes(allow_no_data=True) and not fine.passes(0.8, allow_no_data=True)
    assert exit_code([fine, quiet]) == 0 and exit_code([fine, spent]) == 1 and exit_code([fine], 0.8) == 1
    assert exit_code([fine, missing]) == 1 and exit_code([fine, missing], allow_no_data=True) == 0
    table = format_table([fine, spent, quiet, missing], 0.5).splitlines()
    assert table[0].split() == ["SLO", "SERVICE", "TARGET", "WINDOW", "ERROR", "RATIO", "BUDGET", "LEFT",
                                "BURN", "1h", "BURN", "6h", "STATUS"]  # fmt: skip
    assert table[1].split()[-5:] == ["2.5000%", "75.0%", "0.25x", "-", "ok"]
    assert table[2].endswith("EXHAUSTED") and table[3].endswith("no traffic") and table[4].endswith("NO DATA")
    assert format_table([missing], allow_no_data=True).endswith("no data (allowed)")
    rows = to_json([fine, missing])
    assert rows[0]["budget_remaining"] == pytest.approx(0.75) and rows[0]["status"] == "ok"
    assert (rows[1]["status"], rows[1]["passes"]) == ("NO DATA", False)


def test_unreachable_prometheus_fails_closed(tmp_path, capsys):
    slo = tmp_path / "slo.yaml"
    slo.write_text(SLO_YAML, encoding="utf-8")
    url = f"http://127.0.0.1:{free_port()}"
    assert main(["budget", "--prometheus", url, "--slo", str(slo), "--timeout", "2"]) == 3
    assert "cannot query Prometheus" in capsys.readouterr().err


def test_bad_arguments_exit_2(tmp_path, capsys):
    slo = tmp_path / "slo.yaml"
    slo.write_text(SLO_YAML.replace("0.9", "9"), encoding="utf-8")
    assert main(["budget", "--prometheus", "http://127.0.0.1:1", "--slo", str(slo)]) == 2
    assert f"{slo}:4: slos[0].target" in capsys.readouterr().err
    slo.write_text(SLO_YAML, encoding="utf-8")
    assert main(["budget", "--prometheus", "http://127.0.0.1:1", "--slo", str(slo), "--min-remaining", "2"]) == 2
    assert main(["budget", "--slo", str(slo)]) == 2  # --prometheus is required


# --- end to end --------------------------------------------------------------------------------------


def _app():
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Mount, Route

    async def ok(request):
        return PlainTextResponse("ok")

    async def fail(request):
        return PlainTextResponse("broken", status_code=500)

    async def once(request):
        return PlainTextResponse("once")

    async def slow(request):
        await asyncio.sleep(0.35)
        return PlainTextResponse("slow")

    app = Starlette(
        routes=[
            Route("/ok", ok),
            Route("/fail", fail),
            Route("/slow", slow),
            Route("/once", once),
            Mount("/metrics", bakhmach_obs.metrics_asgi_app()),
        ]
    )
    return bakhmach_obs.asgi.ObservabilityMiddleware(app, access_log=False)


class _Served:
    def __init__(self, app) -> None:
        import uvicorn

        config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started and time.monotonic() < deadline:
            time.sleep(0.01)
        assert self.server.started, "uvicorn did not start"
        port = self.server.servers[0].sockets[0].getsockname()[1]
        return f"127.0.0.1:{port}"

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)


def _drive(client: httpx.Client, **paths: int) -> None:
    from concurrent.futures import ThreadPoolExecutor

    jobs = [path for path, n in paths.items() for _ in range(n)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        codes = list(pool.map(lambda p: client.get(f"/{p}").status_code, jobs))
    assert codes.count(500) == paths.get("fail", 0)


def _budget(capsys, *args: str) -> tuple[int, dict[str, dict]]:
    capsys.readouterr()
    code = main(["budget", *args, "--json"])
    return code, {row["slo"]: row for row in json.loads(capsys.readouterr().out)}


@pytest.mark.services
def test_end_to_end_recorded_ratios_and_the_gate_against_a_real_prometheus(tmp_path, registry, capsys):
    pytest.importorskip("uvicorn")
    pytest.importorskip("starlette")
    bakhmach_obs.configure(
        registry=registry, slos=[AVAILABILITY, LATENCY], service_name="shop", log_format="none", tracing_enabled=False
    )
    slo_file = tmp_path / "slo.yaml"
    slo_file.write_text(SLO_YAML, encoding="utf-8")
    extra = tmp_path / "extra.yaml"  # not in the rules: evaluated from the raw series
    extra.write_text(EXTRA_YAML, encoding="utf-8")
    unrecorded = tmp_path / "unrecorded.yaml"
    unrecorded.write_text(SLO_YAML.replace("shop-availability", "shop-unrecorded"), encoding="utf-8")
    rules = tmp_path / "rules.yml"
    assert main(["rules", "--slo", str(slo_file), "-o", str(rules)]) == 0
    # rules built from the file and from the Python objects are the same
    assert yaml.safe_load(rules.read_text()) == yaml.safe_load(render("prometheus", [AVAILABILITY, LATENCY]))

    def ratio(slo: str) -> float | None:
        values = prom.query_values(f'{c.slo_sli_error("5m")}{{slo="{slo}"}}')
        return values[0] if values and not math.isnan(values[0]) else None

    def settled(slo: str, expected: float, tol: float = 0.004):
        def check():
            value = ratio(slo)
            return value is not None and abs(value - expected) <= tol

        return check

    def scraped(total: int):
        """Prometheus' latest sample holds every request sent so far (no scrape caught a drive midway)."""
        query = f'sum({c.HTTP_SERVER_DURATION.name}_count{{job="shop"}})'
        return lambda: prom.query_values(query) == [float(total)]

    with _Served(_app()) as address, httpx.Client(base_url=f"http://{address}", timeout=10) as client:
        # every series exists before the first scrape, so each later request shows up as an increase;
        # starting the counters well above zero keeps Prometheus' extrapolation the same for every
        # series (it stops extrapolating at zero), so the recorded ratios are exact
        _drive(client, ok=10, fail=10, slow=2, once=1)
        with PrometheusServer(tmp_path, scrape_targets=[address], rule_files=[rules], job="shop") as prom:
            prom.wait_for_targets_up()
            groups = {g["name"] for g in prom.rule_groups()}
            assert {"bakhmach_slo_shop-availability", "bakhmach_critical"} <= groups
            # the latency threshold (not a default bucket) is a bucket boundary of the scraped histogram
            bucket = f'{c.HTTP_SERVER_DURATION.name}_bucket{{job="shop",le="0.3"}}'
            prom.wait_until(lambda: prom.query_values(f"count({bucket})"), what="le=0.3 scraped")
            prom.wait_until(lambda: prom.query(f'{c.slo_sli_error("5m")}{{slo="shop-availability"}}'), what="rules")

            # phase 1: 36 fast and 4 slow successes -> no error, 10% too slow
            _drive(client, ok=36, slow=4)
            prom.wait_until(scraped(63), what="62 requests scraped")
            prom.wait_until(settled("shop-availability", 0.0), what="availability ratio 0")
            prom.wait_until(settled("shop-latency", 0.1), what="latency ratio 0.1")
            code, report = _budget(capsys, "--prometheus", prom.url, "--slo", str(slo_file))
            assert code == 0
            assert report["shop-availability"]["budget_remaining"] == pytest.approx(1.0)
            # missing data fails the gate; a route without requests in the window has spent nothing
            code, report = _budget(capsys, "--prometheus", prom.url, "--slo", str(slo_file), "--slo", str(extra))
            assert code == 1, report
            assert (report["shop-typo"]["status"], report["shop-typo"]["passes"]) == ("NO DATA", False)
            assert report["shop-idle"]["status"] == "no traffic" and report["shop-idle"]["passes"]
            assert report["shop-availability"]["passes"]
            args = ("--prometheus", prom.url, "--slo", str(slo_file), "--slo", str(extra), "--allow-no-data")
            assert _budget(capsys, *args)[0] == 0
            # --recorded without the recording rules of an SLO: no data, not a pass
            code, report = _budget(capsys, "--prometheus", prom.url, "--slo", str(unrecorded), "--recorded")
            assert code == 1 and report["shop-unrecorded"]["status"] == "NO DATA"
            assert report["shop-latency"]["budget_remaining"] == pytest.approx(0.8, abs=0.01)

            # phase 2: 5 failures in 100 requests -> half of a 10% budget spent
            _drive(client, ok=55, fail=5)
            prom.wait_until(scraped(123), what="122 requests scraped")
            prom.wait_until(settled("shop-availability", 0.05), what="availability ratio 0.05")
            code, report = _budget(capsys, "--prometheus", prom.url, "--slo", str(slo_file))
            assert code == 0
            assert report["shop-availability"]["budget_consumed"] == pytest.approx(0.5, abs=0.05)
            assert report["shop-availability"]["burn_rates"]["1h"] == pytest.approx(0.5, abs=0.05)
            code, _ = _budget(capsys, "--prometheus", prom.url, "--slo", str(slo_file), "--min-remaining", "0.6")
            assert code == 1  # the gate's stricter threshold

            # phase 3: 20 more failures -> 25 of 120 requests failed, the budget is gone
            _drive(client, fail=20)
            prom.wait_until(scraped(143), what="142 requests scraped")
            prom.wait_until(settled("shop-availability", 25 / 120), what="availability ratio 25/120")

            def budget_settled():
                # the gate queries the raw series at its own moment: increase() extrapolates each
                # series to the window's edges, which moves a ratio of few events for a scrape or two
                code, report = _budget(capsys, "--prometheus", prom.url, "--slo", str(slo_file))
                ratio = report["shop-availability"]["error_ratio"]
                return (code, report) if ratio is not None and abs(ratio - 25 / 120) <= 0.005 else None

            code, report = prom.wait_until(budget_settled, what="the gate's error ratio 25/120")
            assert code == 1
            row = report["shop-availability"]
            assert row["error_ratio"] == pytest.approx(25 / 120, abs=0.005)
            assert row["budget_remaining"] == pytest.approx(1 - (25 / 120) / 0.1, abs=0.05) and not row["passes"]
            assert report["shop-latency"]["passes"]
            capsys.readouterr()
            assert main(["budget", "--prometheus", prom.url, "--slo", str(slo_file)]) == 1
            table = capsys.readouterr().out
            assert "shop-availability" in table and "EXHAUSTED" in table
            # the recording rules give the same answer as the raw expressions
            recorded = evaluate(prom.url, [AVAILABILITY], recorded=True)[0]
            assert recorded.error_ratio == pytest.approx(25 / 120, abs=0.005)
            assert prom.query_values(f'{c.SLO_BUDGET_REMAINING}{{slo="shop-availability"}}')[0] < 0
