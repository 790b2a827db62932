"""Pure ASGI middleware: HTTP metrics by route, a SERVER span, correlation id and access log.

Works under any ASGI framework; with Starlette and FastAPI the route template is read after
routing, including mounted sub-apps, ``root_path`` and included routers. One pass per request:

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

from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from re import Pattern
from typing import Any

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


class _RouteScope(dict):  # type: ignore[type-arg]
    """The request scope, remembering every ``scope["route"] = ...`` the routers make on the way in.

    Starlette's router records the matched route at each level (a mount, then the route inside
    it); the chain gives the full template without matching the path a second time.
    """

    __slots__ = ("entry_root", "routes")

    def __init__(self, scope: Scope) -> None:
        super().__init__(scope)
        self.routes: list[Any] = []
        self.entry_root: str = scope.get("root_path") or ""

    def __setitem__(self, key: str, value: Any) -> None:
        if key == "route":
            self.routes.append(value)
        dict.__setitem__(self, key, value)

    def update(self, *args: Any, **kwargs: Any) -> None:
        other = dict(*args, **kwargs)
        route = other.get("route")
        if route is not None and (not self.routes or self.routes[-1] is not route):
            self.routes.append(route)
        dict.update(self, other)


_templates: dict[tuple[int, ...], str] = {}
_mount_prefixes: dict[str, str] = {}


def _is_mount(route: Any) -> bool:
    fmt = getattr(route, "path_format", None)
    return isinstance(fmt, str) and fmt.endswith("/{path}") and hasattr(route, "routes")


def _mount_prefix(scope: _RouteScope) -> str:
    """The template of the mounts between this middleware and the route, from ``root_path``'s growth.

    Routers that do not record mounts in the scope (FastAPI's) still extend ``root_path`` with the
    matched prefix; that literal is mapped back to the mount's template through the router, so a
    mount with path parameters never puts their values in a label.
    """
    root = scope.get("root_path") or ""
    entry = scope.entry_root
    if not root.startswith(entry) or len(root) == len(entry):
        return ""
    grown = root[len(entry) :]
    cached = _mount_prefixes.get(grown)
    if cached is not None:
        return cached
    template = grown
    routes = getattr(scope.get("router"), "routes", None) or getattr(scope.get("app"), "routes", None) or ()
    for route in routes:
        regex = getattr(route, "path_regex", None)
        if _is_mount(route) and regex is not None and regex.match(grown + "/"):
            template = route.path_format[: -len("/{path}")]
            break
    if template == grown and any(ch.isdigit() for ch in grown):
        template = "/{mount}"  # unknown and possibly variable: never a raw value in a label
    if len(_mount_prefixes) < 10000:
        _mount_prefixes[grown] = template
    return template


def _template(routes: list[Any]) -> str | None:
    key = tuple(map(id, routes))
    cached = _templates.get(key)
    if cached is not None:
        return cached
    parts: list[str] = []
    for i, route in enumerate(routes):
        fmt = getattr(route, "path_format", None)
        if not isinstance(fmt, str):
            fmt = getattr(route, "path", "") if isinstance(getattr(route, "path", None), str) else ""
        if i < len(routes) - 1 and fmt.endswith("/{path}"):  # a mount: its prefix only
            fmt = fmt[: -len("/{path}")]
        parts.append(fmt)
    template = "".join(parts) or "/"
    if len(_templates) < 10000:
        _templates[key] = template
    return template


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

    def _route(self, scope: _RouteScope) -> str | None:
        explicit = scope.get("bakhmach_obs.route")
        if isinstance(explicit, str):
            return explicit
        if self.route_resolver is not None:
            try:
                return self.route_resolver(scope)
            except Exception:  # noqa: BLE001 - a faulty resolver costs the route label, not the request
                return None
        routes = scope.routes
        if not routes:
            route = scope.get("route")
            return route if isinstance(route, str) else None
        if len(routes) > 1 and any(_is_mount(r) for r in routes[:-1]):
            return _template(routes)
        last = _template(routes[-1:]) or "/"
        prefix = _mount_prefix(scope)
        return prefix + last if prefix and last != "/" else (prefix or last)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
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
        tracked = _RouteScope(scope)

        async def send_wrapper(message: Message) -> None:
            kind = message["type"]
            if kind == "http.response.body":
                await send(message)
                more = bool(message.get("more_body", False))
                if not more:
                    ex.route = self._route(tracked)
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
            await self.app(tracked, receive, send_wrapper)
        except BaseException as exc:
            ex.finish(exc, self._route(tracked))
            raise
        finally:
            try:
                ex.finish(None, self._route(tracked))
            finally:
                ex.close()
