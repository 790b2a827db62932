"""The fast sampling path must decide exactly as OpenTelemetry's samplers would."""

from __future__ import annotations

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace.sampling import TraceIdRatioBased
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, TraceFlags

import bakhmach_obs
from bakhmach_obs.testing import capture

LIMIT = (1 << 64) - 1


def _roots(cap, n):
    return [cap.runtime.start_span("root", SpanKind.INTERNAL, None) for _ in range(n)]


def test_root_decision_is_the_trace_id_ratio_rule_and_the_sdk_agrees():
    with capture(traces_sampler="parentbased_traceidratio", traces_sampler_arg=0.25) as cap:
        spans = _roots(cap, 4000)
        sampled = sum(s.is_recording() for s in spans)
        bound = TraceIdRatioBased.get_bound_for_rate(0.25)
        for span in spans:
            ctx = span.get_span_context()
            assert ctx.is_valid
            assert span.is_recording() == (ctx.trace_id & LIMIT < bound)  # same rule, same id
            assert ctx.trace_flags.sampled == span.is_recording()
            span.end()
        assert 800 <= sampled <= 1200  # 25 % of 4000, loosely
        assert len(cap.spans("root")) == sampled  # the SDK exported exactly the sampled ones


@pytest.mark.parametrize(("sampler", "expected"), [("always_on", 50), ("always_off", 0), ("parentbased_always_on", 50)])
def test_fixed_samplers(sampler, expected):
    with capture(traces_sampler=sampler) as cap:
        for span in _roots(cap, 50):
            span.end()
        assert len(cap.spans("root")) == expected


def _parent(sampled):
    flags = TraceFlags(TraceFlags.SAMPLED if sampled else 0)
    return trace.set_span_in_context(NonRecordingSpan(SpanContext(0xABC, 0xDEF, True, flags)))


@pytest.mark.parametrize("sampled", [True, False])
def test_parent_based_follows_the_remote_parent(sampled):
    with capture(traces_sampler="parentbased_traceidratio", traces_sampler_arg=0.0) as cap:
        span = cap.runtime.start_span("child", SpanKind.SERVER, {"a": 1}, _parent(sampled))
        ctx = span.get_span_context()
        assert ctx.trace_id == 0xABC and ctx.span_id not in (0, 0xDEF)
        assert span.is_recording() is sampled
        span.end()
        spans = cap.spans("child")
        assert len(spans) == int(sampled)
        if sampled:
            assert spans[0].parent.span_id == 0xDEF


def test_instrument_children_of_an_unsampled_request_cost_no_sdk_span():
    @bakhmach_obs.instrument(name="inner")
    def inner():
        return trace.get_current_span().get_span_context()

    with capture(traces_sampler="parentbased_always_off") as cap:
        with trace.use_span(NonRecordingSpan(SpanContext(0x123, 0x456, True, TraceFlags(0)))):
            ctx = inner()
        assert ctx.trace_id == 0x123 and ctx.span_id != 0x456  # a real child id, still the same trace
        assert cap.spans() == []
        assert cap.sample("function_calls_total", function="inner", result="ok") == 1.0
