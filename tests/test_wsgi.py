from __future__ import annotations

import http.client
import io
import json
import logging
import re
import threading
import time
from wsgiref.simple_server import WSGIRequestHandler, make_server
from wsgiref.util import FileWrapper, setup_testing_defaults

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry import trace
from opentelemetry.trace import SpanKind, StatusCode

import bakhmach_obs
from bakhmach_obs.logs import JsonFormatter
from bakhmach_obs.testing import capture
from bakhmach_obs.wsgi import ERROR_KEY, ROUTE_KEY, ObservabilityMiddleware

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
PARENT_ID = "b7ad6b7169203331"
USER = re.compile(r"/users/(\d+)")


class Boom(Exception):
    pass


BOOM = Boom("kaput")


def app(environ, start_response):
    """A framework-free WSGI app that labels its own routes the way framework glue does."""
    path = environ["PATH_INFO"]
    if USER.fullmatch(path):
        environ[ROUTE_KEY] = "/users/{user_id}"
        body = json.dumps({"cid": bakhmach_obs.correlation_id()}).encode()
        start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
        return [body]
    if path in ("/metrics", "/health/live"):
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"fine"]
    if path == "/boom":
        environ[ROUTE_KEY] = "/boom"
        raise BOOM
    start_response("404 Not Found", [("Content-Type", "text/plain"), ("Content-Length", "9")])
    return [b"not found"]


def call(wsgi_app, path="/", method="GET", headers=None, body=b"", environ=None):
    """Serve one request the way a WSGI server does: call, iterate, close. Returns status, headers, body."""
    env = {"REQUEST_METHOD": method, "PATH_INFO": path.split("?")[0], "wsgi.input": io.BytesIO(body)}
    if "?" in path:
        env["QUERY_STRING"] = path.split("?", 1)[1]
    if body:
        env["CONTENT_LENGTH"] = str(len(body))
    for name, value in (headers or {}).items():
        env["HTTP_" + name.upper().replace("-", "_")] = value
    env.update(environ or {})
    setup_testing_defaults(env)
    seen = {}
    written = []

    def start_response(status, response_headers, exc_info=None):
        seen["status"], seen["headers"] = status, dict(response_headers)
        return written.append

    result = wsgi_app(env, start_response)
    try:
        data = b"".join([*written, *result])
    finally:
        if hasattr(result, "close"):
            result.close()
    return seen["status"], seen["headers"], data


def durations(cap):
    return {
        (s.labels["http_request_method"], s.labels["http_route"], s.labels["http_response_status_code"]): s.value
        for m in cap.registry.collect()
        if m.name == "http_server_request_duration_seconds"
        for s in m.samples
        if s.name.endswith("_count")
    }


@pytest.fixture
def access_log():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter(service="backend"))
    logger = logging.getLogger("bakhmach_obs.access")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield stream
    logger.removeHandler(handler)
    logger.setLevel(logging.NOTSET)


def test_routes_are_templates_and_404_scans_collapse_into_one_series():
    mw = ObservabilityMiddleware(app)
    with capture() as cap:
        for i in range(3):
            assert call(mw, f"/users/{i}")[0] == "200 OK"
        for i in range(200):
            assert call(mw, f"/wp-admin/{i}.php")[0] == "404 Not Found"
        assert durations(cap) == {("GET", "/users/{user_id}", "200"): 3.0, ("GET", "__unmatched__", "404"): 200.0}
        assert {s.name for s in cap.spans()} == {"GET /users/{user_id}", "GET __unmatched__"}
        assert "/wp-admin/1.php" not in cap.exposition()


def test_route_resolver_is_used_when_no_glue_sets_the_route():
    def plain(environ, start_response):
        start_response("204 No Content", [])
        return []

    def failing(environ):
        raise RuntimeError("resolver bug")

    with capture() as cap:
        call(ObservabilityMiddleware(plain, route_resolver=lambda environ: "/resolved/{x}"), "/resolved/1")
        call(ObservabilityMiddleware(plain, route_resolver=failing), "/other")
        call(ObservabilityMiddleware(plain), "/raw/42")  # no route known: never the raw path
        assert durations(cap) == {("GET", "/resolved/{x}", "204"): 1.0, ("GET", "__unmatched__", "204"): 2.0}


