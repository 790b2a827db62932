"""bakhmach_obs.messaging: broker-agnostic publish/consume, offline (a dict is the message)."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

import bakhmach_obs
from bakhmach_obs import messaging
from bakhmach_obs.testing import capture


class ProcessingError(Exception):
    pass


def test_consumer_span_is_child_of_producer_and_correlation_id_travels():
    with capture() as cap:
        with bakhmach_obs.correlation_scope("req-1"), messaging.publish("orders", message_id="m-1") as headers:
            pass
        assert headers["x-correlation-id"] == "req-1"
        with messaging.consume("orders", headers, message_id="m-1") as cid:
            assert cid == bakhmach_obs.correlation_id() == "req-1"
        assert bakhmach_obs.correlation_id() is None
    producer, consumer = cap.spans()
    assert producer.name == "publish orders" and producer.kind.name == "PRODUCER"
    assert consumer.name == "process orders" and consumer.kind.name == "CONSUMER"
    assert consumer.context.trace_id == producer.context.trace_id
    assert consumer.parent.span_id == producer.context.span_id
    assert consumer.attributes["messaging.message.id"] == "m-1"
    assert consumer.attributes["bakhmach.correlation_id"] == "req-1"
    assert producer.attributes["messaging.operation.type"] == "send"


def test_counts_are_exact_and_error_type_is_recorded_then_reraised():
    with capture() as cap:
        messages = []
        for _ in range(5):
            with messaging.publish("q") as headers:
                messages.append(dict(headers))
        for i, headers in enumerate(messages):
            if i == 0:
                error = ProcessingError("boom")
                with pytest.raises(ProcessingError) as info, messaging.consume("q", headers):
                    raise error
                assert info.value is error
            else:
                with messaging.consume("q", headers):
                    pass
    assert cap.sample("messaging_client_sent_messages_total", messaging_destination_name="q", error_type="") == 5
    assert cap.sample("messaging_client_consumed_messages_total", messaging_destination_name="q", error_type="") == 5
    name = "messaging_process_duration_seconds_count"
    assert cap.sample(name, error_type="") == 4
    assert cap.sample(name, error_type=f"{__name__}.ProcessingError") == 1
    failed = [s for s in cap.spans("process q") if s.status.status_code.name == "ERROR"]
    assert len(failed) == 1 and failed[0].attributes["error.type"] == f"{__name__}.ProcessingError"


def test_publish_error_is_recorded_and_reraised():
    with capture() as cap:
        with pytest.raises(ConnectionError), messaging.publish("q"):
            raise ConnectionError("broker gone")
    assert cap.sample("messaging_client_sent_messages_total", error_type="ConnectionError") == 1
    assert cap.sample("messaging_client_operation_duration_seconds_count", messaging_operation_name="publish") == 1


@pytest.mark.parametrize(
    "traceparent",
    [
        b"garbage",
        "00-" + "0" * 32 + "-" + "1" * 16 + "-01",
        b"\xff\xfe",
        12345,
        "ff-" + "a" * 32 + "-" + "b" * 16 + "-01",
    ],
)
def test_malformed_traceparent_starts_a_new_trace(traceparent):
    with capture() as cap:
        with bakhmach_obs.span("ambient"), messaging.consume("q", {"traceparent": traceparent}):
            pass
    process = cap.spans("process q")[0]
    assert process.parent is None
    assert process.context.trace_id != cap.spans("ambient")[0].context.trace_id


def test_bytes_headers_and_invalid_correlation_id():
    with capture() as cap:
        with messaging.publish("q") as headers:
            pass
        raw = {k: v.encode() for k, v in headers.items()}
        raw["x-correlation-id"] = b"bad id with spaces"
        with messaging.consume("q", raw) as cid:
            assert cid != "bad id with spaces" and len(cid) == 32
    producer, consumer = cap.spans()
    assert consumer.parent.span_id == producer.context.span_id


def test_message_age_from_header():
    with messaging.publish("q") as headers:
        pass
    age = messaging.message_age(headers)
    assert age is not None and 0 <= age < 5
    assert messaging.message_age({"x-published-at": str(time.time() - 60)}) >= 60
    assert messaging.message_age(None) is None
    assert messaging.message_age({"x-published-at": "nan"}) is None


def test_suppressed_and_disabled_record_nothing_but_consume_binds_correlation():
    with capture() as cap:
        with bakhmach_obs.suppress():
            with messaging.publish("q") as headers:
                pass
            assert headers == {}
            with messaging.consume("q", {"x-correlation-id": "abc"}) as cid:
                assert bakhmach_obs.correlation_id() == cid == "abc"
    assert cap.spans() == []
    assert cap.sample("messaging_client_sent_messages_total") is None
    with capture(disabled=True) as cap:
        with messaging.publish("q") as headers, messaging.consume("q", headers):
            pass
    assert headers == {} and cap.spans() == []


def test_caller_headers_are_updated_in_place_and_own_correlation_id_kept():
    own = {"x-correlation-id": "mine", "custom": "1"}
    with capture(), bakhmach_obs.correlation_scope("bound"), messaging.publish("q", headers=own) as headers:
        assert headers is own
    assert own["x-correlation-id"] == "mine" and own["custom"] == "1" and "traceparent" in own


def test_import_bakhmach_obs_does_not_import_brokers():
    code = "import sys, bakhmach_obs, bakhmach_obs.messaging, bakhmach_obs.rabbitmq; " \
        "print(sorted(m for m in ('pika', 'aio_pika', 'aiormq') if m in sys.modules))"  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_fields_bound_while_handling_a_message_end_with_it():
    with capture(), bakhmach_obs.log_context(worker="w1"):
        with messaging.publish("orders") as headers:
            pass
        with messaging.consume("orders", headers):
            bakhmach_obs.bind(order_id="o-1")
            assert dict(bakhmach_obs.bound_fields()) == {"worker": "w1", "order_id": "o-1"}
        assert dict(bakhmach_obs.bound_fields()) == {"worker": "w1"}


#: An exception message quoting a bearer token and a card number (both must never reach a span).
SECRET_MESSAGE = "charge failed: Bearer s3cr3t-tok, card 4111 1111 1111 1111 declined"


def _event_texts(spans) -> list[str]:
    return [str(value) for s in spans for e in s.events for value in (e.attributes or {}).values()]


def _charge() -> None:
    try:
        raise ValueError("gateway said: Bearer s3cr3t-tok")
    except ValueError as cause:
        raise ProcessingError(SECRET_MESSAGE) from cause


def test_exception_events_are_redacted_for_publish_and_consume():
    with capture() as cap:
        with pytest.raises(ProcessingError), messaging.publish("pay") as headers:
            raise ProcessingError(SECRET_MESSAGE)
        with pytest.raises(ProcessingError, match="s3cr3t-tok"), messaging.consume("pay", headers):
            _charge()  # the application's exception is untouched
    spans = cap.spans("publish pay") + cap.spans("process pay")
    assert len(spans) == 2
    for span in spans:
        (event,) = span.events
        assert event.name == "exception"
        attributes = event.attributes
        assert attributes["exception.type"] == f"{__name__}.ProcessingError"
        assert attributes["exception.message"] == "charge failed: Bearer [REDACTED], card [REDACTED] declined"
        assert "ProcessingError: charge failed: Bearer [REDACTED]" in attributes["exception.stacktrace"]
    assert "ValueError: gateway said: Bearer [REDACTED]" in spans[1].events[0].attributes["exception.stacktrace"]
    texts = _event_texts(spans)
    assert texts and not [t for t in texts if "s3cr3t-tok" in t or "4111 1111" in t]
