"""pytest plugin (auto-registered through the ``pytest11`` entry point): the ``obs_capture`` fixture.

Example::

    def test_charge_counts(obs_capture):
        charge(5)
        assert obs_capture.sample("function_calls_total", function="charge", result="ok") == 1
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .testing import Capture, capture

__all__ = ["obs_capture"]


@pytest.fixture
def obs_capture() -> Iterator[Capture]:
    """A :class:`bakhmach_obs.testing.Capture` for the test; global state is restored after."""
    with capture() as cap:
        yield cap