def test_unknown_method_is_other_with_the_original_on_the_span():
    with capture() as cap:
        call(ObservabilityMiddleware(app), "/users/1", method="BREW")
        assert durations(cap) == {("_OTHER", "/users/{user_id}", "200"): 1.0}
        (span,) = cap.spans()
        assert span.name == "HTTP /users/{user_id}"
        assert span.attributes["http.request.method"] == "_OTHER"
        assert span.attributes["http.request.method_original"] == "BREW"


def test_excluded_paths_produce_no_signal_at_all(access_log):
    with capture() as cap:
        mw = ObservabilityMiddleware(app, exclude_paths=["/users/7"])
        for path in ("/metrics", "/health/live", "/metrics/", "/users/7"):
            _, headers, _ = call(mw, path)
            assert "X-Correlation-ID" not in headers
        # behind a mount (SCRIPT_NAME) the path inside the app is checked too
        call(mw, "/health/live", environ={"SCRIPT_NAME": "/api"})
        assert durations(cap) == {}
        assert cap.spans() == []
        assert [r for r in cap.records if r.name == "bakhmach_obs.access"] == []
    with capture() as cap:
        mw = ObservabilityMiddleware(app, exclude_patterns=[r"/users/\d+"], exclude_defaults=False)
        call(mw, "/users/3")
        call(mw, "/metrics")
        assert list(durations(cap)) == [("GET", "__unmatched__", "200")]
    assert access_log.getvalue().count("\n") == 1


def test_correlation_id_validated_bound_during_the_request_and_echoed():
    mw = ObservabilityMiddleware(app)
    with capture():
        good = call(mw, "/users/1", headers={"X-Correlation-ID": "req-12345"})
        request_id = call(mw, "/users/1", headers={"X-Request-ID": "abc.def:1"})
        invalid = [
            call(mw, "/users/1", headers={"X-Correlation-ID": value})
            for value in ("x" * 300, "evil<script>", "a\r\nSet-Cookie: x=1", "")
        ]
    assert good[1]["X-Correlation-ID"] == "req-12345" == json.loads(good[2])["cid"]
    assert request_id[1]["X-Correlation-ID"] == "abc.def:1"
    for _, headers, body in invalid:
        cid = headers["X-Correlation-ID"]
        assert re.fullmatch(r"[0-9a-f]{32}", cid) and json.loads(body)["cid"] == cid
    assert bakhmach_obs.correlation_id() is None
    with capture():
        _, headers, _ = call(ObservabilityMiddleware(app, correlation_header=None), "/users/1")
        assert "X-Correlation-ID" not in headers


def test_traceparent_is_continued_and_malformed_ones_start_a_new_trace():
    mw = ObservabilityMiddleware(app)
    with capture() as cap:
        call(mw, "/users/1", headers={"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01", "tracestate": "a=1"})
        call(mw, "/users/2", headers={"traceparent": f"00-{'0' * 32}-{PARENT_ID}-01"})
        call(mw, "/users/3", headers={"traceparent": "garbage\r\n"})
        continued, zeros, garbage = cap.spans()
        assert continued.kind is SpanKind.SERVER
        assert f"{continued.context.trace_id:032x}" == TRACE_ID
        assert f"{continued.parent.span_id:016x}" == PARENT_ID and continued.parent.is_remote
        assert continued.context.trace_state.get("a") == "1"
        for span in (zeros, garbage):
            assert span.parent is None and f"{span.context.trace_id:032x}" != TRACE_ID


