from __future__ import annotations

import asyncio
import io
import json
import logging
import re
import time
from wsgiref.util import FileWrapper, setup_testing_defaults

import django
import pytest
from django.conf import settings

MIDDLEWARE = ["bakhmach_obs.django.ObservabilityMiddleware", "tests.test_django.ExplodingMiddleware"]
if not settings.configured:
    settings.configure(
        DEBUG=False,
        SECRET_KEY="not-a-secret",
        ALLOWED_HOSTS=["testserver", "127.0.0.1"],
        ROOT_URLCONF=__name__,
        MIDDLEWARE=MIDDLEWARE,
        INSTALLED_APPS=[],
        DATABASES={},
        LOGGING_CONFIG=None,
        USE_TZ=True,
    )
    django.setup()

from asgiref.sync import iscoroutinefunction, markcoroutinefunction  # noqa: E402
from django.core.exceptions import ImproperlyConfigured  # noqa: E402
from django.core.handlers.wsgi import WSGIHandler  # noqa: E402
from django.http import FileResponse, Http404, JsonResponse, StreamingHttpResponse  # noqa: E402
from django.test import AsyncClient, Client, override_settings  # noqa: E402
from django.urls import include, path, re_path  # noqa: E402
from opentelemetry.trace import SpanKind, StatusCode  # noqa: E402

import bakhmach_obs  # noqa: E402
from bakhmach_obs.django import ObservabilityMiddleware  # noqa: E402
from bakhmach_obs.logs import JsonFormatter  # noqa: E402
from bakhmach_obs.testing import capture  # noqa: E402

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
PARENT_ID = "b7ad6b7169203331"
CLOSED: list[str] = []


class Boom(Exception):
    pass


class ExplodingMiddleware:
    """Raises in a middleware after ours: Django turns it into a 500 without process_exception."""

    sync_capable = async_capable = True

    def __init__(self, get_response):
        self.get_response = get_response
        if iscoroutinefunction(get_response):
            markcoroutinefunction(self)

    def __call__(self, request):
        if request.path == "/explode":
            raise Boom("in a middleware")
        return self.get_response(request)


def user(request, user_id):
    return JsonResponse({"id": user_id, "cid": bakhmach_obs.correlation_id()})


def members(request, org):
    return JsonResponse({"org": org})


def article(request, year):
    return JsonResponse({"year": year})


def boom(request):
    raise Boom("kaput")


def missing(request, slug):
    raise Http404("no such thing")


def plain(request):
    return JsonResponse({"ok": True})


def stream(request):
    def chunks():
        try:
            for i in range(3):
                time.sleep(0.04)
                yield f"data: {i}, cid={bakhmach_obs.correlation_id()}\n\n"
        finally:
            CLOSED.append("sync")

    return StreamingHttpResponse(chunks(), content_type="text/event-stream")


def broken_export(request):
    def chunks():
        raise Boom("before the first byte")
        yield b""  # pragma: no cover - a generator that fails at once

    return StreamingHttpResponse(chunks(), content_type="text/csv")


def download(request):
    return FileResponse(io.BytesIO(b"hello world"), filename="a.txt")


async def async_user(request, user_id):
    await asyncio.sleep(0)
    return JsonResponse({"id": user_id, "cid": bakhmach_obs.correlation_id()})


async def async_boom(request):
    raise Boom("async kaput")


async def async_stream(request):
    async def chunks():
        for i in range(3):
            await asyncio.sleep(0.04)
            yield f"data: {i}, cid={bakhmach_obs.correlation_id()}\n\n"

    return StreamingHttpResponse(chunks(), content_type="text/event-stream")


def resolve_route(request):
    return "/resolved"


def custom(request, rest):
    request.META["bakhmach_obs.route"] = "/custom/{rest}"
    return JsonResponse({"ok": True})


