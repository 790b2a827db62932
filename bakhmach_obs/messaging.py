"""Broker-agnostic message instrumentation: a span, metrics and propagation per message.

:func:`publish` wraps sending one message. It starts a PRODUCER span ``publish {destination}``,
yields the headers to attach to the message with the W3C ``traceparent`` (``tracestate``,
``baggage`` when present), the bound correlation id (``x-correlation-id``; a caller's own value
is kept) and the publish time (``x-published-at``, epoch seconds), and on exit records
``messaging_client_sent_messages_total`` and
``messaging_client_operation_duration_seconds{messaging_operation_name="publish"}``.

:func:`consume` wraps processing one received message. It continues the producer's trace from
the headers (a missing or malformed ``traceparent`` starts a new trace; nothing raises), opens a
CONSUMER span ``process {destination}`` made current for the block, binds the message's
correlation id (validated as for HTTP, else a fresh one), counts the message in
``messaging_client_consumed_messages_total`` and records ``messaging_process_duration_seconds``.
An exception raised by the processing sets ``error_type`` (its qualified class name) on the
duration and the span, is recorded on the span as an ``exception`` event (message and stack trace
through the runtime's redaction policy, as for one raised inside :func:`publish`) and is re-raised
unchanged. The consumed counter's ``error_type`` stays empty: the message *was* received; the
processing outcome is in the duration's label (as in OpenTelemetry's messaging conventions).

Header values may be ``str`` or ``bytes`` (AMQP clients return either). Nothing is recorded and
no header is added inside ``bakhmach_obs.suppress()``, while OpenTelemetry's instrumentation
suppression is active, or when the SDK is disabled; :func:`consume` still binds the correlation
id then, so log records stay correlated. Broker adapters (``bakhmach_obs.rabbitmq``) call these
two context managers; use them directly for any other broker.

Example:
    >>> from bakhmach_obs import messaging
    >>> from bakhmach_obs.testing import capture
    >>> with capture() as cap:
    ...     with messaging.publish("orders") as headers:
    ...         message = {"headers": headers, "body": b"{}"}  # hand both to the broker client
    ...     with messaging.consume("orders", message["headers"]):
    ...         pass  # process the message
    >>> producer, consumer = cap.spans()
    >>> producer.name, producer.kind.name, consumer.name, consumer.kind.name
    ('publish orders', 'PRODUCER', 'process orders', 'CONSUMER')
    >>> consumer.parent.span_id == producer.context.span_id
    True
    >>> cap.sample("messaging_client_consumed_messages_total", messaging_destination_name="orders")
    1.0
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from time import perf_counter
from types import TracebackType
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.trace import SpanKind, Status, StatusCode

from . import _runtime
from . import conventions as c
from ._http import correlation_id_from
from .context import CORRELATION_ID, UnitTokens, enter_unit, exit_unit, instrumentation_suppressed
from .logs import exception_type_name
from .metrics import observe_with_exemplar
from .tracing import record_exception

__all__ = [
    "CORRELATION_HEADER",
    "PUBLISHED_AT_HEADER",
    "consume",
    "header_text",
    "message_age",
    "publish",
    "record_operation",
]

#: Header carrying the correlation id from producer to consumer (AMQP header names are case-sensitive).
CORRELATION_HEADER = "x-correlation-id"
#: Header carrying the publish time, in epoch seconds as a decimal string: the basis of queue lag.
PUBLISHED_AT_HEADER = "x-published-at"
#: Most (system, destination) pairs whose consumed-message ages are kept for the depth collector.
_AGE_KEYS_LIMIT = 1000

_PRODUCER = SpanKind.PRODUCER
_CONSUMER = SpanKind.CONSUMER
_EMPTY_CONTEXT = Context()


class _Bound:
    """The metric families and tracer of one runtime, resolved once per ``configure()``."""

    __slots__ = ("consumed", "exemplars", "on", "operation", "process", "rt", "sent", "tracer")

    def __init__(self, rt: _runtime.Runtime) -> None:
        self.rt = rt
        self.on = rt.enabled
        self.tracer = rt.tracer
        self.sent: Any = None
        self.consumed: Any = None
        self.operation: Any = None
        self.process: Any = None
        if rt.metrics_enabled:
            try:
                ms = rt.metric_set
                self.sent = ms.get(c.MESSAGING_SENT)
                self.consumed = ms.get(c.MESSAGING_CONSUMED)
                self.operation = ms.get(c.MESSAGING_OPERATION_DURATION)
                self.process = ms.get(c.MESSAGING_PROCESS_DURATION)
            except Exception as exc:  # noqa: BLE001 - a registry failure must not break messaging
                rt.report_error("metrics", exc)
                self.sent = self.consumed = self.operation = self.process = None
        self.exemplars = rt.exemplars


_binding = _runtime.per_runtime(_Bound)


def _bound() -> _Bound | None:
    """The binding to the current runtime, or None when nothing must be recorded."""
    b = _binding()
    if not b.on or instrumentation_suppressed():
        return None
    return b


# --- headers --------------------------------------------------------------------------------------


def header_text(value: Any) -> str | None:
    """A header value as text: ``str`` as is, UTF-8 ``bytes`` decoded, anything else ``None``.

    Example:
        >>> header_text(b"abc"), header_text("abc"), header_text(b"\\xff"), header_text(3)
        ('abc', 'abc', None, None)
    """
    if isinstance(value, str):
        return value
    if isinstance(value, (bytes, bytearray, memoryview)):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            return None
    return None


def _get(headers: Mapping[Any, Any] | None, name: str) -> str | None:
    """The header ``name`` (exact, else case-insensitive) as text, or None."""
    if not headers:
        return None
    value = headers.get(name)
    if value is None:
        for key, v in headers.items():
            if isinstance(key, str) and key.lower() == name:
                value = v
                break
    return header_text(value)


def message_age(headers: Mapping[Any, Any] | None, now: float | None = None) -> float | None:
    """Seconds since the message was published (its ``x-published-at`` header), or None if unknown.

    Never negative (clock skew between hosts is clamped to 0).

    Example:
        >>> message_age({"x-published-at": "100.0"}, now=130.5)
        30.5
        >>> message_age({"x-published-at": b"not a time"}) is None
        True
    """
    text = _get(headers, PUBLISHED_AT_HEADER)
    if text is None:
        return None
    try:
        published = float(text)
    except ValueError:
        return None
    if published != published or published in (float("inf"), float("-inf")):
        return None
    return max((time.time() if now is None else now) - published, 0.0)


# --- consumed-message ages (read by bakhmach_obs.rabbitmq.QueueDepthCollector) --------------------

_ages: dict[tuple[str, str], float] = {}
_ages_lock = threading.Lock()


def _note_age(system: str, destination: str, age: float) -> None:
    key = (system, destination)
    with _ages_lock:
        previous = _ages.get(key)
        if previous is None:
            if len(_ages) >= _AGE_KEYS_LIMIT:
                return
            _ages[key] = age
        elif age > previous:
            _ages[key] = age


def _take_max_age(system: str, destination: str) -> float | None:
    """The oldest age consumed from ``destination`` since the last call, in this process (then forgotten)."""
    with _ages_lock:
        return _ages.pop((system, destination), None)


# --- recording ------------------------------------------------------------------------------------


def _observe(b: _Bound, child: Any, value: float, span: Any) -> None:
    observe_with_exemplar(child, value, span if b.exemplars else None)


def record_operation(
    operation: str, destination: str, duration: float, *, system: str = "rabbitmq", error_type: str = ""
) -> None:
    """Record one client operation (``receive``, ``ack``...) in ``messaging_client_operation_duration_seconds``.

    For operations other than publishing (which :func:`publish` records itself). Never raises.

    Example:
        >>> from bakhmach_obs.testing import capture
        >>> with capture() as cap:
        ...     record_operation("receive", "orders", 0.002)
        >>> cap.sample("messaging_client_operation_duration_seconds_count", messaging_operation_name="receive")
        1.0
    """
    b = _bound()
    if b is None or b.operation is None:
        return
    try:
        b.operation.labels(system, operation, destination, error_type).observe(duration)
    except Exception as exc:  # noqa: BLE001
        b.rt.report_error("metrics", exc)


def _fail_span(b: _Bound, span: Any, exc: BaseException, error_type: str) -> None:
    try:
        if span.is_recording():
            span.set_attribute(c.ATTR_ERROR_TYPE, error_type)
            record_exception(span, exc, b.rt.redaction, b.rt.report_error)
            span.set_status(Status(StatusCode.ERROR, error_type))
    except Exception as err:  # noqa: BLE001
        b.rt.report_error("tracing", err)


def _end_span(b: _Bound, span: Any) -> None:
    try:
        span.end()
    except Exception as exc:  # noqa: BLE001
        b.rt.report_error("tracing", exc)


def _attributes(
    system: str, operation: str, kind: str, destination: str, message_id: Any, body_size: int | None, cid: str | None
) -> dict[str, Any]:
    attributes: dict[str, Any] = {
        c.ATTR_MESSAGING_SYSTEM: system,
        c.ATTR_MESSAGING_OPERATION: operation,
        c.ATTR_MESSAGING_OPERATION_TYPE: kind,
        c.ATTR_MESSAGING_DESTINATION: destination,
    }
    if message_id is not None:
        text = header_text(message_id)
        attributes[c.ATTR_MESSAGING_MESSAGE_ID] = text if text is not None else str(message_id)
    if body_size is not None:
        attributes[c.ATTR_MESSAGING_BODY_SIZE] = body_size
    if cid is not None:
        attributes[c.ATTR_CORRELATION_ID] = cid
    return attributes


class publish:
    """Context manager around sending one message; yields the headers to send with it.

    Args:
        destination: the exchange, topic or queue the message goes to (a metric label: keep it
            low-cardinality, never a per-message routing key).
        system: ``messaging_system`` label and ``messaging.system`` attribute.
        headers: the message's own headers, updated in place and yielded; a new dict when None.
        message_id: recorded as ``messaging.message.id`` on the span.
        body_size: recorded as ``messaging.message.body.size`` on the span.

    The block is the send itself: its duration is the publish duration and an exception raised
    in it is recorded as ``error_type`` (then re-raised unchanged).

    Example:
        >>> from bakhmach_obs.testing import capture
        >>> with capture() as cap, publish("orders", headers={"x-correlation-id": "own-id"}) as headers:
        ...     sorted(headers)
        ['traceparent', 'x-correlation-id', 'x-published-at']
        >>> headers["x-correlation-id"]
        'own-id'
        >>> cap.sample("messaging_client_sent_messages_total", messaging_destination_name="orders", error_type="")
        1.0
    """

    __slots__ = ("_b", "_span", "_t0", "_token", "body_size", "destination", "headers", "message_id", "system")

    def __init__(
        self,
        destination: str,
        *,
        system: str = "rabbitmq",
        headers: dict[str, Any] | None = None,
        message_id: Any = None,
        body_size: int | None = None,
    ) -> None:
        self.destination = destination
        self.system = system
        self.headers: dict[str, Any] = {} if headers is None else headers
        self.message_id = message_id
        self.body_size = body_size
        self._b: _Bound | None = None
        self._span: Any = None
        self._token: Any = None
        self._t0 = 0.0

    def __enter__(self) -> dict[str, Any]:
        b = _bound()
        headers = self.headers
        if b is None:
            return headers
        self._b = b
        ctx = None
        cid = CORRELATION_ID.get()
        if b.tracer is not None:
            try:
                attributes = _attributes(
                    self.system, "publish", "send", self.destination, self.message_id, self.body_size, cid
                )
                self._span = b.rt.start_span(f"publish {self.destination}", _PRODUCER, attributes)
                ctx = trace.set_span_in_context(self._span)
            except Exception as exc:  # noqa: BLE001 - the message goes out without a span
                b.rt.report_error("tracing", exc)
                self._span = None
        try:
            propagate.inject(headers, context=ctx)
            if cid is not None and CORRELATION_HEADER not in headers:
                headers[CORRELATION_HEADER] = cid
            headers[PUBLISHED_AT_HEADER] = repr(time.time())
        except Exception as exc:  # noqa: BLE001 - the message goes out without (some of) the headers
            b.rt.report_error("messaging", exc)
        if ctx is not None:
            try:
                self._token = otel_context.attach(ctx)
            except Exception as exc:  # noqa: BLE001
                b.rt.report_error("tracing", exc)
        self._t0 = perf_counter()
        return headers

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        b = self._b
        if b is None:
            return
        self._b = None
        duration = perf_counter() - self._t0
        if self._token is not None:
            otel_context.detach(self._token)
            self._token = None
        span = self._span
        error_type = ""
        if exc is not None:
            error_type = exception_type_name(exc)
            if span is not None:
                _fail_span(b, span, exc, error_type)
        if b.sent is not None:
            try:
                b.sent.labels(self.system, self.destination, error_type).inc()
                child = b.operation.labels(self.system, "publish", self.destination, error_type)
                _observe(b, child, duration, span)
            except Exception as err:  # noqa: BLE001
                b.rt.report_error("metrics", err)
        if span is not None:
            _end_span(b, span)


def _parent_context(headers: Mapping[Any, Any] | None) -> Context:
    """The producer's context from the headers; an empty context (a new trace) when there is none."""
    if not headers:
        return _EMPTY_CONTEXT
    carrier: dict[str, str] = {}
    for key, value in headers.items():
        if isinstance(key, str):
            name = key.lower()
            if name in ("traceparent", "tracestate", "baggage"):
                text = header_text(value)
                if text is not None:
                    carrier[name] = text
    if "traceparent" not in carrier:
        return _EMPTY_CONTEXT
    return propagate.extract(carrier, context=_EMPTY_CONTEXT)


