"""Outgoing HTTP calls made with httpx (sync and async) or requests: a span, a metric, propagation.

Each instrumented request records

* a span of kind CLIENT named after the method (``GET``; ``HTTP`` for a method outside the known
  set), with ``http.request.method``, ``url.full`` (userinfo and signed-URL query values
  redacted by the runtime's redaction policy, the query and fragment through its text patterns
  too), ``server.address``, ``server.port``, ``http.response.status_code`` and, when a
  correlation id is bound, the ``X-Correlation-ID`` the request carried. A status of 400 or more
  sets ``error.type`` to the code (``"503"``) and the span status to ERROR (4xx is an error for a
  client span); an exception sets ``error.type`` to its qualified class name, records it (message
  and stack trace redacted too) and re-raises it unchanged;
* ``http_client_request_duration_seconds{http_request_method, server_address,
  http_response_status_code}``: ``server_address`` is the host only (never the path or query),
  unknown methods become ``_OTHER`` and a request that got no response (connection refused,
  timeout) has ``http_response_status_code=""`` (:data:`STATUS_NO_RESPONSE`): the value
  Prometheus gives an absent label, as an OpenTelemetry Collector would export the same data;
* the W3C ``traceparent`` (and ``tracestate``/``baggage`` when present) of the client span and,
  when a correlation id is bound, ``X-Correlation-ID`` in the outgoing headers. A caller's own
  ``X-Correlation-ID`` is kept; a bound id the server side would reject (not 1-128 of
  ``A-Za-z0-9._:-``) is not sent and counts as a telemetry error. ``traceparent`` is always the
  client span's, and a caller's ``tracestate`` goes with the ``traceparent`` it replaced.

Nothing is recorded and no header is added inside ``bakhmach_obs.suppress()``, while
OpenTelemetry's instrumentation suppression is active (the SDK's own OTLP exporter sends its
batches that way, so exporting never traces itself), or when the SDK is disabled. An
instrumented requests call sets OpenTelemetry's HTTP suppression underneath it (urllib3's
instrumentation stays quiet) with a value this module recognises: only that session's own
``send`` (the redirects it follows) is left unrecorded, not the calls its response hooks or
adapters make.

The duration ends when the response headers arrived: httpx transports return then; for requests
it is the time requests itself measures (``Response.elapsed``, summed over the redirects it
followed), whatever ``stream=`` says. Reading the body is not part of the metric.

httpx and requests are imported only when a function here is called; ``import bakhmach_obs``
never imports them.

Example:
    >>> import httpx
    >>> from bakhmach_obs.http_client import httpx_transport
    >>> from bakhmach_obs.testing import capture
    >>> backend = httpx.MockTransport(lambda request: httpx.Response(204))
    >>> with capture() as cap, httpx.Client(transport=httpx_transport(backend)) as client:
    ...     client.get("https://user:pw@api.example.com/v1/items?sig=secret&page=2").status_code
    204
    >>> span = cap.spans()[0]
    >>> span.name, span.kind.name, span.attributes["url.full"]
    ('GET', 'CLIENT', 'https://REDACTED:REDACTED@api.example.com/v1/items?sig=REDACTED&page=2')
    >>> cap.sample("http_client_request_duration_seconds_count", server_address="api.example.com")
    1.0
"""

from __future__ import annotations

import threading
import traceback
from collections.abc import Callable, MutableMapping
from functools import lru_cache
from time import perf_counter
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.context import _SUPPRESS_HTTP_INSTRUMENTATION_KEY
from opentelemetry.propagators.textmap import Setter
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from . import conventions as c
from ._http import is_safe_correlation_id
from ._runtime import Runtime, per_runtime
from .context import CORRELATION_ID, SUPPRESSED, otel_suppressed
from .logs import exception_type_name
from .metrics import observe_with_exemplar

if TYPE_CHECKING:
    import httpx
    import requests

__all__ = [
    "CORRELATION_HEADER",
    "STATUS_NO_RESPONSE",
    "httpx_async_transport",
    "httpx_transport",
    "instrument_httpx",
    "instrument_requests",
    "uninstrument_requests",
]

