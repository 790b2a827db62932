"""What the ASGI, WSGI and Django adapters share: options, exclusions, headers, one request's record.

Every adapter does the same five things per request, in one pass: skip excluded paths, continue
the caller's trace and correlation id, count the request as active, and when the response is
complete record the duration and sizes by route, finish the span and write one access-log record.
:class:`ServerCore` holds what is decided once per middleware (options, bound metric families,
caches); :class:`Exchange` holds one request's state.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from contextvars import Token
from random import getrandbits
from re import Pattern
from time import perf_counter
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode, TraceFlags, TraceState
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from . import _runtime
from . import conventions as c
from .context import CORRELATION_ID, FIELDS, SUPPRESSED, UnitTokens, enter_unit, exit_unit
from .logs import JsonFormatter, exception_text, exception_type_name, sole_json_handler
from .metrics import GaugeCell, HistogramCell

__all__ = [
    "DEFAULT_EXCLUDED_PATHS",
    "Exchange",
    "Reentry",
    "ServerCore",
    "correlation_id_from",
    "is_safe_correlation_id",
    "normalize_method",
    "parse_traceparent",
]

#: Health, readiness and metrics endpoints: excluded from metrics, spans and access logs alike.
DEFAULT_EXCLUDED_PATHS = (
    "/health",
    "/health/live",
    "/health/ready",
    "/health/startup",
    "/healthz",
    "/livez",
    "/readyz",
    "/metrics",
)
ACCESS_LOGGER = "bakhmach_obs.access"

_CID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:\-]{0,127}")
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-[ -~]*)?")
_KNOWN = c.HTTP_KNOWN_METHODS
_SERVER = SpanKind.SERVER
_Cancelled = asyncio.CancelledError
_ERROR = StatusCode.ERROR
_attach = otel_context.attach
_detach = otel_context.detach


def normalize_method(method: str) -> str:
    """The method if known, else ``_OTHER`` (OpenTelemetry's rule)."""
    return method if method in _KNOWN else c.HTTP_METHOD_OTHER


def is_safe_correlation_id(value: str) -> bool:
    """1-128 of ``A-Za-z0-9._:-``, starting with a letter or digit: safe in a header and a log line."""
    return _CID.fullmatch(value) is not None


def correlation_id_from(value: str | None) -> str:
    """A client-supplied correlation id if it is safe (:func:`is_safe_correlation_id`), else a fresh one."""
    if value and _CID.fullmatch(value):
        return value
    return "%032x" % getrandbits(128)  # noqa: UP031 - the fastest formatting


def parse_traceparent(traceparent: str | None, tracestate: str | None = None) -> Any:
    """An OpenTelemetry context continuing a valid W3C ``traceparent``, else ``None``. Never raises.

    Follows the W3C rules: version ``ff`` and all-zero ids are invalid, version ``00`` takes no
    extra fields, a higher version's extra fields are ignored, values over 512 characters are
    rejected, and ``tracestate`` is read only when ``traceparent`` is valid.
    """
    if not traceparent or len(traceparent) > 512:
        return None
    match = _TRACEPARENT.fullmatch(traceparent.strip())
    if match is None:
        return None
    version, trace_hex, span_hex, flags, rest = match.groups()
    if version == "ff" or (version == "00" and rest):
        return None
    trace_id, span_id = int(trace_hex, 16), int(span_hex, 16)
    if not trace_id or not span_id:
        return None
    state = None
    if tracestate:
        try:
            state = TraceState.from_header([tracestate[:512]])
        except Exception:  # noqa: BLE001 - a malformed tracestate is dropped, never raised
            state = None
    ctx = SpanContext(trace_id, span_id, is_remote=True, trace_flags=TraceFlags(int(flags, 16)), trace_state=state)
    return trace.set_span_in_context(NonRecordingSpan(ctx))


def _default_propagators() -> bool:
    """True when the global propagator is OTel's default (tracecontext + baggage), parsed here directly."""
    prop = propagate.get_global_textmap()
    if not isinstance(prop, CompositePropagator):
        return isinstance(prop, TraceContextTextMapPropagator)
    kinds = {type(p).__name__ for p in prop._propagators}
    return kinds <= {"TraceContextTextMapPropagator", "W3CBaggagePropagator"}


class _Binding:
    """Metric families and caches bound to one runtime (rebuilt when ``configure()`` runs again)."""

    __slots__ = (
        "access",
        "active",
        "duration",
        "exemplars",
        "fast_propagation",
        "redaction",
        "routes",
        "rt",
        "spans",
        "stream",
    )

    def __init__(self, rt: _runtime.Runtime) -> None:
        self.rt = rt
        self.spans = rt.tracer is not None
        self.exemplars = self.spans and rt.exemplars
        self.redaction = rt.redaction
        self.access = logging.getLogger(ACCESS_LOGGER)
        self.fast_propagation = _default_propagators()
        self.routes: dict[tuple[str, str, int], tuple[HistogramCell, HistogramCell, HistogramCell]] = {}
        self.active: dict[str, GaugeCell] = {}
        self.duration = self.stream = None
        if rt.metrics_enabled:
            ms = rt.metric_set
            self.duration = ms.get(c.HTTP_SERVER_DURATION)
            self.stream = ms.get(c.HTTP_SERVER_STREAM_DURATION)

    def active_cell(self, method: str) -> GaugeCell | None:
        if self.duration is None:
            return None
        cell = self.active.get(method)
        if cell is None:
            cell = self.active[method] = GaugeCell(self.rt.metric_set.get(c.HTTP_SERVER_ACTIVE).labels(method))
        return cell

    def route_cells(self, method: str, route: str, status: int) -> tuple[HistogramCell, HistogramCell, HistogramCell]:
        key = (method, route, status)
        cells = self.routes.get(key)
        if cells is None:
            ms = self.rt.metric_set
            code = str(status)
            cells = (
                HistogramCell(ms.get(c.HTTP_SERVER_DURATION).labels(method, route, code)),
                HistogramCell(ms.get(c.HTTP_SERVER_RESPONSE_SIZE).labels(method, route, code)),
                HistogramCell(ms.get(c.HTTP_SERVER_REQUEST_SIZE).labels(method, route)),
            )
            if len(self.routes) < 4 * self.rt.settings.cardinality_limit:
                self.routes[key] = cells
        return cells


_RECORD_FIELDS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None)))
_process: tuple[int, str | None] = (0, None)


