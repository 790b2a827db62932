"""HTTP for the probes: content negotiation, the response, and the ASGI, WSGI, Flask and Django glue."""

from __future__ import annotations

import hmac
import json
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from ..exposition import _serve_lifespan
from ._core import HealthReport, Probe, _iso

if TYPE_CHECKING:
    from ._core import HealthChecks

__all__ = ["PROBES", "Response", "asgi_app", "django_urls", "flask_blueprint", "respond", "respond_sync", "wsgi_app"]

PROBES: tuple[Probe, ...] = ("live", "ready", "startup")
Response = tuple[int, list[tuple[str, str]], bytes]

_JSON = "application/json"
_HEALTH_JSON = "application/health+json"
_FORMAT_VALUES = frozenset(("health+json", "health json", "application/health+json", "application/health json", "ietf"))
_REASONS = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}
_ROUTES: dict[str, Probe] = {}
for _p in PROBES:
    for _prefix in ("", "/health"):
        _ROUTES[f"{_prefix}/{_p}"] = _p


def _query(query: str) -> tuple[bool, bool]:
    """(IETF format asked, verbose asked) from a raw query string (``+`` kept as written)."""
    ietf = verbose = False
    for part in query.split("&"):
        key, _, value = part.partition("=")
        key, value = unquote(key).strip().lower(), unquote(value).strip().lower()
        if key == "format" and value in _FORMAT_VALUES:
            ietf = True
        elif key == "verbose" and value not in ("0", "false", "no", "off"):
            verbose = True
    return ietf, verbose


def _wants_ietf(accept: str) -> bool:
    for item in accept.lower().split(","):
        media, *params = (p.strip() for p in item.split(";"))
        if media == _HEALTH_JSON:
            return not any(p.replace(" ", "") in ("q=0", "q=0.0", "q=0.00", "q=0.000") for p in params)
    return False


def _verbose_allowed(health: HealthChecks, authorization: str) -> bool:
    policy = health.verbose
    if policy is True:
        return True
    if isinstance(policy, str):
        scheme, _, token = authorization.strip().partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), policy.encode())
    return False


def _headers(content_type: str, body: bytes) -> list[tuple[str, str]]:
    return [
        ("Content-Type", content_type),
        ("Content-Length", str(len(body))),
        ("Cache-Control", "no-store"),
        ("X-Content-Type-Options", "nosniff"),
        ("Vary", "Accept, Authorization"),
    ]


def _encode(status: int, data: dict[str, Any], content_type: str) -> Response:
    body = json.dumps(data, separators=(", ", ": ")).encode()
    return status, _headers(content_type, body), body


def _live(health: HealthChecks, ietf: bool) -> Response:
    body = health.live()
    if not ietf:
        return _encode(200, body, _JSON)
    now = _iso(time.time())
    checks = {
        "uptime": [{"componentType": "system", "observedValue": body["uptime_seconds"], "observedUnit": "s",
                    "status": "pass", "time": now}],
        "memory:rss": [{"componentType": "system", "observedValue": body["memory_usage_mb"], "observedUnit": "MiB",
                        "status": "pass", "time": now}],
    }  # fmt: skip
    return _encode(200, {"status": "pass", "checks": checks}, _HEALTH_JSON)


def _render(report: HealthReport, ietf: bool, verbose: bool) -> Response:
    if ietf:
        return _encode(report.status_code, report.health_json(verbose=verbose), _HEALTH_JSON)
    return _encode(report.status_code, report.body(verbose=verbose), _JSON)


def _options(health: HealthChecks, accept: str, query: str, authorization: str) -> tuple[bool, bool]:
    ietf, verbose = _query(query)
    ietf = ietf or _wants_ietf(accept)
    return ietf, verbose and _verbose_allowed(health, authorization)


async def respond(health: HealthChecks, probe: Probe, *, accept: str = "", query: str = "",
                  authorization: str = "") -> Response:  # fmt: skip
    """(status, headers, body) for a probe request, from an event loop."""
    ietf, verbose = _options(health, accept, query, authorization)
    if probe == "live":
        return _live(health, ietf)
    report = await (health.ready() if probe == "ready" else health.startup())
    return _render(report, ietf, verbose)


def respond_sync(health: HealthChecks, probe: Probe, *, accept: str = "", query: str = "",
                 authorization: str = "") -> Response:  # fmt: skip
    """(status, headers, body) for a probe request, from a thread without an event loop."""
    ietf, verbose = _options(health, accept, query, authorization)
    if probe == "live":
        return _live(health, ietf)
    report = health.ready_sync() if probe == "ready" else health.startup_sync()
    return _render(report, ietf, verbose)


def _plain(status: int, text: str, allow: bool = False) -> Response:
    body = text.encode()
    headers = [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body))),
               ("Cache-Control", "no-store")]  # fmt: skip
    if allow:
        headers.append(("Allow", "GET, HEAD"))
    return status, headers, body


def _route(path: str, probes: frozenset[str]) -> Probe | None:
    probe = _ROUTES.get(path.rstrip("/") or "/")
    return probe if probe in probes else None


def _probes(probes: Iterable[str]) -> frozenset[str]:
    from ..errors import ConfigurationError

    chosen = frozenset(probes)
    if not chosen or not chosen <= frozenset(PROBES):
        raise ConfigurationError("health probes", sorted(chosen), PROBES)
    return chosen


