"""A real OTLP/HTTP trace receiver for tests, with fault modes switchable at runtime.

It listens on ``127.0.0.1`` (an ephemeral port) in a background thread, decodes
``ExportTraceServiceRequest`` protobufs POSTed to ``/v1/traces`` (plain, gzip or deflate bodies)
and keeps the spans as plain :class:`ReceivedSpan` records.

Fault modes (``receiver.mode = ...`` at any time):

* ``"ok"``: answer 200 with an empty ``ExportTraceServiceResponse`` and keep the spans;
* ``"503"`` / ``"400"``: answer that status every time (spans are not kept);
* ``"hang"``: read the request, then wait ``hang_seconds`` before answering 200 (spans are kept
  only if the wait ran to its end). ``stop()`` interrupts the wait and closes the connection
  without an answer, so a test never waits for a hang to run out.

``refused_endpoint()`` gives an endpoint nobody listens on (a port that was bound, then closed).

Example::

    with running_receiver() as rx:
        bakhmach_obs.configure(otlp_endpoint=rx.endpoint, traces_exporter="otlp", ...)
        ...
        spans = rx.wait_for_spans(3, timeout=5.0)
"""

from __future__ import annotations

import contextlib
import gzip
import socket
import threading
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1 import trace_pb2

__all__ = ["MODES", "OTLPReceiver", "ReceivedSpan", "refused_endpoint", "running_receiver"]

MODES = ("ok", "503", "400", "hang")
TRACES_PATH = "/v1/traces"
PROTOBUF = "application/x-protobuf"


@dataclass(frozen=True)
class ReceivedSpan:
    """One decoded span, as the collector saw it."""

    name: str
    trace_id: str  #: 32 lowercase hex digits
    span_id: str  #: 16 lowercase hex digits
    parent_span_id: str  #: 16 lowercase hex digits, "" for a root span
    kind: str  #: "INTERNAL", "SERVER", "CLIENT", ... (proto enum name without SPAN_KIND_)
    status_code: str  #: "UNSET", "OK" or "ERROR" (proto enum name without STATUS_CODE_)
    status_message: str
    attributes: dict[str, Any]
    resource_attributes: dict[str, Any]
    events: tuple[str, ...]
    event_attributes: tuple[dict[str, Any], ...] = field(default=())
    scope_name: str = ""


def _value(v: AnyValue) -> Any:
    which = v.WhichOneof("value")
    if which is None:
        return None
    if which == "array_value":
        return [_value(x) for x in v.array_value.values]
    if which == "kvlist_value":
        return {kv.key: _value(kv.value) for kv in v.kvlist_value.values}
    return getattr(v, which)


def _attrs(kvs: Any) -> dict[str, Any]:
    return {kv.key: _value(kv.value) for kv in kvs}


