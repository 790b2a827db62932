"""JSON log records with the seed's field names, trace correlation and bound context.

:class:`JsonFormatter` (on python-json-logger) writes one JSON object per line with the fields
named in :data:`bakhmach_obs.conventions.LOG_FIELDS`: ``timestamp`` (RFC 3339 UTC, milliseconds,
``Z``), ``service``, ``level``, ``message``, ``logger``, ``correlation_id``, ``trace_id`` and
``span_id`` (lowercase hex, only inside a span), bound fields and ``extra=`` fields. A record's
extras can never overwrite those reserved names. Exceptions become ``error``, ``error_type`` and a
``stacktrace`` string (never local variables).

Example:
    >>> import logging
    >>> from bakhmach_obs.logs import JsonFormatter
    >>> record = logging.LogRecord("shop", logging.INFO, __file__, 1, "paid %s", ("order-1",), None)
    >>> line = JsonFormatter(service="backend").format(record)
    >>> import json; data = json.loads(line)
    >>> (data["service"], data["level"], data["message"], data["logger"])
    ('backend', 'INFO', 'paid order-1', 'shop')
"""

from __future__ import annotations

import logging
import sys
import time
import traceback
from typing import Any

from opentelemetry import trace
from pythonjsonlogger.json import JsonFormatter as _PJLJsonFormatter

from .context import CORRELATION_ID, FIELDS

__all__ = ["ConsoleFormatter", "JsonFormatter", "install_logging"]

_RESERVED = frozenset(("timestamp", "service", "level", "message", "logger", "correlation_id", "trace_id", "span_id"))
#: LogRecord attributes that are plumbing, not user fields.
_RECORD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


def _iso_utc(created: float) -> str:
    seconds = int(created)
    millis = int((created - seconds) * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{millis:03d}Z"


def _trace_ids() -> tuple[str | None, str | None]:
    ctx = trace.get_current_span().get_span_context()
    if not ctx.is_valid:
        return None, None
    return f"{ctx.trace_id:032x}", f"{ctx.span_id:016x}"


def exception_type_name(exc: BaseException) -> str:
    """The exception's class name, module-qualified unless it is a builtin."""
    cls = type(exc)
    module = cls.__module__
    return cls.__qualname__ if module in ("builtins", "__main__") else f"{module}.{cls.__qualname__}"


class JsonFormatter(_PJLJsonFormatter):
    """One JSON object per line with the SDK's field names.

    Args:
        service: value of the ``service`` field (default: the configured service name).
    """

    def __init__(self, service: str | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("json_ensure_ascii", False)
        super().__init__(**kwargs)
        self.service = service

    def _service(self) -> str:
        if self.service is not None:
            return self.service
        from ._runtime import current

        return current().settings.service_name

    def format(self, record: logging.LogRecord) -> str:
        """Render ``record`` as one line of JSON."""
        trace_id, span_id = _trace_ids()
        data: dict[str, Any] = {
            "timestamp": _iso_utc(record.created),
            "service": self._service(),
            "level": record.levelname,
            "message": record.getMessage(),
            "logger": record.name,
            "correlation_id": CORRELATION_ID.get(),
        }
        if trace_id is not None:
            data["trace_id"] = trace_id
            data["span_id"] = span_id
        for key, value in FIELDS.get().items():
            if key not in _RESERVED:
                data[key] = value
        for key, value in record.__dict__.items():
            if key not in _RECORD_ATTRS and key not in _RESERVED:
                data[key] = value
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            data.setdefault("error", str(exc))
            data.setdefault("error_type", exception_type_name(exc))
            data["stacktrace"] = "".join(traceback.format_exception(*record.exc_info))
        return str(self.jsonify_log_record(data))


class ConsoleFormatter(logging.Formatter):
    """Readable single-line records for development, with trace and bound fields appended."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-8s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        """Render ``record`` for a terminal."""
        line = super().format(record)
        extras = {**FIELDS.get()}
        cid = CORRELATION_ID.get()
        if cid:
            extras["correlation_id"] = cid
        trace_id, _ = _trace_ids()
        if trace_id:
            extras["trace_id"] = trace_id
        for key, value in record.__dict__.items():
            if key not in _RECORD_ATTRS:
                extras[key] = value
        if extras:
            line += "  " + " ".join(f"{k}={v}" for k, v in extras.items())
        return line


_MARK = "_bakhmach_obs_handler"


def install_logging(log_format: str, log_level: str, stream: Any = None) -> logging.Handler | None:
    """Install the SDK's handler on the root logger, replacing one installed earlier.

    ``log_format="none"`` removes the SDK's handler and leaves logging alone.
    """
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, _MARK, False):
            root.removeHandler(handler)
    if log_format == "none":
        return None
    handler = logging.StreamHandler(stream if stream is not None else sys.stdout)
    handler.setFormatter(JsonFormatter() if log_format == "json" else ConsoleFormatter())
    setattr(handler, _MARK, True)
    root.addHandler(handler)
    root.setLevel(log_level)
    return handler