def _access_record(name: str, level: int, args: tuple[Any, ...], extra: dict[str, Any]) -> logging.LogRecord:
    """The record ``logger.info("%s %s %s", *args, extra=extra)`` would make, built in ~1 µs, not ~6.

    ``LogRecord.__init__`` spends most of its time finding the source file, thread, process and
    task names; for the access log the source is known and fixed, so the record is assembled
    directly with every attribute a handler or formatter may read. Custom record factories
    (``logging.setLogRecordFactory``) are honoured by falling back to the standard path.
    """
    global _process
    if logging.getLogRecordFactory() is not logging.LogRecord or (sys.version_info >= (3, 12)):
        record = logging.getLogRecordFactory()(name, level, __file__, 0, "%s %s %s", args, None, "access", None)
        record.__dict__.update(extra)
        return record
    now = _time_ns()
    pid = _getpid()
    if _process[0] != pid:
        mp = sys.modules.get("multiprocessing")
        process_name = "MainProcess"
        if mp is not None:
            with contextlib.suppress(Exception):  # as LogRecord does
                process_name = mp.current_process().name
        _process = (pid, process_name)
    record = _new_record(logging.LogRecord)
    d = record.__dict__
    d.update(_ACCESS_TEMPLATE)
    created = now / 1e9
    d["name"] = name
    d["levelno"] = level
    d["levelname"] = logging.getLevelName(level)
    d["args"] = args
    d["created"] = created
    d["msecs"] = (now % 1_000_000_000) // 1_000_000 + 0.0
    d["relativeCreated"] = (now - _START_NS) / 1e6
    d["thread"] = _get_ident()
    d["threadName"] = _current_thread().name
    d["process"] = pid
    d["processName"] = _process[1]
    d.update(extra)
    return record


def _write_access(
    handler: logging.StreamHandler[Any],
    formatter: JsonFormatter,
    name: str,
    level: int,
    args: tuple[Any, ...],
    extra: dict[str, Any],
) -> None:
    """What ``StreamHandler.emit`` does with the access record, rendered without building it.

    Only for a handler :func:`~bakhmach_obs.logs.sole_json_handler` returned. A failed write goes
    to ``handler.handleError`` with the record, as ``emit`` would.
    """
    now = _time_ns()
    message = "%s %s %s" % args  # noqa: UP031 - exactly the record's msg % args
    line = formatter.format_fields(
        now / 1e9,
        (now % 1_000_000_000) // 1_000_000 + 0.0,
        logging.getLevelName(level),
        name,
        message,
        extra,
    )
    handler.acquire()
    try:
        handler.stream.write(line + handler.terminator)
        handler.flush()
    except RecursionError:
        raise
    except Exception:  # noqa: BLE001 - as StreamHandler.emit: the handler reports it
        handler.handleError(_access_record(name, level, args, extra))
    finally:
        handler.release()


