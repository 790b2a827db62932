from __future__ import annotations

import http.client
import io
import json
import logging
import os
import re
import socket
import subprocess
import sys
import time

import pytest
from flask import Blueprint, Flask, Response, abort, stream_with_context
from opentelemetry.trace import SpanKind, StatusCode

import bakhmach_obs
from bakhmach_obs.flask import init_app
from bakhmach_obs.logs import JsonFormatter
from bakhmach_obs.testing import capture
from bakhmach_obs.wsgi import ObservabilityMiddleware

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
PARENT_ID = "b7ad6b7169203331"


class Boom(Exception):
    pass


class Declined(Exception):
    pass


def build_app(testing: bool = False, **options) -> Flask:
    app = Flask(__name__)
    app.config["TESTING"] = testing
    closed = app.config["CLOSED"] = []

    @app.get("/users/<int:user_id>")
    def get_user(user_id: int):
        return {"id": user_id, "cid": bakhmach_obs.correlation_id()}

    @app.post("/orders")
    def create_order():
        return {"ok": True}

    @app.get("/boom")
    def boom():
        raise Boom("kaput")

    @app.get("/declined")
    def declined():
        raise Declined()

    @app.errorhandler(Declined)
    def on_declined(exc):
        return {"error": "declined"}, 402

    @app.get("/items/<slug>")
    def item(slug: str):
        abort(404)

    @app.get("/stream")
    def stream():
        def chunks():
            for i in range(3):
                time.sleep(0.04)
                yield f"data: {i}\n\n"

        response = Response(stream_with_context(chunks()), mimetype="text/event-stream")
        response.call_on_close(lambda: closed.append(True))
        return response

    @app.get("/metrics")
    def metrics():
        return "scrape"

    @app.get("/health/live")
    def live():
        return {"status": "alive"}

    api = Blueprint("api", __name__, url_prefix="/api/v1")

    @api.get("/orgs/<org_id>/members")
    def members(org_id: str):
        return {"org": org_id}

    @api.before_request
    def deny():
        if "denied" in bakhmach_obs.correlation_id():
            return {"error": "denied"}, 403
        return None

    app.register_blueprint(api)
    init_app(app, **options)
    return app


def get(client, path, method="GET", **kw):
    """Like a WSGI server: the body is consumed and the iterable closed before returning."""
    return client.open(path, method=method, buffered=True, **kw)


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


def test_routes_are_flask_rule_templates_including_blueprint_prefixes():
    client = build_app().test_client()
    with capture() as cap:
        for path in ("/users/1", "/users/2", "/api/v1/orgs/acme/members", "/api/v1/orgs/initech/members"):
            assert get(client, path).status_code == 200
        assert get(client, "/items/missing").status_code == 404  # abort(404) in a matched route
        assert durations(cap) == {
            ("GET", "/users/<int:user_id>", "200"): 2.0,
            ("GET", "/api/v1/orgs/<org_id>/members", "200"): 2.0,
            ("GET", "/items/<slug>", "404"): 1.0,
        }
        assert {s.name for s in cap.spans()} == {
            "GET /users/<int:user_id>", "GET /api/v1/orgs/<org_id>/members", "GET /items/<slug>",
        }  # fmt: skip


def test_404_scans_collapse_into_one_series_and_unknown_methods_into_other():
    client = build_app().test_client()
    with capture() as cap:
        for i in range(200):
            assert get(client, f"/wp-admin/{i}.php").status_code == 404
        assert get(client, "/users/1", method="BREW").status_code == 405
        assert get(client, "/users/1", method="DELETE").status_code == 405
        assert durations(cap) == {
            ("GET", "__unmatched__", "404"): 200.0,
            ("_OTHER", "/users/<int:user_id>", "405"): 1.0,  # a 405 keeps the rule its path matched
            ("DELETE", "/users/<int:user_id>", "405"): 1.0,
        }
        brew = [s for s in cap.spans() if s.attributes["http.request.method"] == "_OTHER"]
        assert brew[0].attributes["http.request.method_original"] == "BREW"
        assert "/wp-admin" not in cap.exposition()


def test_a_before_request_hook_answering_early_still_gets_the_route():
    client = build_app().test_client()
    with capture() as cap:
        response = get(client, "/api/v1/orgs/acme/members", headers={"X-Correlation-ID": "denied-1"})
        assert response.status_code == 403
        assert durations(cap) == {("GET", "/api/v1/orgs/<org_id>/members", "403"): 1.0}


def test_excluded_paths_produce_no_signal_at_all(access_log):
    with capture() as cap:
        client = build_app(exclude_paths=["/users/7"]).test_client()
        for path in ("/metrics", "/health/live", "/users/7"):
            response = get(client, path)
            assert response.status_code == 200 and "X-Correlation-ID" not in response.headers
        assert durations(cap) == {}
        assert cap.spans() == []
        assert [r for r in cap.records if r.name == "bakhmach_obs.access"] == []
    with capture() as cap:
        client = build_app(exclude_patterns=[r"/users/\d+"], exclude_defaults=False).test_client()
        get(client, "/users/3")
        get(client, "/metrics")
        assert list(durations(cap)) == [("GET", "/metrics", "200")]


