"""JSON log records with the seed's field names, bound context, trace correlation and redaction.

:class:`JsonFormatter` (on python-json-logger's encoder) writes one JSON object per line:

* always ``timestamp`` (RFC 3339, UTC, milliseconds, ``Z``), ``service``, ``level``, ``message``,
  ``logger`` and ``correlation_id`` (``null`` when none is bound);
* ``trace_id``, ``span_id`` and ``trace_flags`` (lowercase hex; ``01`` = sampled) only inside a
  valid span, never zeros;
* fields bound with :func:`bakhmach_obs.bind` / :func:`bakhmach_obs.log_context`, then the
  record's ``extra=`` fields (``user_id``, ``action``, ``error_code``, ``duration_ms``...);
* for an exception: ``error``, ``error_type`` and a ``stacktrace`` string (frames only, never
  local variables).

The reserved names above can never be overwritten by a bound or ``extra`` field. Every value goes
through the one redaction policy (:mod:`bakhmach_obs.redaction`): denied keys become
``[REDACTED]`` at any depth, bearer tokens, JWTs and Luhn-valid card numbers are cut out of
messages and values. CR, LF and every other control character are escaped, so one record is
always one line; values JSON cannot encode are rendered as strings.

``level`` is Python's level name: ``WARNING`` is the seed's ``WARN``.

Example:
    >>> import json, logging
    >>> from bakhmach_obs.logs import JsonFormatter
    >>> record = logging.LogRecord("shop", logging.INFO, __file__, 1, "paid %s", ("order-1",), None)
    >>> record.password = "hunter2"
    >>> data = json.loads(JsonFormatter(service="backend").format(record))
    >>> (data["service"], data["level"], data["message"], data["logger"], data["password"])
    ('backend', 'INFO', 'paid order-1', 'shop', '[REDACTED]')
"""

from __future__ import annotations

import logging
import re
import sys
import time
import traceback
from itertools import islice
from typing import Any

from opentelemetry import trace
from pythonjsonlogger.json import JsonEncoder
from pythonjsonlogger.json import JsonFormatter as _PJLJsonFormatter

from . import _runtime
from .context import CORRELATION_ID, FIELDS
from .conventions import RESERVED_LOG_FIELDS

try:  # the optional fast encoder: pip install bakhmach-obs[orjson]
    import orjson as _orjson
except ImportError:  # pragma: no cover - exercised by the minimal session
    _orjson = None  # type: ignore[assignment]
_ORJSON_OPTIONS = getattr(_orjson, "OPT_NON_STR_KEYS", 0) | getattr(_orjson, "OPT_SERIALIZE_NUMPY", 0)
_get_current_span = trace.get_current_span

try:  # one context-variable read instead of get_current_span()'s three calls (private OTel names)
    from opentelemetry.context import _RUNTIME_CONTEXT
    from opentelemetry.trace.propagation import _SPAN_KEY

    _otel_context_get = _RUNTIME_CONTEXT._current_context.get  # type: ignore[attr-defined]

    def _current_span() -> Any:
        return _otel_context_get().get(_SPAN_KEY)

except (ImportError, AttributeError):  # pragma: no cover - another runtime context: the public API

    def _current_span() -> Any:
        return _get_current_span()


__all__ = [
    "RESERVED_FIELDS",
    "ConsoleFormatter",
    "JsonFormatter",
    "exception_type_name",
    "install_logging",
    "sole_json_handler",
]

#: Fields the formatter owns; ``extra=`` and bound fields can never replace them.
RESERVED_FIELDS = RESERVED_LOG_FIELDS
#: LogRecord attributes that are plumbing, not user fields.
_RECORD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}
_SKIP = _RECORD_ATTRS | RESERVED_FIELDS
#: Attributes every LogRecord has; a record with more may carry ``extra=`` fields.
_BASE_ATTRS = len(vars(logging.LogRecord("", 0, "", 0, "", (), None)))
_HEX32 = re.compile(r"[0-9a-f]{32}")
_HEX16 = re.compile(r"[0-9a-f]{16}")
#: Characters json.dumps(ensure_ascii=False) leaves raw but that break "one record, one line"
#: for some readers: DEL, C1 controls and the Unicode line/paragraph separators.
_UNSAFE = re.compile("[\x7f-\x9f\u2028\u2029]")


