from __future__ import annotations

import asyncio
import inspect
import logging
import sys
import threading
import time

import pytest
from opentelemetry import trace
from opentelemetry.trace import SpanKind, StatusCode
from prometheus_client.openmetrics.exposition import generate_latest as openmetrics_latest

import bakhmach_obs
from bakhmach_obs import instrument
from bakhmach_obs.redaction import DEFAULT_POLICY, RedactionPolicy
from bakhmach_obs.testing import capture
from bakhmach_obs.tracing import record_exception

MODULE = __name__


class PaymentError(Exception):
    error_code = "PAYMENT_001"


# --- the callable-kind matrix -----------------------------------------------------------------


@instrument
def plain(x):
    """Plain docstring."""
    return x * 2


@instrument
async def coro(x):
    await asyncio.sleep(0)
    return x * 2


@instrument
def gen(n):
    yield from range(n)
    return "done"


@instrument
async def agen(n):
    for i in range(n):
        await asyncio.sleep(0)
        yield i


class Service:
    @instrument
    def method(self, x):
        return (self, x)

    @instrument
    async def amethod(self, x):
        return (self, x)

    @instrument
    def gmethod(self, n):
        yield from range(n)

    @instrument
    @classmethod
    def cmethod(cls, x):
        return (cls, x)

    @classmethod
    @instrument
    def cmethod_inner(cls, x):
        return (cls, x)

    @instrument
    @staticmethod
    def smethod(x):
        return x

    @staticmethod
    @instrument
    async def asmethod(x):
        return x


def run(awaitable):
    return asyncio.run(awaitable)


async def collect(aiter):
    return [i async for i in aiter]


KINDS = [
    ("plain", lambda: plain(2), 4),
    ("coro", lambda: run(coro(2)), 4),
    ("gen", lambda: list(gen(3)), [0, 1, 2]),
    ("agen", lambda: run(collect(agen(3))), [0, 1, 2]),
    ("Service.method", lambda: Service().method(1)[1], 1),
    ("Service.amethod", lambda: run(Service().amethod(1))[1], 1),
    ("Service.gmethod", lambda: list(Service().gmethod(2)), [0, 1]),
    ("Service.cmethod", lambda: Service.cmethod(1), (Service, 1)),
    ("Service.cmethod_inner", lambda: Service().cmethod_inner(1), (Service, 1)),
    ("Service.smethod", lambda: Service.smethod(5), 5),
    ("Service.asmethod", lambda: run(Service().asmethod(5)), 5),
]


@pytest.mark.parametrize(("function", "call", "expected"), KINDS, ids=[k[0] for k in KINDS])
def test_every_callable_kind_emits_three_signals(function, call, expected):
    with capture() as cap:
        assert call() == expected
        labels = {"function": function, "module": MODULE}
        assert cap.sample("function_calls_total", **labels, result="ok") == 1.0
        assert cap.sample("function_calls_total", **labels, result="error") == 0.0
        assert cap.sample("function_calls_duration_seconds_count", **labels) == 1.0
        assert cap.sample("function_calls_concurrent", **labels) == 0.0
        (span,) = cap.spans(function)
        assert span.kind is SpanKind.INTERNAL
        assert span.attributes["code.function.name"] == f"{MODULE}.{function}"
        assert span.attributes["code.namespace"] == MODULE
        assert span.status.status_code is StatusCode.UNSET


def test_method_binding_passes_the_instance():
    svc = Service()
    with capture():
        assert svc.method(3)[0] is svc
        assert run(svc.amethod(3))[0] is svc


