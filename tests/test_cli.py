"""The ``bakhmach-obs`` command line and its ``demo`` subcommand."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

import bakhmach_obs
from bakhmach_obs import _runtime
from bakhmach_obs.cli import main
from bakhmach_obs.demo import histogram_quantile, make_traffic, run_demo

ROOT = Path(__file__).resolve().parent.parent
SEED_LOG_FIELDS = ("timestamp", "service", "level", "message", "correlation_id")
FUNCTIONS = (
    "place_order",
    "validate_cart",
    "reserve_inventory",
    "charge_payment",
    "persist_order",
    "stream_order_lines",
)


def _clean_env() -> dict[str, str]:
    """The environment without SDK/OTel settings, so a developer's shell cannot change results."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "BAKHMACH_OBS_"))}


@pytest.fixture(scope="module")
def summary() -> dict:
    """One JSON demo run shared by the structural tests (50 requests, seed 7)."""
    captured: list[str] = []

    class _Out:
        def write(self, text: str) -> int:
            captured.append(text)
            return len(text)

        def flush(self) -> None:
            return None

    saved, sys.stdout = sys.stdout, _Out()
    try:
        code = main(["demo", "--requests", "50", "--json"])
    finally:
        sys.stdout = saved
    assert code == 0
    return json.loads("".join(captured))


def _walk(node: dict):
    yield node
    for child in node["children"]:
        yield from _walk(child)


# --- demo --json ------------------------------------------------------------------------------


