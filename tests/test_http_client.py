"""Outgoing HTTP calls (httpx sync/async, requests) against a real local HTTP server.

The server echoes the request headers it received as JSON, so every test checks what actually went
over the wire (``traceparent``, ``X-Correlation-ID``) against the span the client recorded.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
import requests
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.instrumentation.utils import (
    is_http_instrumentation_enabled,
    suppress_http_instrumentation,
    suppress_instrumentation,
)
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, StatusCode, TraceFlags, TraceState
from prometheus_client import CollectorRegistry
from requests.adapters import HTTPAdapter

import bakhmach_obs
from bakhmach_obs import http_client
from bakhmach_obs.http_client import (
    STATUS_NO_RESPONSE,
    httpx_async_transport,
    httpx_transport,
    instrument_httpx,
    instrument_requests,
    uninstrument_requests,
)
from bakhmach_obs.logs import exception_type_name
from bakhmach_obs.testing import Capture, capture

try:  # tests/ as a rootdir-relative directory (pytest's default "prepend" import mode)
    from otlp_receiver import running_receiver
except ImportError:  # tests/ as a package
    from tests.otlp_receiver import running_receiver

DURATION = "http_client_request_duration_seconds"
COUNT = DURATION + "_count"
HOST = "127.0.0.1"
#: Secrets put in every URL: userinfo and two signed-URL query keys.
SECRETS = ("user:pass", "secret", "sig=s2")
QUERY = "?X-Amz-Signature=secret&sig=s2&page=1"
SLOW_BODY_DELAY = 0.4


# --- the server -------------------------------------------------------------------------------------
class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"  # one request per connection: nothing stays open after a test

    def log_message(self, format: str, *args: Any) -> None:
        return

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        path = self.path.split("?", 1)[0]
        headers = {k.lower(): v for k, v in self.headers.items()}
        self.server.seen.append((self.command, path, headers))  # type: ignore[attr-defined]
        if path == "/redirect":
            self.send_response(302)
            self.send_header("Location", "/status/200")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = json.dumps({"method": self.command, "path": path, "headers": headers}).encode()
        status = int(path.rsplit("/", 1)[1]) if path.startswith("/status/") else 200
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if path == "/slow-body":  # headers now, the body later
            self.wfile.flush()
            time.sleep(SLOW_BODY_DELAY)
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_PURGE = _answer


class Server:
    def __init__(self) -> None:
        self.httpd = ThreadingHTTPServer((HOST, 0), _Handler)
        self.httpd.daemon_threads = True
        self.httpd.seen = []  # type: ignore[attr-defined]
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    @property
    def port(self) -> int:
        return int(self.httpd.server_address[1])

    def url(self, path: str = "/status/200", *, secrets: bool = True) -> str:
        userinfo = "user:pass@" if secrets else ""
        return f"http://{userinfo}{HOST}:{self.port}{path}{QUERY if secrets else ''}"

    @property
    def seen(self) -> list[tuple[str, str, dict[str, str]]]:
        return self.httpd.seen  # type: ignore[attr-defined,no-any-return]

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5.0)


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    srv = Server()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture(autouse=True)
def _clean_state(server: Server) -> Iterator[None]:
    """No current span from an earlier test, no leftover global patch, an empty request log."""
    server.seen.clear()
    token = otel_context.attach(otel_context.Context())
    try:
        yield
    finally:
        otel_context.detach(token)
        uninstrument_requests()


@pytest.fixture
def cap() -> Iterator[Capture]:
    with capture() as c:
        yield c


def refused_url() -> str:
    """A URL (with secrets) on a loopback port nobody listens on."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port = sock.getsockname()[1]
    return f"http://user:pass@{HOST}:{port}/status/200{QUERY}"


# --- assertions -----------------------------------------------------------------------------------
def parse_traceparent(value: str) -> tuple[int, int, str]:
    version, trace_id, span_id, flags = value.split("-")
    assert version == "00" and len(trace_id) == 32 and len(span_id) == 16
    return int(trace_id, 16), int(span_id, 16), flags


def only_client_span(cap: Capture) -> Any:
    spans = cap.spans()
    assert len(spans) == 1, [s.name for s in spans]
    span = spans[0]
    assert span.kind is SpanKind.CLIENT
    return span