urlpatterns = [
    path("users/<int:user_id>", user),
    path("api/", include([path("orgs/<slug:org>/members", members)])),
    re_path(r"^articles/(?P<year>[0-9]{4})/$", article),
    path("boom", boom),
    path("missing/<slug:slug>", missing),
    path("stream", stream),
    path("download", download),
    path("export", broken_export),
    path("async/users/<int:user_id>", async_user),
    path("async/boom", async_boom),
    path("async/stream", async_stream),
    path("metrics", plain),
    path("health/live", plain),
    path("custom/<path:rest>", custom),
    path("", plain),
]


@pytest.fixture(autouse=True)
def _django_settings():
    with override_settings(ROOT_URLCONF=__name__, MIDDLEWARE=MIDDLEWARE, ALLOWED_HOSTS=["testserver", "127.0.0.1"]):
        yield


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


def durations(cap):
    return {
        (s.labels["http_request_method"], s.labels["http_route"], s.labels["http_response_status_code"]): s.value
        for m in cap.registry.collect()
        if m.name == "http_server_request_duration_seconds"
        for s in m.samples
        if s.name.endswith("_count")
    }


def test_routes_are_django_patterns_through_includes_and_regex_routes():
    client = Client()
    with capture() as cap:
        for p in ("/users/1", "/users/2", "/api/orgs/acme/members", "/articles/2024/", "/articles/2025/", "/"):
            assert client.get(p).status_code == 200
        assert client.get("/missing/thing").status_code == 404  # Http404 from a matched route
        assert durations(cap) == {
            ("GET", "/users/<int:user_id>", "200"): 2.0,
            ("GET", "/api/orgs/<slug:org>/members", "200"): 1.0,
            ("GET", "/articles/(?P<year>[0-9]{4})/", "200"): 2.0,
            ("GET", "/", "200"): 1.0,
            ("GET", "/missing/<slug:slug>", "404"): 1.0,
        }
        missing_span = next(s for s in cap.spans() if s.name == "GET /missing/<slug:slug>")
        assert "error.type" not in missing_span.attributes  # a 404 is not a server error


def test_404_scans_collapse_into_one_series_and_unknown_methods_into_other():
    client = Client()
    with capture() as cap:
        for i in range(200):
            assert client.get(f"/wp-admin/{i}.php").status_code == 404
        assert client.generic("BREW", "/users/1").status_code == 200
        assert durations(cap) == {
            ("GET", "__unmatched__", "404"): 200.0,
            ("_OTHER", "/users/<int:user_id>", "200"): 1.0,
        }
        brew = [s for s in cap.spans() if s.attributes["http.request.method"] == "_OTHER"]
        assert brew[0].attributes["http.request.method_original"] == "BREW"
        assert brew[0].name == "HTTP /users/<int:user_id>"
        assert "/wp-admin" not in cap.exposition()


def test_excluded_paths_produce_no_signal_at_all(access_log):
    with override_settings(BAKHMACH_OBS={"exclude_paths": ["/users/7"]}), capture() as cap:
        client = Client()
        for p in ("/metrics", "/health/live", "/users/7"):
            response = client.get(p)
            assert response.status_code == 200 and "X-Correlation-ID" not in response.headers
        assert durations(cap) == {}
        assert cap.spans() == []
        assert [r for r in cap.records if r.name == "bakhmach_obs.access"] == []
    options = {"exclude_patterns": [r"/users/\d+"], "exclude_defaults": False}
    with override_settings(BAKHMACH_OBS=options), capture() as cap:
        client = Client()
        client.get("/users/3")
        client.get("/metrics")
        assert list(durations(cap)) == [("GET", "/metrics", "200")]


