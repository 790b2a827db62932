"""Pure ASGI middleware: HTTP metrics by route, a SERVER span, correlation id and access log.

Works under any ASGI framework; with Starlette and FastAPI the route template is read after
routing (``scope["route"]``), including included routers, ``root_path`` and mounted sub-apps
(the prefix a mount adds to ``root_path`` is mapped back to the mount's template through the
router, so mount path parameters never become label values). One pass per request:

* ``http_server_request_duration_seconds{http_request_method, http_route, http_response_status_code}``,
  ``http_server_active_requests{http_request_method}``, request and response body sizes;
  streaming responses record time-to-first-byte as their latency and their full duration in
  ``http_server_stream_duration_seconds``;
* a SERVER span named ``{method} {route}`` continuing a W3C ``traceparent`` (a malformed one starts
  a new trace and never raises);
* the correlation id from ``X-Correlation-ID`` or ``X-Request-ID`` (validated, else fresh), bound
  for logs and echoed in the response;
* one access-log record on the ``bakhmach_obs.access`` logger (``access_log=False`` turns it off).

Health, readiness and ``/metrics`` paths are excluded from all of it by default. The duration
ends when the last body chunk is sent, so background tasks after the response do not count; an
exception from the application is recorded as 500 with ``error.type`` and re-raised unchanged.

Example:
    >>> from bakhmach_obs.asgi import ObservabilityMiddleware
    >>> async def app(scope, receive, send): ...
    >>> app = ObservabilityMiddleware(app, exclude_paths=["/internal/ping"])

With FastAPI or Starlette: ``app.add_middleware(ObservabilityMiddleware)``.
"""

from __future__ import annotations

from asyncio import get_running_loop as _running_loop
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from re import Pattern
from typing import Any

from . import _runtime
from ._http import Exchange, ServerCore

