"""Shared fixtures: fresh registries, global-state isolation and the real-service policy."""

from __future__ import annotations

import logging
import os
import shutil

import pytest
from prometheus_client import CollectorRegistry

from bakhmach_obs import _runtime
from bakhmach_obs.logs import install_logging

REQUIRE_SERVICES = os.environ.get("BAKHMACH_OBS_REQUIRE_SERVICES", "").strip().lower() in ("1", "true", "yes")


def need(condition: bool, reason: str) -> None:
    """Skip when a real service or binary is missing, unless CI requires them (then fail)."""
    if condition:
        return
    if REQUIRE_SERVICES:
        pytest.fail(f"BAKHMACH_OBS_REQUIRE_SERVICES=1 but {reason}")
    pytest.skip(reason)


def need_binary(name: str) -> str:
    path = shutil.which(name)
    need(path is not None, f"`{name}` is not installed (apt-get install prometheus)")
    assert path is not None
    return path


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture(autouse=True)
def _restore_runtime():
    """Every test starts from, and returns to, the runtime (and root log level) in force before it."""
    before = _runtime.CURRENT[0]
    root_level = logging.getLogger().level
    yield
    after = _runtime.CURRENT[0]
    if after is not before:
        if after is not None:
            _runtime._shutdown_provider(after, 2.0)
        _runtime.swap(before)
        install_logging("none", "WARNING")
    logging.getLogger().setLevel(root_level)