def _escape_unsafe(match: re.Match[str]) -> str:
    return f"\\u{ord(match.group()):04x}"


_second_cache: tuple[int, str] = (-1, "")


def _iso_utc(created: float, msecs: float | None = None) -> str:
    """RFC 3339 UTC with milliseconds; the per-second prefix is formatted once per second."""
    global _second_cache
    seconds = int(created)
    cached = _second_cache
    if cached[0] != seconds:
        cached = _second_cache = (seconds, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)))
    return "%s.%03dZ" % (cached[1], (created - seconds) * 1000 if msecs is None else msecs)  # noqa: UP031 - %-formatting is the fastest here


#: (span context, trace_id, span_id, trace_flags) of the last span logged from: a span usually
#: logs several records, and formatting 128-bit ids is a measurable share of a record's cost.
_ids_cache: tuple[Any, str, str, str] = (None, "", "", "")


def _span_ids(ctx: Any) -> tuple[Any, str, str, str]:
    global _ids_cache
    cached = _ids_cache
    if cached[0] is not ctx:
        cached = _ids_cache = (ctx, "%032x" % ctx.trace_id, "%016x" % ctx.span_id, "%02x" % ctx.trace_flags)  # noqa: UP031
    return cached


def exception_type_name(exc: BaseException) -> str:
    """The exception's class name, module-qualified unless it is a builtin."""
    cls = type(exc)
    module = cls.__module__
    return cls.__qualname__ if module in ("builtins", "__main__") else f"{module}.{cls.__qualname__}"


def _valid_ids(record: logging.LogRecord) -> tuple[str, str, str] | None:
    """Trace ids passed as ``extra`` (by the SDK after a span ended), if well-formed and non-zero."""
    tid = record.__dict__.get("trace_id")
    sid = record.__dict__.get("span_id")
    if (
        isinstance(tid, str)
        and isinstance(sid, str)
        and _HEX32.fullmatch(tid)
        and _HEX16.fullmatch(sid)
        and tid.strip("0")
        and sid.strip("0")
    ):
        flags = record.__dict__.get("trace_flags")
        return tid, sid, flags if isinstance(flags, str) and len(flags) == 2 else "01"
    return None


def _policy() -> Any:
    return (_runtime.CURRENT[0] or _runtime.current()).redaction


