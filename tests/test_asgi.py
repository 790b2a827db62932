from __future__ import annotations

import asyncio
import io
import json
import logging
import re
import subprocess

import httpx
import pytest
from fastapi import APIRouter, BackgroundTasks, FastAPI
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.trace import SpanKind, StatusCode
from prometheus_client import generate_latest
from starlette.applications import Starlette
from starlette.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.routing import Route

import bakhmach_obs
from bakhmach_obs.asgi import ObservabilityMiddleware
from bakhmach_obs.logs import JsonFormatter
from bakhmach_obs.testing import capture

from .conftest import need_binary

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
PARENT_ID = "b7ad6b7169203331"
log = logging.getLogger("tests.asgi.app")


class Boom(Exception):
    pass


#: FastAPI >= 0.16x traces by itself once a global tracer provider exists; the middleware's span is the one.
NO_FASTAPI_TELEMETRY = {"tracing": False, "metrics": False, "logs": False, "auto_configure": False}


def build_app(**options) -> FastAPI:
    app = FastAPI(telemetry=NO_FASTAPI_TELEMETRY)
    users = APIRouter(prefix="/v1")

    @users.get("/users/{user_id}")
    async def get_user(user_id: int):
        log.info("loading user")
        return {"id": user_id, "correlation_id": bakhmach_obs.correlation_id()}

    @users.post("/orders")
    async def create_order(payload: dict):
        return {"ok": True}

    app.include_router(users)

    @app.get("/boom")
    async def boom():
        raise Boom("kaput")

    @app.get("/stream")
    async def stream():
        async def chunks():
            for i in range(3):
                await asyncio.sleep(0.05)
                yield f"data: {i}\n\n"

        return StreamingResponse(chunks(), media_type="text/event-stream")

    @app.get("/background")
    async def background(tasks: BackgroundTasks):
        async def slow():
            await asyncio.sleep(0.2)

        tasks.add_task(slow)
        return {"queued": True}

    @app.get("/metrics")
    async def metrics():
        return PlainTextResponse("scrape")

    @app.get("/health/live")
    async def live():
        return {"status": "alive"}

    async def item(request):
        return JSONResponse({"item": request.path_params["item_id"]})

    async def member(request):
        return JSONResponse({"org": request.path_params["org_id"]})

    app.mount("/shop", Starlette(routes=[Route("/items/{item_id:int}", item)]))
    app.mount("/orgs/{org_id}", Starlette(routes=[Route("/members", member)]))
    app.add_middleware(ObservabilityMiddleware, **options)
    return app


async def _requests(app, calls, raise_app_exceptions=True):
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=raise_app_exceptions)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        return [await client.request(*call[:2], **(call[2] if len(call) > 2 else {})) for call in calls]


def run(app, *calls, **kw):
    return asyncio.run(_requests(app, calls, **kw))


def durations(cap):
    return {
        (s.labels["http_request_method"], s.labels["http_route"], s.labels["http_response_status_code"]): s.value
        for m in cap.registry.collect()
        if m.name == "http_server_request_duration_seconds"
        for s in m.samples
        if s.name.endswith("_count")
    }


def test_routes_are_templates_through_routers_mounts_and_path_params():
    with capture() as cap:
        responses = run(
            build_app(),
            ("GET", "/v1/users/1"),
            ("GET", "/v1/users/2"),
            ("GET", "/shop/items/7"),
            ("GET", "/orgs/42/members"),
            ("GET", "/orgs/43/members"),
        )
        assert [r.status_code for r in responses] == [200] * 5
        assert durations(cap) == {
            ("GET", "/v1/users/{user_id}", "200"): 2.0,
            ("GET", "/shop/items/{item_id}", "200"): 1.0,
            ("GET", "/orgs/{org_id}/members", "200"): 2.0,
        }
        assert sorted({s.name for s in cap.spans()}) == [
            "GET /orgs/{org_id}/members", "GET /shop/items/{item_id}", "GET /v1/users/{user_id}",
        ]  # fmt: skip


def test_root_path_is_not_part_of_the_route():
    app = build_app()
    with capture() as cap:

        async def call():
            transport = httpx.ASGITransport(app=app, root_path="/api")
            async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
                return await client.get("/api/v1/users/5")

        assert asyncio.run(call()).status_code == 200
        assert durations(cap) == {("GET", "/v1/users/{user_id}", "200"): 1.0}