class consume:
    """Context manager around processing one received message; yields its correlation id.

    Args:
        destination: the queue (or topic) the message was received from.
        headers: the message's headers (values ``str`` or ``bytes``; ``None`` for none).
        system: ``messaging_system`` label and ``messaging.system`` attribute.
        message_id: recorded as ``messaging.message.id`` on the span.
        body_size: recorded as ``messaging.message.body.size`` on the span.

    Example:
        >>> import bakhmach_obs
        >>> from bakhmach_obs.testing import capture
        >>> headers = {"traceparent": b"00-not-a-valid-header", "x-correlation-id": b"order-42"}
        >>> with capture() as cap:
        ...     with consume("orders", headers) as cid:
        ...         cid == bakhmach_obs.correlation_id() == "order-42"
        True
        >>> cap.spans()[0].parent is None  # a malformed traceparent starts a new trace
        True
    """

    __slots__ = (
        "_b", "_span", "_t0", "_token", "_unit", "body_size", "destination", "headers", "message_id", "system",
    )  # fmt: skip

    def __init__(
        self,
        destination: str,
        headers: Mapping[Any, Any] | None,
        *,
        system: str = "rabbitmq",
        message_id: Any = None,
        body_size: int | None = None,
    ) -> None:
        self.destination = destination
        self.headers = headers
        self.system = system
        self.message_id = message_id
        self.body_size = body_size
        self._b: _Bound | None = None
        self._span: Any = None
        self._token: Any = None
        self._unit: UnitTokens | None = None
        self._t0 = 0.0

    def __enter__(self) -> str:
        headers = self.headers
        try:
            raw = _get(headers, CORRELATION_HEADER)
        except Exception:  # noqa: BLE001 - a headers object that misbehaves: a fresh id
            raw = None
        cid = correlation_id_from(raw)
        self._unit = enter_unit(cid)  # what the handler binds ends with the message
        b = _bound()
        if b is None:
            self._t0 = perf_counter()
            return cid
        self._b = b
        try:
            if b.consumed is not None:
                b.consumed.labels(self.system, self.destination, "").inc()
            age = message_age(headers)
            if age is not None:
                _note_age(self.system, self.destination, age)
        except Exception as exc:  # noqa: BLE001
            b.rt.report_error("metrics", exc)
        if b.tracer is not None:
            try:
                try:
                    parent = _parent_context(headers)
                except Exception as exc:  # noqa: BLE001 - unreadable propagation headers: a new trace
                    b.rt.report_error("tracing", exc)
                    parent = _EMPTY_CONTEXT
                attributes = _attributes(
                    self.system, "process", "process", self.destination, self.message_id, self.body_size, cid
                )
                span = self._span = b.rt.start_span(f"process {self.destination}", _CONSUMER, attributes, parent)
                self._token = otel_context.attach(trace.set_span_in_context(span, parent))
            except Exception as exc:  # noqa: BLE001 - the message is processed without a span
                b.rt.report_error("tracing", exc)
        self._t0 = perf_counter()
        return cid

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        duration = perf_counter() - self._t0
        if self._token is not None:
            otel_context.detach(self._token)
            self._token = None
        if self._unit is not None:
            exit_unit(self._unit)
            self._unit = None
        b = self._b
        if b is None:
            return
        self._b = None
        span = self._span
        error_type = ""
        if exc is not None:
            error_type = exception_type_name(exc)
            if span is not None:
                _fail_span(b, span, exc, error_type)
        if b.process is not None:
            try:
                _observe(b, b.process.labels(self.system, self.destination, error_type), duration, span)
            except Exception as err:  # noqa: BLE001
                b.rt.report_error("metrics", err)
        if span is not None:
            _end_span(b, span)