def test_correlation_id_validated_bound_and_echoed():
    client = Client()
    with capture():
        good = client.get("/users/1", headers={"X-Correlation-ID": "req-12345"})
        request_id = client.get("/users/1", headers={"X-Request-ID": "abc.def:1"})
        invalid = [
            client.get("/users/1", HTTP_X_CORRELATION_ID=value)
            for value in ("x" * 300, "evil<script>", "a\r\nSet-Cookie: x=1", "")
        ]
    assert good.headers["X-Correlation-ID"] == "req-12345" == good.json()["cid"]
    assert request_id.headers["X-Correlation-ID"] == "abc.def:1"
    for response in invalid:
        cid = response.headers["X-Correlation-ID"]
        assert re.fullmatch(r"[0-9a-f]{32}", cid) and response.json()["cid"] == cid
    assert bakhmach_obs.correlation_id() is None
    with override_settings(BAKHMACH_OBS={"correlation_header": "X-Request-ID"}), capture():
        response = Client().get("/users/1", headers={"X-Correlation-ID": "req-1"})
        assert response.headers["X-Request-ID"] == "req-1" and "X-Correlation-ID" not in response.headers


def test_traceparent_is_continued_and_malformed_ones_start_a_new_trace():
    client = Client()
    with capture() as cap:
        client.get("/users/1", headers={"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01", "tracestate": "a=1"})
        client.get("/users/2", headers={"traceparent": f"ff-{TRACE_ID}-{PARENT_ID}-01"})
        client.get("/users/3", HTTP_TRACEPARENT="garbage\r\n")
        continued, invalid_version, garbage = cap.spans()
        assert continued.kind is SpanKind.SERVER
        assert f"{continued.context.trace_id:032x}" == TRACE_ID
        assert f"{continued.parent.span_id:016x}" == PARENT_ID and continued.parent.is_remote
        assert continued.context.trace_state.get("a") == "1"
        for span in (invalid_version, garbage):
            assert span.parent is None and f"{span.context.trace_id:032x}" != TRACE_ID


def test_view_exception_is_a_500_response_with_error_type():
    with capture() as cap:
        response = Client(raise_request_exception=False).get("/boom")
        assert response.status_code == 500
        (span,) = cap.spans()
        assert span.status.status_code is StatusCode.ERROR
        assert span.attributes["error.type"] == "tests.test_django.Boom"
        assert durations(cap) == {("GET", "/boom", "500"): 1.0}
        assert cap.sample("http_server_active_requests", http_request_method="GET") == 0.0
        with pytest.raises(Boom, match="kaput"):  # the test client re-raises it, after we recorded it
            Client().get("/boom")
        assert durations(cap) == {("GET", "/boom", "500"): 2.0}
    assert bakhmach_obs.correlation_id() is None


def test_propagated_exception_is_recorded_and_reraised_unchanged():
    with override_settings(DEBUG_PROPAGATE_EXCEPTIONS=True), capture() as cap:
        with pytest.raises(Boom, match="kaput") as raised:
            Client().get("/boom")
        (span,) = cap.spans()
        assert span.attributes["error.type"] == "tests.test_django.Boom"
        assert durations(cap) == {("GET", "/boom", "500"): 1.0}
        assert type(raised.value) is Boom and raised.value.args == ("kaput",)
    assert bakhmach_obs.correlation_id() is None


def test_exception_in_another_middleware_is_a_500_with_error_type():
    with capture() as cap:
        assert Client(raise_request_exception=False).get("/explode").status_code == 500
        (span,) = cap.spans()
        assert span.attributes["error.type"] == "tests.test_django.Boom"
        assert durations(cap) == {("GET", "__unmatched__", "500"): 1.0}  # it failed before URL resolution


def test_streaming_duration_covers_iteration_and_latency_is_time_to_first_chunk():
    CLOSED.clear()
    with capture() as cap:
        response = Client().get("/stream", headers={"X-Correlation-ID": "req-stream"})
        assert response.headers["X-Correlation-ID"] == "req-stream"
        assert durations(cap) == {}  # not finished before the body is sent
        body = b"".join(response.streaming_content).decode()
        assert body.count("cid=req-stream") == 3  # the correlation id is bound while the body is produced
        ttfb = cap.sample("http_server_request_duration_seconds_sum", http_route="/stream")
        full = cap.sample("http_server_stream_duration_seconds_sum", http_route="/stream")
        assert ttfb < 0.08 and full >= 0.12
        assert cap.sample("http_server_response_body_size_bytes_sum", http_route="/stream") == len(body)
        (span,) = cap.spans()
        assert span.end_time - span.start_time >= 0.12e9
    assert CLOSED == ["sync"]
    assert bakhmach_obs.correlation_id() is None