def test_correlation_id_validated_bound_and_echoed():
    client = build_app().test_client()
    with capture():
        good = get(client, "/users/1", headers={"X-Correlation-ID": "req-12345"})
        request_id = get(client, "/users/1", headers={"X-Request-ID": "abc.def:1"})
        invalid = [
            get(client, "/users/1", headers={"X-Correlation-ID": value})
            for value in ("x" * 300, "evil<script>", "bad value;", "-leading-dash")
        ]
    assert good.headers["X-Correlation-ID"] == "req-12345" == good.json["cid"]
    assert request_id.headers["X-Correlation-ID"] == "abc.def:1"
    for response in invalid:
        cid = response.headers["X-Correlation-ID"]
        assert re.fullmatch(r"[0-9a-f]{32}", cid) and response.json["cid"] == cid
    assert bakhmach_obs.correlation_id() is None


def test_crlf_in_the_correlation_header_is_replaced():
    app = build_app()
    with capture():
        # werkzeug's client refuses CRLF in headers; a lenient server may not: go through the WSGI environ
        environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/users/1", "HTTP_X_CORRELATION_ID": "a\r\nSet-Cookie: x=1",
                   "SERVER_NAME": "localhost", "SERVER_PORT": "80", "wsgi.url_scheme": "http",
                   "wsgi.input": io.BytesIO()}  # fmt: skip
        seen = {}
        body = app(environ, lambda status, headers, exc_info=None: seen.update(headers))
        payload = json.loads(b"".join(body))
        body.close()
    assert re.fullmatch(r"[0-9a-f]{32}", seen["X-Correlation-ID"]) and payload["cid"] == seen["X-Correlation-ID"]


def test_traceparent_is_continued_and_malformed_ones_start_a_new_trace():
    client = build_app().test_client()
    with capture() as cap:
        get(client, "/users/1", headers={"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01", "tracestate": "a=1"})
        get(client, "/users/2", headers={"traceparent": f"00-{TRACE_ID}-{'0' * 16}-01"})
        get(client, "/users/3", headers={"traceparent": "00-not-a-trace"})
        continued, zeros, garbage = cap.spans()
        assert continued.kind is SpanKind.SERVER
        assert f"{continued.context.trace_id:032x}" == TRACE_ID
        assert f"{continued.parent.span_id:016x}" == PARENT_ID and continued.parent.is_remote
        for span in (zeros, garbage):
            assert span.parent is None and f"{span.context.trace_id:032x}" != TRACE_ID


def test_view_exception_is_a_500_with_error_type():
    client = build_app().test_client()
    with capture() as cap:
        assert get(client, "/boom").status_code == 500  # Flask turned it into a response
        (span,) = cap.spans()
        assert span.status.status_code is StatusCode.ERROR
        assert span.attributes["error.type"] == "tests.test_flask.Boom"
        assert durations(cap) == {("GET", "/boom", "500"): 1.0}
        assert cap.sample("http_server_active_requests", http_request_method="GET") == 0.0


def test_view_exception_propagated_in_testing_mode_is_reraised_unchanged():
    client = build_app(testing=True).test_client()
    with capture() as cap:
        with pytest.raises(Boom, match="kaput"):
            get(client, "/boom")
        (span,) = cap.spans()
        assert span.attributes["error.type"] == "tests.test_flask.Boom"
        assert durations(cap) == {("GET", "/boom", "500"): 1.0}
    assert bakhmach_obs.correlation_id() is None


def test_an_exception_handled_by_an_errorhandler_is_not_an_error():
    client = build_app().test_client()
    with capture() as cap:
        assert get(client, "/declined").status_code == 402
        (span,) = cap.spans()
        assert "error.type" not in span.attributes and span.status.status_code is not StatusCode.ERROR


def test_streaming_duration_covers_iteration_and_the_iterable_is_closed_once():
    app = build_app()
    with capture() as cap:
        response = get(app.test_client(), "/stream")
        assert response.get_data().count(b"data:") == 3
        ttfb = cap.sample("http_server_request_duration_seconds_sum", http_route="/stream")
        full = cap.sample("http_server_stream_duration_seconds_sum", http_route="/stream")
        assert ttfb < 0.08 and full >= 0.12
        assert app.config["CLOSED"] == [True]
        (span,) = cap.spans()
        assert span.end_time - span.start_time >= 0.12e9


def test_body_sizes():
    client = build_app().test_client()
    with capture() as cap:
        response = get(client, "/orders", method="POST", json={"item": "x" * 100})
        assert cap.sample("http_server_request_body_size_bytes_sum", http_route="/orders") == len(
            json.dumps({"item": "x" * 100})
        )
        assert cap.sample("http_server_response_body_size_bytes_sum", http_route="/orders") == len(response.data)