__all__ = ["ObservabilityMiddleware"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_WANTED = {
    b"traceparent": 0,
    b"tracestate": 1,
    b"baggage": 2,
    b"x-correlation-id": 3,
    b"x-request-id": 4,
    b"user-agent": 5,
    b"content-length": 6,
}
_BODY_METHODS = frozenset(("POST", "PUT", "PATCH"))


_prefixes: dict[tuple[int, str], str] = {}


def _is_mount(route: Any) -> bool:
    fmt = getattr(route, "path_format", None)
    return isinstance(fmt, str) and fmt.endswith("/{path}") and hasattr(route, "routes")


def _mount_template(routes: Any, grown: str) -> str:
    """Map the literal prefix the mounts added to ``root_path`` back to their templates.

    Walks the router tree (nested mounts included) with the routers' own regexes, so a mount with
    path parameters (``/orgs/{org_id}``) never puts a value in a label. A prefix the routers
    cannot account for becomes ``/{mount}``.
    """
    parts: list[str] = []
    rest = grown
    while rest:
        for route in routes or ():
            regex = getattr(route, "path_regex", None)
            if not _is_mount(route) or regex is None:
                continue
            match = regex.match(rest + "/")
            if match is None:
                continue
            remaining = "/" + (match.groupdict().get("path") or "")
            consumed = rest if remaining == "/" else rest[: len(rest) + 1 - len(remaining)]
            parts.append(route.path_format[: -len("/{path}")])
            rest = rest[len(consumed) :]
            routes = getattr(route, "routes", ())
            break
        else:
            parts.append("/{mount}")  # never the raw text: it may hold a slug or an id
            break
    return "".join(parts)


def _route_template(route: Any) -> str | None:
    if isinstance(route, str):
        return route
    fmt = getattr(route, "path_format", None)
    if isinstance(fmt, str):
        return fmt
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else None


class ObservabilityMiddleware:
    """ASGI middleware emitting metrics, a span, the correlation id and an access log per request.

    Args:
        app: the ASGI application.
        exclude_paths: more paths to exclude from every signal (health and metrics paths are
            excluded by default).
        exclude_patterns: regular expressions; a path matching one entirely is excluded.
        exclude_defaults: set False to instrument the default health and metrics paths too.
        access_log: write one record per request to the ``bakhmach_obs.access`` logger.
        correlation_header: response header that echoes the correlation id (``None``: no echo).
        route_resolver: ``resolver(scope) -> str | None`` for frameworks that do not record their
            route in the scope; its result must be a template, never the raw path.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        exclude_paths: Iterable[str] = (),
        exclude_patterns: Iterable[str | Pattern[str]] = (),
        exclude_defaults: bool = True,
        access_log: bool = True,
        correlation_header: str | None = "X-Correlation-ID",
        route_resolver: Callable[[Scope], str | None] | None = None,
    ) -> None:
        self.app = app
        self.core = ServerCore(
            exclude_paths=exclude_paths,
            exclude_patterns=exclude_patterns,
            exclude_defaults=exclude_defaults,
            access_log=access_log,
            correlation_header=correlation_header,
        )
        self.route_resolver = route_resolver
        self._echo = correlation_header.lower().encode("latin-1") if correlation_header else None
        # The runtime and the loop this middleware last started the event-loop probe for.
        self._loop_watched: tuple[object, object] = (None, None)

    def _watch_loop(self, loop: object) -> None:
        """Start the runtime metrics' event-loop probe (lag, tasks) on the serving loop, once per runtime and loop."""
        rt = _runtime.current()
        self._loop_watched = (_runtime.CURRENT[0], loop)
        if rt.metrics_enabled and rt.settings.runtime_metrics:
            try:
                from .runtime_metrics import watch_loop

                watch_loop(registry=rt.registry)
            except Exception as exc:  # noqa: BLE001 - a probe that cannot start costs the metric only
                rt.report_error("runtime", exc)

    def _route(self, scope: Scope, entry_root: str, top: Any, status: int = 0) -> str | None:
        explicit = scope.get("bakhmach_obs.route")
        if isinstance(explicit, str):
            return explicit
        if self.route_resolver is not None:
            try:
                return self.route_resolver(scope)
            except Exception:  # noqa: BLE001 - a faulty resolver costs the route label, not the request
                return None
        route = _route_template(scope.get("route"))
        root = scope.get("root_path") or ""
        grew = len(root) > len(entry_root) and root.startswith(entry_root)
        if route is None:
            # A mounted application without routes of its own (static files, a raw ASGI or WSGI
            # app) answered: the mount's template and /{path}. A 404 there is a scan like any other.
            if grew and status and status != 404:
                return self._mount_prefix(top, root[len(entry_root) :]) + "/{path}"
            return None
        if grew:
            # Mounts extend root_path by what they matched; map that back to their templates.
            prefix = self._mount_prefix(top, root[len(entry_root) :])
            return prefix + route if route != "/" else prefix
        return route

    @staticmethod
    def _mount_prefix(top: Any, grown: str) -> str:
        key = (id(top), grown)
        prefix = _prefixes.get(key)
        if prefix is None:
            prefix = _mount_template(getattr(top, "routes", None), grown)
            if len(_prefixes) < 10000:
                _prefixes[key] = prefix
        return prefix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        watched_rt, watched_loop = self._loop_watched
        loop = _running_loop()
        if watched_rt is not _runtime.CURRENT[0] or watched_loop is not loop:
            self._watch_loop(loop)
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        core = self.core
        binding = core.binding()
        path = scope.get("path") or "/"
        if binding is None or core.excluded(path):
            await self.app(scope, receive, send)
            return
        root = scope.get("root_path")
        if root and path.startswith(root) and core.excluded(path[len(root) :] or "/"):
            await self.app(scope, receive, send)
            return

        ex = Exchange(binding, scope.get("method") or "GET", path, core.access_log)
        found: list[str | None] = [None] * 7
        wanted = _WANTED
        for key, value in scope.get("headers") or ():
            slot = wanted.get(key)
            if slot is not None and found[slot] is None:
                found[slot] = value.decode("latin-1")
        ex.user_agent = found[5]
        query = scope.get("query_string")
        if query:
            ex.query = query.decode("latin-1")
        ex.scheme = scope.get("scheme")
        ex.version = scope.get("http_version")
        ex.server = scope.get("server")
        ex.client = scope.get("client")
        if found[6] is not None:
            try:
                ex.req_size = int(found[6])
            except ValueError:
                ex.req_size = None
        elif ex.method_raw in _BODY_METHODS:
            ex.req_size = 0
            inner_receive = receive

            async def receive() -> Message:
                message = await inner_receive()
                if message.get("type") == "http.request":
                    ex.req_size = (ex.req_size or 0) + len(message.get("body") or b"")
                return message

        cid = ex.start(found[0], found[1], found[2], found[3] or found[4])
        echo = (self._echo, cid.encode("latin-1")) if self._echo is not None else None
        entry_root = root or ""
        # The outermost router or app: set by Starlette before its middleware runs; when this
        # middleware wraps the application from outside, the application itself.
        top = scope.get("router") or scope.get("app") or self.app

        async def send_wrapper(message: Message) -> None:
            kind = message["type"]
            if kind == "http.response.body":
                await send(message)
                more = bool(message.get("more_body", False))
                if not more:
                    ex.route = self._route(scope, entry_root, top, ex.status)
                ex.body(len(message.get("body") or b""), more)
                return
            if kind == "http.response.start":
                headers = message.get("headers") or []
                length = None
                for key, value in headers:
                    if key.lower() == b"content-length":
                        try:
                            length = int(value)
                        except ValueError:
                            length = None
                        break
                ex.response(message["status"], length)
                if echo is not None:
                    message = {**message, "headers": [*headers, echo]}
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        except BaseException as exc:
            ex.finish(exc, self._route(scope, entry_root, top))
            raise
        finally:
            try:
                if not ex.done:
                    ex.finish(None, self._route(scope, entry_root, top, ex.status))
            finally:
                ex.close()