def assert_no_secrets(span: Any) -> None:
    texts = [str(v) for v in span.attributes.values()]
    texts += [str(v) for event in span.events for v in event.attributes.values()]
    for text in texts:
        for secret in SECRETS:
            assert secret not in text, (secret, text)


def assert_propagated(span: Any, received: dict[str, str]) -> None:
    trace_id, span_id, flags = parse_traceparent(received["traceparent"])
    ctx = span.get_span_context()
    assert (trace_id, span_id) == (ctx.trace_id, ctx.span_id)
    assert int(flags, 16) & 1  # sampled (bit 1, "random trace id", may be set too)


def assert_ok_span(span: Any, server: Server, method: str = "GET", status: int = 200) -> None:
    attrs = span.attributes
    assert span.name == method
    assert attrs["http.request.method"] == method
    assert attrs["url.full"] == (
        f"http://REDACTED:REDACTED@{HOST}:{server.port}/status/{status}?X-Amz-Signature=REDACTED&sig=REDACTED&page=1"
    )
    assert attrs["server.address"] == HOST
    assert attrs["server.port"] == server.port
    assert attrs["http.response.status_code"] == status
    assert_no_secrets(span)


# --- httpx ----------------------------------------------------------------------------------------
def test_httpx_sync_span_metric_and_propagation(server, cap):
    with bakhmach_obs.correlation_scope("req-1"), httpx.Client(transport=httpx_transport()) as client:
        response = client.get(server.url())
    assert response.status_code == 200
    span = only_client_span(cap)
    assert_ok_span(span, server)
    assert span.status.status_code is StatusCode.UNSET
    assert "error.type" not in span.attributes
    assert span.attributes["bakhmach.correlation_id"] == "req-1"
    received = response.json()["headers"]
    assert_propagated(span, received)
    assert received["x-correlation-id"] == "req-1"
    labels = {"http_request_method": "GET", "server_address": HOST, "http_response_status_code": "200"}
    assert cap.sample(COUNT, **labels) == 1.0
    # the server_address label is the host only: no port, path or query anywhere in the exposition
    assert str(server.port) not in cap.exposition().split(DURATION, 1)[1].split("\n# ", 1)[0]
    # a sampled span leaves a trace_id exemplar on the bucket it fell into
    exemplars = [
        s.exemplar for m in cap.registry.collect() for s in m.samples if s.name == DURATION + "_bucket" and s.exemplar
    ]
    assert [e.labels["trace_id"] for e in exemplars] == [f"{span.context.trace_id:032x}"]


def test_httpx_without_correlation_id_sends_none(server, cap):
    with httpx.Client(transport=httpx_transport()) as client:
        received = client.get(server.url()).json()["headers"]
    assert "x-correlation-id" not in received
    assert "bakhmach.correlation_id" not in only_client_span(cap).attributes
    assert "traceparent" in received


def test_httpx_keeps_the_callers_correlation_header(server, cap):
    with bakhmach_obs.correlation_scope("req-1"), httpx.Client(transport=httpx_transport()) as client:
        received = client.get(server.url(), headers={"X-Correlation-ID": "mine"}).json()["headers"]
    assert received["x-correlation-id"] == "mine"
    # the span names the id the called service saw, not the bound one
    assert only_client_span(cap).attributes["bakhmach.correlation_id"] == "mine"


def test_requests_keeps_the_callers_correlation_header(server, cap):
    with requests.Session() as session, bakhmach_obs.correlation_scope("req-1"):
        instrument_requests(session)
        received = session.get(server.url(), headers={"X-Correlation-ID": "mine"}).json()["headers"]
    assert received["x-correlation-id"] == "mine"
    assert only_client_span(cap).attributes["bakhmach.correlation_id"] == "mine"


@pytest.mark.parametrize("cid", ["bad\r\nX-Injected: 1", "order 42 / café", "x" * 129, "-leading-dash"])
def test_an_invalid_bound_correlation_id_is_not_sent_and_the_call_succeeds(server, cap, cid):
    with bakhmach_obs.correlation_scope(cid):
        with httpx.Client(transport=httpx_transport()) as client:
            by_httpx = client.get(server.url())
        with requests.Session() as session:
            instrument_requests(session)
            by_requests = session.get(server.url())
    for response in (by_httpx, by_requests):
        assert response.status_code == 200
        received = response.json()["headers"]
        assert "x-correlation-id" not in received and "x-injected" not in received
        assert "traceparent" in received
    spans = cap.spans()
    assert len(spans) == 2
    for span in spans:
        assert "bakhmach.correlation_id" not in span.attributes
        assert span.attributes["http.response.status_code"] == 200
    assert cap.sample("bakhmach_obs_telemetry_errors_total", component="tracing") == 2.0