_ACCESS_TEMPLATE = {
    "msg": "%s %s %s",
    "pathname": __file__,
    "filename": "_http.py",
    "module": "_http",
    "exc_info": None,
    "exc_text": None,
    "stack_info": None,
    "lineno": 0,
    "funcName": "access",
}
_new_record = object.__new__
_START_NS = int(logging._startTime * 1e9)  # type: ignore[attr-defined]
_time_ns = time.time_ns
_getpid = os.getpid
_get_ident = threading.get_ident
_current_thread = threading.current_thread


_Tokens = tuple["Token[Context] | None", "Token[str | None]", "Token[Mapping[str, Any]]"]


class Reentry:
    """Makes one request's span, correlation id and bound fields current again for a stretch of work.

    Used around each step of a response body that is produced after the application returned
    (WSGI iterables, Django streaming responses): the context is attached and detached within the
    same call, so it is correct in any thread or task and never leaks when a server forgets
    ``close()``. The bound fields are those the application left bound when it returned.
    """

    __slots__ = ("cid", "ctx", "ex")

    def __init__(self, ex: Exchange) -> None:
        self.ex = ex
        self.cid = ex.cid
        self.ctx = otel_context.get_current() if ex.ctx_token is not None else None

    def enter(self) -> _Tokens:
        fields = self.ex.fields
        return (
            (_attach(self.ctx) if self.ctx is not None else None),
            CORRELATION_ID.set(self.cid),
            FIELDS.set(fields if fields is not None else FIELDS.get()),
        )

    def exit(self, tokens: _Tokens) -> None:
        FIELDS.reset(tokens[2])
        CORRELATION_ID.reset(tokens[1])
        if tokens[0] is not None:
            _detach(tokens[0])


class ServerCore:
    """What one middleware decides once: exclusions, access-log switch, header names, bindings.

    Args:
        exclude_paths: paths excluded from every signal, on top of the defaults.
        exclude_patterns: regular expressions (full match) excluded as well.
        exclude_defaults: keep :data:`DEFAULT_EXCLUDED_PATHS` excluded (default True).
        access_log: write one access-log record per request to ``bakhmach_obs.access``.
        correlation_header: response header echoing the correlation id (``None``: don't echo).
    """

    def __init__(
        self,
        *,
        exclude_paths: Iterable[str] = (),
        exclude_patterns: Iterable[str | Pattern[str]] = (),
        exclude_defaults: bool = True,
        access_log: bool = True,
        correlation_header: str | None = "X-Correlation-ID",
    ) -> None:
        paths = [*(DEFAULT_EXCLUDED_PATHS if exclude_defaults else ()), *exclude_paths]
        self.excluded_paths = frozenset(p.rstrip("/") or "/" for p in paths)
        self.excluded_patterns = tuple(re.compile(p) if isinstance(p, str) else p for p in exclude_patterns)
        self.access_log = access_log
        self.correlation_header = correlation_header
        self._binding: _Binding | None = None
        self._lock = threading.Lock()

    def excluded(self, path: str) -> bool:
        """True when ``path`` is excluded from metrics, spans and access logs."""
        if path in self.excluded_paths:
            return True
        if path[-1:] == "/" and len(path) > 1 and path.rstrip("/") in self.excluded_paths:
            return True
        patterns = self.excluded_patterns
        return bool(patterns) and any(p.fullmatch(path) for p in patterns)

    def binding(self) -> _Binding | None:
        """The binding to the current runtime, or ``None`` when the SDK is off or suppressed."""
        rt = _runtime.CURRENT[0] or _runtime.current()
        b = self._binding
        if b is None or b.rt is not rt:
            with self._lock:
                b = self._binding
                if b is None or b.rt is not rt:
                    b = self._binding = _Binding(rt)
        if not rt.enabled or SUPPRESSED.get():
            return None
        return b