@pytest.mark.parametrize(
    ("func", "kind"),
    [
        (plain, "function"),
        (coro, "coroutine"),
        (gen, "generator"),
        (agen, "asyncgen"),
    ],
)
def test_wrapper_keeps_signature_doc_wrapped_and_inspect_kind(func, kind):
    checks = {
        "function": lambda f: not inspect.iscoroutinefunction(f) and not inspect.isgeneratorfunction(f),
        "coroutine": inspect.iscoroutinefunction,
        "generator": inspect.isgeneratorfunction,
        "asyncgen": inspect.isasyncgenfunction,
    }
    assert checks[kind](func)
    assert checks[kind](func.__wrapped__)
    assert inspect.signature(func) == inspect.signature(func.__wrapped__)
    assert func.__name__ == func.__wrapped__.__name__
    assert func.__doc__ == func.__wrapped__.__doc__
    assert plain.__doc__ == "Plain docstring."


def test_classmethod_and_staticmethod_stay_descriptors():
    assert isinstance(Service.__dict__["cmethod"], classmethod)
    assert isinstance(Service.__dict__["smethod"], staticmethod)
    assert inspect.iscoroutinefunction(Service.asmethod)


# --- failures ---------------------------------------------------------------------------------


@instrument(action="payment_processing")
def charge(amount):
    raise PaymentError("Insufficient funds")


@instrument
async def acharge():
    raise PaymentError("Insufficient funds")


@instrument
def gen_fails():
    yield 1
    raise PaymentError("mid-stream")


@instrument
async def agen_fails():
    yield 1
    raise PaymentError("mid-stream")


async def drain(aiter):
    return [i async for i in aiter]


@pytest.mark.parametrize(
    ("function", "call"),
    [
        ("charge", lambda: charge(5)),
        ("acharge", lambda: run(acharge())),
        ("gen_fails", lambda: list(gen_fails())),
        ("agen_fails", lambda: run(drain(agen_fails()))),
    ],
)
def test_failure_reraises_same_exception_and_records_everything(function, call):
    with capture() as cap:
        with pytest.raises(PaymentError) as info:
            call()
        exc = info.value
        assert type(exc) is PaymentError
        assert exc.__cause__ is None and exc.__context__ is None  # no wrapping
        assert str(exc) in ("Insufficient funds", "mid-stream")

        labels = {"function": function, "module": MODULE}
        assert cap.sample("function_calls_total", **labels, result="error") == 1.0
        assert cap.sample("function_calls_total", **labels, result="ok") == 0.0
        assert cap.sample("function_calls_duration_seconds_count", **labels) == 1.0
        assert cap.sample("function_calls_concurrent", **labels) == 0.0

        (span,) = cap.spans(function)
        assert span.status.status_code is StatusCode.ERROR
        assert span.attributes["error.type"] == f"{MODULE}.PaymentError"
        assert [e.name for e in span.events] == ["exception"]

        (record,) = [r for r in cap.records if r.levelno == logging.ERROR]
        assert record.name == MODULE
        assert record.error == str(exc)
        assert record.error_type == f"{MODULE}.PaymentError"
        assert record.error_code == "PAYMENT_001"
        assert record.duration_ms >= 0
        ctx = span.get_span_context()
        assert record.trace_id == f"{ctx.trace_id:032x}"
        assert record.span_id == f"{ctx.span_id:016x}"
        assert record.exc_info[1] is exc


def test_failure_log_carries_action():
    with capture() as cap:
        with pytest.raises(PaymentError):
            charge(1)
        (record,) = cap.records
        assert record.action == "payment_processing"


def test_action_is_bound_for_logs_inside_the_call():
    seen = {}

    @instrument(action="export")
    def work():
        seen.update(bakhmach_obs.bound_fields())

    with capture():
        work()
    assert seen == {"action": "export"}
    assert "action" not in bakhmach_obs.bound_fields()


def test_exception_without_error_code_has_no_error_code():
    @instrument
    def boom():
        raise KeyError("k")

    with capture() as cap:
        with pytest.raises(KeyError):
            boom()
        (record,) = cap.records
        assert not hasattr(record, "error_code")
        assert record.error_type == "KeyError"