class JsonFormatter(_PJLJsonFormatter):
    """One JSON object per line with the SDK's field names (see the module docstring).

    Encodes with orjson when it is installed (``pip install bakhmach-obs[orjson]``, about 9x faster
    than the standard library here), else with python-json-logger's encoder; both render values
    JSON cannot represent as strings.

    Args:
        service: value of the ``service`` field (default: the configured service name).
        redaction: a :class:`~bakhmach_obs.redaction.RedactionPolicy` (default: the configured one).
    """

    def __init__(self, service: str | None = None, *, redaction: Any = None, **kwargs: Any) -> None:
        kwargs.setdefault("json_ensure_ascii", False)
        super().__init__(**kwargs)
        self.service = service
        self.redaction = redaction
        encoder = JsonEncoder(ensure_ascii=False, separators=(", ", ": "))
        self._encode_std = encoder.encode
        self._default = encoder.default

    def _encode(self, data: dict[str, Any]) -> str:
        if _orjson is not None:
            try:
                return _orjson.dumps(data, default=self._default, option=_ORJSON_OPTIONS).decode()
            except (TypeError, ValueError):  # e.g. an int beyond 64 bits: the standard encoder copes
                pass
        return str(self._encode_std(data))

    def format(self, record: logging.LogRecord) -> str:
        """Render ``record`` as one line of JSON. Never raises."""
        try:
            return self._format(record)
        except Exception as exc:  # noqa: BLE001 - a record must never break the application
            return self._unformattable(exc, record.created, record.levelname, record.name)

    def format_fields(
        self, created: float, msecs: float, levelname: str, name: str, message: str, extra: dict[str, Any]
    ) -> str:
        """The line :meth:`format` gives for a record of these attributes with ``extra=extra``. Never raises.

        For the SDK's own fixed-shape records (the access log), which are rendered without
        building a ``LogRecord`` when nothing else would see one: ``extra`` must hold neither a
        reserved field nor a ``LogRecord`` attribute, and the message is already formatted.
        """
        try:
            rt = _runtime.CURRENT[0] or _runtime.current()
            fields: dict[str, Any] = dict(FIELDS.get())
            fields.update(extra)
            return self._render(rt, created, msecs, levelname, name, message, fields, None)
        except Exception as exc:  # noqa: BLE001 - a record must never break the application
            return self._unformattable(exc, created, levelname, name)

    def _unformattable(self, exc: Exception, created: float, levelname: str, name: str) -> str:
        _runtime.current().report_error("logging", exc)
        fallback = {
            "timestamp": _iso_utc(created),
            "service": self.service or "unknown_service",
            "level": levelname,
            "message": "[unformattable log record]",
            "logger": name,
            "correlation_id": None,
        }
        return str(self._encode_std(fallback))

    def _format(self, record: logging.LogRecord) -> str:
        rt = _runtime.CURRENT[0] or _runtime.current()
        msg = record.msg
        message = record.getMessage() if record.args else (msg if type(msg) is str else str(msg))
        fields: dict[str, Any] = dict(FIELDS.get())  # reserved names were filtered out at bind time
        attrs = record.__dict__
        if len(attrs) > _BASE_ATTRS:
            # LogRecord.__init__ sets its own attributes first; extra= fields and anything added
            # later (message, asctime by other formatters) come after them.
            for key, value in islice(attrs.items(), _BASE_ATTRS, None):
                if key not in _SKIP:
                    fields[key] = value
        exc_info = record.exc_info
        if exc_info and exc_info[1] is not None:
            exc = exc_info[1]
            fields.setdefault("error", str(exc))
            fields.setdefault("error_type", exception_type_name(exc))
            fields["stacktrace"] = "".join(traceback.format_exception(exc_info[0], exc, exc_info[2]))
        elif record.exc_text:
            fields["stacktrace"] = record.exc_text
        if record.stack_info:
            fields["stack_info"] = record.stack_info
        return self._render(rt, record.created, record.msecs, record.levelname, record.name, message, fields, record)

    def _render(
        self,
        rt: Any,
        created: float,
        msecs: float,
        levelname: str,
        name: str,
        message: str,
        fields: dict[str, Any],
        record: logging.LogRecord | None,
    ) -> str:
        data: dict[str, Any] = {
            "timestamp": _iso_utc(created, msecs),
            "service": self.service or rt.settings.service_name,
            "level": levelname,
            "message": message,
            "logger": name,
            "correlation_id": CORRELATION_ID.get(),
        }
        span = _current_span()
        ctx = None if span is None else span.get_span_context()
        if ctx is not None and (ctx is _ids_cache[0] or ctx.is_valid):
            _, data["trace_id"], data["span_id"], data["trace_flags"] = _span_ids(ctx)
        elif record is not None:
            ids = _valid_ids(record)
            if ids is not None:
                data["trace_id"], data["span_id"], data["trace_flags"] = ids
        policy = self.redaction or rt.redaction
        if fields:
            data["message"], redacted = policy.redact_message_and_fields(message, fields)
            data.update(redacted)
        else:
            data["message"] = policy.redact_text(message)

        line = self._encode(data)
        if (not line.isascii() or "\x7f" in line) and _UNSAFE.search(line):
            line = _UNSAFE.sub(_escape_unsafe, line)
        return line


_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def _escape_control(match: re.Match[str]) -> str:
    return match.group().encode("unicode_escape").decode("ascii")