def test_a_valid_bound_correlation_id_of_the_longest_length_is_sent(server, cap):
    cid = "A1._:-" + "z" * 122
    with bakhmach_obs.correlation_scope(cid), httpx.Client(transport=httpx_transport()) as client:
        received = client.get(server.url()).json()["headers"]
    assert received["x-correlation-id"] == cid
    assert only_client_span(cap).attributes["bakhmach.correlation_id"] == cid
    assert cap.sample("bakhmach_obs_telemetry_errors_total", component="tracing") is None


CALLER_TRACEPARENT = "00-11111111111111111111111111111111-2222222222222222-01"


def test_a_replaced_traceparent_drops_the_callers_tracestate(server, cap):
    headers = {"traceparent": CALLER_TRACEPARENT, "tracestate": "dd=s:2;o:rum"}
    with httpx.Client(transport=httpx_transport()) as client:
        by_httpx = client.get(server.url(), headers=headers).json()["headers"]
    with requests.Session() as session:
        instrument_requests(session)
        by_requests = session.get(server.url(), headers=headers).json()["headers"]
        # a tracestate on its own would be read as the state of the traceparent the SDK writes
        alone = session.get(server.url(), headers={"tracestate": "dd=s:2"}).json()["headers"]
    spans = cap.spans()
    for span, received in zip(spans, (by_httpx, by_requests, alone), strict=True):
        assert_propagated(span, received)
        assert "tracestate" not in received


def test_the_propagators_tracestate_replaces_the_callers(server, cap):
    parent = SpanContext(
        trace_id=0xABC,
        span_id=0xDEF,
        is_remote=True,
        trace_flags=TraceFlags(TraceFlags.SAMPLED),
        trace_state=TraceState([("vendor", "parent")]),
    )
    headers = {"traceparent": CALLER_TRACEPARENT, "tracestate": "caller=1"}
    token = otel_context.attach(trace.set_span_in_context(NonRecordingSpan(parent)))
    try:
        with httpx.Client(transport=httpx_transport()) as client:
            received = client.get(server.url(), headers=headers).json()["headers"]
    finally:
        otel_context.detach(token)
    assert_propagated(only_client_span(cap), received)
    assert received["tracestate"] == "vendor=parent"


def test_the_callers_trace_headers_stay_when_nothing_is_propagated(server):
    headers = {"traceparent": CALLER_TRACEPARENT, "tracestate": "caller=1"}
    with capture(tracing_enabled=False) as cap, httpx.Client(transport=httpx_transport()) as client:
        received = client.get(server.url(), headers=headers).json()["headers"]
    assert (received["traceparent"], received["tracestate"]) == (CALLER_TRACEPARENT, "caller=1")
    assert cap.sample(COUNT) == 1.0


@pytest.mark.parametrize("status", [503, 500, 404])
def test_httpx_error_status(server, cap, status):
    with httpx.Client(transport=httpx_transport()) as client:
        response = client.get(server.url(f"/status/{status}"))
    assert response.status_code == status
    span = only_client_span(cap)
    assert_ok_span(span, server, status=status)
    assert span.attributes["error.type"] == str(status)
    assert span.status.status_code is StatusCode.ERROR  # 4xx too: it is an error for a client span
    assert cap.sample(COUNT, http_response_status_code=str(status)) == 1.0


def test_httpx_connection_refused_reraises_unchanged(cap):
    url = refused_url()
    with httpx.Client() as plain, pytest.raises(httpx.HTTPError) as plain_error:
        plain.get(url)
    with httpx.Client(transport=httpx_transport()) as client, pytest.raises(httpx.HTTPError) as error:
        client.get(url)
    assert type(error.value) is type(plain_error.value) is httpx.ConnectError
    span = only_client_span(cap)
    assert span.attributes["error.type"] == exception_type_name(error.value)
    assert "http.response.status_code" not in span.attributes
    assert span.status.status_code is StatusCode.ERROR
    assert [e.name for e in span.events] == ["exception"]
    assert_no_secrets(span)
    assert cap.sample(COUNT, http_response_status_code=STATUS_NO_RESPONSE) == 1.0
    assert STATUS_NO_RESPONSE == ""