def test_record_error_if_marks_returned_value_as_error():
    @instrument(record_error_if=lambda result: result is None)
    def lookup(found):
        return "x" if found else None

    with capture() as cap:
        assert lookup(True) == "x"
        assert lookup(False) is None
        labels = {"function": "test_record_error_if_marks_returned_value_as_error.<locals>.lookup"}
        assert cap.sample("function_calls_total", **labels, result="ok") == 1.0
        assert cap.sample("function_calls_total", **labels, result="error") == 1.0
        errored = [s for s in cap.spans() if s.status.status_code is StatusCode.ERROR]
        assert len(errored) == 1 and errored[0].attributes["error.type"] == "_OTHER"


def test_record_success_if_counts_expected_exceptions_as_ok_but_still_raises():
    @instrument(name="fetch", record_success_if=lambda exc: isinstance(exc, LookupError))
    def fetch():
        raise LookupError("not found is fine")

    with capture() as cap:
        with pytest.raises(LookupError):
            fetch()
        assert cap.sample("function_calls_total", function="fetch", result="ok") == 1.0
        assert cap.sample("function_calls_total", function="fetch", result="error") == 0.0
        assert not cap.records


def test_a_raising_predicate_never_breaks_the_call():
    @instrument(name="pred", record_error_if=lambda r: 1 / 0)
    def f():
        return 7

    with capture() as cap:
        assert f() == 7
        assert cap.sample("bakhmach_obs_telemetry_errors_total", component="instrument") == 1.0
        assert cap.sample("function_calls_total", function="pred", result="ok") == 1.0


def test_cancellation_is_recorded_and_propagates():
    started = asyncio.Event

    @instrument(name="slow")
    async def slow():
        await asyncio.sleep(10)

    async def main():
        task = asyncio.create_task(slow())
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    assert started  # keeps the name used
    with capture() as cap:
        run(main())
        assert cap.sample("function_calls_total", function="slow", result="error") == 1.0
        assert cap.sample("function_calls_concurrent", function="slow") == 0.0


# --- durations and concurrency ------------------------------------------------------------------


def test_generator_duration_covers_iteration_not_creation():
    @instrument(name="streamer")
    def streamer():
        for i in range(3):
            time.sleep(0.02)
            yield i

    with capture() as cap:
        it = streamer()
        assert cap.sample("function_calls_concurrent", function="streamer") is None  # not started
        assert next(it) == 0
        assert cap.sample("function_calls_concurrent", function="streamer") == 1.0
        assert list(it) == [1, 2]
        total = cap.sample("function_calls_duration_seconds_sum", function="streamer")
        assert total >= 0.055
        assert cap.sample("function_calls_concurrent", function="streamer") == 0.0


def test_async_duration_covers_the_await():
    @instrument(name="sleeper")
    async def sleeper():
        await asyncio.sleep(0.05)

    with capture() as cap:
        coroutine = sleeper()
        time.sleep(0.05)  # creation-to-await gap must not count
        run(coroutine)
        total = cap.sample("function_calls_duration_seconds_sum", function="sleeper")
        assert 0.045 <= total < 0.095


def test_generator_send_throw_and_close_are_forwarded():
    log = []

    @instrument(name="echo")
    def echo():
        try:
            received = None
            while True:
                try:
                    received = yield received
                    log.append(("got", received))
                except ValueError as exc:
                    log.append(("caught", str(exc)))
                    received = "recovered"
        finally:
            log.append(("closed",))

    with capture() as cap:
        g = echo()
        assert next(g) is None
        assert g.send("a") == "a"
        assert g.throw(ValueError("x")) == "recovered"
        g.close()
        assert log == [("got", "a"), ("caught", "x"), ("closed",)]
        assert cap.sample("function_calls_total", function="echo", result="ok") == 1.0
        assert cap.sample("function_calls_concurrent", function="echo") == 0.0