def test_404_scans_collapse_into_one_series_and_unknown_methods_into_other():
    with capture() as cap:
        run(build_app(), *[("GET", f"/wp-admin/{i}.php") for i in range(1000)], ("BREW", "/v1/users/1"))
        counts = durations(cap)
        assert counts[("GET", "__unmatched__", "404")] == 1000.0
        assert counts[("_OTHER", "/v1/users/{user_id}", "405")] == 1.0
        assert len(counts) == 2
        brew = [s for s in cap.spans() if s.attributes.get("http.request.method") == "_OTHER"]
        assert brew[0].attributes["http.request.method_original"] == "BREW"
        assert brew[0].name == "HTTP /v1/users/{user_id}"


def test_excluded_paths_produce_no_signal_at_all():
    logging.getLogger("bakhmach_obs.access").setLevel(logging.INFO)
    try:
        with capture() as cap:
            run(build_app(exclude_paths=["/v1/users/1"]), ("GET", "/metrics"), ("GET", "/health/live"),
                ("GET", "/v1/users/1"))  # fmt: skip
            assert durations(cap) == {}
            assert cap.spans() == []
            assert [r for r in cap.records if r.name == "bakhmach_obs.access"] == []
        with capture() as cap:
            run(build_app(exclude_patterns=[r"/v1/users/\d+"], exclude_defaults=False), ("GET", "/v1/users/3"),
                ("GET", "/metrics"))  # fmt: skip
            assert list(durations(cap)) == [("GET", "/metrics", "200")]
    finally:
        logging.getLogger("bakhmach_obs.access").setLevel(logging.NOTSET)


def test_correlation_id_taken_validated_bound_and_echoed():
    app = build_app()
    with capture():
        good, request_id, bad, crlf, missing = run(
            app,
            ("GET", "/v1/users/1", {"headers": {"X-Correlation-ID": "req-12345"}}),
            ("GET", "/v1/users/1", {"headers": {"X-Request-ID": "abc.def:1"}}),
            ("GET", "/v1/users/1", {"headers": {"X-Correlation-ID": "x" * 300}}),
            ("GET", "/v1/users/1", {"headers": {"X-Correlation-ID": "evil<script>"}}),
            ("GET", "/v1/users/1"),
        )
    assert good.headers["x-correlation-id"] == "req-12345" == good.json()["correlation_id"]
    assert request_id.headers["x-correlation-id"] == "abc.def:1"
    for response in (bad, crlf, missing):
        cid = response.headers["x-correlation-id"]
        assert re.fullmatch(r"[0-9a-f]{32}", cid) and response.json()["correlation_id"] == cid
    assert bakhmach_obs.correlation_id() is None


def test_traceparent_is_continued_and_malformed_ones_start_a_new_trace():
    app = build_app()
    with capture() as cap:
        run(
            app,
            ("GET", "/v1/users/1", {"headers": {"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01", "tracestate": "a=1"}}),
            ("GET", "/v1/users/2", {"headers": {"traceparent": f"00-{'0' * 32}-{PARENT_ID}-01"}}),
            ("GET", "/v1/users/3", {"headers": {"traceparent": "garbage"}}),
        )
        continued, zeros, garbage = cap.spans()
        assert continued.kind is SpanKind.SERVER
        assert f"{continued.context.trace_id:032x}" == TRACE_ID
        assert f"{continued.parent.span_id:016x}" == PARENT_ID and continued.parent.is_remote
        assert continued.context.trace_state.get("a") == "1"
        for span in (zeros, garbage):
            assert span.parent is None and f"{span.context.trace_id:032x}" != TRACE_ID


def test_unsampled_parent_is_respected_and_costs_no_span():
    with capture(traces_sampler="parentbased_always_on") as cap:
        run(build_app(), ("GET", "/v1/users/1", {"headers": {"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-00"}}))
        assert cap.spans() == []
        assert durations(cap) == {("GET", "/v1/users/{user_id}", "200"): 1.0}


def test_request_duration_carries_a_trace_exemplar_only_for_sampled_requests():
    from prometheus_client.openmetrics.exposition import generate_latest as openmetrics_latest

    with capture() as cap:
        run(build_app(), ("GET", "/v1/users/1"))
        (span,) = cap.spans()
        text = openmetrics_latest(cap.registry).decode()
        lines = [ln for ln in text.splitlines() if ln.startswith("http_server_request_duration_seconds_bucket")]
        marked = [ln for ln in lines if "#" in ln]
        assert len(marked) == 1, lines
        assert f'trace_id="{span.context.trace_id:032x}"' in marked[0]
        assert f'span_id="{span.context.span_id:016x}"' in marked[0]
    with capture(traces_sampler="parentbased_always_on") as cap:
        run(build_app(), ("GET", "/v1/users/1", {"headers": {"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-00"}}))
        assert "trace_id" not in openmetrics_latest(cap.registry).decode()