#: The header that carries the bound correlation id to the called service.
CORRELATION_HEADER = "X-Correlation-ID"
#: ``http_response_status_code`` of a request that got no response (refused, timed out, reset).
STATUS_NO_RESPONSE = ""
#: Span name for a method outside the known set (OTel: ``HTTP`` when the method is ``_OTHER``).
_SPAN_NAME_OTHER = "HTTP"
_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}
_CLIENT = SpanKind.CLIENT
#: Marks the functions and transports this module installed (idempotence, uninstrumenting).
_MARK = "_bakhmach_obs_http_client"
#: How many secret-free URLs a runtime remembers (see ``_Bound.url_full``).
_CLEAN_URLS_MAX = 1024
_BAD_CID = (
    f"the bound correlation id is not a valid {CORRELATION_HEADER} (1-128 of A-Za-z0-9._:-, starting with a letter "
    "or digit); the request goes out without the header"
)

_ClientT = TypeVar("_ClientT", bound="httpx.Client | httpx.AsyncClient")


class _Bound:
    """What a request needs from the runtime, resolved once per ``configure()``."""

    __slots__ = ("clean_urls", "exemplars", "family", "on", "redaction", "rt", "tracer")

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.on = rt.enabled
        self.tracer = rt.tracer
        self.redaction = rt.redaction
        #: URLs the policy leaves as they are (bounded; cleared when full): ``url.full`` at a set lookup
        self.clean_urls: set[str] = set()
        self.family: Any = None
        if rt.metrics_enabled:
            try:
                self.family = rt.metric_set.get(c.HTTP_CLIENT_DURATION)
            except Exception as exc:  # noqa: BLE001 - a registry failure must not break the call
                rt.report_error("metrics", exc)
        self.exemplars = rt.exemplars and self.family is not None

    def url_full(self, url: str) -> str:
        """``url`` redacted for ``url.full`` (see :func:`_redact_url`)."""
        clean = self.clean_urls
        if url in clean:
            return url
        out = _redact_url(self.redaction, url)
        if out == url:  # only URLs without secrets are remembered
            if len(clean) >= _CLEAN_URLS_MAX:
                clean.clear()
            clean.add(url)
        return out


_bound = per_runtime(_Bound)


class _QuietSend:
    """The value of OpenTelemetry's HTTP-suppression key while an instrumented requests ``send`` runs.

    It is truthy, so OpenTelemetry's HTTP instrumentations underneath (urllib3's) stay quiet. This
    module knows it apart from a real suppression: only the same session's ``send`` stays
    unrecorded under it (the redirects requests follows, a session instrumented both ways), while
    calls that a response hook or a custom adapter makes through httpx or another session are
    recorded as usual.
    """

    __slots__ = ("session",)

    def __init__(self, session: object) -> None:
        self.session = session


class _Setter(Setter[MutableMapping[str, Any]]):
    """Writes what the propagator injects and remembers whether it wrote the trace context."""

    __slots__ = ("parent", "state")

    def __init__(self) -> None:
        self.parent = False
        self.state = False

    def set(self, carrier: MutableMapping[str, Any], key: str, value: str) -> None:
        carrier[key] = value
        name = key.lower()
        if name == "traceparent":
            self.parent = True
        elif name == "tracestate":
            self.state = True


def _redact_url(policy: Any, url: str) -> str:
    """``url`` through the policy: ``redact_url`` (semconv), then its query and fragment through ``redact_text``.

    The server side treats ``url.query`` the same way, so bearer tokens, JWTs and card numbers in a
    query are cut out on both sides by the one policy. The path is kept as it is.
    """
    out: str = policy.redact_url(url)
    cut = out.find("?")
    if cut < 0:
        cut = out.find("#")
        if cut < 0:
            return out
    return out[:cut] + str(policy.redact_text(out[cut:]))


