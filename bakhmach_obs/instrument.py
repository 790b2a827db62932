"""``@instrument`` and the ``span``/``operation`` context managers: one call, three signals.

One call of an instrumented function records

* metrics: ``function_calls_total{function, module, result}``,
  ``function_calls_duration_seconds{function, module}`` (with a ``trace_id`` exemplar when the
  span is sampled) and ``function_calls_concurrent{function, module}``;
* a span of kind INTERNAL named after the function, with ``code.function.name`` and
  ``code.namespace``; on failure ERROR status, ``error.type`` and an exception event whose
  message and stack trace went through the redaction policy;
* on failure, one ERROR log record (stdlib ``logging``, the function's module logger) carrying
  ``error``, ``error_type``, ``error_code``, ``duration_ms``, ``action``, ``trace_id``, ``span_id``.

Everything that can be decided once is decided at decoration time: the wrapper kind (plain,
coroutine, generator, async generator), names and attributes; the metric children are bound on
first call and re-bound only when ``configure()`` runs again. The wrapped callable keeps its
signature, docstring, ``__wrapped__`` and ``inspect`` kind; return values pass through and
exceptions re-raise unchanged (bare ``raise``).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Mapping
from contextvars import Token
from time import perf_counter
from types import TracebackType
from typing import Any, TypeVar, overload

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from . import conventions
from ._runtime import _NULL_CELLS, CURRENT, current
from .context import CORRELATION_ID, FIELDS, SUPPRESSED
from .logs import exception_type_name
from .tracing import record_exception

__all__ = ["instrument", "operation", "span"]

F = TypeVar("F", bound=Callable[..., Any])

_INTERNAL = SpanKind.INTERNAL
_UNBOUND = object()
_set_span_in_context = trace.set_span_in_context
_attach = otel_context.attach
_detach = otel_context.detach


class _Site:
    """One instrumented function or named operation: static facts plus its bound cells."""

    __slots__ = (
        "action",
        "attributes",
        "cells",
        "exemplars",
        "fast",
        "function",
        "metrics",
        "module",
        "on",
        "raw_attributes",
        "record_error_if",
        "record_success_if",
        "rt",
        "span_name",
        "tracer",
    )  # fmt: skip

    def __init__(
        self,
        function: str,
        module: str,
        *,
        action: str | None = None,
        attributes: Mapping[str, Any] | None = None,
        record_error_if: Callable[[Any], bool] | None = None,
        record_success_if: Callable[[BaseException], bool] | None = None,
        metrics: bool = True,
    ) -> None:
        self.function = function
        self.metrics = metrics
        self.module = module
        self.span_name = function
        self.action = action
        self.raw_attributes: dict[str, Any] = {
            conventions.ATTR_CODE_FUNCTION_NAME: f"{module}.{function}" if module else function,
            conventions.ATTR_CODE_NAMESPACE: module,
            **(attributes or {}),
        }
        self.attributes = self.raw_attributes
        self.record_error_if = record_error_if
        self.record_success_if = record_success_if
        self.rt: Any = _UNBOUND  # never the current runtime, so the first call binds

    def bind(self) -> _Site:
        """(Re)bind to the current runtime: cells, tracer, switches, and the fast-path decision."""
        rt = current()
        self.on = rt.enabled
        self.tracer = rt.tracer
        self.exemplars = rt.exemplars and rt.metrics_enabled
        try:  # constant attributes go through the redaction policy once per configuration
            self.attributes = rt.redaction.redact_mapping(self.raw_attributes)
        except Exception as exc:  # noqa: BLE001
            rt.report_error("tracing", exc)
            self.attributes = {}
        try:
            self.cells = rt.call_cells(self.function, self.module) if self.metrics else _NULL_CELLS
        except Exception as exc:  # noqa: BLE001 - a registry failure must not break the call
            rt.report_error("metrics", exc)
            self.cells = _NULL_CELLS
        # metrics only, nothing to bind into the log context, no predicate on the result
        self.fast = self.tracer is None and self.action is None and self.record_error_if is None
        self.rt = rt
        return self

    # --- per call -----------------------------------------------------------------------------
    def start_span(self) -> Span:
        attributes = self.attributes
        cid = CORRELATION_ID.get()
        if cid is not None:
            attributes = {**attributes, conventions.ATTR_CORRELATION_ID: cid}
        return self.rt.start_span(self.span_name, _INTERNAL, attributes)  # type: ignore[no-any-return]

    def enter(self) -> Token[Mapping[str, Any]] | None:
        self.cells.start()
        if self.action is not None:
            return FIELDS.set({**FIELDS.get(), "action": self.action})
        return None

    def exit_ok(
        self, duration: float, result: Any, span: Span | None, token: Token[Any] | None, check: bool = True
    ) -> None:
        predicate = self.record_error_if
        if check and predicate is not None:
            try:
                failed = predicate(result)
            except Exception as exc:  # noqa: BLE001 - a faulty predicate is the SDK's problem, not the call's
                self.rt.report_error("instrument", exc)
                failed = False
            if failed:
                self.exit_error(duration, None, span, token)
                return
        i = self.cells.stop(True, duration)
        if span is not None:
            try:
                if self.exemplars:
                    ctx = span.get_span_context()
                    if ctx.trace_flags.sampled:
                        self.cells.exemplar(i, duration, ctx.trace_id, ctx.span_id)
            except Exception as exc:  # noqa: BLE001
                self.rt.report_error("metrics", exc)
            span.end()
        if token is not None:
            FIELDS.reset(token)

    def exit_error(
        self, duration: float, exc: BaseException | None, span: Span | None, token: Token[Any] | None
    ) -> None:
        """Record a failed call: ``exc`` is None when ``record_error_if`` flagged the result."""
        if exc is not None and self.record_success_if is not None:
            try:
                if self.record_success_if(exc):
                    self.exit_ok(duration, None, span, token, check=False)
                    return
            except Exception as err:  # noqa: BLE001
                self.rt.report_error("instrument", err)
        error_type = exception_type_name(exc) if exc is not None else "_OTHER"
        self.cells.stop(False, duration)
        try:
            if span is not None and span.is_recording():
                span.set_attribute(conventions.ATTR_ERROR_TYPE, error_type)
                if exc is not None:
                    record_exception(span, exc, self.rt.redaction, self.rt.report_error)
                span.set_status(Status(StatusCode.ERROR, error_type))
        except Exception as err:  # noqa: BLE001
            self.rt.report_error("tracing", err)
        try:
            self._log_failure(duration, exc, error_type, span)
        except Exception as err:  # noqa: BLE001
            self.rt.report_error("logging", err)
        if span is not None:
            span.end()
        if token is not None:
            FIELDS.reset(token)

    def _log_failure(self, duration: float, exc: BaseException | None, error_type: str, span: Span | None) -> None:
        logger = logging.getLogger(self.module or "bakhmach_obs")
        if not logger.isEnabledFor(logging.ERROR):
            return
        extra: dict[str, Any] = {
            "function": self.function,
            "error": str(exc) if exc is not None else "result flagged as an error by record_error_if",
            "error_type": error_type,
            "duration_ms": round(duration * 1000.0, 3),
        }
        code = getattr(exc, "error_code", None)
        if code is not None:
            extra["error_code"] = str(code)
        if self.action is not None:
            extra["action"] = self.action
        ctx = (span or trace.get_current_span()).get_span_context()
        if ctx.is_valid:
            extra["trace_id"] = f"{ctx.trace_id:032x}"
            extra["span_id"] = f"{ctx.span_id:016x}"
            extra["trace_flags"] = f"{ctx.trace_flags:02x}"
        what = "failed" if exc is not None else "returned an error result"
        exc_info = (type(exc), exc, exc.__traceback__) if exc is not None else None
        logger.error("%s %s: %s", self.function, what, error_type, exc_info=exc_info, extra=extra)


def _site_for(func: Callable[..., Any], name: str | None, **options: Any) -> _Site:
    module = getattr(func, "__module__", None) or ""
    function = str(name or getattr(func, "__qualname__", None) or getattr(func, "__name__", repr(func)))
    return _Site(function, module, **options)


def _wrap_sync(func: Callable[..., Any], site: _Site) -> Callable[..., Any]:
    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        s = site
        if s.rt is not CURRENT[0]:
            s.bind()
        if not s.on or SUPPRESSED.get():
            return func(*args, **kwargs)
        if s.fast:
            cells = s.cells
            cells.start()
            t0 = perf_counter()
            try:
                result = func(*args, **kwargs)
            except BaseException as exc:
                s.exit_error(perf_counter() - t0, exc, None, None)
                raise
            cells.stop(True, perf_counter() - t0)
            return result
        token = s.enter()
        if s.tracer is None:
            t0 = perf_counter()
            try:
                result = func(*args, **kwargs)
            except BaseException as exc:
                s.exit_error(perf_counter() - t0, exc, None, token)
                raise
            s.exit_ok(perf_counter() - t0, result, None, token)
            return result
        span = s.start_span()
        ctx_token = _attach(_set_span_in_context(span))
        t0 = perf_counter()
        try:
            result = func(*args, **kwargs)
        except BaseException as exc:
            s.exit_error(perf_counter() - t0, exc, span, token)
            _detach(ctx_token)
            raise
        duration = perf_counter() - t0
        _detach(ctx_token)
        s.exit_ok(duration, result, span, token)
        return result

    return wrapper


def _wrap_async(func: Callable[..., Awaitable[Any]], site: _Site) -> Callable[..., Any]:
    @functools.wraps(func)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        s = site
        if s.rt is not CURRENT[0]:
            s.bind()
        if not s.on or SUPPRESSED.get():
            return await func(*args, **kwargs)
        if s.fast:
            cells = s.cells
            cells.start()
            t0 = perf_counter()
            try:
                result = await func(*args, **kwargs)
            except BaseException as exc:
                s.exit_error(perf_counter() - t0, exc, None, None)
                raise
            cells.stop(True, perf_counter() - t0)
            return result
        token = s.enter()
        if s.tracer is None:
            t0 = perf_counter()
            try:
                result = await func(*args, **kwargs)
            except BaseException as exc:
                s.exit_error(perf_counter() - t0, exc, None, token)
                raise
            s.exit_ok(perf_counter() - t0, result, None, token)
            return result
        span = s.start_span()
        ctx_token = _attach(_set_span_in_context(span))
        t0 = perf_counter()
        try:
            result = await func(*args, **kwargs)
        except BaseException as exc:
            s.exit_error(perf_counter() - t0, exc, span, token)
            _detach(ctx_token)
            raise
        duration = perf_counter() - t0
        _detach(ctx_token)
        s.exit_ok(duration, result, span, token)
        return result

    return wrapper


class _Step:
    """Makes the call's span current only while the generator body runs, never across a yield."""

    __slots__ = ("ctx", "token")

    def __init__(self, span: Span | None) -> None:
        self.ctx = _set_span_in_context(span) if span is not None else None
        self.token: object = None

    def __enter__(self) -> None:
        if self.ctx is not None:
            self.token = _attach(self.ctx)

    def __exit__(self, *exc: object) -> None:
        if self.ctx is not None:
            _detach(self.token)  # type: ignore[arg-type]