def test_application_exception_is_a_500_and_reraised_unchanged():
    mw = ObservabilityMiddleware(app)
    with capture() as cap:
        with pytest.raises(Boom, match="kaput") as raised:
            call(mw, "/boom")
        assert raised.value is BOOM
        assert durations(cap) == {("GET", "/boom", "500"): 1.0}
        (span,) = cap.spans()
        assert span.status.status_code is StatusCode.ERROR
        assert span.attributes["error.type"] == "tests.test_wsgi.Boom"
        assert cap.sample("http_server_active_requests", http_request_method="GET") == 0.0
    assert bakhmach_obs.correlation_id() is None
    assert not trace.get_current_span().get_span_context().is_valid


def test_exception_while_iterating_is_recorded_and_reraised_and_close_still_runs():
    closed = []

    class Body:
        def __iter__(self):
            yield b"partial"
            raise Boom("mid-stream")

        def close(self):
            closed.append(True)

    def streaming(environ, start_response):
        environ[ROUTE_KEY] = "/export"
        start_response("200 OK", [])
        return Body()

    with capture() as cap:
        with pytest.raises(Boom, match="mid-stream"):
            call(ObservabilityMiddleware(streaming), "/export")
        (span,) = cap.spans()
        assert span.attributes["error.type"] == "tests.test_wsgi.Boom"
        assert span.attributes["http.response.status_code"] == 200  # headers were already sent
        assert cap.sample("http_server_response_body_size_bytes_sum", http_route="/export") == len(b"partial")
    assert closed == [True]


def test_a_body_failing_before_its_first_byte_is_a_500():
    """WSGI sends the status line with the first body bytes: the server answers 500, so do the signals."""

    def generator_app(environ, start_response):
        environ[ROUTE_KEY] = "/export"
        start_response("200 OK", [("Content-Type", "text/csv")])
        raise Boom("before the first byte")
        yield b""  # pragma: no cover - a generator that fails at once

    def app_raising_after_start_response(environ, start_response):
        environ[ROUTE_KEY] = "/late"
        start_response("200 OK", [])
        raise Boom("late")

    with capture() as cap:
        for wsgi_app, path in ((generator_app, "/export"), (app_raising_after_start_response, "/late")):
            with pytest.raises(Boom):
                call(ObservabilityMiddleware(wsgi_app), path)
        assert durations(cap) == {("GET", "/export", "500"): 1.0, ("GET", "/late", "500"): 1.0}
        assert {s.attributes["http.response.status_code"] for s in cap.spans()} == {500}


def test_glue_reported_error_gives_error_type_to_a_500_response():
    def handled(environ, start_response):
        environ[ROUTE_KEY] = "/handled"
        environ[ERROR_KEY] = Boom("converted by the framework")
        start_response("500 Internal Server Error", [("Content-Length", "5")])
        return [b"oops!"]

    with capture() as cap:
        assert call(ObservabilityMiddleware(handled), "/handled")[0].startswith("500")
        (span,) = cap.spans()
        assert span.attributes["error.type"] == "tests.test_wsgi.Boom"
        assert durations(cap) == {("GET", "/handled", "500"): 1.0}


def test_streaming_body_duration_covers_iteration_and_latency_is_time_to_first_chunk():
    started = []

    def sse(environ, start_response):
        environ[ROUTE_KEY] = "/events"

        def chunks():
            started.append(True)
            for i in range(3):
                time.sleep(0.04)
                yield f"data: {i}\n\n".encode()

        start_response("200 OK", [("Content-Type", "text/event-stream")])
        return chunks()

    def download(environ, start_response):
        environ[ROUTE_KEY] = "/download"

        def chunks():
            for _ in range(3):
                time.sleep(0.04)
                yield b"x" * 10

        start_response("200 OK", [("Content-Length", "30")])
        return chunks()

    with capture() as cap:
        result = ObservabilityMiddleware(sse)(
            {"REQUEST_METHOD": "GET", "PATH_INFO": "/events"}, lambda s, h, e=None: None
        )
        assert started == []  # never consumed ahead of the server
        assert b"".join(result).count(b"data:") == 3
        result.close()
        ttfb = cap.sample("http_server_request_duration_seconds_sum", http_route="/events")
        full = cap.sample("http_server_stream_duration_seconds_sum", http_route="/events")
        assert ttfb < 0.08 and full >= 0.12
        assert cap.sample("http_server_response_body_size_bytes_sum", http_route="/events") == 3 * len(b"data: 0\n\n")

        call(ObservabilityMiddleware(download), "/download")
        # with a Content-Length it is an ordinary response: its latency is the whole transfer
        assert cap.sample("http_server_request_duration_seconds_sum", http_route="/download") >= 0.12
        assert cap.sample("http_server_stream_duration_seconds_count", http_route="/download") is None


