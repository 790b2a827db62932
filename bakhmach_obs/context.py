"""Per-task state in contextvars: the suppress switch, the correlation id and bound log fields.

Each asyncio task and each thread sees its own values; ``with`` blocks restore the previous value
on exit, so nothing leaks between concurrent requests.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator, Mapping
from contextvars import ContextVar, Token
from types import MappingProxyType
from typing import Any

from opentelemetry.instrumentation.utils import suppress_instrumentation

from .conventions import RESERVED_LOG_FIELDS

__all__ = [
    "bind",
    "bound_fields",
    "correlation_id",
    "correlation_scope",
    "instrumentation_suppressed",
    "is_suppressed",
    "log_context",
    "new_correlation_id",
    "otel_suppressed",
    "set_correlation_id",
    "suppress",
]

_EMPTY: Mapping[str, Any] = MappingProxyType({})

#: True inside ``suppress()``: the SDK records nothing.
SUPPRESSED: ContextVar[bool] = ContextVar("bakhmach_obs_suppressed", default=False)
CORRELATION_ID: ContextVar[str | None] = ContextVar("bakhmach_obs_correlation_id", default=None)
FIELDS: ContextVar[Mapping[str, Any]] = ContextVar("bakhmach_obs_fields", default=_EMPTY)


try:  # one context lookup instead of is_instrumentation_enabled()'s two (private OTel names)
    from opentelemetry.context import _SUPPRESS_INSTRUMENTATION_KEY as _OTEL_KEY
    from opentelemetry.context import get_current as _otel_current
    from opentelemetry.instrumentation.utils import _SUPPRESS_INSTRUMENTATION_KEY_PLAIN as _OTEL_KEY_PLAIN

    def otel_suppressed() -> bool:
        """True while OpenTelemetry's ``suppress_instrumentation()`` is in force."""
        ctx = _otel_current()
        return bool(ctx) and bool(ctx.get(_OTEL_KEY) or ctx.get(_OTEL_KEY_PLAIN))

except ImportError:  # pragma: no cover - the private names moved: use the public check
    from opentelemetry.instrumentation.utils import is_instrumentation_enabled as _enabled

    def otel_suppressed() -> bool:
        """True while OpenTelemetry's ``suppress_instrumentation()`` is in force."""
        return not _enabled()


def instrumentation_suppressed() -> bool:
    """True inside :func:`suppress` or OpenTelemetry's ``suppress_instrumentation()``: adapters record nothing."""
    return SUPPRESSED.get() or otel_suppressed()


def is_suppressed() -> bool:
    """True when the current task is inside :func:`suppress`."""
    return SUPPRESSED.get()


@contextlib.contextmanager
def suppress() -> Iterator[None]:
    """Turn the SDK off inside the block: no metrics, spans or SDK log records.

    OpenTelemetry's own suppression flag is set too, so OTel instrumentations stay quiet as well.

    Example:
        >>> import bakhmach_obs
        >>> with bakhmach_obs.suppress():
        ...     bakhmach_obs.is_suppressed()
        True
    """
    token = SUPPRESSED.set(True)
    try:
        with suppress_instrumentation():
            yield
    finally:
        SUPPRESSED.reset(token)


def new_correlation_id() -> str:
    """A fresh correlation id (32 lowercase hex digits)."""
    return uuid.uuid4().hex


UnitTokens = tuple["Token[str | None]", "Token[Mapping[str, Any]]"]


def enter_unit(cid: str) -> UnitTokens:
    """Bind ``cid`` for a unit of work; the fields it binds end with it (see :func:`exit_unit`)."""
    return CORRELATION_ID.set(cid), FIELDS.set(FIELDS.get())


def exit_unit(tokens: UnitTokens) -> None:
    """Restore the correlation id and the bound fields in force before :func:`enter_unit`."""
    FIELDS.reset(tokens[1])
    CORRELATION_ID.reset(tokens[0])


def correlation_id() -> str | None:
    """The correlation id bound to the current task or thread, if any."""
    return CORRELATION_ID.get()


def set_correlation_id(value: str | None) -> None:
    """Bind a correlation id to the current task or thread (``None`` clears it)."""
    CORRELATION_ID.set(value)


@contextlib.contextmanager
def correlation_scope(correlation_id: str | None = None) -> Iterator[str]:
    """Start a unit of work (a request, a consumed message, a job) with a correlation id.

    Binds ``correlation_id`` if given, else keeps the one already bound, else generates a new one;
    the previous value comes back on exit, and so do the fields bound with :func:`bind` before it:
    what the unit of work binds ends with it. The HTTP and messaging adapters open one per request
    or message; use it yourself for jobs and scripts.

    Example:
        >>> import bakhmach_obs
        >>> with bakhmach_obs.correlation_scope("req-12345") as cid:
        ...     bakhmach_obs.correlation_id() == cid == "req-12345"
        True
        >>> with bakhmach_obs.correlation_scope() as generated:
        ...     len(generated)
        32
        >>> bakhmach_obs.correlation_id() is None
        True
    """
    cid = correlation_id or CORRELATION_ID.get() or new_correlation_id()
    tokens = enter_unit(cid)
    try:
        yield cid
    finally:
        exit_unit(tokens)


def bound_fields() -> Mapping[str, Any]:
    """Fields bound with :func:`bind` or :func:`log_context`, read-only."""
    return FIELDS.get()


def _allowed(fields: dict[str, Any]) -> dict[str, Any]:
    """Bound fields minus the names the log formatter owns (decided here, once, not per record)."""
    if RESERVED_LOG_FIELDS.isdisjoint(fields):
        return fields
    return {k: v for k, v in fields.items() if k not in RESERVED_LOG_FIELDS}


def bind(**fields: Any) -> None:
    """Add fields to every log record of the current task or thread.

    Example:
        >>> import bakhmach_obs
        >>> with bakhmach_obs.log_context():
        ...     bakhmach_obs.bind(user_id="user-789")
        ...     dict(bakhmach_obs.bound_fields())
        {'user_id': 'user-789'}
    """
    FIELDS.set(MappingProxyType({**FIELDS.get(), **_allowed(fields)}))


@contextlib.contextmanager
def log_context(**fields: Any) -> Iterator[None]:
    """Bind fields for the duration of the block; the previous fields come back on exit."""
    token = FIELDS.set(MappingProxyType({**FIELDS.get(), **_allowed(fields)}))
    try:
        yield
    finally:
        FIELDS.reset(token)