def _wrap_generator(func: Callable[..., Generator[Any, Any, Any]], site: _Site) -> Callable[..., Any]:
    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        s = site
        if s.rt is not CURRENT[0]:
            s.bind()
        if not s.on or SUPPRESSED.get():
            return (yield from func(*args, **kwargs))
        token = s.enter()
        span = s.start_span() if s.tracer is not None else None
        step = _Step(span)
        t0 = perf_counter()
        try:
            with step:
                gen = func(*args, **kwargs)
            sent: Any = None
            thrown: BaseException | None = None
            while True:
                with step:
                    try:
                        item = gen.send(sent) if thrown is None else gen.throw(thrown)
                    except StopIteration as stop:
                        value = stop.value
                        break
                    finally:
                        thrown = None
                try:
                    sent = yield item
                except GeneratorExit:
                    with step:
                        gen.close()
                    value = None
                    raise
                except BaseException as exc:  # noqa: BLE001 - forwarded into the generator
                    thrown = exc
        except GeneratorExit:
            s.exit_ok(perf_counter() - t0, None, span, token)
            raise
        except BaseException as exc:
            s.exit_error(perf_counter() - t0, exc, span, token)
            raise
        s.exit_ok(perf_counter() - t0, value, span, token)
        return value

    return wrapper