def test_span_and_correlation_id_are_current_while_the_body_is_produced_but_never_leak():
    seen = []

    def lazy(environ, start_response):
        def chunks():
            seen.append((bakhmach_obs.correlation_id(), trace.get_current_span().get_span_context().trace_id))
            yield b"a"
            yield b"b"

        start_response("200 OK", [])
        return chunks()

    with capture() as cap:
        result = ObservabilityMiddleware(lazy)(
            {"REQUEST_METHOD": "GET", "PATH_INFO": "/lazy", "HTTP_X_CORRELATION_ID": "req-9"},
            lambda s, h, e=None: None,
        )
        assert bakhmach_obs.correlation_id() is None  # between the app call and iteration
        assert next(iter(result)) == b"a"
        assert bakhmach_obs.correlation_id() is None and not trace.get_current_span().get_span_context().is_valid
        assert list(result) == [b"b"]
        (span,) = cap.spans()
        assert seen == [("req-9", span.context.trace_id)]
        result.close()
        assert len(cap.spans()) == 1


def test_the_application_iterable_is_closed_exactly_once_and_early_close_finishes():
    closes = []

    class Body:
        def __init__(self):
            self.items = iter([b"one", b"two"])

        def __iter__(self):
            return self

        def __next__(self):
            return next(self.items)

        def close(self):
            closes.append(True)

    def body_app(environ, start_response):
        environ[ROUTE_KEY] = "/body"
        start_response("200 OK", [])
        return Body()

    with capture() as cap:
        call(ObservabilityMiddleware(body_app), "/body")
        assert closes == [True]
        result = ObservabilityMiddleware(body_app)({"REQUEST_METHOD": "GET", "PATH_INFO": "/body"}, lambda *a: None)
        assert next(iter(result)) == b"one"
        result.close()  # the client went away after one chunk
        result.close()
        assert closes == [True, True]
        assert durations(cap) == {("GET", "/body", "200"): 2.0}
        assert cap.sample("http_server_active_requests", http_request_method="GET") == 0.0


def test_list_bodies_keep_their_length_and_are_not_streams():
    def listed(environ, start_response):
        start_response("200 OK", [])
        return [b"hello"]

    with capture() as cap:
        result = ObservabilityMiddleware(listed)({"REQUEST_METHOD": "GET", "PATH_INFO": "/"}, lambda *a: None)
        assert len(result) == 1
        assert list(result) == [b"hello"]
        result.close()
        assert cap.sample("http_server_stream_duration_seconds_count") is None
        assert cap.sample("http_server_response_body_size_bytes_sum") == 5.0


def test_file_wrapper_passes_through_and_finishes_on_close():
    def send_file(environ, start_response):
        environ[ROUTE_KEY] = "/files/{name}"
        start_response("200 OK", [("Content-Length", "11")])
        return environ["wsgi.file_wrapper"](io.BytesIO(b"hello world"), 4)

    with capture() as cap:
        env = {"REQUEST_METHOD": "GET", "PATH_INFO": "/files/a.txt", "wsgi.file_wrapper": FileWrapper}
        result = ObservabilityMiddleware(send_file)(env, lambda *a: None)
        assert type(result) is FileWrapper  # the server can still use sendfile
        assert durations(cap) == {}
        result.close()
        result.close()
        assert durations(cap) == {("GET", "/files/{name}", "200"): 1.0}
        assert cap.sample("http_server_response_body_size_bytes_sum", http_route="/files/{name}") == 11.0