def test_access_log_one_json_record_per_request_with_trace_and_correlation_ids(access_log):
    client = build_app().test_client()
    with capture() as cap:
        get(client, "/users/9", headers={"X-Correlation-ID": "req-77", "User-Agent": "ua/1"})
        get(client, "/nope")
        get(client, "/boom")
        record = next(r for r in cap.records if r.name == "bakhmach_obs.access")
        assert (record.http_method, record.http_route, record.http_status) == ("GET", "/users/<int:user_id>", 200)
        assert record.path == "/users/9" and record.user_agent == "ua/1" and record.duration_ms >= 0
    with capture():
        get(build_app(access_log=False).test_client(), "/users/9")
    first, second, third = (json.loads(line) for line in access_log.getvalue().splitlines())
    assert first["message"] == "GET /users/<int:user_id> 200"
    assert first["correlation_id"] == "req-77" and re.fullmatch(r"[0-9a-f]{32}", first["trace_id"])
    assert second["http_route"] == "__unmatched__" and second["http_status"] == 404
    assert third["level"] == "ERROR" and third["error_type"] == "tests.test_flask.Boom"


def test_init_app_twice_neither_wraps_nor_counts_twice():
    app = build_app()
    first = app.wsgi_app
    assert init_app(app, access_log=False) is first
    assert isinstance(first, ObservabilityMiddleware) and not isinstance(first.app, ObservabilityMiddleware)
    with capture() as cap:
        get(app.test_client(), "/users/1")
        assert durations(cap) == {("GET", "/users/<int:user_id>", "200"): 1.0}
        assert len(cap.spans()) == 1


def test_init_app_on_an_app_wrapped_by_hand_reuses_that_middleware():
    app = Flask(__name__)

    @app.get("/things/<int:thing_id>")
    def thing(thing_id: int):
        return "ok"

    app.wsgi_app = ObservabilityMiddleware(app.wsgi_app)
    assert init_app(app) is app.wsgi_app
    with capture() as cap:
        get(app.test_client(), "/things/3")
        assert durations(cap) == {("GET", "/things/<int:thing_id>", "200"): 1.0}


def test_async_view_sees_the_correlation_id():
    app = build_app()

    @app.get("/async/<int:n>")
    async def async_view(n: int):
        return {"cid": bakhmach_obs.correlation_id()}

    with capture() as cap:
        response = get(app.test_client(), "/async/1", headers={"X-Correlation-ID": "req-async"})
        assert response.json == {"cid": "req-async"}
        assert durations(cap) == {("GET", "/async/<int:n>", "200"): 1.0}


GUNICORN_APP = """
import io

from flask import Flask, send_file
from werkzeug.middleware.dispatcher import DispatcherMiddleware

import bakhmach_obs as obs
from bakhmach_obs.flask import init_app

obs.configure(service_name="gunicorn-test", log_format="none", traces_exporter="none")
app = Flask(__name__)


@app.get("/users/<int:user_id>")
def user(user_id):
    return {"id": user_id, "cid": obs.correlation_id()}


@app.get("/file")
def file():
    return send_file(io.BytesIO(b"x" * 1000), mimetype="application/octet-stream")


init_app(app)
app.wsgi_app = DispatcherMiddleware(app.wsgi_app, {"/metrics": obs.metrics_wsgi_app()})
"""


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _request(port, path, headers=None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path, headers=headers or {})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def test_under_gunicorn_with_multiprocess_metrics(tmp_path):
    (tmp_path / "gunicorn_app.py").write_text(GUNICORN_APP, encoding="utf-8")
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    port = _free_port()
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir), "PYTHONPATH": str(tmp_path)}
    log = tmp_path / "gunicorn.log"
    with log.open("wb") as stderr, subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-w", "2", "-b", f"127.0.0.1:{port}", "gunicorn_app:app"],
        cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=stderr,
    ) as server:  # fmt: skip
        try:
            deadline = time.monotonic() + 20
            while True:
                try:
                    _request(port, "/health/live")
                    break
                except OSError:
                    assert server.poll() is None and time.monotonic() < deadline, log.read_text()
                    time.sleep(0.1)
            for i in range(6):
                status, headers, body = _request(port, f"/users/{i}", {"X-Correlation-ID": f"gun-{i}"})
                assert status == 200 and headers["X-Correlation-ID"] == f"gun-{i}" == json.loads(body)["cid"]
            status, _, body = _request(port, "/file")
            assert status == 200 and body == b"x" * 1000
            _, _, exposition = _request(port, "/metrics")
        finally:
            server.terminate()
            server.wait(10)
    text = exposition.decode()
    count = re.search(
        r'http_server_request_duration_seconds_count\{[^}]*http_route="/users/<int:user_id>"[^}]*\} (\S+)', text
    )
    assert count and float(count.group(1)) == 6.0, text
    size = re.search(r'http_server_response_body_size_bytes_sum\{[^}]*http_route="/file"[^}]*\} (\S+)', text)
    assert size and float(size.group(1)) == 1000.0, text
    assert 'http_route="/metrics"' not in text and 'http_route="/health/live"' not in text