def _wrap_async_generator(func: Callable[..., AsyncIterator[Any]], site: _Site) -> Callable[..., Any]:
    @functools.wraps(func)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        s = site
        if s.rt is not CURRENT[0]:
            s.bind()
        agen = None
        if not s.on or SUPPRESSED.get():
            async for item in func(*args, **kwargs):
                yield item
            return
        token = s.enter()
        span = s.start_span() if s.tracer is not None else None
        step = _Step(span)
        t0 = perf_counter()
        try:
            with step:
                agen = func(*args, **kwargs)
            sent: Any = None
            thrown: BaseException | None = None
            while True:
                with step:
                    try:
                        item = await (agen.asend(sent) if thrown is None else agen.athrow(thrown))  # type: ignore[attr-defined]
                    except StopAsyncIteration:
                        break
                    finally:
                        thrown = None
                try:
                    sent = yield item
                except GeneratorExit:
                    with step:
                        await agen.aclose()  # type: ignore[attr-defined]
                    raise
                except BaseException as exc:  # noqa: BLE001 - forwarded into the generator
                    thrown = exc
        except GeneratorExit:
            s.exit_ok(perf_counter() - t0, None, span, token)
            raise
        except BaseException as exc:
            s.exit_error(perf_counter() - t0, exc, span, token)
            raise
        s.exit_ok(perf_counter() - t0, None, span, token)

    return wrapper