def test_application_exception_is_a_500_and_reraised_unchanged():
    with capture() as cap:
        with pytest.raises(Boom, match="kaput"):
            run(build_app(), ("GET", "/boom"))
        assert durations(cap) == {("GET", "/boom", "500"): 1.0}
        (span,) = cap.spans()
        assert span.status.status_code is StatusCode.ERROR
        assert span.attributes["error.type"] == "tests.test_asgi.Boom"
        assert span.attributes["http.response.status_code"] == 500
        assert cap.sample("http_server_active_requests", http_request_method="GET") == 0.0


def test_streaming_latency_is_time_to_first_byte_and_full_duration_is_separate():
    with capture() as cap:
        (response,) = run(build_app(), ("GET", "/stream"))
        assert response.text.count("data:") == 3
        ttfb = cap.sample("http_server_request_duration_seconds_sum", http_route="/stream")
        full = cap.sample("http_server_stream_duration_seconds_sum", http_route="/stream")
        assert ttfb < 0.1 <= full
        assert cap.sample("http_server_stream_duration_seconds_count", http_route="/stream") == 1.0


def test_background_tasks_after_the_response_do_not_count():
    with capture() as cap:
        run(build_app(), ("GET", "/background"))
        assert cap.sample("http_server_request_duration_seconds_sum", http_route="/background") < 0.15


def test_body_sizes():
    with capture() as cap:
        (response,) = run(build_app(), ("POST", "/v1/orders", {"json": {"item": "x" * 100}}))
        assert response.status_code == 200
        assert cap.sample("http_server_request_body_size_bytes_sum", http_route="/v1/orders") == len(
            json.dumps({"item": "x" * 100}, separators=(",", ":"))
        )
        assert cap.sample("http_server_response_body_size_bytes_sum", http_route="/v1/orders") == len(response.content)


def test_span_attributes_follow_http_semantic_conventions_and_redact_the_query():
    with capture() as cap:
        run(build_app(), ("GET", "/v1/users/1?sig=s3cret&page=2", {"headers": {"User-Agent": "pytest-agent"}}))
        (span,) = cap.spans()
        attrs = span.attributes
        assert span.name == "GET /v1/users/{user_id}"
        assert attrs["http.request.method"] == "GET" and attrs["http.route"] == "/v1/users/{user_id}"
        assert attrs["http.response.status_code"] == 200 and attrs["url.path"] == "/v1/users/1"
        assert attrs["url.scheme"] == "http" and attrs["user_agent.original"] == "pytest-agent"
        assert attrs["url.query"] == "sig=REDACTED&page=2"
        assert re.fullmatch(r"[0-9a-f]{32}", attrs["bakhmach.correlation_id"])


def test_access_log_one_json_record_per_request_with_trace_and_correlation_ids():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter(service="backend"))
    access = logging.getLogger("bakhmach_obs.access")
    access.addHandler(handler)
    access.setLevel(logging.INFO)
    try:
        with capture():
            run(build_app(), ("GET", "/v1/users/9", {"headers": {"X-Correlation-ID": "req-77", "User-Agent": "ua/1"}}),
                ("GET", "/nope"))  # fmt: skip
        with capture():
            run(build_app(access_log=False), ("GET", "/v1/users/9"))
    finally:
        access.removeHandler(handler)
        access.setLevel(logging.NOTSET)
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["message"] == "GET /v1/users/{user_id} 200"
    assert first["http_route"] == "/v1/users/{user_id}" and first["http_status"] == 200
    assert first["correlation_id"] == "req-77" and first["user_agent"] == "ua/1" and first["path"] == "/v1/users/9"
    assert first["duration_ms"] >= 0 and re.fullmatch(r"[0-9a-f]{32}", first["trace_id"])
    assert second["http_route"] == "__unmatched__" and second["http_status"] == 404


def test_active_requests_gauge_counts_in_flight_requests():
    seen = {}

    async def app(scope, receive, send):
        seen["active"] = cap.sample("http_server_active_requests", http_request_method="GET")
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    with capture() as cap:
        run(ObservabilityMiddleware(app), ("GET", "/anything"))
        assert seen["active"] == 1.0
        assert cap.sample("http_server_active_requests", http_request_method="GET") == 0.0
        # a raw ASGI app records no route: the path never becomes a label
        assert durations(cap) == {("GET", "__unmatched__", "204"): 1.0}


