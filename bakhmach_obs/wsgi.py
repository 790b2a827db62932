"""WSGI middleware: HTTP metrics by route, a SERVER span, correlation id and access log.

The WSGI twin of :mod:`bakhmach_obs.asgi`, with the same options and the same signals per request:

* ``http_server_request_duration_seconds{http_request_method, http_route, http_response_status_code}``,
  ``http_server_active_requests{http_request_method}``, request and response body sizes; a body
  of several chunks without ``Content-Length`` is a stream: its latency is the time to the first
  chunk and its full duration goes to ``http_server_stream_duration_seconds``;
* a SERVER span named ``{method} {route}`` continuing a W3C ``traceparent`` (a malformed one starts
  a new trace and never raises);
* the correlation id from ``X-Correlation-ID`` or ``X-Request-ID`` (validated, else fresh), bound
  for logs and echoed in the response headers;
* one access-log record on the ``bakhmach_obs.access`` logger (``access_log=False`` turns it off).

Health, readiness and ``/metrics`` paths are excluded by default. The returned iterable is
wrapped, never consumed ahead of the server: the duration ends when the server has taken the last
chunk (or closes the iterable early), and the application iterable's ``close()`` is always called,
exactly once. An exception from the application, or from iterating its body, is recorded as 500
with ``error.type`` and re-raised unchanged. An iterable of the server's ``wsgi.file_wrapper``
type is returned as is, so ``sendfile`` still works; its ``close()`` is hooked to finish the request.

The span and correlation id are current while the application runs and again around each
``next()`` and ``close()`` of its body, never in between: nothing leaks into the server's thread
even when the iterable is never closed.

Route labels come, first found wins, from ``environ["bakhmach_obs.route"]`` (set by framework glue
such as :func:`bakhmach_obs.flask.init_app`), from ``route_resolver(environ)``, else
``__unmatched__``. Glue may also put an exception its framework turned into a 500 response in
``environ["bakhmach_obs.error"]`` to have it recorded as ``error.type``.

Example:
    >>> from bakhmach_obs.wsgi import ObservabilityMiddleware
    >>> def app(environ, start_response):
    ...     start_response("200 OK", [("Content-Type", "text/plain")])
    ...     return [b"ok"]
    >>> app = ObservabilityMiddleware(app, exclude_paths=["/internal/ping"])
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from re import Pattern
from typing import TYPE_CHECKING, Any

from opentelemetry import context as otel_context

from ._http import Exchange, Reentry, ServerCore

if TYPE_CHECKING:
    from _typeshed import OptExcInfo
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

__all__ = ["ERROR_KEY", "ROUTE_KEY", "ObservabilityMiddleware"]

#: environ key where framework glue puts the matched route template.
ROUTE_KEY = "bakhmach_obs.route"
#: environ key where framework glue puts an exception it turned into a 5xx response.
ERROR_KEY = "bakhmach_obs.error"

_BODY_METHODS = frozenset(("POST", "PUT", "PATCH"))
_attach = otel_context.attach
_detach = otel_context.detach


def _decode(raw: str) -> str:
    """PEP 3333 gives paths as latin-1 strings of the raw bytes; ASGI and spans want UTF-8 text."""
    if raw.isascii():
        return raw
    try:
        return raw.encode("latin-1").decode("utf-8")
    except UnicodeError:
        return raw


def _int(value: Any) -> int | None:
    if value is None or value == "":
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


class _CountingInput:
    """``wsgi.input`` counting the bytes the application reads (requests without Content-Length)."""

    __slots__ = ("ex", "stream")

    def __init__(self, stream: Any, ex: Exchange) -> None:
        self.stream = stream
        self.ex = ex

    def _count(self, size: int) -> None:
        self.ex.req_size = (self.ex.req_size or 0) + size

    def read(self, *args: Any) -> bytes:
        data: bytes = self.stream.read(*args)
        self._count(len(data))
        return data

    def readline(self, *args: Any) -> bytes:
        data: bytes = self.stream.readline(*args)
        self._count(len(data))
        return data

    def readlines(self, *args: Any) -> list[bytes]:
        lines: list[bytes] = self.stream.readlines(*args)
        self._count(sum(map(len, lines)))
        return lines

    def __iter__(self) -> Iterator[bytes]:
        for line in self.stream:
            self._count(len(line))
            yield line

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)


class _Call:
    """One request's state: the exchange, the wrapped ``start_response`` and ``write``."""

    __slots__ = ("chunks", "echo", "environ", "ex", "inner_start", "inner_write", "mw", "reentry")

    def __init__(
        self, mw: ObservabilityMiddleware, ex: Exchange, environ: WSGIEnvironment, start_response: StartResponse
    ) -> None:
        self.mw = mw
        self.ex = ex
        self.environ = environ
        self.inner_start = start_response
        self.inner_write: Callable[[bytes], object] | None = None
        header = mw.correlation_header
        self.echo = (header, ex.cid) if header else None
        self.chunks = 0
        self.reentry = Reentry(ex)

    def start_response(
        self, status: str, headers: list[tuple[str, str]], exc_info: OptExcInfo | None = None
    ) -> Callable[[bytes], object]:
        try:
            code = int(status[:3])
        except ValueError:
            code = 0
        length = None
        for name, value in headers:
            if name.lower() == "content-length":
                length = _int(value)
                break
        self.ex.response(code, length)
        if self.echo is not None:
            headers = [*headers, self.echo]
        self.inner_write = self.inner_start(status, headers, exc_info)
        return self.write

    def write(self, data: bytes) -> object:
        """The legacy ``write()`` callable: its bytes count as body chunks."""
        self.chunk(len(data))
        assert self.inner_write is not None
        return self.inner_write(data)

    def chunk(self, size: int) -> None:
        if size:
            self.chunks += 1
        self.ex.body(size, True)

    def complete(self, exc: BaseException | None) -> None:
        """Finish the exchange once: route, error and sizes as they stand now."""
        ex = self.ex
        if ex.done:
            return
        if exc is None and (ex.status or 500) >= 500:
            error = self.environ.get(ERROR_KEY)
            if isinstance(error, BaseException):
                exc = error
        ex.finish(exc, self.mw.route(self.environ))

    def hook_close(self, result: Any) -> bool:
        """Finish when the server closes a ``wsgi.file_wrapper`` it sends by itself; False if impossible."""
        original = getattr(result, "close", None)
        closed = False

        def close() -> None:
            nonlocal closed
            if closed:
                return
            closed = True
            tokens = self.reentry.enter()
            try:
                if original is not None:
                    original()
            except BaseException as exc:
                self.complete(exc)
                raise
            finally:
                try:
                    length = self.ex.content_length_out
                    if not self.ex.bytes_out and length:
                        self.ex.body(length, True)  # sent by the server (sendfile), never seen here
                    self.complete(None)
                finally:
                    self.reentry.exit(tokens)

        try:
            result.close = close
        except (AttributeError, TypeError):
            return False
        return True