def decode_request(body: bytes) -> list[ReceivedSpan]:
    """Decode a serialized ``ExportTraceServiceRequest`` into span records."""
    request = ExportTraceServiceRequest()
    request.ParseFromString(body)
    spans: list[ReceivedSpan] = []
    for rs in request.resource_spans:
        resource = _attrs(rs.resource.attributes)
        for ss in rs.scope_spans:
            for s in ss.spans:
                spans.append(
                    ReceivedSpan(
                        name=s.name,
                        trace_id=s.trace_id.hex(),
                        span_id=s.span_id.hex(),
                        parent_span_id=s.parent_span_id.hex(),
                        kind=trace_pb2.Span.SpanKind.Name(s.kind).removeprefix("SPAN_KIND_"),
                        status_code=trace_pb2.Status.StatusCode.Name(s.status.code).removeprefix("STATUS_CODE_"),
                        status_message=s.status.message,
                        attributes=_attrs(s.attributes),
                        resource_attributes=resource,
                        events=tuple(e.name for e in s.events),
                        event_attributes=tuple(_attrs(e.attributes) for e in s.events),
                        scope_name=ss.scope.name,
                    )
                )
    return spans


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    receiver: OTLPReceiver


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.0"  # one request per connection: nothing stays open after stop()

    def log_message(self, format: str, *args: Any) -> None:
        return

    def do_POST(self) -> None:
        rx = self.server.receiver
        try:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            rx._record_request(self.path, dict(self.headers.items()))
            if self.path.split("?", 1)[0] != TRACES_PATH:
                self._reply(404, b"")
                return
            mode, hang = rx.mode, rx.hang_seconds
            if mode == "503":
                self._reply(503, b"", {"Content-Type": PROTOBUF})
                return
            if mode == "400":
                self._reply(400, b"", {"Content-Type": PROTOBUF})
                return
            if mode == "hang" and rx._stopped.wait(hang):
                # stop() interrupted the hang: drop the connection without an answer.
                self.close_connection = True
                return
            encoding = (self.headers.get("Content-Encoding") or "").strip().lower()
            try:
                if encoding == "gzip":
                    body = gzip.decompress(body)
                elif encoding == "deflate":
                    body = zlib.decompress(body)
                spans = decode_request(body)
            except Exception as exc:
                rx._record_decode_error(exc)
                self._reply(400, b"", {"Content-Type": PROTOBUF})
                return
            rx._record_spans(spans)
            self._reply(200, ExportTraceServiceResponse().SerializeToString(), {"Content-Type": PROTOBUF})
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError, TimeoutError):
            # The client gave up (its timeout passed during a hang): nothing to answer.
            self.close_connection = True

    def _reply(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body:
            self.wfile.write(body)


class OTLPReceiver:
    """An OTLP/HTTP trace receiver on 127.0.0.1 (ephemeral port) running in a background thread."""

    def __init__(self, mode: str = "ok", *, hang_seconds: float = 30.0) -> None:
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._stopped = threading.Event()
        self._spans: list[ReceivedSpan] = []
        self._requests: list[tuple[str, dict[str, str]]] = []
        self._decode_errors: list[BaseException] = []
        self.hang_seconds = hang_seconds
        self.mode = mode
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # --- configuration ----------------------------------------------------------------------
    @property
    def mode(self) -> str:
        return self._mode

    @mode.setter
    def mode(self, value: str) -> None:
        if value not in MODES:
            raise ValueError(f"unknown receiver mode {value!r}; expected one of {MODES}")
        self._mode = value

    # --- lifecycle --------------------------------------------------------------------------
    def start(self) -> OTLPReceiver:
        server = _Server(("127.0.0.1", 0), _Handler)
        server.receiver = self
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="otlp-receiver", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving; interrupts hanging requests (their connection closes without an answer)."""
        self._stopped.set()
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(5.0)
            self._thread = None

    def __enter__(self) -> OTLPReceiver:
        return self.start() if self._server is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._server is not None, "receiver not started"
        return int(self._server.server_address[1])

    @property
    def endpoint(self) -> str:
        """The full OTLP/HTTP traces URL, ``http://127.0.0.1:PORT/v1/traces``."""
        return f"http://127.0.0.1:{self.port}{TRACES_PATH}"

    # --- what arrived -----------------------------------------------------------------------
    def _record_request(self, path: str, headers: dict[str, str]) -> None:
        with self._changed:
            self._requests.append((path, headers))
            self._changed.notify_all()

    def _record_spans(self, spans: list[ReceivedSpan]) -> None:
        with self._changed:
            self._spans.extend(spans)
            self._changed.notify_all()

    def _record_decode_error(self, exc: BaseException) -> None:
        with self._changed:
            self._decode_errors.append(exc)
            self._changed.notify_all()

    @property
    def spans(self) -> list[ReceivedSpan]:
        """Spans decoded so far (a copy), in arrival order."""
        with self._lock:
            return list(self._spans)

    @property
    def requests(self) -> list[tuple[str, dict[str, str]]]:
        """(path, headers) of every request received so far, whatever the mode answered."""
        with self._lock:
            return list(self._requests)

    @property
    def decode_errors(self) -> list[BaseException]:
        with self._lock:
            return list(self._decode_errors)

    def span(self, name: str) -> ReceivedSpan:
        """The one received span called ``name`` (AssertionError if there are none or several)."""
        found = [s for s in self.spans if s.name == name]
        assert len(found) == 1, f"expected one span {name!r}, got {len(found)}: {[s.name for s in self.spans]}"
        return found[0]

    def clear(self) -> None:
        with self._lock:
            self._spans.clear()
            self._requests.clear()
            self._decode_errors.clear()

    def _wait(self, predicate: Any, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._changed:
            while not predicate():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._changed.wait(remaining)
            return True

    def wait_for_spans(self, n: int, timeout: float = 5.0) -> list[ReceivedSpan]:
        """Wait until at least ``n`` spans arrived; return them all (AssertionError on timeout)."""
        if not self._wait(lambda: len(self._spans) >= n, timeout):
            raise AssertionError(
                f"expected {n} spans within {timeout}s, got {len(self.spans)}: {[s.name for s in self.spans]}"
            )
        return self.spans

    def wait_for_requests(self, n: int, timeout: float = 5.0) -> int:
        """Wait until at least ``n`` requests arrived; return the count (AssertionError on timeout)."""
        if not self._wait(lambda: len(self._requests) >= n, timeout):
            raise AssertionError(f"expected {n} requests within {timeout}s, got {len(self.requests)}")
        return len(self.requests)


@contextlib.contextmanager
def running_receiver(mode: str = "ok", *, hang_seconds: float = 30.0) -> Iterator[OTLPReceiver]:
    """A started :class:`OTLPReceiver`, stopped (hangs interrupted) when the block ends."""
    receiver = OTLPReceiver(mode, hang_seconds=hang_seconds).start()
    try:
        yield receiver
    finally:
        receiver.stop()


def refused_endpoint() -> str:
    """An OTLP/HTTP endpoint that refuses connections: a loopback port that was bound, then closed."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}{TRACES_PATH}"