def test_generator_return_value_passes_through():
    def consume():
        return (yield from gen(2))

    with capture():
        g = consume()
        assert list(g) == [0, 1]
        g2 = consume()
        next(g2)
        next(g2)
        with pytest.raises(StopIteration) as stop:
            next(g2)
        assert stop.value.value == "done"


def test_async_generator_asend_athrow_aclose():
    @instrument(name="aecho")
    async def aecho():
        received = None
        while True:
            try:
                received = yield received
            except ValueError:
                received = "recovered"

    async def main():
        g = aecho()
        assert await g.asend(None) is None
        assert await g.asend("a") == "a"
        assert await g.athrow(ValueError("x")) == "recovered"
        await g.aclose()

    with capture() as cap:
        run(main())
        assert cap.sample("function_calls_total", function="aecho", result="ok") == 1.0
        assert cap.sample("function_calls_concurrent", function="aecho") == 0.0


def test_generator_span_is_current_only_inside_the_body():
    seen = {}

    @instrument(name="producer")
    def producer():
        seen["inside"] = trace.get_current_span().get_span_context().span_id
        yield 1
        seen["inside_again"] = trace.get_current_span().get_span_context().span_id

    with capture() as cap:
        it = producer()
        next(it)
        seen["consumer"] = trace.get_current_span().get_span_context().span_id
        list(it)
        (span,) = cap.spans("producer")
        assert seen["inside"] == seen["inside_again"] == span.get_span_context().span_id
        assert seen["consumer"] != span.get_span_context().span_id


def test_concurrent_gauge_counts_calls_in_flight():
    gate = threading.Event()
    entered = threading.Barrier(4)

    @instrument(name="blocking")
    def blocking():
        entered.wait(5)
        gate.wait(5)

    with capture() as cap:
        threads = [threading.Thread(target=blocking) for _ in range(3)]
        for t in threads:
            t.start()
        entered.wait(5)
        assert cap.sample("function_calls_concurrent", function="blocking") == 3.0
        gate.set()
        for t in threads:
            t.join(5)
        assert cap.sample("function_calls_concurrent", function="blocking") == 0.0


