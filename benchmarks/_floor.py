"""Lower bounds: the cheapest conceivable code emitting the same signals, to measure targets against.

Not a product: each implementation here does far less than ``bakhmach_obs`` must, on purpose. What
it costs is a floor that no complete implementation on the same stack (CPython, the stdlib
``logging`` front end, prometheus_client, the OpenTelemetry SDK) can go under. A target below
its floor cannot be met by any implementation; the benchmarks print the floors beside the targets.

* :class:`FloorJsonFormatter`: one dict, ``update`` with the bound fields and the ``extra=``
  attributes, ``orjson.dumps``. No redaction, no span lookup (constant ids), no reserved-field
  protection, no timestamp formatting beyond ``%``, no fallback for unencodable values.
* :class:`FloorASGIMiddleware` / :func:`floor_wsgi`: a correlation id (always fresh, never read
  from a header), one pre-bound duration histogram child and the active-requests gauge, a SERVER
  span for 10 % of requests (``random() < 0.1``, no ``traceparent`` parsing, two attributes),
  one access-log line (``orjson.dumps`` of 8 fields written to a stream, no ``logging``), the
  correlation header echoed. No exclusions, sizes, exemplars, redaction, mount templates,
  error types, streaming detection or failure handling; the WSGI floor buffers the body.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Iterable
from contextvars import ContextVar
from itertools import islice
from time import perf_counter, time
from typing import Any

import orjson
from opentelemetry import context, trace
from prometheus_client import CollectorRegistry, Gauge, Histogram

from bakhmach_obs.context import CORRELATION_ID, FIELDS

_BASE = len(vars(logging.LogRecord("", 0, "", 0, "", (), None)))
_dumps = orjson.dumps
_cid_get = CORRELATION_ID.get
_fields_get = FIELDS.get


class FloorJsonFormatter(logging.Formatter):
    """The seed's JSON fields with none of the work that makes them safe (see the module docs)."""

    def format(self, record: logging.LogRecord) -> str:
        args = record.args
        data: dict[str, Any] = {
            "timestamp": "2026-01-01T00:00:00.%03dZ" % record.msecs,  # noqa: UP031
            "service": "bench",
            "level": record.levelname,
            "message": record.msg % args if args else record.msg,
            "logger": record.name,
            "correlation_id": _cid_get(),
            "trace_id": "0af7651916cd43dd8448eb211c80319c",
            "span_id": "b7ad6b7169203331",
            "trace_flags": "01",
        }
        data.update(_fields_get())
        data.update(islice(record.__dict__.items(), _BASE, None))
        return _dumps(data).decode()


_CID: ContextVar[str | None] = ContextVar("floor_cid", default=None)


class _Signals:
    """What the floor middlewares share: pre-bound metric children, a tracer, an access-log stream."""

    def __init__(self, tracer: trace.Tracer, stream: Any, route: str) -> None:
        registry = CollectorRegistry()
        duration = Histogram("floor_duration_seconds", "d", ["method", "route", "status"], registry=registry)
        active = Gauge("floor_active", "a", ["method"], registry=registry)
        self.route = route
        self.child = duration.labels("GET", route, "200")
        self.active = active.labels("GET")
        self.tracer = tracer
        self.write = stream.write

    def begin(self) -> tuple[str, Any, Any, Any, float]:
        """A fresh correlation id bound, a span for 10 % of requests made current, counted active."""
        cid = "%032x" % random.getrandbits(128)  # noqa: UP031
        token = _CID.set(cid)
        span = self.tracer.start_span("GET", kind=trace.SpanKind.SERVER) if random.random() < 0.1 else None
        ctx_token = context.attach(trace.set_span_in_context(span)) if span is not None else None
        self.active.inc()
        return cid, token, span, ctx_token, perf_counter()

    def end(self, began: tuple[str, Any, Any, Any, float], status: Any, path: Any) -> None:
        """Duration observed, span ended, one access line written, the correlation id unbound."""
        cid, token, span, ctx_token, t0 = began
        elapsed = perf_counter() - t0
        self.child.observe(elapsed)
        self.active.dec()
        if span is not None:
            span.set_attributes({"http.route": self.route, "http.response.status_code": status})
            span.end()
            context.detach(ctx_token)
        line = {"timestamp": time(), "level": "INFO", "message": "GET", "correlation_id": cid, "http_route": self.route,
                "http_status": status, "duration_ms": elapsed * 1000.0, "path": path}  # fmt: skip
        self.write(_dumps(line).decode() + "\n")
        _CID.reset(token)


class FloorASGIMiddleware:
    """The least an all-signals ASGI middleware can do (see the module docs)."""

    def __init__(self, app: Any, *, tracer: trace.Tracer, stream: Any, route: str) -> None:
        self.app = app
        self.s = _Signals(tracer, stream, route)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        s = self.s
        began = s.begin()
        status = 0
        echo = (b"x-correlation-id", began[0].encode())

        async def send_wrapper(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message = {**message, "headers": [*message["headers"], echo]}
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            s.end(began, status, scope["path"])


def floor_wsgi(app: Callable[..., Iterable[bytes]], *, tracer: trace.Tracer, stream: Any, route: str) -> Any:
    """The least an all-signals WSGI middleware can do (see the module docs)."""
    s = _Signals(tracer, stream, route)

    def middleware(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        began = s.begin()
        status: list[str] = []

        def sr(st: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            status.append(st)
            return start_response(st, [*headers, ("X-Correlation-ID", began[0])], exc_info)

        try:
            result = app(environ, sr)
            try:
                body = list(result)  # buffered: the cheapest way to know when the response ends
            finally:
                close = getattr(result, "close", None)
                if close is not None:
                    close()
        finally:
            s.end(began, int(status[0][:3]) if status else 500, environ.get("PATH_INFO"))
        return body

    return middleware