def test_a_stream_failing_before_its_first_byte_is_a_500_over_wsgi():
    """The status line has not gone out yet: the server answers 500, and so do the signals."""
    with capture() as cap:
        response = Client().get("/export")
        with pytest.raises(Boom):
            b"".join(response.streaming_content)
        assert durations(cap) == {("GET", "/export", "500"): 1.0}
        (span,) = cap.spans()
        assert span.attributes["http.response.status_code"] == 500
        assert span.attributes["error.type"] == "tests.test_django.Boom"


def test_file_response_through_the_wsgi_file_wrapper():
    handler = WSGIHandler()
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/download", "wsgi.file_wrapper": FileWrapper}
    setup_testing_defaults(environ)
    headers = {}
    with capture() as cap:
        result = handler(environ, lambda status, response_headers, exc_info=None: headers.update(response_headers))
        assert type(result) is FileWrapper and headers["Content-Length"] == "11"
        assert b"".join(result) == b"hello world"  # what the server's sendfile would do
        result.close()
        assert durations(cap) == {("GET", "/download", "200"): 1.0}
        assert cap.sample("http_server_response_body_size_bytes_sum", http_route="/download") == 11.0
        # without a file wrapper (test client, ASGI) the file is iterated through the middleware
        response = Client().get("/download")
        assert b"".join(response.streaming_content) == b"hello world"
        assert durations(cap) == {("GET", "/download", "200"): 2.0}
        assert cap.sample("http_server_response_body_size_bytes_sum", http_route="/download") == 22.0


def test_body_sizes():
    with capture() as cap:
        payload = json.dumps({"item": "x" * 100})
        response = Client().post("/users/1", payload, content_type="application/json")
        assert cap.sample("http_server_request_body_size_bytes_sum", http_route="/users/<int:user_id>") == len(payload)
        assert cap.sample("http_server_response_body_size_bytes_sum", http_route="/users/<int:user_id>") == len(
            response.content
        )


def test_span_attributes_follow_http_semantic_conventions():
    with capture() as cap:
        Client().get("/users/1", {"page": "2"}, headers={"User-Agent": "pytest-agent"})
        (span,) = cap.spans()
        attrs = span.attributes
        assert span.name == "GET /users/<int:user_id>"
        assert attrs["http.route"] == "/users/<int:user_id>" and attrs["http.response.status_code"] == 200
        assert attrs["url.path"] == "/users/1" and attrs["url.scheme"] == "http" and attrs["url.query"] == "page=2"
        assert attrs["user_agent.original"] == "pytest-agent" and attrs["server.address"] == "testserver"


def test_access_log_one_json_record_per_request_with_trace_and_correlation_ids(access_log):
    with capture() as cap:
        client = Client(raise_request_exception=False)
        client.get("/users/9", headers={"X-Correlation-ID": "req-77", "User-Agent": "ua/1"})
        client.get("/nope")
        client.get("/boom")
        record = next(r for r in cap.records if r.name == "bakhmach_obs.access")
        assert (record.http_method, record.http_route, record.http_status) == ("GET", "/users/<int:user_id>", 200)
        assert record.path == "/users/9" and record.user_agent == "ua/1" and record.duration_ms >= 0
    with override_settings(BAKHMACH_OBS={"access_log": False}), capture():
        Client().get("/users/9")
    first, second, third = (json.loads(line) for line in access_log.getvalue().splitlines())
    assert first["message"] == "GET /users/<int:user_id> 200"
    assert first["correlation_id"] == "req-77" and re.fullmatch(r"[0-9a-f]{32}", first["trace_id"])
    assert second["http_route"] == "__unmatched__" and second["http_status"] == 404
    assert third["level"] == "ERROR" and third["error_type"] == "tests.test_django.Boom"