class _Body:
    """The application's iterable, counted chunk by chunk and finished when exhausted or closed."""

    __slots__ = ("call", "closed", "iterable", "iterator", "plain")

    def __init__(self, call: _Call, iterable: Iterable[bytes]) -> None:
        self.call = call
        self.iterable = iterable
        self.closed = False
        # A list or tuple runs no application code while iterated: no context to restore per chunk.
        self.plain = type(iterable) in (list, tuple)
        self.iterator: Iterator[bytes] | None = iter(iterable) if self.plain else None

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        call = self.call
        if self.plain:
            try:
                chunk = next(self.iterator)  # type: ignore[arg-type]
            except StopIteration:
                tokens = call.reentry.enter()  # the access record is written in the request's context
                try:
                    call.complete(None)
                finally:
                    call.reentry.exit(tokens)
                raise
            call.chunk(len(chunk))
            return chunk
        tokens = call.reentry.enter()
        try:
            if self.iterator is None:
                self.iterator = iter(self.iterable)
            chunk = next(self.iterator)
            call.chunk(len(chunk))
            return chunk
        except StopIteration:
            call.complete(None)
            raise
        except BaseException as exc:
            call.complete(exc)
            raise
        finally:
            call.reentry.exit(tokens)

    def close(self) -> None:
        """Close the application's iterable (once), then finish the request if still open."""
        if self.closed:
            return
        self.closed = True
        call = self.call
        close = getattr(self.iterable, "close", None)
        if close is None and call.ex.done:
            return
        tokens = call.reentry.enter()
        try:
            if close is not None:
                close()
        except BaseException as exc:
            call.complete(exc)
            raise
        finally:
            try:
                call.complete(None)
            finally:
                call.reentry.exit(tokens)