def _correlation_header(b: _Bound, cid: str, headers: MutableMapping[str, Any]) -> str | None:
    """Add ``X-Correlation-ID`` unless the caller set it; the value the request carries, if any.

    A bound id that the called service would not accept (the server side's rule: 1-128 of
    ``A-Za-z0-9._:-``, starting with a letter or digit) is not sent: it could break the request
    (a line break) and the service would replace it anyway. That is counted as a telemetry error.
    """
    try:
        if CORRELATION_HEADER in headers:
            own = headers[CORRELATION_HEADER]
            return own.decode("latin-1") if isinstance(own, bytes) else str(own)
        if not is_safe_correlation_id(cid):
            b.rt.report_error("tracing", ValueError(_BAD_CID))
            return None
        headers[CORRELATION_HEADER] = cid
        return cid
    except Exception as exc:  # noqa: BLE001 - the request goes out without the header
        b.rt.report_error("tracing", exc)
        return None


def _host_port(url: str) -> tuple[str, int | None, str]:
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = None
    return parts.hostname or "", port, parts.scheme


class _Call:
    """One outgoing request in flight: its span, its context token and its start time."""

    __slots__ = ("b", "host", "method", "span", "t0", "token", "url")

    def __init__(
        self,
        b: _Bound,
        method: str,
        url: str,
        host: str,
        port: int | None,
        scheme: str,
        headers: MutableMapping[str, Any],
        session: object,
    ) -> None:
        self.b = b
        self.url = url
        self.host = host
        self.span: Span | None = None
        self.token: object = None
        known = method in c.HTTP_KNOWN_METHODS
        self.method = method if known else c.HTTP_METHOD_OTHER
        cid = CORRELATION_ID.get()
        if cid is not None:  # the header goes first: the span names the id the request carries
            cid = _correlation_header(b, cid, headers)
        ctx = None
        tracer = b.tracer
        if tracer is not None:
            try:
                attributes: dict[str, Any] = {
                    c.ATTR_HTTP_METHOD: self.method,
                    c.ATTR_URL_FULL: b.url_full(url),
                    c.ATTR_SERVER_ADDRESS: host,
                }
                if port is None:
                    port = _DEFAULT_PORTS.get(scheme)
                if port is not None:
                    attributes[c.ATTR_SERVER_PORT] = port
                if not known:
                    attributes[c.ATTR_HTTP_METHOD_ORIGINAL] = method
                if cid is not None:
                    attributes[c.ATTR_CORRELATION_ID] = cid
                span = tracer.start_span(method if known else _SPAN_NAME_OTHER, kind=_CLIENT, attributes=attributes)
                self.span = span
                ctx = trace.set_span_in_context(span)
            except Exception as exc:  # noqa: BLE001
                b.rt.report_error("tracing", exc)
        try:
            setter = _Setter()
            propagate.inject(headers, context=ctx, setter=setter)
            if setter.parent and not setter.state and "tracestate" in headers:
                del headers["tracestate"]  # the caller's, for the traceparent it no longer carries
        except Exception as exc:  # noqa: BLE001 - the request goes out without the headers
            b.rt.report_error("tracing", exc)
        try:
            if session is not None:  # requests: see _QuietSend
                ctx = otel_context.set_value(_SUPPRESS_HTTP_INSTRUMENTATION_KEY, _QuietSend(session), ctx)
            if ctx is not None:
                self.token = otel_context.attach(ctx)
        except BaseException:
            self._end()
            raise
        self.t0 = perf_counter()

    def _detach(self) -> None:
        if self.token is not None:
            otel_context.detach(self.token)  # type: ignore[arg-type]

    def finish(self, status: Any, headers_time: Callable[[float], float] | None = None) -> None:
        """Record a received response; ``headers_time(wall)`` gives the duration when the wall time is not it."""
        duration = perf_counter() - self.t0
        self._detach()
        b = self.b
        try:
            code = int(status)
            label = str(code)
            if headers_time is not None:
                duration = headers_time(duration)
        except Exception as exc:  # noqa: BLE001
            b.rt.report_error("instrument", exc)
            self._end()
            return
        span = self.span
        if span is not None:
            try:
                if span.is_recording():
                    span.set_attribute(c.ATTR_HTTP_STATUS, code)
                    if code >= 400:
                        span.set_attribute(c.ATTR_ERROR_TYPE, label)
                        span.set_status(Status(StatusCode.ERROR))
            except Exception as exc:  # noqa: BLE001
                b.rt.report_error("tracing", exc)
        self._observe(label, duration)
        self._end()

    def fail(self, exc: BaseException) -> None:
        """Record a request that raised instead of returning a response."""
        duration = perf_counter() - self.t0
        self._detach()
        b = self.b
        span = self.span
        if span is not None:
            try:
                if span.is_recording():
                    error_type = exception_type_name(exc)
                    span.set_attribute(c.ATTR_ERROR_TYPE, error_type)
                    span.record_exception(exc, attributes=self._exception_attributes(exc), escaped=True)
                    span.set_status(Status(StatusCode.ERROR, error_type))
            except Exception as err:  # noqa: BLE001
                b.rt.report_error("tracing", err)
        self._observe(STATUS_NO_RESPONSE, duration)
        self._end()

    def _exception_attributes(self, exc: BaseException) -> dict[str, Any]:
        """``exception.message``/``stacktrace`` with the URL's secrets cut out (they often quote it)."""
        url = self.url
        policy = self.b.redaction
        redacted = _redact_url(policy, url)

        def clean(text: str) -> str:
            if redacted != url:
                text = text.replace(url, redacted)
                raw, red = urlsplit(url), urlsplit(redacted)
                if raw.query != red.query:
                    text = text.replace(raw.query, red.query)
                if raw.netloc != red.netloc:
                    text = text.replace(raw.netloc, red.netloc)
            return str(policy.redact_text(text))

        stack = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        return {"exception.message": clean(str(exc)), "exception.stacktrace": clean(stack)}

    def _observe(self, status: str, duration: float) -> None:
        b = self.b
        family = b.family
        if family is None:
            return
        try:
            child = family.labels(self.method, self.host, status)
            observe_with_exemplar(child, duration, self.span if b.exemplars else None)
        except Exception as exc:  # noqa: BLE001
            b.rt.report_error("metrics", exc)

    def _end(self) -> None:
        if self.span is not None:
            try:
                self.span.end()
            except Exception as exc:  # noqa: BLE001
                self.b.rt.report_error("tracing", exc)


