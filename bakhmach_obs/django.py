"""Django middleware: HTTP metrics by route, a SERVER span, correlation id and access log.

Add it first in ``MIDDLEWARE`` so it times everything the other middleware does::

    MIDDLEWARE = ["bakhmach_obs.django.ObservabilityMiddleware", ...]
    BAKHMACH_OBS = {"exclude_paths": ["/internal/ping"], "access_log": True}  # optional

It runs under WSGI and ASGI alike (sync and async capable: under ASGI it stays on the event loop
when the middleware after it are async capable too) and
records what :mod:`bakhmach_obs.asgi` records, with the same options, read from the
``BAKHMACH_OBS`` setting (``exclude_paths``, ``exclude_patterns``, ``exclude_defaults``,
``access_log``, ``correlation_header``, ``route_resolver``: a callable or dotted path taking the
request and returning a template or ``None``); an unknown key raises ``ImproperlyConfigured``.

* Route labels are Django's URL pattern from ``request.resolver_match.route`` with a leading
  ``/``, such as ``/users/<int:user_id>`` (included URLconfs joined); a ``re_path`` pattern keeps
  its regular expression without the ``^``/``$`` anchors. No match (404) is ``__unmatched__``.
  A view may set ``request.META["bakhmach_obs.route"]`` to a template of its own; it wins.
* An exception Django turns into a 500 response (from the view, through ``process_exception``, or
  from any middleware, through ``got_request_exception``) is recorded as that 500 with
  ``error.type``; ``Http404`` and the like keep their 4xx status and are not errors.
* A ``StreamingHttpResponse`` (sync or async iterator) records the time to its first chunk as
  the request latency when it has no ``Content-Length``, and its full duration in
  ``http_server_stream_duration_seconds``; the request is finished when the body is exhausted or
  the response is closed. A ``FileResponse`` sent by the server's ``wsgi.file_wrapper`` counts its
  ``Content-Length`` as the body size.
* The request body size is ``Content-Length`` when the client sent one.

Example:
    >>> from bakhmach_obs.django import ObservabilityMiddleware
    >>> ObservabilityMiddleware.sync_capable and ObservabilityMiddleware.async_capable
    True
"""

from __future__ import annotations

import contextlib
import re
import sys
from collections.abc import Callable
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.core.exceptions import ImproperlyConfigured  # type: ignore[import-untyped]
from django.core.signals import got_request_exception  # type: ignore[import-untyped]
from django.utils.module_loading import import_string  # type: ignore[import-untyped]

from ._http import Exchange, Reentry, ServerCore
from .wsgi import ROUTE_KEY

__all__ = ["ObservabilityMiddleware"]

_ERROR_ATTR = "_bakhmach_obs_error"
_OPTIONS = frozenset(
    ("exclude_paths", "exclude_patterns", "exclude_defaults", "access_log", "correlation_header", "route_resolver")
)
_ANCHORS = re.compile(r"^\^|(?:\$|\\Z)$")
_routes: dict[str, str] = {}


def _int(value: Any) -> int | None:
    if value is None or value == "":
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _template(route: str) -> str:
    """Django's joined pattern as a label: ``users/<int:user_id>`` -> ``/users/<int:user_id>``."""
    cached = _routes.get(route)
    if cached is not None:
        return cached
    template = _ANCHORS.sub("", route)
    if not template.startswith("/"):
        template = "/" + template
    if len(_routes) < 10000:
        _routes[route] = template
    return template


def _record_exception(sender: Any, request: Any = None, **kwargs: Any) -> None:
    """``got_request_exception``: keep the exception Django is turning into an error response."""
    exc = sys.exc_info()[1]
    if exc is not None and request is not None:
        with contextlib.suppress(AttributeError):  # a request object without a __dict__
            setattr(request, _ERROR_ATTR, exc)


class _Stream:
    """A streaming response's body: counted chunk by chunk, finished when exhausted or closed."""

    __slots__ = ("chunks", "error", "ex", "file", "inner", "reentry")

    def __init__(self, ex: Exchange, inner: Any, error: BaseException | None, file: bool) -> None:
        self.ex = ex
        self.inner = inner
        self.error = error
        self.file = file
        self.chunks = 0
        self.reentry = Reentry(ex)

    def _chunk(self, chunk: Any) -> None:
        size = len(chunk)
        if size:
            self.chunks += 1
        self.ex.body(size, True)

    def _complete(self, exc: BaseException | None) -> None:
        ex = self.ex
        if ex.done:
            return
        if exc is None:
            length = ex.content_length_out
            if self.file and not self.chunks and length:
                ex.body(length, True)  # sent by the server's wsgi.file_wrapper, never iterated here
            exc = self.error
        ex.finish(exc)

    def close(self) -> None:
        """Registered by Django among the response's closers: finishes a body closed early."""
        tokens = self.reentry.enter()
        try:
            self._complete(None)
        finally:
            self.reentry.exit(tokens)


class _SyncStream(_Stream):
    __slots__ = ()

    def __iter__(self) -> _SyncStream:
        return self

    def __next__(self) -> Any:
        tokens = self.reentry.enter()
        try:
            chunk = next(self.inner)
            self._chunk(chunk)
            return chunk
        except StopIteration:
            self._complete(None)
            raise
        except BaseException as exc:
            self._complete(exc)
            raise
        finally:
            self.reentry.exit(tokens)