def test_route_resolver_and_explicit_scope_route():
    async def app(scope, receive, send):
        if scope["path"].startswith("/explicit"):
            scope["bakhmach_obs.route"] = "/explicit/{id}"
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    resolver = ObservabilityMiddleware(app, route_resolver=lambda scope: "/resolved")
    with capture() as cap:
        run(resolver, ("GET", "/x/1"), ("GET", "/explicit/2"))
        assert durations(cap) == {("GET", "/resolved", "200"): 1.0, ("GET", "/explicit/{id}", "200"): 1.0}


def test_disabled_or_suppressed_passes_through():
    with capture(disabled=True) as cap:
        (response,) = run(build_app(), ("GET", "/v1/users/1"))
        assert response.status_code == 200 and "x-correlation-id" not in response.headers
        assert durations(cap) == {}


def test_lifespan_and_websocket_scopes_pass_through():
    calls = []

    async def app(scope, receive, send):
        calls.append(scope["type"])

    mw = ObservabilityMiddleware(app)
    asyncio.run(mw({"type": "lifespan"}, None, None))
    asyncio.run(mw({"type": "websocket", "path": "/ws"}, None, None))
    assert calls == ["lifespan", "websocket"]


def test_promtool_accepts_the_http_exposition(tmp_path):
    promtool = need_binary("promtool")
    with capture() as cap:
        run(build_app(), ("GET", "/v1/users/1"), ("GET", "/nope"), ("POST", "/v1/orders", {"json": {}}))
        text = generate_latest(cap.registry)
    result = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, timeout=60)
    assert result.returncode == 0, (result.stdout + result.stderr).decode()


HEADER_TEXT = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=600)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(traceparent=HEADER_TEXT, cid=HEADER_TEXT, agent=HEADER_TEXT, raw=st.binary(max_size=300))
def test_fuzzed_headers_never_raise_and_never_leak_unsanitised(traceparent, cid, agent, raw):
    sent = []

    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})

    async def send(message):
        sent.append(message)

    async def receive():
        return {"type": "http.request", "body": b""}

    scope = {
        "type": "http", "method": "GET", "path": "/x", "query_string": raw, "scheme": "http",
        "headers": [(b"traceparent", traceparent.encode()), (b"x-correlation-id", cid.encode()),
                    (b"user-agent", agent.encode()), (b"x-request-id", raw)],
    }  # fmt: skip
    with capture():
        asyncio.run(ObservabilityMiddleware(app)(scope, receive, send))
    echoed = dict(sent[0]["headers"])[b"x-correlation-id"].decode()
    assert re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._:\-]{0,127}", echoed)
    # the client's id (X-Correlation-ID, else X-Request-ID) when safe, otherwise a fresh one
    assert echoed in (cid, raw.decode("latin-1")) or re.fullmatch(r"[0-9a-f]{32}", echoed)


def test_access_log_direct_path_writes_what_the_record_path_writes(monkeypatch):
    """With only the SDK's JSON handler on the root, access lines skip the LogRecord: same lines."""
    from bakhmach_obs import _http

    from .test_logs import VALIDATOR, bare_root

    made = []
    real = _http._access_record
    monkeypatch.setattr(_http, "_access_record", lambda *a: made.append(a) or real(*a))
    headers = {"X-Correlation-ID": "req-9", "User-Agent": "ua/1", "traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01"}
    calls = [("GET", "/v1/users/9", {"headers": headers}), ("GET", "/boom", {"headers": headers}),
             ("GET", "/nope/eyJhbGciOiJI.eyJzdWIiOjF9.sgn", {"headers": headers})]  # fmt: skip
    outputs = []
    for through_record in (False, True):
        stream = io.StringIO()
        with bare_root() as root:
            bakhmach_obs.configure(service_name="backend", log_format="json", log_stream=stream,
                                   traces_exporter="none", traces_sampler="always_on")  # fmt: skip
            if through_record:
                root.handlers[0].addFilter(logging.Filter())  # passes everything, but is a filter
            with bakhmach_obs.log_context(tenant="acme"):
                responses = run(build_app(), *calls, raise_app_exceptions=False)
        assert [r.status_code for r in responses] == [200, 500, 404]
        assert len(made) == (3 if through_record else 0)
        lines = [json.loads(line) for line in stream.getvalue().splitlines()]
        outputs.append([r for r in lines if r["logger"] == "bakhmach_obs.access"])
    direct, recorded = outputs
    assert len(direct) == len(recorded) == 3
    for a, b in zip(direct, recorded, strict=True):
        VALIDATOR.validate(a)
        assert a["trace_id"] == TRACE_ID and a["correlation_id"] == "req-9" and a["tenant"] == "acme"
        for varying in ("timestamp", "duration_ms", "span_id"):
            a.pop(varying), b.pop(varying)
        assert a == b
    assert direct[1]["level"] == "ERROR" and direct[1]["error_type"].endswith("Boom") and direct[1]["error"] == "kaput"
    assert direct[2]["path"] == "/nope/[REDACTED]"