def _begin(
    method: Any,
    url: Any,
    headers: MutableMapping[str, Any],
    parts: tuple[str, int | None, str] | None = None,
    *,
    session: object = None,
) -> _Call | None:
    """Start recording a request, or None when it must not be recorded (or recording failed).

    ``session`` is the requests session whose ``send`` this is (None for httpx).
    """
    b = _bound()
    if not b.on or SUPPRESSED.get() or otel_suppressed():
        return None
    held = otel_context.get_value(_SUPPRESS_HTTP_INSTRUMENTATION_KEY)
    if held and (type(held) is not _QuietSend or held.session is session):
        return None  # OpenTelemetry's HTTP suppression, or this session's own send again
    try:
        if type(method) is not str:
            method = method.decode("ascii") if isinstance(method, bytes) else str(method)
        if type(url) is not str:
            url = str(url)
        host, port, scheme = parts if parts is not None else _host_port(url)
        return _Call(b, method, url, host, port, scheme, headers, session)
    except Exception as exc:  # noqa: BLE001 - the request goes out unrecorded
        b.rt.report_error("instrument", exc)
        return None


# --- httpx ----------------------------------------------------------------------------------------


def _httpx_parts(request: httpx.Request) -> tuple[str, int | None, str]:
    url = request.url
    return url.host, url.port, url.scheme


