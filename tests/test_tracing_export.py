"""Span export over real OTLP/HTTP: what a collector receives, and what happens when it misbehaves.

Every test but the ``force_flush`` unit tests talks to a real OTLP/HTTP receiver
(``tests/otlp_receiver.py``) through the real ``OTLPSpanExporter``: the end-to-end test checks
what the collector decodes; the fault tests check that a refusing, hanging or failing collector
never reaches the application, that ``shutdown()`` keeps its deadline, and that every span that
was not delivered is counted.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import pytest
from opentelemetry import context as otel_context
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import ALWAYS_ON
from prometheus_client import CollectorRegistry

import bakhmach_obs
from bakhmach_obs.dbapi import instrument_connection
from bakhmach_obs.redaction import RedactionPolicy
from bakhmach_obs.tracing import BoundedBatchSpanProcessor

try:  # tests/ as a rootdir-relative directory (pytest's default "prepend" import mode)
    from otlp_receiver import OTLPReceiver, refused_endpoint, running_receiver
except ImportError:  # tests/ as a package
    from tests.otlp_receiver import OTLPReceiver, refused_endpoint, running_receiver

SERVICE = "export-test-service"
ERRORS = "bakhmach_obs_telemetry_errors_total"
DROPPED = "bakhmach_obs_dropped_spans_total"

#: Margin on top of a deadline, for a loaded 2-core CI machine.
MARGIN = 1.0
#: Longest wait for something that happens in a background thread.
SETTLE = 10.0


# --- instrumented application code -----------------------------------------------------------
class PaymentDeclinedError(Exception):
    pass


@bakhmach_obs.instrument
def child_step(x: int) -> int:
    return x + 1


@bakhmach_obs.instrument
def parent_step(x: int) -> int:
    return child_step(x) * 2


@bakhmach_obs.instrument
def failing_step(exc: BaseException) -> None:
    raise exc


# --- helpers -----------------------------------------------------------------------------------
@pytest.fixture(autouse=True)
def _empty_otel_context():
    """Run each test with no current span, whatever an earlier test left attached."""
    token = otel_context.attach(otel_context.Context())
    try:
        yield
    finally:
        otel_context.detach(token)


def configure(endpoint: str, registry: CollectorRegistry, **overrides: Any) -> None:
    settings: dict[str, Any] = {
        "service_name": SERVICE,
        "otlp_endpoint": endpoint,
        "traces_exporter": "otlp",
        "traces_sampler": "always_on",
        "export_timeout": 1.0,
        "shutdown_timeout": 2.0,
        "schedule_delay": 0.05,
        "log_format": "none",
        "registry": registry,
    }
    settings.update(overrides)
    bakhmach_obs.configure(**settings)


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


def exporter_errors(registry: CollectorRegistry) -> float:
    return sample(registry, ERRORS, component="exporter")


def dropped(registry: CollectorRegistry) -> float:
    return sample(registry, DROPPED)


def wait_until(predicate: Callable[[], bool], timeout: float = SETTLE, interval: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def qualified(func: Callable[..., Any]) -> str:
    return f"{func.__module__}.{func.__qualname__}"


# --- end to end --------------------------------------------------------------------------------
def test_spans_reach_a_real_otlp_collector() -> None:
    registry = CollectorRegistry()
    with running_receiver() as rx:
        try:
            configure(rx.endpoint, registry)
            assert parent_step(1) == 4
            err = PaymentDeclinedError("card declined")
            with pytest.raises(PaymentDeclinedError) as raised:
                failing_step(err)
            assert raised.value is err
            assert bakhmach_obs.shutdown() is True
        finally:
            bakhmach_obs.shutdown()
        spans = rx.wait_for_spans(3, timeout=SETTLE)

    assert sorted(s.name for s in spans) == ["child_step", "failing_step", "parent_step"]
    assert rx.decode_errors == []
    parent, child, failed = rx.span("parent_step"), rx.span("child_step"), rx.span("failing_step")

    # parent/child linkage across the wire
    assert child.parent_span_id == parent.span_id
    assert child.trace_id == parent.trace_id
    assert parent.parent_span_id == ""
    assert failed.parent_span_id == ""
    assert failed.trace_id != parent.trace_id
    assert len({s.span_id for s in spans}) == 3
    assert all(len(s.trace_id) == 32 and int(s.trace_id, 16) for s in spans)
    assert all(len(s.span_id) == 16 and int(s.span_id, 16) for s in spans)

    # resource
    for s in spans:
        assert s.resource_attributes["service.name"] == SERVICE
        assert s.resource_attributes["telemetry.distro.name"] == "bakhmach_obs"
        assert s.scope_name == "bakhmach_obs"
        assert s.kind == "INTERNAL"

    # code attributes
    for s, func in ((parent, parent_step), (child, child_step), (failed, failing_step)):
        assert s.attributes["code.function.name"] == qualified(func)
        assert s.attributes["code.namespace"] == func.__module__

    # success vs failure
    assert parent.status_code == child.status_code == "UNSET"
    assert "error.type" not in parent.attributes and parent.events == ()
    error_type = qualified(PaymentDeclinedError)
    assert failed.status_code == "ERROR"
    assert failed.status_message == error_type
    assert failed.attributes["error.type"] == error_type
    assert failed.events == ("exception",)
    event = failed.event_attributes[0]
    assert event["exception.type"] == error_type
    assert event["exception.message"] == "card declined"
    assert "PaymentDeclinedError" in event["exception.stacktrace"]

    # nothing went wrong in the SDK itself
    assert exporter_errors(registry) == 0
    assert dropped(registry) == 0


def test_exception_events_reach_the_collector_redacted_by_the_configured_policy() -> None:
    """``@instrument``, ``span()`` and the DB-API wrapper record one kind of exception event.

    Its message and stack trace go through the policy given to ``configure()``: what the collector
    decodes has neither the token nor the card number, and the three events have the attribute
    names and value types of the SDK's ``Span.record_exception``.
    """
    secret = "Bearer s3cr3t-tok card 4111111111111111"
    registry = CollectorRegistry()
    with running_receiver() as rx:
        try:
            configure(rx.endpoint, registry, redaction=RedactionPolicy(replacement="<cut>"))
            with pytest.raises(PaymentDeclinedError):
                failing_step(PaymentDeclinedError(f"declined by upstream: {secret}"))
            with pytest.raises(PaymentDeclinedError), bakhmach_obs.span("checkout"):
                raise PaymentDeclinedError(f"declined by upstream: {secret}")
            conn = instrument_connection(sqlite3.connect(":memory:"), db_system="sqlite")
            with pytest.raises(sqlite3.OperationalError):
                conn.execute(f"SELECT [{secret}]")  # sqlite: "no such column: Bearer ..."
            conn.close()
            assert bakhmach_obs.shutdown() is True
        finally:
            bakhmach_obs.shutdown()
        spans = rx.wait_for_spans(3, timeout=SETTLE)
    assert sorted(s.name for s in spans) == ["SELECT", "checkout", "failing_step"]
    error_type = qualified(PaymentDeclinedError)
    events = {s.name: s.event_attributes for s in spans}
    for name, (event,) in events.items():
        assert set(event) == {"exception.type", "exception.message", "exception.stacktrace", "exception.escaped"}
        assert event["exception.escaped"] == "True", name  # a string, as the SDK writes it
        for value in event.values():
            assert "s3cr3t-tok" not in value and "4111111111111111" not in value, (name, value)
    for name in ("failing_step", "checkout"):
        (event,) = events[name]
        assert event["exception.type"] == error_type
        assert event["exception.message"] == "declined by upstream: Bearer <cut> card <cut>"
        assert event["exception.stacktrace"].endswith(f"{error_type}: declined by upstream: Bearer <cut> card <cut>\n")
    (db_event,) = events["SELECT"]
    assert db_event["exception.type"] == "sqlite3.OperationalError"
    assert db_event["exception.message"] == "no such column: Bearer <cut> card <cut>"
    assert "Traceback (most recent call last):" in db_event["exception.stacktrace"]
    assert exporter_errors(registry) == 0


def test_gzip_request_is_decoded() -> None:
    """The receiver handles ``Content-Encoding: gzip`` (what collectors commonly get)."""
    from opentelemetry.exporter.otlp.proto.http import Compression
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    with running_receiver() as rx:
        exporter = OTLPSpanExporter(endpoint=rx.endpoint, timeout=2.0, compression=Compression.Gzip)
        provider = TracerProvider(sampler=ALWAYS_ON, shutdown_on_exit=False)
        span = provider.get_tracer("gz").start_span("zipped")
        span.end()
        try:
            assert exporter.export([span]) is SpanExportResult.SUCCESS
        finally:
            exporter.shutdown()
            provider.shutdown()
        assert [s.name for s in rx.wait_for_spans(1)] == ["zipped"]
        assert rx.requests[0][1].get("Content-Encoding") == "gzip"


# --- faults ------------------------------------------------------------------------------------
# (mode, export_timeout, shutdown deadline, what shutdown() must return or None when either is fine).
# The configured shutdown_timeout (2 s) is longer than the deadline given to shutdown() (1 s), so the
# deadline under test is the one passed in.
FAULTS = [
    pytest.param("refused", 1.0, 1.0, None, id="refused"),
    pytest.param("503", 1.0, 1.0, None, id="503"),
    pytest.param("400", 1.0, 1.0, None, id="400"),
    # The collector hangs far longer than every deadline, and the export's own timeout (2 s) is
    # longer than the shutdown deadline (1 s): shutdown() cannot have finished and must say so.
    pytest.param("hang", 2.0, 1.0, False, id="hang"),
]


@pytest.mark.parametrize(("mode", "export_timeout", "deadline", "expect_finished"), FAULTS)
def test_collector_faults_never_reach_the_application(
    mode: str, export_timeout: float, deadline: float, expect_finished: bool | None
) -> None:
    registry = CollectorRegistry()
    receiver = OTLPReceiver("ok" if mode == "refused" else mode, hang_seconds=60.0)
    if mode != "refused":
        receiver.start()
    try:
        endpoint = refused_endpoint() if mode == "refused" else receiver.endpoint
        configure(endpoint, registry, export_timeout=export_timeout, shutdown_timeout=2.0)

        # The first span goes out; with a live receiver, wait until the exporter is busy with it
        # (for "hang": blocked in the request) before timing the application calls below.
        assert parent_step(1) == 4  # two spans
        if mode != "refused":
            receiver.wait_for_requests(1, timeout=SETTLE)

        t0 = time.monotonic()
        assert parent_step(10) == 22  # two spans
        err = PaymentDeclinedError("declined")
        with pytest.raises(PaymentDeclinedError) as raised:
            failing_step(err)  # one span
        call_time = time.monotonic() - t0
        assert raised.value is err
        assert call_time < 0.5, f"application calls took {call_time:.3f}s while the collector is {mode}"
        created = 5

        t0 = time.monotonic()
        finished = bakhmach_obs.shutdown(timeout=deadline)
        elapsed = time.monotonic() - t0
        assert elapsed < deadline + MARGIN, f"shutdown took {elapsed:.3f}s, deadline {deadline}s"
        if expect_finished is not None:
            assert finished is expect_finished

        # Tracing is off after shutdown, and the application still works.
        assert parent_step(2) == 6

        # Every span was lost and every one is counted, exactly once. (Export failures finish
        # in the background, within the export timeout, so wait for the count to settle.)
        if mode == "hang":
            receiver.stop()  # ends the hanging request: the in-flight batch fails now
        assert wait_until(lambda: dropped(registry) >= created), (
            f"dropped={dropped(registry)} errors={exporter_errors(registry)}"
        )
        assert wait_until(lambda: exporter_errors(registry) >= 1), "the failed export was not counted as an error"
        time.sleep(0.2)
        assert dropped(registry) == created
        assert receiver.spans == []
        if mode in ("503", "400"):
            assert len(receiver.requests) >= 1
    finally:
        bakhmach_obs.shutdown(timeout=deadline)
        receiver.stop()


def test_shutdown_without_timeout_uses_the_configured_deadline() -> None:
    registry = CollectorRegistry()
    with running_receiver("hang", hang_seconds=60.0) as rx:
        try:
            configure(rx.endpoint, registry, export_timeout=5.0, shutdown_timeout=0.5)
            assert child_step(1) == 2
            rx.wait_for_requests(1, timeout=SETTLE)
            assert child_step(2) == 3  # queued behind the hanging export
            t0 = time.monotonic()
            bakhmach_obs.shutdown()
            elapsed = time.monotonic() - t0
            # (The return value is not checked: with timeout=None the outer deadline and the
            # processor's own shutdown_timeout are the same, and which one expires first is a race.)
            assert elapsed < 0.5 + MARGIN, f"shutdown took {elapsed:.3f}s with shutdown_timeout=0.5"
            # the queued span is counted when the deadline passes, without waiting for the export
            assert wait_until(lambda: dropped(registry) >= 1, timeout=3.0)
        finally:
            bakhmach_obs.shutdown()


def test_queue_overflow_drops_and_counts_without_slowing_the_application() -> None:
    registry = CollectorRegistry()
    total = 50
    with running_receiver("hang", hang_seconds=60.0) as rx:
        try:
            configure(rx.endpoint, registry, max_queue_size=5, export_timeout=5.0, shutdown_timeout=0.5)
            t0 = time.monotonic()
            for i in range(total):
                with bakhmach_obs.span("burst", index=i):
                    pass
            elapsed = time.monotonic() - t0
            assert elapsed < 0.5, f"creating {total} spans took {elapsed:.3f}s"

            # At most one batch (<= 5) is in flight and at most 5 are queued: the rest are dropped.
            now_dropped = dropped(registry)
            assert total - 10 <= now_dropped <= total, now_dropped
            t0 = time.monotonic()
            bakhmach_obs.shutdown(timeout=1.0)
            assert time.monotonic() - t0 < 1.0 + MARGIN
        finally:
            bakhmach_obs.shutdown()
    # The receiver stopped, so the in-flight batch failed: every span is counted, once.
    assert wait_until(lambda: dropped(registry) >= total), dropped(registry)
    time.sleep(0.2)
    assert dropped(registry) == total
    assert rx.spans == []


def test_shutdown_reports_an_abandoned_flush() -> None:
    registry = CollectorRegistry()
    with running_receiver("hang", hang_seconds=60.0) as rx:
        try:
            configure(rx.endpoint, registry, export_timeout=5.0, shutdown_timeout=0.3)
            assert child_step(1) == 2
            rx.wait_for_requests(1, timeout=SETTLE)
            assert child_step(2) == 3  # queued behind the hanging export: it will be dropped
            finished = bakhmach_obs.shutdown(timeout=3.0)
            assert wait_until(lambda: dropped(registry) >= 1, timeout=3.0)
            assert finished is False, "shutdown() said the flush finished, yet a span was dropped"
        finally:
            bakhmach_obs.shutdown()


# --- BoundedBatchSpanProcessor.force_flush (unit, fake exporter) --------------------------------
class SlowExporter(SpanExporter):
    """Export waits ``delay`` seconds (or until released), then succeeds."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.release = threading.Event()
        self.started = threading.Event()
        self.exported: list[str] = []

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.started.set()
        self.release.wait(self.delay)
        self.exported.extend(s.name for s in spans)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        self.release.set()


