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

import enum
import logging
import math
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
#: Dataclasses go through ``default`` (not orjson's own encoding) so that they are redacted.
_ORJSON_OPTIONS = (
    getattr(_orjson, "OPT_NON_STR_KEYS", 0)
    | getattr(_orjson, "OPT_SERIALIZE_NUMPY", 0)
    | getattr(_orjson, "OPT_PASSTHROUGH_DATACLASS", 0)
)
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
    "exception_text",
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
_HEX2 = re.compile(r"[0-9a-f]{2}")
#: Characters json.dumps(ensure_ascii=False) leaves raw but that break "one record, one line"
#: for some readers: DEL, C1 controls and the Unicode line/paragraph separators.
#: Lone surrogates (``os.fsdecode`` of a file name that is not UTF-8) are escaped too: a UTF-8
#: stream cannot write them, and the whole record would be lost.
_UNSAFE = re.compile("[\x7f-\x9f\u2028\u2029\ud800-\udfff]")


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


_LEVELS = frozenset(("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"))


def _standard_level(levelno: Any) -> str:
    """The standard level name at or below ``levelno`` (the schema knows only those five)."""
    n = levelno if isinstance(levelno, int) else logging.INFO
    return "CRITICAL" if n >= 50 else "ERROR" if n >= 40 else "WARNING" if n >= 30 else "INFO" if n >= 20 else "DEBUG"


def _key_text(key: Any) -> str:
    """A non-str field name as JSON will write it (an Enum by its value), for the reserved-name check."""
    if isinstance(key, enum.Enum):
        key = key.value
    try:
        return key if isinstance(key, str) else str(key)
    except Exception:  # noqa: BLE001 - a key whose str() raises
        return f"<{type(key).__qualname__}>"


def exception_text(exc: BaseException) -> str:
    """``str(exc)``, or its type's name when its ``__str__`` raises."""
    try:
        return str(exc)
    except Exception:  # noqa: BLE001 - an exception whose __str__ raises: its type says enough
        return exception_type_name(exc)


#: Fields the record schema gives a type (besides the reserved ones), and the types it allows.
_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "user_id": (str, int),
    "action": (str,),
    "error": (str,),
    "error_type": (str,),
    "error_code": (str, int),
    "stacktrace": (str,),
    "duration_ms": (int, float),
}
_TYPED = frozenset(_FIELD_TYPES)
_INF = math.inf
_SAFE_CID = re.compile(r"[\x20-\x7e]{1,256}")


def _conform(fields: dict[str, Any], typed: frozenset[str]) -> None:
    """Give the schema's typed fields (``typed``, those present) their type.

    Text fields stay text (any other value is written as its text, redacted like any text),
    ``duration_ms`` is a finite number >= 0, and ``None`` means unknown: the field is dropped, as
    is a ``duration_ms`` that is not such a number. One record never breaks a log index's field
    mapping.
    """
    for key in typed:
        value = fields[key]
        if type(value) in _FIELD_TYPES[key] and (key != "duration_ms" or 0 <= value < _INF):
            continue
        _fix(fields, key, value)
    if "error_type" in typed and "error" not in fields:
        fields["error"] = fields.get("error_type") or "error"


def _fix(fields: dict[str, Any], key: str, value: Any) -> None:
    if value is None:
        del fields[key]
    elif key == "duration_ms":
        number = float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else -1.0
        if 0 <= number < _INF:
            fields[key] = number
        else:
            del fields[key]
    elif isinstance(value, BaseException):
        fields[key] = exception_text(value)
    else:
        try:
            fields[key] = _text(value, _FIELD_TYPES[key])
        except Exception:  # noqa: BLE001 - unrenderable: dropped
            del fields[key]


def _text(value: Any, kinds: tuple[type, ...]) -> Any:
    if int in kinds and isinstance(value, int) and not isinstance(value, bool):
        return int(value)
    return str.__str__(value) if isinstance(value, str) else str(value)


def _finite(value: Any) -> Any:
    """``value`` with every NaN and infinity replaced by ``None`` (what orjson writes for them)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


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
        return tid, sid, flags if isinstance(flags, str) and _HEX2.fullmatch(flags) else "01"
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
        self._render_default = JsonEncoder().default  # python-json-logger's rendering of other types
        encoder = JsonEncoder(ensure_ascii=False, separators=(", ", ": "), allow_nan=False, default=self._default)
        self._encode_std = encoder.encode

    def _default(self, value: Any) -> Any:
        """A value JSON has no type for, as the encoder will write it, then redacted.

        Redaction runs before encoding and leaves objects it does not know alone; what the encoder
        makes of them (a dataclass's fields, a pydantic model's dump, an exception's or any
        object's text) is redacted here, so that their fields and text get the same policy.
        """
        try:
            dump = getattr(value, "model_dump", None)  # pydantic v2
            rendered = dump() if callable(dump) and not isinstance(value, type) else self._render_default(value)
        except Exception:  # noqa: BLE001 - an object that cannot be rendered is named, not shown
            rendered = f"<unrenderable {type(value).__qualname__}>"
        return (self.redaction or _policy()).redact(rendered)

    def _encode(self, data: dict[str, Any]) -> str:
        if _orjson is not None:
            try:
                return _orjson.dumps(data, default=self._default, option=_ORJSON_OPTIONS).decode()
            except (TypeError, ValueError):  # e.g. an int beyond 64 bits: the standard encoder copes
                pass
        try:
            return str(self._encode_std(data))
        except ValueError:  # NaN or an infinity, which JSON has no literal for: null, as orjson writes
            return str(self._encode_std(_finite(data)))

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
        rt = _runtime.current()
        rt.report_error("logging", exc)
        cid = CORRELATION_ID.get()
        fallback = {
            "timestamp": _iso_utc(created),
            "service": self.service or rt.settings.service_name or "unknown_service",
            "level": levelname if levelname in _LEVELS else "ERROR",
            "message": "[unformattable log record]",
            "logger": name if isinstance(name, str) else "unknown",
            "correlation_id": cid if isinstance(cid, str) and _SAFE_CID.fullmatch(cid) else None,
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
                if type(key) is not str:
                    key = _key_text(key)  # an Enum key would otherwise be written as its value
                if key not in _SKIP:
                    fields[key] = value
        exc_info = record.exc_info
        if exc_info and exc_info[1] is not None:
            exc = exc_info[1]
            if fields.get("error") is None:
                fields["error"] = exception_text(exc)
            if fields.get("error_type") is None:
                fields["error_type"] = exception_type_name(exc)
            fields["stacktrace"] = "".join(traceback.format_exception(exc_info[0], exc, exc_info[2]))
        elif record.exc_text:
            fields["stacktrace"] = record.exc_text
        if record.stack_info:
            fields["stack_info"] = record.stack_info
        level = record.levelname
        if level not in _LEVELS:  # a custom level: the standard name at or below it
            level = _standard_level(record.levelno)
        return self._render(rt, record.created, record.msecs, level, record.name, message, fields, record)

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
            typed = _TYPED.intersection(fields)
            if typed:
                _conform(fields, typed)
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