@lru_cache(maxsize=1)
def _httpx_classes() -> tuple[type[httpx.BaseTransport], type[httpx.AsyncBaseTransport]]:
    """The two transport wrappers, defined on first use so that httpx is imported only then."""
    import httpx

    class InstrumentedTransport(httpx.BaseTransport):
        """Records every request that goes through ``transport`` (see the module docstring)."""

        def __init__(self, transport: httpx.BaseTransport) -> None:
            self.transport = transport

        def handle_request(self, request: httpx.Request) -> httpx.Response:
            call = _begin(request.method, request.url, request.headers, _httpx_parts(request))
            if call is None:
                return self.transport.handle_request(request)
            try:
                response = self.transport.handle_request(request)
            except BaseException as exc:
                call.fail(exc)
                raise
            call.finish(response.status_code)
            return response

        def close(self) -> None:
            self.transport.close()

        def __enter__(self) -> InstrumentedTransport:
            self.transport.__enter__()
            return self

        def __exit__(
            self,
            exc_type: type[BaseException] | None = None,
            exc_value: BaseException | None = None,
            traceback: TracebackType | None = None,
        ) -> None:
            self.transport.__exit__(exc_type, exc_value, traceback)

        def __repr__(self) -> str:
            return f"InstrumentedTransport({self.transport!r})"

    class InstrumentedAsyncTransport(httpx.AsyncBaseTransport):
        """Records every request that goes through ``transport`` (see the module docstring)."""

        def __init__(self, transport: httpx.AsyncBaseTransport) -> None:
            self.transport = transport

        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            call = _begin(request.method, request.url, request.headers, _httpx_parts(request))
            if call is None:
                return await self.transport.handle_async_request(request)
            try:
                response = await self.transport.handle_async_request(request)
            except BaseException as exc:
                call.fail(exc)
                raise
            call.finish(response.status_code)
            return response

        async def aclose(self) -> None:
            await self.transport.aclose()

        async def __aenter__(self) -> InstrumentedAsyncTransport:
            await self.transport.__aenter__()
            return self

        async def __aexit__(
            self,
            exc_type: type[BaseException] | None = None,
            exc_value: BaseException | None = None,
            traceback: TracebackType | None = None,
        ) -> None:
            await self.transport.__aexit__(exc_type, exc_value, traceback)

        def __repr__(self) -> str:
            return f"InstrumentedAsyncTransport({self.transport!r})"

    InstrumentedTransport.__qualname__ = InstrumentedTransport.__name__
    InstrumentedAsyncTransport.__qualname__ = InstrumentedAsyncTransport.__name__
    return InstrumentedTransport, InstrumentedAsyncTransport


def httpx_transport(transport: httpx.BaseTransport | None = None) -> httpx.BaseTransport:
    """An httpx transport that records every request it sends (default: ``httpx.HTTPTransport()``).

    Use it as ``httpx.Client(transport=httpx_transport())``. Wrapping a transport that is already
    instrumented returns it unchanged. Proxies that httpx mounts from the environment use their own
    transports: call :func:`instrument_httpx` on the client to cover those too.
    """
    import httpx

    cls = _httpx_classes()[0]
    if transport is None:
        transport = httpx.HTTPTransport()
    elif isinstance(transport, cls):
        return transport
    return cls(transport)  # type: ignore[call-arg]


def httpx_async_transport(transport: httpx.AsyncBaseTransport | None = None) -> httpx.AsyncBaseTransport:
    """The ``httpx.AsyncClient`` counterpart of :func:`httpx_transport` (default: ``httpx.AsyncHTTPTransport()``)."""
    import httpx

    cls = _httpx_classes()[1]
    if transport is None:
        transport = httpx.AsyncHTTPTransport()
    elif isinstance(transport, cls):
        return transport
    return cls(transport)  # type: ignore[call-arg]