def _processor(exporter: SpanExporter, drops: list[int]) -> tuple[BoundedBatchSpanProcessor, TracerProvider]:
    processor = BoundedBatchSpanProcessor(exporter, schedule_delay=30.0, shutdown_timeout=0.5, on_drop=drops.append)
    provider = TracerProvider(sampler=ALWAYS_ON, shutdown_on_exit=False)
    provider.add_span_processor(processor)
    return processor, provider


def _end_span(provider: TracerProvider, name: str) -> None:
    provider.get_tracer("unit").start_span(name).end()


def test_force_flush_honours_its_timeout_against_a_hanging_exporter() -> None:
    exporter, drops = SlowExporter(delay=30.0), []
    processor, provider = _processor(exporter, drops)
    try:
        _end_span(provider, "first")
        t0 = time.monotonic()
        assert processor.force_flush(timeout_millis=300) is False
        elapsed = time.monotonic() - t0
        assert 0.25 <= elapsed < 0.3 + MARGIN, elapsed
        assert exporter.started.is_set()

        exporter.release.set()  # the export completes: the next flush reports success
        assert processor.force_flush(timeout_millis=5000) is True
        assert exporter.exported == ["first"]
        assert drops == []
    finally:
        exporter.release.set()
        processor.shutdown()


def test_force_flush_returns_true_when_the_export_completes() -> None:
    exporter, drops = SlowExporter(delay=0.0), []
    processor, provider = _processor(exporter, drops)
    try:
        _end_span(provider, "a")
        _end_span(provider, "b")
        t0 = time.monotonic()
        assert processor.force_flush(timeout_millis=5000) is True
        assert time.monotonic() - t0 < 0.5 + MARGIN
        assert exporter.exported == ["a", "b"]
    finally:
        processor.shutdown()
    assert drops == []


def test_processor_shutdown_keeps_its_deadline_and_counts_what_is_left() -> None:
    exporter, drops = SlowExporter(delay=30.0), []
    processor, provider = _processor(exporter, drops)
    try:
        _end_span(provider, "in-flight")
        assert processor.force_flush(timeout_millis=100) is False  # the worker is now stuck exporting
        assert exporter.started.wait(SETTLE)
        _end_span(provider, "queued-1")
        _end_span(provider, "queued-2")
        t0 = time.monotonic()
        processor.shutdown()  # shutdown_timeout=0.5
        elapsed = time.monotonic() - t0
        assert elapsed < 0.5 + MARGIN, elapsed
        assert drops == [2]
        _end_span(provider, "after-shutdown")
        assert drops == [2, 1]
    finally:
        exporter.release.set()