def test_thread_hammer_counts_exactly():
    @instrument(name="hammered")
    def hammered():
        return 1

    def worker():
        for _ in range(2000):
            hammered()

    with capture(traces_sampler="always_off") as cap:
        threads = [threading.Thread(target=worker) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert cap.sample("function_calls_total", function="hammered", result="ok") == 16000.0
        assert cap.sample("function_calls_duration_seconds_count", function="hammered") == 16000.0
        assert cap.sample("function_calls_concurrent", function="hammered") == 0.0


# --- spans ----------------------------------------------------------------------------------------


def test_nested_calls_make_parent_and_child_spans():
    @instrument(name="child")
    def child():
        return 1

    @instrument(name="parent")
    def parent():
        return child() + 1

    with capture() as cap:
        assert parent() == 2
        (p,) = cap.spans("parent")
        (c,) = cap.spans("child")
        assert c.parent.span_id == p.context.span_id
        assert c.context.trace_id == p.context.trace_id


def test_constant_attributes_and_correlation_id_on_span():
    from bakhmach_obs.context import set_correlation_id

    @instrument(name="tagged", attributes={"shop.region": "eu"})
    def tagged():
        return None

    with capture() as cap:
        with bakhmach_obs.log_context():
            set_correlation_id("req-12345")
            tagged()
            set_correlation_id(None)
        (s,) = cap.spans("tagged")
        assert s.attributes["shop.region"] == "eu"
        assert s.attributes["bakhmach.correlation_id"] == "req-12345"


def test_exemplars_carry_trace_and_span_ids_in_openmetrics():
    with capture() as cap:
        plain(1)
        (span,) = cap.spans("plain")
        text = openmetrics_latest(cap.registry).decode()
        trace_id = f"{span.context.trace_id:032x}"
        span_id = f"{span.context.span_id:016x}"
        lines = [
            ln for ln in text.splitlines() if ln.startswith("function_calls_duration_seconds_bucket") and "#" in ln
        ]
        assert lines, text
        assert f'trace_id="{trace_id}"' in lines[0] and f'span_id="{span_id}"' in lines[0]


def test_no_exemplar_when_the_span_is_not_sampled():
    with capture(traces_sampler="always_off") as cap:
        plain(1)
        text = openmetrics_latest(cap.registry).decode()
        assert "trace_id" not in text
        assert cap.sample("function_calls_total", function="plain", result="ok") == 1.0


# --- switches -------------------------------------------------------------------------------------


def test_suppress_turns_everything_off_inside():
    with capture() as cap:
        with bakhmach_obs.suppress():
            assert plain(1) == 2
            assert bakhmach_obs.is_suppressed()
        assert not bakhmach_obs.is_suppressed()
        # binding pre-creates the series at zero; nothing was recorded
        assert cap.sample("function_calls_total", function="plain", result="ok") == 0.0
        assert cap.spans() == []
        plain(1)
        assert cap.sample("function_calls_total", function="plain", result="ok") == 1.0


def test_disabled_sdk_runs_code_untouched():
    with capture(disabled=True) as cap:
        assert plain(1) == 2
        with pytest.raises(PaymentError):
            charge(1)
        assert cap.sample("function_calls_total", function="plain") is None
        assert cap.spans() == []
        assert cap.records == []


def test_tracing_off_still_records_metrics():
    with capture(tracing_enabled=False) as cap:
        plain(1)
        assert cap.sample("function_calls_total", function="plain", result="ok") == 1.0
        assert cap.spans() == []


def test_metrics_off_still_traces():
    with capture(metrics_enabled=False) as cap:
        plain(1)
        assert cap.sample("function_calls_total", function="plain", result="ok") is None
        assert [s.name for s in cap.spans()] == ["plain"]


def test_decorated_before_configure_follows_later_configure():
    with capture() as first:
        plain(1)
    with capture() as second:
        plain(1)
        plain(1)
    assert first.sample("function_calls_total", function="plain", result="ok") == 1.0
    assert second.sample("function_calls_total", function="plain", result="ok") == 2.0


def test_configure_twice_is_safe(registry):
    a = bakhmach_obs.configure(service_name="one", registry=registry, log_format="none", traces_exporter="memory")
    plain(1)
    b = bakhmach_obs.configure(service_name="two", registry=registry, log_format="none", traces_exporter="memory")
    plain(1)
    assert (a.service_name, b.service_name) == ("one", "two")
    assert (
        registry.get_sample_value("function_calls_total", {"function": "plain", "module": MODULE, "result": "ok"})
        == 2.0
    )
    build = [s for m in registry.collect() if m.name == "bakhmach_obs_build_info" for s in m.samples]
    assert [s.labels["service_name"] for s in build] == ["two"]


def test_instrument_rejects_non_callables_at_decoration_time():
    with pytest.raises(TypeError, match="callable"):
        instrument(42)


# --- context managers ---------------------------------------------------------------------------


def test_span_context_manager():
    with capture() as cap:
        with bakhmach_obs.span("load-config", source="file") as s:
            s.set_attribute("entries", 3)
            inner = trace.get_current_span()
        (span,) = cap.spans("load-config")
        assert inner is s
        assert span.attributes["source"] == "file" and span.attributes["entries"] == 3
        assert cap.sample("function_calls_total", function="load-config") is None  # spans only

        with pytest.raises(RuntimeError), bakhmach_obs.span("broken"):
            raise RuntimeError("x")
        (broken,) = cap.spans("broken")
        assert broken.status.status_code is StatusCode.ERROR
        assert broken.attributes["error.type"] == "RuntimeError"


def test_operation_context_manager_emits_three_signals():
    with capture() as cap:
        with bakhmach_obs.operation("rebuild-index", shard=3):
            pass
        with pytest.raises(PaymentError), bakhmach_obs.operation("rebuild-index"):
            raise PaymentError("no")
        labels = {"function": "rebuild-index", "module": MODULE}
        assert cap.sample("function_calls_total", **labels, result="ok") == 1.0
        assert cap.sample("function_calls_total", **labels, result="error") == 1.0
        assert cap.sample("function_calls_duration_seconds_count", **labels) == 2.0
        spans = cap.spans("rebuild-index")
        assert [s.status.status_code for s in spans] == [StatusCode.UNSET, StatusCode.ERROR]
        assert spans[0].attributes["shard"] == 3
        assert [r.error_code for r in cap.records] == ["PAYMENT_001"]


def test_operation_works_in_async_code():
    async def main():
        async with bakhmach_obs.operation("async-block"):
            await asyncio.sleep(0)

    with capture() as cap:
        run(main())
        assert cap.sample("function_calls_total", function="async-block", result="ok") == 1.0


def test_telemetry_failure_is_caught_counted_and_never_raised(monkeypatch):
    with capture() as cap:
        plain(1)  # binds the cells

        class BrokenLock:
            def __enter__(self):
                raise OSError("mmap full")

            def __exit__(self, *exc):
                return False

        site_cells = cap.runtime.call_cells("plain", MODULE)  # the very cells the wrapper holds
        monkeypatch.setattr(site_cells, "lock", BrokenLock())
        assert plain(2) == 4
        with pytest.raises(PaymentError):
            charge(1)
        # plain: start and stop failed; charge has its own cells and recorded normally
        assert cap.sample("bakhmach_obs_telemetry_errors_total", component="instrument") == 2.0
        assert cap.sample("function_calls_total", function="charge", result="error") == 1.0


def test_span_attributes_go_through_the_redaction_policy():
    @instrument(name="with-secret", attributes={"api_key": "k-123", "db.password": "hunter2", "region": "eu"})
    def f():
        return 1

    with capture() as cap:
        f()
        with bakhmach_obs.span("block", authorization="Bearer abc", route="/x"):
            pass
        (s,) = cap.spans("with-secret")
        assert s.attributes["api_key"] == "[REDACTED]" and s.attributes["db.password"] == "[REDACTED]"
        assert s.attributes["region"] == "eu"
        (b,) = cap.spans("block")
        assert b.attributes["authorization"] == "[REDACTED]" and b.attributes["route"] == "/x"
    with capture(redact_keys="region") as cap:
        f()
        assert cap.spans("with-secret")[0].attributes["region"] == "[REDACTED]"


# --- exception events go through the redaction policy ------------------------------------------

TOKEN = "s3cr3t-tok"
CARD = "4111111111111111"
CAUSE_TOKEN = "c4use-tok"
SECRET_MESSAGE = f"upstream said: Authorization: Bearer {TOKEN} card {CARD}"
SECRETS = (TOKEN, CARD, CAUSE_TOKEN, "4111-1111")
NOTES = sys.version_info >= (3, 11)  # exception notes (and their place in tracebacks)


class UpstreamError(RuntimeError):
    pass


def _raise_upstream():
    try:
        raise KeyError(f"retry after Bearer {CAUSE_TOKEN}")
    except KeyError as cause:
        err = UpstreamError(SECRET_MESSAGE)
        if NOTES:
            err.add_note(f"card on file {CARD[:4]}-{CARD[4:8]}-{CARD[8:12]}-{CARD[12:]}")
        raise err from cause


@instrument(name="leaky-sync")
def leaky_sync():
    _raise_upstream()


@instrument(name="leaky-async")
async def leaky_async():
    await asyncio.sleep(0)
    _raise_upstream()


@instrument(name="leaky-gen")
def leaky_gen():
    yield 1
    _raise_upstream()


@instrument(name="leaky-agen")
async def leaky_agen():
    yield 1
    _raise_upstream()


def _leaky_span():
    with bakhmach_obs.span("leaky-span", route="/pay"):
        _raise_upstream()


def _leaky_operation():
    with bakhmach_obs.operation("leaky-operation"):
        _raise_upstream()


async def _leaky_async_span():
    async with bakhmach_obs.span("leaky-async-span"):
        _raise_upstream()


async def _leaky_async_operation():
    async with bakhmach_obs.operation("leaky-async-operation"):
        await asyncio.sleep(0)
        _raise_upstream()


LEAKY = [
    ("leaky-sync", leaky_sync),
    ("leaky-async", lambda: run(leaky_async())),
    ("leaky-gen", lambda: list(leaky_gen())),
    ("leaky-agen", lambda: run(collect(leaky_agen()))),
    ("leaky-span", _leaky_span),
    ("leaky-operation", _leaky_operation),
    ("leaky-async-span", lambda: run(_leaky_async_span())),
    ("leaky-async-operation", lambda: run(_leaky_async_operation())),
]


@pytest.mark.parametrize(("name", "call"), LEAKY, ids=[k[0] for k in LEAKY])
def test_exception_event_is_redacted_and_keeps_the_rest(name, call):
    with capture() as cap:
        with pytest.raises(UpstreamError) as info:
            call()
        assert str(info.value) == SECRET_MESSAGE  # the caller still gets the untouched exception
        (span,) = cap.spans(name)
        assert span.status.status_code is StatusCode.ERROR
        (event,) = span.events
        assert event.name == "exception"
        attributes = dict(event.attributes)
        # the attribute names and shape the OpenTelemetry SDK's Span.record_exception produces
        assert set(attributes) == {"exception.type", "exception.message", "exception.stacktrace", "exception.escaped"}
        assert attributes["exception.escaped"] == "True"
        for value in attributes.values():
            for secret in SECRETS:
                assert secret not in str(value), (secret, value)
        assert attributes["exception.type"] == f"{MODULE}.UpstreamError"
        assert attributes["exception.message"] == "upstream said: Authorization: Bearer [REDACTED] card [REDACTED]"
        stack = attributes["exception.stacktrace"]
        assert stack.startswith("Traceback (most recent call last):")
        assert "_raise_upstream" in stack  # frames stay
        assert "The above exception was the direct cause" in stack  # so does the chain
        assert "KeyError: 'retry after Bearer [REDACTED]'" in stack
        assert "card on file [REDACTED]" in stack or not NOTES  # notes too
        assert f"{MODULE}.UpstreamError: upstream said: Authorization: Bearer [REDACTED] card [REDACTED]" in stack
        # every other event attribute on every span is clean as well
        for any_span in cap.spans():
            for ev in any_span.events:
                assert not any(s in str(v) for v in ev.attributes.values() for s in SECRETS)


def test_exception_event_failure_is_counted_and_never_raised(monkeypatch):
    class BrokenPolicy(RedactionPolicy):
        def redact_text(self, text):
            raise RuntimeError("policy down")

    with capture() as cap:
        monkeypatch.setattr(cap.runtime, "redaction", BrokenPolicy())
        with pytest.raises(UpstreamError):
            leaky_sync()
        with pytest.raises(UpstreamError):
            _leaky_span()
        for name in ("leaky-sync", "leaky-span"):
            (span,) = cap.spans(name)
            assert span.events == ()  # nothing unredacted was recorded instead
            assert span.status.status_code is StatusCode.ERROR  # the rest of the failure still is
            assert span.attributes["error.type"] == f"{MODULE}.UpstreamError"
        assert cap.sample("bakhmach_obs_telemetry_errors_total", component="tracing") == 2.0


def test_record_exception_helper_on_a_non_recording_span_does_nothing():
    record_exception(trace.INVALID_SPAN, RuntimeError(SECRET_MESSAGE), DEFAULT_POLICY)  # no error