def test_httpx_unknown_method_is_other(server, cap):
    with httpx.Client(transport=httpx_transport()) as client:
        assert client.request("PURGE", server.url()).status_code == 200
    span = only_client_span(cap)
    assert span.name == "HTTP"
    assert span.attributes["http.request.method"] == "_OTHER"
    assert span.attributes["http.request.method_original"] == "PURGE"
    assert cap.sample(COUNT, http_request_method="_OTHER") == 1.0


def test_httpx_redirect_hops_are_spans_of_their_own(server, cap):
    with httpx.Client(transport=httpx_transport(), follow_redirects=True) as client:
        response = client.get(server.url("/redirect", secrets=False))
    assert response.status_code == 200
    spans = cap.spans()
    assert [s.attributes["http.response.status_code"] for s in spans] == [302, 200]
    assert [s.name for s in spans] == ["GET", "GET"]


def test_httpx_duration_ends_when_the_headers_arrive(server, cap):
    with httpx.Client(transport=httpx_transport()) as client:
        t0 = time.perf_counter()
        client.get(server.url("/slow-body", secrets=False)).json()
        wall = time.perf_counter() - t0
    assert wall >= SLOW_BODY_DELAY
    assert cap.sample(DURATION + "_sum", http_request_method="GET") < SLOW_BODY_DELAY / 2


async def test_httpx_async(server, cap):
    async with httpx.AsyncClient(transport=httpx_async_transport()) as client:
        with bakhmach_obs.correlation_scope("req-1"):
            response = await client.get(server.url())
        failed = await client.get(server.url("/status/503"))
    assert failed.status_code == 503
    ok_span, failed_span = cap.spans()
    assert ok_span.kind is SpanKind.CLIENT
    assert_ok_span(ok_span, server)
    assert_propagated(ok_span, response.json()["headers"])
    assert response.json()["headers"]["x-correlation-id"] == "req-1"
    assert failed_span.attributes["error.type"] == "503"
    assert failed_span.status.status_code is StatusCode.ERROR
    assert cap.sample(COUNT, http_response_status_code="200") == 1.0
    assert cap.sample(COUNT, http_response_status_code="503") == 1.0


async def test_httpx_async_connection_refused(cap):
    async with httpx.AsyncClient(transport=httpx_async_transport()) as client:
        with pytest.raises(httpx.ConnectError) as error:
            await client.get(refused_url())
    assert type(error.value) is httpx.ConnectError
    span = only_client_span(cap)
    assert span.attributes["error.type"] == exception_type_name(error.value)
    assert cap.sample(COUNT, http_response_status_code=STATUS_NO_RESPONSE) == 1.0


async def test_instrument_httpx_async_client_in_place(server, cap):
    async with httpx.AsyncClient() as client:
        assert instrument_httpx(client) is client
        instrument_httpx(client)
        response = await client.get(server.url())
    assert_propagated(only_client_span(cap), response.json()["headers"])


def test_instrument_httpx_wraps_transport_and_mounts_once(server, cap):
    mounted = httpx.HTTPTransport()
    with httpx.Client(mounts={f"http://{HOST}:{server.port}": mounted}) as client:
        assert instrument_httpx(client) is client
        wrapped = client._transport
        instrument_httpx(client)  # idempotent
        assert client._transport is wrapped
        assert [t.transport for t in client._mounts.values()] == [mounted]
        response = client.get(server.url())
    assert_propagated(only_client_span(cap), response.json()["headers"])
    assert httpx_transport(wrapped) is wrapped


def test_instrument_httpx_rejects_other_objects():
    with pytest.raises(TypeError, match=r"httpx\.Client"):
        instrument_httpx(object())  # type: ignore[type-var]