def asgi_app(health: HealthChecks, probes: Iterable[str] = PROBES) -> Callable[..., Any]:
    """An ASGI app answering ``/live``, ``/ready`` and ``/startup`` (mount it at ``/health``)."""
    served = _probes(probes)

    async def app(scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        if scope["type"] != "http":
            await _serve_lifespan(scope, receive, send)
            return
        path: str = scope.get("path", "")
        root: str = scope.get("root_path", "")
        if root and path.startswith(root):  # Starlette's Mount keeps the full path
            path = path[len(root) :]
        method = scope.get("method", "GET")
        probe = _route(path, served)
        if probe is None:
            status, headers, body = _plain(404, "not found\n")
        elif method not in ("GET", "HEAD"):
            status, headers, body = _plain(405, "method not allowed\n", allow=True)
        else:
            raw = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", ())}
            status, headers, body = await respond(
                health, probe, accept=raw.get("accept", ""), query=scope.get("query_string", b"").decode("latin-1"),
                authorization=raw.get("authorization", ""),
            )  # fmt: skip
        await send({
            "type": "http.response.start", "status": status,
            "headers": [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers],
        })  # fmt: skip
        await send({"type": "http.response.body", "body": b"" if method == "HEAD" else body})

    return app


def wsgi_app(health: HealthChecks, probes: Iterable[str] = PROBES) -> Callable[..., Iterable[bytes]]:
    """A WSGI app answering ``/live``, ``/ready`` and ``/startup`` (route ``/health`` to it)."""
    served = _probes(probes)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        method = environ.get("REQUEST_METHOD", "GET")
        probe = _route(environ.get("PATH_INFO", ""), served)
        if probe is None:
            status, headers, body = _plain(404, "not found\n")
        elif method not in ("GET", "HEAD"):
            status, headers, body = _plain(405, "method not allowed\n", allow=True)
        else:
            status, headers, body = respond_sync(
                health, probe, accept=environ.get("HTTP_ACCEPT", ""), query=environ.get("QUERY_STRING", ""),
                authorization=environ.get("HTTP_AUTHORIZATION", ""),
            )  # fmt: skip
        start_response(f"{status} {_REASONS.get(status, '')}".rstrip(), headers)
        return [b"" if method == "HEAD" else body]

    return app


def flask_blueprint(
    health: HealthChecks, url_prefix: str = "/health", probes: Iterable[str] = PROBES, name: str = "bakhmach_obs_health"
) -> Any:
    """A Flask blueprint with ``GET <url_prefix>/live``, ``/ready`` and ``/startup``."""
    from flask import Blueprint, request
    from flask import Response as FlaskResponse

    served = _probes(probes)
    blueprint = Blueprint(name, __name__, url_prefix=url_prefix.rstrip("/") or None)

    def view_for(probe: Probe) -> Callable[[], Any]:
        def view() -> Any:
            status, headers, body = respond_sync(
                health, probe, accept=request.headers.get("Accept", ""),
                query=request.query_string.decode("latin-1"), authorization=request.headers.get("Authorization", ""),
            )  # fmt: skip
            return FlaskResponse(body, status=status, headers=[h for h in headers if h[0] != "Content-Length"])

        view.__name__ = f"health_{probe}"
        return view

    for probe in PROBES:
        if probe in served:
            blueprint.add_url_rule(f"/{probe}", endpoint=probe, view_func=view_for(probe), methods=["GET"])
    return blueprint


def django_urls(
    health: HealthChecks, prefix: str = "health/", probes: Iterable[str] = PROBES, asynchronous: bool = False
) -> list[Any]:
    """Django URL patterns for ``<prefix>live``, ``ready`` and ``startup``.

    ``asynchronous=True`` gives async views (under ASGI they stay on the event loop; under WSGI
    Django would run them through ``async_to_sync``); the default sync views wait in the request's
    thread.
    """
    from django.http import HttpResponse  # type: ignore[import-untyped]
    from django.urls import path  # type: ignore[import-untyped]

    served = _probes(probes)

    def build(status: int, headers: list[tuple[str, str]], body: bytes, method: str) -> Any:
        response = HttpResponse(b"" if method == "HEAD" else body, status=status)
        for key, value in headers:
            response[key] = value
        return response

    def args(request: Any) -> dict[str, str]:
        return {
            "accept": request.headers.get("Accept", ""), "query": request.META.get("QUERY_STRING", ""),
            "authorization": request.headers.get("Authorization", ""),
        }  # fmt: skip

    def view_for(probe: Probe) -> Callable[..., Any]:
        if asynchronous:

            async def async_view(request: Any) -> Any:
                if request.method not in ("GET", "HEAD"):
                    return build(*_plain(405, "method not allowed\n", allow=True), request.method)
                return build(*await respond(health, probe, **args(request)), request.method)

            return async_view

        def view(request: Any) -> Any:
            if request.method not in ("GET", "HEAD"):
                return build(*_plain(405, "method not allowed\n", allow=True), request.method)
            return build(*respond_sync(health, probe, **args(request)), request.method)

        return view

    return [path(f"{prefix}{p}", view_for(p), name=f"health-{p}") for p in PROBES if p in served]