class Exchange:
    """One request: started by an adapter, finished once when its response is complete.

    The adapter calls :meth:`start` before the application, :meth:`response` at the status line,
    :meth:`body` for each body chunk and :meth:`finish` (idempotent) at the end.
    """

    __slots__ = (
        "active",
        "b",
        "bytes_out",
        "chunks",
        "cid",
        "client",
        "content_length_out",
        "ctx_token",
        "deferred_status",
        "done",
        "error",
        "error_type",
        "fields",
        "log_access",
        "method",
        "method_raw",
        "path",
        "query",
        "req_size",
        "route",
        "scheme",
        "server",
        "span",
        "status",
        "stream_t0",
        "t0",
        "unit",
        "user_agent",
        "version",
    )  # fmt: skip

    def __init__(self, binding: _Binding, method: str, path: str, log_access: bool = True) -> None:
        self.b = binding
        self.log_access = log_access
        self.method_raw = method
        self.method = method if method in _KNOWN else c.HTTP_METHOD_OTHER
        self.path = path
        self.status = 0
        self.bytes_out = 0
        self.req_size: int | None = None
        self.route: str | None = None
        self.error_type: str | None = None
        self.error: str | None = None
        self.fields: Mapping[str, Any] | None = None
        self.span: Any = None
        self.stream_t0: float | None = None
        self.chunks = 0
        self.done = False
        self.user_agent: str | None = None
        self.query: str | None = None
        self.scheme: str | None = None
        self.version: str | None = None
        self.server: Any = None
        self.client: Any = None
        self.content_length_out: int | None = None
        #: WSGI: the status line goes out with the first body bytes, so an exception before any
        #: makes the server answer 500 whatever ``start_response`` was given.
        self.deferred_status = False

    def start(self, traceparent: str | None, tracestate: str | None, baggage: str | None, cid: str | None) -> str:
        """Bind the correlation id, start the span (current until :meth:`close`), count as active."""
        b = self.b
        self.cid = correlation_id_from(cid)
        # What the application binds ends with the request: a reused worker thread starts clean.
        self.unit: UnitTokens = enter_unit(self.cid)
        self.ctx_token: object = None
        if b.spans:
            try:
                if b.fast_propagation:
                    parent = parse_traceparent(traceparent, tracestate)
                    if baggage and parent is not None:
                        parent = propagate.extract({"baggage": baggage}, context=parent)
                else:
                    carrier = {k: v for k, v in (("traceparent", traceparent), ("tracestate", tracestate),
                                                 ("baggage", baggage)) if v}  # fmt: skip
                    parent = propagate.extract(carrier)
                span = self.span = b.rt.start_span(self.method, _SERVER, None, parent)
                self.ctx_token = _attach(trace.set_span_in_context(span))
            except Exception as exc:  # noqa: BLE001 - a tracing failure never fails the request
                b.rt.report_error("tracing", exc)
                self.span = None
        active = self.active = b.active_cell(self.method)
        if active is not None:
            active.inc(1)
        self.t0 = perf_counter()
        return self.cid

    def response(self, status: int, content_length: int | None) -> None:
        self.status = status
        self.content_length_out = content_length

    def body(self, size: int, more: bool) -> None:
        """A body chunk was sent; the last one completes the response."""
        self.bytes_out += size
        if size:
            self.chunks += 1
        if more and self.stream_t0 is None and self.content_length_out is None and self.bytes_out:
            # Streaming (chunked, server-sent events): the request latency is the time to first byte.
            self.stream_t0 = perf_counter()
        if not more:
            self.finish(None)

    def finish(self, exc: BaseException | None, route: str | None = None) -> None:
        """Record everything once: metrics by route, the span, the access log."""
        if self.done:
            return
        self.done = True
        end = perf_counter()
        b = self.b
        if route is not None:
            self.route = route
        route = self.route or c.HTTP_ROUTE_UNMATCHED
        if isinstance(exc, _Cancelled):
            # The server cancelled the application (the client went away, a shutdown deadline):
            # not a server error. Without a response yet it is nginx's 499, Client Closed Request.
            exc = None
            if not self.status:
                self.status = c.HTTP_STATUS_CLIENT_CLOSED
        if exc is not None:
            if self.deferred_status and not self.bytes_out:
                self.status = 500
            self.error_type = exception_type_name(exc)
            self.error = exception_text(exc) or self.error_type
            if not self.status:
                self.status = 500
        status = self.status or 500
        if self.chunks < 2:
            self.stream_t0 = None  # one chunk is a body, not a stream: its latency is the full duration
        streaming = self.stream_t0 is not None
        latency = (self.stream_t0 if streaming else end) - self.t0  # type: ignore[operator]
        try:
            if b.duration is not None:
                duration, size_out, size_in = b.route_cells(self.method, route, status)
                i = duration.observe(latency)
                if self.span is not None and b.exemplars:
                    duration.exemplar(i, latency, self.span)
                size_out.observe(self.bytes_out)
                if self.req_size is not None:
                    size_in.observe(self.req_size)
                if streaming:
                    b.stream.labels(self.method, route, str(status)).observe(end - self.t0)  # type: ignore[union-attr]
                if self.active is not None:
                    self.active.inc(-1)
        except Exception as err:  # noqa: BLE001
            b.rt.report_error("metrics", err)
        span = self.span
        if span is not None:
            try:
                if span.is_recording():
                    self._annotate(span, route, status)
            except Exception as err:  # noqa: BLE001
                b.rt.report_error("tracing", err)
        if self.log_access:
            self._access_log(route, status, (end - self.t0) * 1000.0)
        if span is not None:
            span.end()

    def _annotate(self, span: Any, route: str, status: int) -> None:
        attrs: dict[str, Any] = {
            c.ATTR_HTTP_METHOD: self.method,
            c.ATTR_HTTP_ROUTE: route,
            c.ATTR_HTTP_STATUS: status,
            c.ATTR_URL_PATH: self.path,
            c.ATTR_CORRELATION_ID: self.cid,
            c.ATTR_RESPONSE_BODY_SIZE: self.bytes_out,
        }
        if self.method != self.method_raw:
            attrs[c.ATTR_HTTP_METHOD_ORIGINAL] = self.method_raw
        if self.scheme:
            attrs[c.ATTR_URL_SCHEME] = self.scheme
        if self.query:
            attrs[c.ATTR_URL_QUERY] = self.b.redaction.redact_text("?" + self.query)[1:]
        if self.version:
            attrs[c.ATTR_PROTOCOL_VERSION] = self.version
        if self.user_agent:
            attrs[c.ATTR_USER_AGENT] = self.user_agent
        if self.server:
            attrs[c.ATTR_SERVER_ADDRESS], attrs[c.ATTR_SERVER_PORT] = self.server[0], self.server[1]
        if self.client:
            attrs[c.ATTR_CLIENT_ADDRESS] = self.client[0]
        if self.req_size is not None:
            attrs[c.ATTR_REQUEST_BODY_SIZE] = self.req_size
        if self.error_type is not None:
            attrs[c.ATTR_ERROR_TYPE] = self.error_type
        elif status >= 500:
            attrs[c.ATTR_ERROR_TYPE] = str(status)
        span.set_attributes(attrs)
        span.update_name(f"{self.method} {route}" if self.method != c.HTTP_METHOD_OTHER else f"HTTP {route}")
        if status >= 500 or self.error_type is not None:
            span.set_status(Status(_ERROR, self.error_type or str(status)))

    def _access_log(self, route: str, status: int, duration_ms: float) -> None:
        logger = self.b.access
        level = logging.ERROR if status >= 500 else logging.INFO
        if not logger.isEnabledFor(level):
            return
        try:
            extra = {
                "http_method": self.method_raw if len(self.method_raw) <= 16 else self.method,
                "http_route": route,
                "http_status": status,
                "duration_ms": round(duration_ms, 3),
                "path": self.path,
                "user_agent": self.user_agent,
            }
            if self.error_type is not None:
                extra["error"] = self.error or self.error_type
                extra["error_type"] = self.error_type
            args = (self.method, route, status)
            sink = sole_json_handler(logger, level)
            if sink is not None:
                _write_access(sink[0], sink[1], logger.name, level, args, extra)
            else:
                logger.handle(_access_record(logger.name, level, args, extra))
        except Exception as err:  # noqa: BLE001
            self.b.rt.report_error("logging", err)

    def close(self) -> None:
        """Detach the span, restore the correlation id and bound fields (after the application returned)."""
        self.fields = FIELDS.get()
        if self.ctx_token is not None:
            _detach(self.ctx_token)  # type: ignore[arg-type]
        exit_unit(self.unit)


def route_from(route: Any) -> str | None:
    """A framework route object's template (Starlette/FastAPI routes, mounts), or a plain string."""
    if route is None or isinstance(route, str):
        return route
    fmt = getattr(route, "path_format", None)
    if isinstance(fmt, str):
        return fmt
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else None


Resolver = Callable[[dict[str, Any]], "str | None"]