def test_body_sizes_write_callable_and_reads_without_content_length():
    def echo(environ, start_response):
        data = environ["wsgi.input"].read()
        write = start_response("200 OK", [])
        write(b"legacy-")
        return [data]

    with capture() as cap:
        mw = ObservabilityMiddleware(echo)
        assert call(mw, "/echo", method="POST", body=b"x" * 100)[2] == b"legacy-" + b"x" * 100
        chunked = {"wsgi.input": io.BytesIO(b"y" * 42), "wsgi.input_terminated": True}
        assert call(mw, "/echo", method="POST", environ=chunked)[2] == b"legacy-" + b"y" * 42
        assert cap.sample("http_server_request_body_size_bytes_sum") == 142.0
        assert cap.sample("http_server_response_body_size_bytes_sum", http_response_status_code="200") == 156.0


def test_span_attributes_follow_http_semantic_conventions_and_redact_the_query():
    with capture() as cap:
        call(ObservabilityMiddleware(app), "/users/1?sig=s3cret&page=2", headers={"User-Agent": "pytest-agent"})
        (span,) = cap.spans()
        attrs = span.attributes
        assert span.name == "GET /users/{user_id}"
        assert attrs["http.route"] == "/users/{user_id}" and attrs["http.response.status_code"] == 200
        assert attrs["url.path"] == "/users/1" and attrs["url.scheme"] == "http"
        assert attrs["user_agent.original"] == "pytest-agent" and attrs["network.protocol.version"] == "1.0"
        assert attrs["url.query"] == "sig=REDACTED&page=2"
        assert attrs["server.address"] == "127.0.0.1" and attrs["server.port"] == 80


def test_non_ascii_paths_are_decoded_for_the_span():
    raw = "/caf\u00e9".encode().decode("latin-1")  # how PEP 3333 servers hand over UTF-8 paths
    with capture() as cap:
        call(ObservabilityMiddleware(app), raw)
        (span,) = cap.spans()
        assert span.attributes["url.path"] == "/caf\u00e9"


def test_access_log_one_json_record_per_request_with_trace_and_correlation_ids(access_log):
    with capture() as cap:
        mw = ObservabilityMiddleware(app)
        call(mw, "/users/9", headers={"X-Correlation-ID": "req-77", "User-Agent": "ua/1"})
        call(mw, "/nope")
        with pytest.raises(Boom):
            call(mw, "/boom")
        record = next(r for r in cap.records if r.name == "bakhmach_obs.access")
        assert (record.http_method, record.http_route, record.http_status) == ("GET", "/users/{user_id}", 200)
        assert record.path == "/users/9" and record.user_agent == "ua/1" and record.duration_ms >= 0
    with capture():
        call(ObservabilityMiddleware(app, access_log=False), "/users/9")
    first, second, third = (json.loads(line) for line in access_log.getvalue().splitlines())
    assert first["message"] == "GET /users/{user_id} 200" and first["level"] == "INFO"
    assert first["correlation_id"] == "req-77" and re.fullmatch(r"[0-9a-f]{32}", first["trace_id"])
    assert first["http_route"] == "/users/{user_id}" and first["path"] == "/users/9"
    assert second["http_route"] == "__unmatched__" and second["http_status"] == 404
    assert re.fullmatch(r"[0-9a-f]{32}", second["correlation_id"])
    assert third["level"] == "ERROR" and third["http_status"] == 500 and third["error_type"] == "tests.test_wsgi.Boom"