def instrument_httpx(client: _ClientT) -> _ClientT:
    """Instrument an existing ``httpx.Client`` or ``httpx.AsyncClient`` in place and return it.

    Wraps the client's transport and every mounted transport (proxies included). Calling it again
    on the same client changes nothing.

    Raises:
        TypeError: ``client`` is neither an ``httpx.Client`` nor an ``httpx.AsyncClient``.
    """
    import httpx

    sync_cls, async_cls = _httpx_classes()
    cls: Any
    if isinstance(client, httpx.AsyncClient):
        cls = async_cls
    elif isinstance(client, httpx.Client):
        cls = sync_cls
    else:
        raise TypeError(f"instrument_httpx() needs an httpx.Client or httpx.AsyncClient, not {type(client).__name__}")

    def wrap(transport: Any) -> Any:
        if transport is None or isinstance(transport, cls):
            return transport
        return cls(transport)

    client._transport = wrap(client._transport)
    client._mounts = {pattern: wrap(transport) for pattern, transport in client._mounts.items()}
    return client


# --- requests -------------------------------------------------------------------------------------

_requests_lock = threading.Lock()
#: Session.send as it was before :func:`instrument_requests` patched it, and the patch itself.
_requests_patch: list[Any] = [None, None]


def _requests_headers_time(response: Any) -> Callable[[float], float]:
    """The time until the final response's headers: requests' own ``elapsed``, over every hop."""

    def headers_time(wall: float) -> float:
        try:
            total = response.elapsed.total_seconds()
            for hop in response.history:
                total += hop.elapsed.total_seconds()
        except Exception:  # noqa: BLE001 - a response that is not requests' own: the wall time
            return wall
        return min(float(total), wall) if total >= 0 else wall

    return headers_time


def _send(
    send: Callable[..., Any],
    session: requests.Session,
    request: requests.PreparedRequest,
    args: tuple[Any, ...],
    kwargs: Any,
) -> Any:
    call = _begin(request.method, request.url, request.headers, session=session)
    if call is None:
        return send(*args, **kwargs)
    try:
        response = send(*args, **kwargs)
    except BaseException as exc:
        call.fail(exc)
        raise
    call.finish(response.status_code, _requests_headers_time(response))
    return response


def instrument_requests(session: requests.Session | None = None) -> None:
    """Record the requests made with requests: one session's, or every session's.

    With ``session``, only that session's ``send`` is wrapped. Without, ``requests.Session.send``
    is patched for every session, existing ones and ``requests.get()`` included; undo that with
    :func:`uninstrument_requests`. Calling it again changes nothing. Each call of ``send`` is one
    span: the redirects it follows are not spans of their own, and the status is the final one.
    """
    import requests

    if session is not None:
        if getattr(vars(session).get("send"), _MARK, False):
            return
        original = session.send

        def send(request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
            return _send(original, session, request, (request,), kwargs)  # type: ignore[no-any-return]

        setattr(send, _MARK, True)
        send.__wrapped__ = original  # type: ignore[attr-defined]
        session.send = send  # type: ignore[method-assign]
        return
    with _requests_lock:
        if _requests_patch[1] is not None and vars(requests.Session).get("send") is _requests_patch[1]:
            return
        unpatched = requests.Session.send

        def patched(self: requests.Session, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
            return _send(unpatched, self, request, (self, request), kwargs)  # type: ignore[no-any-return]

        patched.__name__, patched.__qualname__, patched.__doc__ = "send", "Session.send", unpatched.__doc__
        setattr(patched, _MARK, True)
        patched.__wrapped__ = unpatched  # type: ignore[attr-defined]
        _requests_patch[:] = [unpatched, patched]
        requests.Session.send = patched  # type: ignore[method-assign]


def uninstrument_requests(session: requests.Session | None = None) -> None:
    """Undo :func:`instrument_requests`: the global patch, or the wrapper of ``session``.

    Does nothing when there is nothing to undo. The global patch is taken back only if it is still
    the outermost one (a patch someone applied on top of it is left alone).
    """
    if session is not None:
        if getattr(vars(session).get("send"), _MARK, False):
            del session.send
        return
    with _requests_lock:
        unpatched, patched = _requests_patch
        if patched is None:
            return
        import requests

        if vars(requests.Session).get("send") is patched:
            requests.Session.send = unpatched  # type: ignore[method-assign]
            _requests_patch[:] = [None, None]