class _AsyncStream(_Stream):
    __slots__ = ()

    def __aiter__(self) -> _AsyncStream:
        return self

    async def __anext__(self) -> Any:
        tokens = self.reentry.enter()
        try:
            chunk = await self.inner.__anext__()
            self._chunk(chunk)
            return chunk
        except StopAsyncIteration:
            self._complete(None)
            raise
        except BaseException as exc:
            self._complete(exc)
            raise
        finally:
            self.reentry.exit(tokens)


class ObservabilityMiddleware:
    """Django middleware emitting metrics, a span, the correlation id and an access log per request.

    Options come from the ``BAKHMACH_OBS`` setting (a dict), read when Django builds its
    middleware chain; see the module documentation.
    """

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[Any], Any]) -> None:
        self.get_response = get_response
        self._async = iscoroutinefunction(get_response)
        if self._async:
            markcoroutinefunction(self)
        # imported here: a module-level LazySettings breaks introspection (doctest) before setup
        from django.conf import settings  # type: ignore[import-untyped]

        options = dict(getattr(settings, "BAKHMACH_OBS", None) or {})
        unknown = sorted(set(options) - _OPTIONS)
        if unknown:
            raise ImproperlyConfigured(
                f"BAKHMACH_OBS: unknown option(s) {', '.join(unknown)}; accepted: {', '.join(sorted(_OPTIONS))}"
            )
        resolver = options.pop("route_resolver", None)
        if isinstance(resolver, str):
            resolver = import_string(resolver)
        if resolver is not None and not callable(resolver):
            raise ImproperlyConfigured("BAKHMACH_OBS['route_resolver'] must be a callable or a dotted path to one")
        self.route_resolver: Callable[[Any], str | None] | None = resolver
        self.core = ServerCore(**options)
        self.correlation_header: str | None = self.core.correlation_header
        got_request_exception.connect(_record_exception, dispatch_uid="bakhmach_obs.django")

    def __call__(self, request: Any) -> Any:
        if self._async:
            return self.__acall__(request)
        ex = self._begin(request)
        if ex is None:
            return self.get_response(request)
        try:
            response = self.get_response(request)
        except BaseException as exc:
            try:
                ex.finish(exc, self._route(request))
            finally:
                ex.close()
            raise
        try:
            self._respond(ex, request, response)
        finally:
            ex.close()
        return response

    async def __acall__(self, request: Any) -> Any:
        ex = self._begin(request)
        if ex is None:
            return await self.get_response(request)
        try:
            response = await self.get_response(request)
        except BaseException as exc:
            try:
                ex.finish(exc, self._route(request))
            finally:
                ex.close()
            raise
        try:
            self._respond(ex, request, response)
        finally:
            ex.close()
        return response

    def process_exception(self, request: Any, exception: Exception) -> None:
        """Remember a view's exception; Django still turns it into a response (usually a 500)."""
        setattr(request, _ERROR_ATTR, exception)

    def _begin(self, request: Any) -> Exchange | None:
        core = self.core
        binding = core.binding()
        if binding is None:
            return None
        path = request.path or "/"
        path_info = request.path_info or "/"
        if core.excluded(path) or (path_info != path and core.excluded(path_info)):
            return None
        meta = request.META
        get = meta.get
        ex = Exchange(binding, request.method or "GET", path, core.access_log)
        ex.deferred_status = "wsgi.input" in meta  # served over WSGI, not ASGI
        ex.user_agent = get("HTTP_USER_AGENT")
        ex.query = get("QUERY_STRING") or None
        ex.scheme = request.scheme
        protocol = get("SERVER_PROTOCOL")
        if isinstance(protocol, str) and protocol.startswith("HTTP/"):
            ex.version = protocol[5:]
        port = _int(get("SERVER_PORT"))
        if get("SERVER_NAME") and port is not None:
            ex.server = (get("SERVER_NAME"), port)
        if get("REMOTE_ADDR"):
            ex.client = (get("REMOTE_ADDR"), _int(get("REMOTE_PORT")))
        ex.req_size = _int(get("CONTENT_LENGTH"))
        ex.start(
            get("HTTP_TRACEPARENT"),
            get("HTTP_TRACESTATE"),
            get("HTTP_BAGGAGE"),
            get("HTTP_X_CORRELATION_ID") or get("HTTP_X_REQUEST_ID"),
        )
        return ex

    def _route(self, request: Any) -> str | None:
        explicit = request.META.get(ROUTE_KEY)
        if isinstance(explicit, str):
            return explicit
        if self.route_resolver is not None:
            try:
                return self.route_resolver(request)
            except Exception:  # noqa: BLE001 - a faulty resolver costs the route label, not the request
                return None
        match = getattr(request, "resolver_match", None)
        route = getattr(match, "route", None)
        return _template(route) if isinstance(route, str) else None

    def _respond(self, ex: Exchange, request: Any, response: Any) -> None:
        status = response.status_code
        if self.correlation_header:
            response[self.correlation_header] = ex.cid
        error = getattr(request, _ERROR_ATTR, None) if status >= 500 else None
        ex.route = self._route(request)
        if getattr(response, "streaming", False):
            ex.response(status, _int(response.get("Content-Length")))
            file = getattr(response, "file_to_stream", None)
            if response.is_async:
                response.streaming_content = _AsyncStream(ex, response.streaming_content, error, file is not None)
            else:
                response.streaming_content = _SyncStream(ex, response.streaming_content, error, file is not None)
            if file is not None:
                # FileResponse forgets its file when given a new iterator; the WSGI handler needs it
                # to hand the file to the server's wsgi.file_wrapper (sendfile).
                response.file_to_stream = file
            return
        size = len(getattr(response, "content", b""))
        ex.response(status, size)
        ex.body(size, True)
        ex.finish(error)