def _wrap(func: Callable[..., Any], site: _Site) -> Callable[..., Any]:
    if inspect.isasyncgenfunction(func):
        return _wrap_async_generator(func, site)
    if inspect.iscoroutinefunction(func):
        return _wrap_async(func, site)
    if inspect.isgeneratorfunction(func):
        return _wrap_generator(func, site)
    return _wrap_sync(func, site)


@overload
def instrument(func: F, /) -> F: ...


@overload
def instrument(
    *,
    name: str | None = None,
    action: str | None = None,
    record_error_if: Callable[[Any], bool] | None = None,
    record_success_if: Callable[[BaseException], bool] | None = None,
    attributes: Mapping[str, Any] | None = None,
) -> Callable[[F], F]: ...


def instrument(
    func: Any = None,
    /,
    *,
    name: str | None = None,
    action: str | None = None,
    record_error_if: Callable[[Any], bool] | None = None,
    record_success_if: Callable[[BaseException], bool] | None = None,
    attributes: Mapping[str, Any] | None = None,
) -> Any:
    """Instrument a function, method, coroutine, generator or async generator.

    Use bare (``@instrument``) or with options (``@instrument(name=..., action=...)``). Works on
    plain functions, ``async def``, generators, async generators, methods, and on
    ``classmethod``/``staticmethod`` objects in either decorator order.

    Args:
        name: the ``function`` label and span name (default: the function's ``__qualname__``).
        action: a business action, put on the failure log record and bound as the ``action``
            log field for every record logged during the call.
        record_error_if: ``predicate(return_value) -> bool``; True counts the call as an error.
        record_success_if: ``predicate(exception) -> bool``; True counts a raised exception as
            ``ok`` (it still propagates).
        attributes: constant span attributes (never metric labels).

    Example:
        >>> import bakhmach_obs
        >>> @bakhmach_obs.instrument(action="payment_processing")
        ... def charge(amount: int) -> int:
        ...     return amount
        >>> charge(5)
        5
        >>> charge.__wrapped__.__name__
        'charge'
    """
    options = {
        "action": action,
        "attributes": attributes,
        "record_error_if": record_error_if,
        "record_success_if": record_success_if,
    }

    def decorate(target: Any) -> Any:
        if isinstance(target, (classmethod, staticmethod)):
            inner = target.__func__
            return type(target)(_wrap(inner, _site_for(inner, name, **options)))
        if not callable(target):
            raise TypeError(f"@instrument needs a callable, got {type(target).__name__}")
        return _wrap(target, _site_for(target, name, **options))

    if func is None:
        return decorate
    return decorate(func)