# --- requests -------------------------------------------------------------------------------------
def test_requests_session(server, cap):
    with requests.Session() as session, requests.Session() as other:
        instrument_requests(session)
        instrument_requests(session)  # idempotent
        with bakhmach_obs.correlation_scope("req-1"):
            response = session.get(server.url())
        assert "traceparent" not in other.get(server.url()).json()["headers"]
        span = only_client_span(cap)
        assert_ok_span(span, server)
        assert span.attributes["bakhmach.correlation_id"] == "req-1"
        received = response.json()["headers"]
        assert_propagated(span, received)
        assert received["x-correlation-id"] == "req-1"
        assert cap.sample(COUNT, http_request_method="GET", server_address=HOST) == 1.0

        uninstrument_requests(session)
        assert "traceparent" not in session.get(server.url()).json()["headers"]
    assert len(cap.spans()) == 1


def test_requests_global_patch_and_uninstrument(server, cap):
    original = requests.Session.send
    with requests.Session() as existing:
        instrument_requests()
        instrument_requests()  # idempotent
        try:
            first = requests.get(server.url("/status/201"))
            second = existing.post(server.url("/status/503"), json={"a": 1})
        finally:
            uninstrument_requests()
        assert requests.Session.send is original
        assert "traceparent" not in requests.get(server.url()).json()["headers"]
    created, failed = cap.spans()
    assert_ok_span(created, server, status=201)
    assert_propagated(created, first.json()["headers"])
    assert_ok_span(failed, server, method="POST", status=503)
    assert_propagated(failed, second.json()["headers"])
    assert failed.attributes["error.type"] == "503"
    assert failed.status.status_code is StatusCode.ERROR
    assert cap.sample(COUNT, http_request_method="POST", http_response_status_code="503") == 1.0


@pytest.mark.parametrize("global_first", [False, True])
def test_requests_session_and_global_patch_record_once(server, cap, global_first):
    with requests.Session() as session:
        if global_first:
            instrument_requests()
        instrument_requests(session)
        instrument_requests()
        try:
            session.get(server.url())
        finally:
            uninstrument_requests()
    only_client_span(cap)


def test_requests_redirects_are_one_span_with_the_final_status(server, cap):
    instrument_requests()
    try:
        response = requests.get(server.url("/redirect", secrets=False))
    finally:
        uninstrument_requests()
    assert response.status_code == 200 and len(response.history) == 1
    span = only_client_span(cap)
    assert span.attributes["http.response.status_code"] == 200
    assert span.attributes["url.full"].endswith("/redirect")
    # both hops carried the same traceparent: the one of the call's span
    for _method, _path, headers in server.seen:
        assert_propagated(span, headers)
    assert cap.sample(COUNT) == 1.0


def test_calls_from_requests_hooks_and_adapters_are_recorded(server, cap):
    """Only the session's own re-entry (its redirects) and urllib3 underneath stay quiet."""
    seen: dict[str, Any] = {}

    class Adapter(HTTPAdapter):
        def send(self, request: Any, *args: Any, **kwargs: Any) -> Any:
            if "adapter" not in seen:  # the first hop only (the redirect comes through here too)
                seen["urllib3_instrumentation_enabled"] = is_http_instrumentation_enabled()
                seen["adapter"] = client.get(server.url("/status/201", secrets=False)).json()["headers"]
            return super().send(request, *args, **kwargs)

    def hook(response: Any, **kwargs: Any) -> Any:
        if "hook" not in seen:
            seen["hook"] = client.get(server.url("/status/202", secrets=False)).json()["headers"]
            seen["other_session"] = other.get(server.url("/status/203", secrets=False)).json()["headers"]
            with suppress_http_instrumentation():  # an explicit suppression inside a hook still holds
                seen["suppressed"] = client.get(server.url("/status/204", secrets=False))
        return response

    with (
        httpx.Client(transport=httpx_transport()) as client,
        requests.Session() as session,
        requests.Session() as other,
    ):
        session.mount("http://", Adapter())
        instrument_requests(session)
        instrument_requests(other)
        with bakhmach_obs.correlation_scope("req-1"):
            response = session.get(server.url("/redirect", secrets=False), hooks={"response": hook})
    assert response.status_code == 200 and len(response.history) == 1
    assert seen["urllib3_instrumentation_enabled"] is False
    assert seen["suppressed"].status_code == 204
    assert len(cap.spans()) == 4  # the redirect hop is no span of its own
    spans = {s.attributes["url.full"].rsplit("/", 1)[1]: s for s in cap.spans()}
    assert sorted(spans) == ["201", "202", "203", "redirect"]
    outer = spans["redirect"]
    for name, status in (("adapter", "201"), ("hook", "202"), ("other_session", "203")):
        span = spans[status]
        assert span.parent is not None and span.parent.span_id == outer.context.span_id
        assert_propagated(span, seen[name])
        assert seen[name]["x-correlation-id"] == "req-1"
    assert cap.sample(COUNT, http_response_status_code="204") is None