class ConsoleFormatter(logging.Formatter):
    """Readable single-line records for development, with trace and bound fields appended.

    Values are redacted with the same policy and control characters are escaped; a traceback
    follows on its own lines.
    """

    def __init__(self) -> None:
        super().__init__()

    def format(self, record: logging.LogRecord) -> str:
        """Render ``record`` for a terminal."""
        policy = _policy()
        extras: dict[str, Any] = {**FIELDS.get()}
        cid = CORRELATION_ID.get()
        if cid:
            extras["correlation_id"] = cid
        ctx = trace.get_current_span().get_span_context()
        if ctx.is_valid:
            extras["trace_id"] = f"{ctx.trace_id:032x}"
        for key, value in record.__dict__.items():
            if key not in _RECORD_ATTRS:
                extras[key] = value
        head = f"{self.formatTime(record)} {record.levelname:<8} {record.name}: {record.getMessage()}"
        if extras:
            head += "  " + " ".join(f"{k}={v}" for k, v in policy.redact_mapping(extras).items())
        line = _CONTROL.sub(_escape_control, policy.redact_text(head))
        if record.exc_info:
            line += "\n" + policy.redact_text(self.formatException(record.exc_info))
        return line


_MARK = "_bakhmach_obs_handler"
_StreamHandler = logging.StreamHandler
_Logger = logging.Logger
_LogRecord = logging.LogRecord
_record_factory = logging.getLogRecordFactory
_root = logging.root


def sole_json_handler(logger: logging.Logger, levelno: int) -> tuple[logging.StreamHandler[Any], JsonFormatter] | None:
    """The handler a record of ``levelno`` on ``logger`` would reach, when it is the only thing that would see it.

    That is: no custom log-record factory is installed, ``logger`` is a plain ``Logger`` with no
    filters and is not disabled, no logger between it and the root has
    handlers or stops propagation, and the root's one handler is a plain
    ``StreamHandler`` with a :class:`JsonFormatter` (exact classes), no filters and a level the
    record passes. The caller has checked ``logger.isEnabledFor(levelno)``. Then writing
    :meth:`JsonFormatter.format_fields` to the handler's stream under its lock is exactly what
    ``logger.handle(record)`` would do, without building the ``LogRecord``; anything else
    (another handler, a filter, the Logstash shipper, a subclass) gets ``None`` and the record.
    """
    if logger.filters or logger.disabled or type(logger) is not _Logger or _record_factory() is not _LogRecord:
        return None  # a record factory or logger class may add to or act on the record
    c = logger
    while c is not _root:
        if c.handlers or not c.propagate:
            return None
        parent = c.parent
        if parent is None:
            return None
        c = parent
    handlers = c.handlers
    if len(handlers) != 1:
        return None
    handler = handlers[0]
    formatter = handler.formatter
    if (
        type(handler) is not _StreamHandler
        or type(formatter) is not JsonFormatter
        or handler.filters
        or levelno < handler.level
    ):
        return None
    return handler, formatter


def install_logging(
    log_format: str, log_level: str, stream: Any = None, extra_handlers: tuple[logging.Handler, ...] = ()
) -> logging.Handler | None:
    """Install the SDK's handlers on the root logger, replacing those installed earlier.

    ``log_format="none"`` removes the SDK's stream handler and leaves the rest of logging alone.
    ``extra_handlers`` (the Logstash shipper) are installed in any format. Handlers the SDK
    replaces are closed.
    """
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, _MARK, False):
            root.removeHandler(handler)
            if type(handler) is logging.StreamHandler:
                handler.close()  # shipping handlers are flushed and closed by the runtime, with a deadline
    for handler in extra_handlers:
        setattr(handler, _MARK, True)
        root.addHandler(handler)
    if log_format == "none":
        if extra_handlers:
            root.setLevel(log_level)
        return None
    handler = logging.StreamHandler(stream if stream is not None else sys.stdout)
    handler.setFormatter(JsonFormatter() if log_format == "json" else ConsoleFormatter())
    setattr(handler, _MARK, True)
    root.addHandler(handler)
    root.setLevel(log_level)
    return handler