class _Block:
    """Context manager shared by :func:`span` and :func:`operation`."""

    __slots__ = ("_ctx_token", "_metrics", "_site", "_span", "_t0", "_token")

    def __init__(self, site: _Site, metrics: bool) -> None:
        self._site = site
        self._metrics = metrics
        self._span: Span | None = None

    def __enter__(self) -> Span:
        s = self._site
        if s.rt is not CURRENT[0]:
            s.bind()
        self._ctx_token = self._token = None
        if not s.on or SUPPRESSED.get():
            self._site = None  # type: ignore[assignment]
            return trace.INVALID_SPAN
        if self._metrics:
            self._token = s.enter()
        if s.tracer is not None:
            self._span = s.start_span()
            self._ctx_token = _attach(_set_span_in_context(self._span))
        self._t0 = perf_counter()
        return self._span or trace.INVALID_SPAN

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        s = self._site
        if s is None:
            return
        duration = perf_counter() - self._t0
        span = self._span
        if self._metrics:
            if exc is None:
                s.exit_ok(duration, None, span, self._token)
            else:
                s.exit_error(duration, exc, span, self._token)
        elif span is not None:
            try:
                if exc is not None and span.is_recording():
                    error_type = exception_type_name(exc)
                    span.set_attribute(conventions.ATTR_ERROR_TYPE, error_type)
                    record_exception(span, exc, s.rt.redaction, s.rt.report_error)
                    span.set_status(Status(StatusCode.ERROR, error_type))
            finally:
                span.end()
        if self._ctx_token is not None:
            _detach(self._ctx_token)

    async def __aenter__(self) -> Span:
        return self.__enter__()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.__exit__(exc_type, exc, tb)


def _caller_module() -> str:
    frame = sys._getframe(2)
    return str(frame.f_globals.get("__name__", ""))


def span(name: str, **attributes: Any) -> contextlib.AbstractContextManager[Span]:
    """A span (kind INTERNAL) current for the block; records an exception and ERROR on failure.

    Yields the span (a non-recording one when tracing is off), so you can add attributes.

    Example:
        >>> import bakhmach_obs
        >>> with bakhmach_obs.span("load-config", source="file") as s:
        ...     s.set_attribute("entries", 3)
    """
    site = _Site(name, _caller_module(), attributes=attributes, metrics=False)
    return _Block(site, metrics=False)


def operation(name: str, **attributes: Any) -> contextlib.AbstractContextManager[Span]:
    """The three signals of ``@instrument`` for a block: metrics, a span and a failure log.

    The ``function`` label is ``name`` and the ``module`` label is the caller's module. Keep
    ``name`` low-cardinality: it is a metric label (the cardinality guard caps it anyway).

    Example:
        >>> import bakhmach_obs
        >>> with bakhmach_obs.operation("rebuild-index", shard=3):
        ...     pass
    """
    site = _Site(name, _caller_module(), attributes=attributes)
    return _Block(site, metrics=True)