def test_concurrent_requests_keep_their_own_correlation_id_and_span():
    mw = ObservabilityMiddleware(app)
    errors = []

    def worker(n):
        try:
            for i in range(20):
                cid = f"req-{n}-{i}"
                _, headers, body = call(mw, f"/users/{i}", headers={"X-Correlation-ID": cid})
                assert headers["X-Correlation-ID"] == cid == json.loads(body)["cid"]
        except BaseException as exc:  # reported in the main thread
            errors.append(exc)

    with capture() as cap:
        threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        assert errors == []
        assert durations(cap) == {("GET", "/users/{user_id}", "200"): 160.0}
        spans = cap.spans()
        assert len({s.context.trace_id for s in spans}) == 160 and all(s.parent is None for s in spans)
        assert cap.sample("http_server_active_requests", http_request_method="GET") == 0.0


def test_disabled_passes_through_untouched():
    with capture(disabled=True) as cap:
        status, headers, _ = call(ObservabilityMiddleware(app), "/users/1")
        assert status == "200 OK" and "X-Correlation-ID" not in headers
        assert durations(cap) == {}


def test_under_a_real_wsgi_server():
    class Quiet(WSGIRequestHandler):
        def log_message(self, *args):
            pass

    def send_file(environ, start_response):
        environ[ROUTE_KEY] = "/files/{name}"
        start_response("200 OK", [("Content-Length", "11")])
        return environ["wsgi.file_wrapper"](io.BytesIO(b"hello world"))

    with capture() as cap:
        paths = {"/files/a.txt": ObservabilityMiddleware(send_file), "/users/5": ObservabilityMiddleware(app)}
        server = make_server("127.0.0.1", 0, lambda e, s: paths[e["PATH_INFO"]](e, s), handler_class=Quiet)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            for path in paths:
                conn = http.client.HTTPConnection("127.0.0.1", server.server_port, timeout=5)
                conn.request("GET", path, headers={"X-Correlation-ID": "real-1"})
                response = conn.getresponse()
                assert response.status == 200 and response.getheader("X-Correlation-ID") == "real-1"
                response.read()
                conn.close()
        finally:
            server.shutdown()
            server.server_close()
            thread.join(5)
        assert durations(cap) == {("GET", "/files/{name}", "200"): 1.0, ("GET", "/users/{user_id}", "200"): 1.0}


HEADER_TEXT = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=600)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(traceparent=HEADER_TEXT, cid=HEADER_TEXT, agent=HEADER_TEXT, query=HEADER_TEXT)
def test_fuzzed_headers_never_raise_and_never_leak_unsanitised(traceparent, cid, agent, query):
    headers = {"traceparent": traceparent, "X-Correlation-ID": cid, "User-Agent": agent}
    with capture():
        _, response_headers, _ = call(ObservabilityMiddleware(app), "/users/1?" + query, headers=headers)
    echoed = response_headers["X-Correlation-ID"]
    assert re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._:\-]{0,127}", echoed)
    assert echoed == cid or re.fullmatch(r"[0-9a-f]{32}", echoed)


def test_fields_bound_by_a_request_end_with_it_on_a_reused_thread(access_log):
    """A worker thread serves request after request: what one binds never reaches the next."""
    seen = []

    def binding_app(environ, start_response):
        if environ["PATH_INFO"] == "/me":
            bakhmach_obs.bind(user_id="alice")
        seen.append(dict(bakhmach_obs.bound_fields()))
        start_response("200 OK", [("Content-Type", "text/plain")])
        return iter([b"a", b"b"])  # a streamed body: the access record is written after the app returned

    wrapped = ObservabilityMiddleware(binding_app)
    with capture(), bakhmach_obs.log_context(tenant="acme"):
        call(wrapped, "/me")
        call(wrapped, "/public")
        assert dict(bakhmach_obs.bound_fields()) == {"tenant": "acme"}
    assert seen == [{"tenant": "acme", "user_id": "alice"}, {"tenant": "acme"}]
    me, public = (json.loads(line) for line in access_log.getvalue().splitlines())
    assert me["path"] == "/me" and me["user_id"] == "alice" and me["tenant"] == "acme"
    assert public["path"] == "/public" and "user_id" not in public
