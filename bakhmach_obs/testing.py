"""Test helpers: capture spans, metric samples and log records without touching global state.

``capture()`` installs a throw-away runtime (fresh ``CollectorRegistry``, in-memory span
exporter, always-on sampling) for the block and puts the previous one back afterwards, so tests
never reload modules and never see "Duplicated timeseries". The pytest plugin (registered
automatically when bakhmach-obs is installed) offers it as the ``obs_capture`` fixture.

Example:
    >>> import bakhmach_obs
    >>> from bakhmach_obs.testing import capture
    >>> @bakhmach_obs.instrument
    ... def add(a, b):
    ...     return a + b
    >>> with capture() as cap:
    ...     add(1, 2)
    3
    >>> cap.sample("function_calls_total", function="add", result="ok")
    1.0
    >>> [s.name for s in cap.spans()]
    ['add']
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan
from prometheus_client import CollectorRegistry, generate_latest

from ._runtime import build_runtime, swap
from .config import load_settings

__all__ = ["Capture", "capture"]


class _ListHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.NOTSET)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


class Capture:
    """What a :func:`capture` block recorded."""

    def __init__(self, registry: CollectorRegistry, runtime: Any, handler: _ListHandler) -> None:
        self.registry = registry
        self.runtime = runtime
        self._handler = handler

    def spans(self, name: str | None = None) -> list[ReadableSpan]:
        """Finished spans, oldest first (only those named ``name`` if given)."""
        memory = self.runtime.memory
        spans = list(memory.get_finished_spans()) if memory is not None else []
        return [s for s in spans if name is None or s.name == name]

    def sample(self, name: str, **labels: str) -> float | None:
        """The value of the one sample ``name`` whose labels include ``labels``, or None.

        Unlike ``registry.get_sample_value`` the labels may be a subset; several matches raise.
        """
        found = [
            s.value
            for metric in self.registry.collect()
            for s in metric.samples
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
        ]
        if len(found) > 1:
            raise AssertionError(f"{len(found)} samples of {name} match {labels}; give more labels")
        return found[0] if found else None

    def exposition(self) -> str:
        """The Prometheus text exposition of the captured registry."""
        return generate_latest(self.registry).decode()

    @property
    def records(self) -> list[logging.LogRecord]:
        """Log records emitted during the block (every logger, every level that was enabled)."""
        return self._handler.records

    def clear(self) -> None:
        """Forget spans and log records captured so far (metrics keep their values)."""
        if self.runtime.memory is not None:
            self.runtime.memory.clear()
        self._handler.records.clear()


@contextlib.contextmanager
def capture(**settings: Any) -> Iterator[Capture]:
    """Record into a fresh registry and an in-memory span exporter for the block.

    Keyword arguments are ``configure()`` settings; defaults here are ``service_name="test"``,
    always-on sampling, the ``memory`` exporter, no log handler (records are captured) and no
    process runtime metrics (``runtime_metrics=True`` adds them).
    """
    settings.setdefault("service_name", "test")
    settings.setdefault("traces_sampler", "always_on")
    settings.setdefault("traces_exporter", "memory")
    settings.setdefault("log_format", "none")
    settings.setdefault("runtime_metrics", False)  # process-wide readings; ask for them explicitly
    registry = settings.pop("registry", None) or CollectorRegistry()
    runtime = build_runtime(load_settings(settings), registry)
    handler = _ListHandler()
    root = logging.getLogger()
    root.addHandler(handler)
    previous = swap(runtime)
    try:
        yield Capture(registry, runtime, handler)
    finally:
        swap(previous)
        root.removeHandler(handler)
        if runtime.provider is not None:
            runtime.provider.shutdown()