def test_demo_json_via_capsys(capsys):
    assert main(["demo", "--requests", "50", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["requests"] == 50
    assert data["seed"] == 7


def test_call_counts_match_request_count(summary):
    functions = {f["function"]: f for f in summary["functions"]}
    assert tuple(functions) == FUNCTIONS
    for name in ("place_order", "validate_cart", "reserve_inventory", "charge_payment"):
        assert functions[name]["calls"] == 50, name
        assert functions[name]["ok"] + functions[name]["errors"] == functions[name]["calls"]
    charge = functions["charge_payment"]
    declined = summary["orders"]["declined"]
    assert charge["errors"] == declined > 0
    assert charge["error_pct"] == pytest.approx(100.0 * declined / 50, abs=0.01)
    # Only placed orders are persisted and streamed; place_order itself handles the decline.
    assert functions["persist_order"]["calls"] == functions["stream_order_lines"]["calls"] == 50 - declined
    assert functions["place_order"]["errors"] == 0
    assert summary["orders"]["placed"] + declined == 50


def test_declines_follow_the_seed(summary):
    expected = sum(r.card_token == "tok_insufficient_funds" for r in make_traffic(50, 7))
    assert summary["orders"]["declined"] == expected


def test_red_numbers_are_consistent(summary):
    for f in summary["functions"]:
        assert f["rate_per_s"] > 0
        assert f["p50_ms"] is not None
        assert 0 <= f["p50_ms"] <= f["p95_ms"] <= f["p99_ms"], f
        assert f["concurrent"] == 0  # nothing in flight after the run
        assert f["module"] == "bakhmach_obs.demo"
    place = next(f for f in summary["functions"] if f["function"] == "place_order")
    assert 1 <= place["peak_concurrent"] <= 16
    assert summary["elapsed_s"] < 5


def test_sample_trace_is_a_tree_with_the_error(summary):
    trace = summary["trace"]
    assert trace is not None
    assert len(trace["trace_id"]) == 32
    root = trace["root"]
    assert root["name"] == "place_order"
    assert root["parent_span_id"] is None
    nodes = list(_walk(root))
    assert len(nodes) == trace["span_count"] >= 4
    for node in nodes:
        for child in node["children"]:
            assert child["parent_span_id"] == node["span_id"]
    names = {n["name"] for n in nodes}
    assert {"validate_cart", "reserve_inventory", "charge_payment"} <= names
    charge = next(n for n in nodes if n["name"] == "charge_payment")
    assert charge["status"] == "error"
    assert charge["attributes"]["error.type"] == "bakhmach_obs.demo.PaymentError"
    assert charge["attributes"]["exception.message"] == "Insufficient funds"
    assert root["attributes"]["bakhmach.correlation_id"] == trace["correlation_id"]


def test_sample_log_lines_use_the_seed_field_names(summary):
    lines = summary["logs"]
    assert 3 <= len(lines) <= 5
    assert summary["log_lines_total"] > len(lines)
    records = [json.loads(line) for line in lines]
    for record in records:
        for field in SEED_LOG_FIELDS:
            assert field in record, (field, record)
        assert record["service"] == "checkout"
        assert record["timestamp"].endswith("Z")
    errors = [r for r in records if r["level"] == "ERROR"]
    assert errors
    error = errors[0]
    assert error["error"] == "Insufficient funds"
    assert error["error_code"] == "PAYMENT_001"
    assert error["action"] == "payment_processing"
    assert error["user_id"].startswith("user-")
    assert error["correlation_id"] == summary["trace"]["correlation_id"]
    assert error["trace_id"] == summary["trace"]["trace_id"]
    assert isinstance(error["duration_ms"], float)


# --- demo text report ---------------------------------------------------------------------------


def test_demo_text_report(capsys):
    assert main(["demo", "--requests", "30", "--seed", "3", "--concurrency", "4"]) == 0
    out = capsys.readouterr().out
    for heading in ("RED metrics per function", "Sample trace", "Sample log lines", "Next steps"):
        assert heading in out
    assert "charge_payment" in out
    assert "metrics_asgi_app()" in out
    assert len(out.splitlines()) < 60


def test_demo_without_traces_still_reports(capsys):
    assert main(["demo", "--requests", "5", "--sample-ratio", "0"]) == 0
    assert "no trace was sampled" in capsys.readouterr().out


# --- isolation ------------------------------------------------------------------------------------


def test_demo_leaves_global_state_alone():
    before = _runtime.CURRENT[0]
    logger = logging.getLogger("bakhmach_obs.demo")
    state = (logger.level, logger.propagate, list(logger.handlers), list(logging.getLogger().handlers))
    run_demo(requests=5)
    assert _runtime.CURRENT[0] is before
    assert (logger.level, logger.propagate, list(logger.handlers), list(logging.getLogger().handlers)) == state
    assert bakhmach_obs.correlation_id() is None
    assert dict(bakhmach_obs.bound_fields()) == {}


def test_demo_inside_a_capture_records_nothing_there(obs_capture):
    run_demo(requests=5)
    assert obs_capture.sample("function_calls_total", function="place_order", result="ok") is None
    assert obs_capture.spans() == []


async def test_demo_from_a_running_event_loop():
    data = run_demo(requests=5)
    assert data["functions"][0]["calls"] == 5


# --- histogram_quantile ---------------------------------------------------------------------------

INF = float("inf")


def test_histogram_quantile_interpolates_like_promql():
    buckets = [(0.1, 4.0), (0.2, 8.0), (INF, 8.0)]
    assert histogram_quantile(0.5, buckets) == pytest.approx(0.1)
    assert histogram_quantile(0.25, buckets) == pytest.approx(0.05)  # the lowest bucket starts at 0
    assert histogram_quantile(0.75, buckets) == pytest.approx(0.15)
    assert histogram_quantile(1.0, buckets) == pytest.approx(0.2)


def test_histogram_quantile_edges():
    # A rank in the +Inf bucket gives the highest finite bound.
    assert histogram_quantile(0.99, [(0.1, 1.0), (INF, 10.0)]) == 0.1
    assert histogram_quantile(0.5, [(0.1, 0.0), (INF, 0.0)]) is None  # no observations
    assert histogram_quantile(0.5, [(0.1, 3.0)]) is None  # no +Inf bucket
    assert histogram_quantile(0.5, []) is None
    assert histogram_quantile(0.0, [(0.1, 0.0), (0.2, 2.0), (INF, 2.0)]) == pytest.approx(0.1)
    # Unsorted input is fine.
    assert histogram_quantile(0.75, [(INF, 8.0), (0.2, 8.0), (0.1, 4.0)]) == pytest.approx(0.15)
    with pytest.raises(ValueError, match="quantile"):
        histogram_quantile(1.5, [(INF, 1.0)])


# --- the command line -------------------------------------------------------------------------------


def test_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"bakhmach-obs {bakhmach_obs.__version__}"


def test_no_command_prints_help_and_exits_2(capsys):
    assert main([]) == 2
    err = capsys.readouterr().err
    assert "usage: bakhmach-obs" in err
    assert "demo" in err


def test_usage_errors_exit_2(capsys):
    assert main(["demo", "--requests", "0"]) == 2
    assert "positive integer" in capsys.readouterr().err
    assert main(["demo", "--sample-ratio", "2"]) == 2
    assert main(["no-such-command"]) == 2


def test_module_entry_point_runs_the_demo():
    proc = subprocess.run(
        [sys.executable, "-m", "bakhmach_obs.cli", "demo", "--requests", "20"],
        capture_output=True, text=True, timeout=60, env=_clean_env(), check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "RED metrics per function" in proc.stdout
    assert proc.stderr == ""


def test_console_script_is_installed():
    script = Path(sys.executable).with_name("bakhmach-obs")
    if not script.exists():
        pytest.skip("console script not installed next to this interpreter")
    proc = subprocess.run(
        [str(script), "--version"], capture_output=True, text=True, timeout=60, env=_clean_env(), check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("bakhmach-obs ")


def test_quickstart_example_runs():
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "quickstart.py")],
        capture_output=True, text=True, timeout=60, env=_clean_env(), check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    error = next(json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{"))
    assert error["level"] == "ERROR"
    assert error["error_code"] == "PAYMENT_001"
    assert error["correlation_id"] == "req-12345"
    assert error["user_id"] == "user-789"
    assert 'function_calls_total{function="charge",module="__main__",result="error"} 1.0' in proc.stdout
