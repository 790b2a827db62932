"""The ``bakhmach-obs`` command line (the demo itself is tested in tests/test_demo.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import bakhmach_obs
from bakhmach_obs.cli import main

ROOT = Path(__file__).resolve().parent.parent


def _clean_env() -> dict[str, str]:
    """The environment without SDK/OTel settings, so a developer's shell cannot change results."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "BAKHMACH_OBS_"))}


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
    assert "RED metrics per route" in proc.stdout
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