@pytest.mark.parametrize("stream", [False, True])
def test_requests_duration_ends_when_the_headers_arrive(server, cap, stream):
    with requests.Session() as session:
        instrument_requests(session)
        t0 = time.perf_counter()
        with session.get(server.url("/slow-body", secrets=False), stream=stream) as response:
            response.json()
        wall = time.perf_counter() - t0
    assert wall >= SLOW_BODY_DELAY
    assert cap.sample(DURATION + "_sum", http_request_method="GET") < SLOW_BODY_DELAY / 2


def test_requests_connection_refused_reraises_unchanged(cap):
    url = refused_url()
    with requests.Session() as plain, pytest.raises(requests.RequestException) as plain_error:
        plain.get(url, timeout=2)
    with requests.Session() as session:
        instrument_requests(session)
        with pytest.raises(requests.RequestException) as error:
            session.get(url, timeout=2)
    assert type(error.value) is type(plain_error.value) is requests.exceptions.ConnectionError
    span = only_client_span(cap)
    assert span.attributes["error.type"] == "requests.exceptions.ConnectionError"
    assert span.status.status_code is StatusCode.ERROR
    # the exception's message quotes the URL; the span event carries it redacted
    message = span.events[0].attributes["exception.message"]
    assert "X-Amz-Signature=REDACTED" in message
    assert_no_secrets(span)
    assert cap.sample(COUNT, http_response_status_code=STATUS_NO_RESPONSE) == 1.0


JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0.c2lnbmF0dXJlLXNlY3JldA"
CARD = "4111111111111111"


@pytest.mark.parametrize("library", ["httpx", "requests"])
def test_url_full_query_and_fragment_go_through_the_text_patterns(server, cap, library):
    path = f"/status/200?access_token={JWT}&card={CARD}&sig=s2&auth=Bearer%20x&page=2#id_token={JWT}"
    url = f"http://user:pass@{HOST}:{server.port}{path}"
    if library == "httpx":
        with httpx.Client(transport=httpx_transport()) as client:
            assert [client.get(url).status_code for _ in range(2)] == [200, 200]
    else:
        with requests.Session() as session:
            instrument_requests(session)
            assert [session.get(url).status_code for _ in range(2)] == [200, 200]
    expected = (
        f"http://REDACTED:REDACTED@{HOST}:{server.port}/status/200"
        "?access_token=[REDACTED]&card=[REDACTED]&sig=REDACTED&auth=Bearer%20x&page=2#id_token=[REDACTED]"
    )
    assert [s.attributes["url.full"] for s in cap.spans()] == [expected, expected]


def test_url_full_and_the_exception_event_agree_on_the_query(cap):
    url = refused_url().replace("&page=1", f"&t={JWT}&page=1")
    with requests.Session() as session:
        instrument_requests(session)
        with pytest.raises(requests.ConnectionError):
            session.get(url, timeout=2)
    span = only_client_span(cap)
    query = "?X-Amz-Signature=REDACTED&sig=REDACTED&t=[REDACTED]&page=1"
    assert span.attributes["url.full"].endswith(query)
    assert "/status/200" + query in span.events[0].attributes["exception.message"]
    assert JWT not in str(span.attributes) + str(span.events[0].attributes)


def test_importing_the_module_imports_neither_library():
    code = "import sys, bakhmach_obs.http_client; print('httpx' in sys.modules, 'requests' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert result.stdout.split() == ["False", "False"]


# --- suppression, switches, failures ---------------------------------------------------------------
SUPPRESSORS = {
    "bakhmach_obs.suppress": bakhmach_obs.suppress,
    "otel.suppress_instrumentation": suppress_instrumentation,
    "otel.suppress_http_instrumentation": suppress_http_instrumentation,
}