def test_access_log_direct_path_write_failure_goes_to_the_handlers_error_hook(monkeypatch):
    from .test_logs import bare_root

    class Full(io.StringIO):
        def write(self, s):
            raise OSError("disk full")

    errors = []
    with bare_root() as root:
        bakhmach_obs.configure(service_name="backend", log_format="json", log_stream=Full(), traces_exporter="none")
        monkeypatch.setattr(root.handlers[0], "handleError", errors.append)
        responses = run(build_app(), ("GET", "/v1/users/1"))
    assert responses[0].status_code == 200
    access = [r for r in errors if r.name == "bakhmach_obs.access"]
    assert len(access) == 1 and access[0].getMessage() == "GET /v1/users/{user_id} 200"


def test_mounts_resolve_when_the_middleware_wraps_the_application_from_outside():
    """``app = ObservabilityMiddleware(app)`` (no ``add_middleware``): mount slugs never become labels."""

    async def project(request):
        return JSONResponse({"org": request.path_params["org_slug"]})

    inner = Starlette(routes=[Route("/projects/{project_id}", project)])
    from starlette.routing import Mount

    app = Starlette(routes=[Mount("/orgs/{org_slug}", app=inner)])

    async def passthrough(scope, receive, send):  # hides the router: the mount cannot be resolved
        await app(scope, receive, send)

    with capture() as cap:
        run(ObservabilityMiddleware(app), *[("GET", f"/orgs/{slug}/projects/1") for slug in ("acme", "globex")])
        run(ObservabilityMiddleware(passthrough), ("GET", "/orgs/initech/projects/2"))
    routes = {route for _, route, _ in durations(cap)}
    assert routes == {"/orgs/{org_slug}/projects/{project_id}", "/{mount}/projects/{project_id}"}


def test_a_mounted_app_without_routes_is_labelled_by_its_mount(tmp_path):
    """``app.mount("/static", StaticFiles(...))``: a served file is the mount's template, not unmatched."""
    from starlette.staticfiles import StaticFiles

    (tmp_path / "a.txt").write_text("hello")
    app = FastAPI(telemetry=NO_FASTAPI_TELEMETRY)
    app.mount("/static", StaticFiles(directory=tmp_path))

    async def raw(scope, receive, send):
        await PlainTextResponse("raw")(scope, receive, send)

    app.mount("/orgs/{org}/raw", raw)
    app.add_middleware(ObservabilityMiddleware)
    with capture() as cap:
        responses = run(app, ("GET", "/static/a.txt"), ("GET", "/static/missing.txt"), ("GET", "/orgs/acme/raw/x"))
    assert [r.status_code for r in responses] == [200, 404, 200]
    assert set(durations(cap)) == {
        ("GET", "/static/{path}", "200"),
        ("GET", "__unmatched__", "404"),
        ("GET", "/orgs/{org}/raw/{path}", "200"),
    }


def test_a_request_the_server_cancels_is_a_499_not_a_server_error():
    """Servers cancel the application when the client goes away: a 499, never a 5xx, and re-raised."""
    started = asyncio.Event()

    async def slow(scope, receive, send):
        started.set()
        await asyncio.sleep(30)

    async def serve_and_cancel():
        task = asyncio.ensure_future(ObservabilityMiddleware(slow)(
            {"type": "http", "method": "GET", "path": "/report", "headers": [], "bakhmach_obs.route": "/report"},
            _empty_receive, _discard))  # fmt: skip
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    with capture() as cap:
        asyncio.run(serve_and_cancel())
        assert durations(cap) == {("GET", "/report", "499"): 1.0}
        (span,) = cap.spans()
        assert span.status.status_code is not StatusCode.ERROR and "error.type" not in span.attributes
        assert cap.sample("http_server_active_requests", http_request_method="GET") == 0


async def _empty_receive():
    return {"type": "http.request", "body": b"", "more_body": False}


async def _discard(message):
    return None