def test_a_view_can_set_its_own_route_label():
    with capture() as cap:
        Client().get("/custom/a/b/c")
        assert durations(cap) == {("GET", "/custom/{rest}", "200"): 1.0}


def test_settings_route_resolver_and_unknown_options():
    with override_settings(BAKHMACH_OBS={"route_resolver": "tests.test_django.resolve_route"}), capture() as cap:
        Client().get("/users/1")
        assert durations(cap) == {("GET", "/resolved", "200"): 1.0}
    with override_settings(BAKHMACH_OBS={"exclude_path": ["/x"]}):
        with pytest.raises(ImproperlyConfigured, match="exclude_path"):
            ObservabilityMiddleware(lambda request: None)
    with override_settings(BAKHMACH_OBS={"route_resolver": 42}):
        with pytest.raises(ImproperlyConfigured, match="route_resolver"):
            ObservabilityMiddleware(lambda request: None)


def test_disabled_passes_through_untouched():
    with capture(disabled=True) as cap:
        response = Client().get("/users/1")
        assert response.status_code == 200 and "X-Correlation-ID" not in response.headers
        assert durations(cap) == {}


def test_sync_and_async_modes():
    async def get_response(request):
        return None

    assert not iscoroutinefunction(ObservabilityMiddleware(lambda request: None))
    assert iscoroutinefunction(ObservabilityMiddleware(get_response))


@pytest.fixture
def async_calls(monkeypatch):
    """Counts requests the middleware handled in async mode (no thread hop under ASGI)."""
    calls = []
    original = ObservabilityMiddleware.__acall__

    async def spy(self, request):
        calls.append(request.path)
        return await original(self, request)

    monkeypatch.setattr(ObservabilityMiddleware, "__acall__", spy)
    return calls


async def test_async_views_under_asgi(async_calls):
    client = AsyncClient()
    with capture() as cap:
        response = await client.get("/async/users/5", headers={"X-Correlation-ID": "req-async"})
        assert response.status_code == 200 and response.json() == {"id": 5, "cid": "req-async"}
        assert response.headers["X-Correlation-ID"] == "req-async"
        assert (await client.get("/nothing-here")).status_code == 404
        with pytest.raises(Boom, match="async kaput"):
            await client.get("/async/boom")
        assert durations(cap) == {
            ("GET", "/async/users/<int:user_id>", "200"): 1.0,
            ("GET", "__unmatched__", "404"): 1.0,
            ("GET", "/async/boom", "500"): 1.0,
        }
        boom_span = next(s for s in cap.spans() if s.name == "GET /async/boom")
        assert boom_span.attributes["error.type"] == "tests.test_django.Boom"
        assert (await AsyncClient(raise_request_exception=False).get("/explode")).status_code == 500
        explode_span = next(s for s in cap.spans() if s.attributes["url.path"] == "/explode")
        assert explode_span.attributes["error.type"] == "tests.test_django.Boom"
    assert async_calls == ["/async/users/5", "/nothing-here", "/async/boom", "/explode"]
    assert bakhmach_obs.correlation_id() is None


async def test_async_streaming_under_asgi(async_calls):
    with capture() as cap:
        response = await AsyncClient().get("/async/stream", headers={"X-Correlation-ID": "req-astream"})
        body = b"".join([chunk async for chunk in response.streaming_content]).decode()
        assert body.count("cid=req-astream") == 3
        ttfb = cap.sample("http_server_request_duration_seconds_sum", http_route="/async/stream")
        full = cap.sample("http_server_stream_duration_seconds_sum", http_route="/async/stream")
        assert ttfb < 0.08 and full >= 0.12
    assert async_calls == ["/async/stream"]