@pytest.mark.parametrize("suppressor", SUPPRESSORS.values(), ids=SUPPRESSORS.keys())
async def test_suppressed_calls_record_and_inject_nothing(server, cap, suppressor):
    with requests.Session() as session, httpx.Client(transport=httpx_transport()) as client:
        instrument_requests(session)
        async with httpx.AsyncClient(transport=httpx_async_transport()) as aclient:
            with bakhmach_obs.correlation_scope("req-1"), suppressor():
                received = [
                    client.get(server.url()).json()["headers"],
                    (await aclient.get(server.url())).json()["headers"],
                    session.get(server.url()).json()["headers"],
                ]
    for headers in received:
        assert "traceparent" not in headers
        assert "x-correlation-id" not in headers
    assert cap.spans() == []
    assert cap.sample(COUNT) is None


def test_disabled_sdk_records_and_injects_nothing(server):
    with capture(disabled=True) as cap, httpx.Client(transport=httpx_transport()) as client:
        with bakhmach_obs.correlation_scope("req-1"):
            received = client.get(server.url()).json()["headers"]
    assert "traceparent" not in received and "x-correlation-id" not in received
    assert cap.spans() == []
    assert cap.sample(COUNT) is None


def test_tracing_off_still_counts(server):
    with capture(tracing_enabled=False) as cap, httpx.Client(transport=httpx_transport()) as client:
        received = client.get(server.url()).json()["headers"]
    assert "traceparent" not in received
    assert cap.sample(COUNT, http_response_status_code="200") == 1.0


def test_follows_a_new_runtime(server):
    with httpx.Client(transport=httpx_transport()) as client:
        with capture() as first:
            client.get(server.url())
        with capture() as second:
            client.get(server.url())
            client.get(server.url())
    assert first.sample(COUNT) == 1.0
    assert second.sample(COUNT) == 2.0


def test_a_telemetry_failure_never_reaches_the_call(server, cap, monkeypatch):
    def broken_inject(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("simulated propagator failure")

    monkeypatch.setattr(http_client.propagate, "inject", broken_inject)
    with httpx.Client(transport=httpx_transport()) as client:
        response = client.get(server.url())
    assert response.status_code == 200
    assert "traceparent" not in response.json()["headers"]
    only_client_span(cap)
    assert cap.sample(COUNT) == 1.0
    assert cap.sample("bakhmach_obs_telemetry_errors_total", component="tracing") == 1.0


def test_otlp_exporter_posts_are_never_traced(server):
    """The SDK's exporter sends with requests; with the global patch on, that must not loop."""
    registry = CollectorRegistry()
    with running_receiver() as rx:
        bakhmach_obs.configure(
            service_name="http-client-test",
            traces_exporter="otlp",
            otlp_endpoint=rx.endpoint,
            traces_sampler="always_on",
            schedule_delay=0.05,
            export_timeout=2.0,
            shutdown_timeout=2.0,
            log_format="none",
            registry=registry,
        )
        instrument_requests()
        try:
            with bakhmach_obs.span("job"):
                response = requests.get(server.url())
            rx.wait_for_spans(2)
            time.sleep(0.2)  # a few more export rounds: a traced export would show up by now
            assert bakhmach_obs.shutdown()
        finally:
            uninstrument_requests()
        spans = rx.spans
        exporter_requests = rx.requests
    assert sorted(s.name for s in spans) == ["GET", "job"]
    client = next(s for s in spans if s.name == "GET")
    assert client.kind == "CLIENT"
    assert "/v1/traces" not in client.attributes["url.full"]
    job = next(s for s in spans if s.name == "job")
    assert client.parent_span_id == job.span_id
    assert response.json()["headers"]["traceparent"].split("-")[2] == client.span_id
    assert all("traceparent" not in {k.lower() for k in headers} for _path, headers in exporter_requests)
    assert registry.get_sample_value(COUNT, {**_labels("GET"), "http_response_status_code": "200"}) == 1.0
    assert registry.get_sample_value(COUNT, {**_labels("POST"), "http_response_status_code": "200"}) is None


def _labels(method: str) -> dict[str, str]:
    return {"http_request_method": method, "server_address": HOST}