class _SizedBody(_Body):
    """A :class:`_Body` keeping ``len()``: servers may set Content-Length for a one-item list."""

    __slots__ = ()

    def __len__(self) -> int:
        return len(self.iterable)  # type: ignore[arg-type]


class ObservabilityMiddleware:
    """WSGI middleware emitting metrics, a span, the correlation id and an access log per request.

    Args:
        app: the WSGI application.
        exclude_paths: more paths to exclude from every signal (health and metrics paths are
            excluded by default).
        exclude_patterns: regular expressions; a path matching one entirely is excluded.
        exclude_defaults: set False to instrument the default health and metrics paths too.
        access_log: write one record per request to the ``bakhmach_obs.access`` logger.
        correlation_header: response header that echoes the correlation id (``None``: no echo).
        route_resolver: ``resolver(environ) -> str | None`` for frameworks whose glue does not set
            ``environ["bakhmach_obs.route"]``; its result must be a template, never the raw path.
    """

    def __init__(
        self,
        app: WSGIApplication,
        *,
        exclude_paths: Iterable[str] = (),
        exclude_patterns: Iterable[str | Pattern[str]] = (),
        exclude_defaults: bool = True,
        access_log: bool = True,
        correlation_header: str | None = "X-Correlation-ID",
        route_resolver: Callable[[WSGIEnvironment], str | None] | None = None,
    ) -> None:
        self.app = app
        self.core = ServerCore(
            exclude_paths=exclude_paths,
            exclude_patterns=exclude_patterns,
            exclude_defaults=exclude_defaults,
            access_log=access_log,
            correlation_header=correlation_header,
        )
        self.correlation_header = correlation_header
        self.route_resolver = route_resolver

    def route(self, environ: WSGIEnvironment) -> str | None:
        """The route template of the request: glue's, the resolver's, else ``None`` (unmatched)."""
        explicit = environ.get(ROUTE_KEY)
        if isinstance(explicit, str):
            return explicit
        if self.route_resolver is not None:
            try:
                return self.route_resolver(environ)
            except Exception:  # noqa: BLE001 - a faulty resolver costs the route label, not the request
                return None
        return None

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        core = self.core
        binding = core.binding()
        if binding is None:
            return self.app(environ, start_response)
        get = environ.get
        path_info = _decode(get("PATH_INFO") or "")
        script = _decode(get("SCRIPT_NAME") or "")
        path = (script + path_info) or "/"
        if core.excluded(path) or (script and core.excluded(path_info or "/")):
            return self.app(environ, start_response)

        ex = Exchange(binding, get("REQUEST_METHOD") or "GET", path, core.access_log)
        ex.deferred_status = True
        ex.user_agent = get("HTTP_USER_AGENT")
        ex.query = get("QUERY_STRING") or None
        ex.scheme = get("wsgi.url_scheme")
        protocol = get("SERVER_PROTOCOL")
        if isinstance(protocol, str) and protocol.startswith("HTTP/"):
            ex.version = protocol[5:]
        port = _int(get("SERVER_PORT"))
        if get("SERVER_NAME") and port is not None:
            ex.server = (get("SERVER_NAME"), port)
        if get("REMOTE_ADDR"):
            ex.client = (get("REMOTE_ADDR"), _int(get("REMOTE_PORT")))
        length = get("CONTENT_LENGTH")
        if length:
            ex.req_size = _int(length)
        elif ex.method_raw in _BODY_METHODS and "wsgi.input" in environ:
            ex.req_size = 0
            environ["wsgi.input"] = _CountingInput(environ["wsgi.input"], ex)

        ex.start(
            get("HTTP_TRACEPARENT"),
            get("HTTP_TRACESTATE"),
            get("HTTP_BAGGAGE"),
            get("HTTP_X_CORRELATION_ID") or get("HTTP_X_REQUEST_ID"),
        )
        call = _Call(self, ex, environ, start_response)
        try:
            result = self.app(environ, call.start_response)
        except BaseException as exc:
            try:
                call.complete(exc)
            finally:
                ex.close()
            raise
        ex.close()  # from here on the context is current only inside next() and close()

        file_wrapper = get("wsgi.file_wrapper")
        if isinstance(file_wrapper, type) and isinstance(result, file_wrapper) and call.hook_close(result):
            return result
        if hasattr(result, "__len__"):
            return _SizedBody(call, result)
        return _Body(call, result)
