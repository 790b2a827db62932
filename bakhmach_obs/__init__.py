"""bakhmach_obs: metrics, traces and logs for Python backends under one naming convention.

Example:
    >>> import bakhmach_obs as obs
    >>> settings = obs.configure(service_name="backend", log_format="none")
    >>> @obs.instrument
    ... def charge(amount: int) -> int:
    ...     return amount
    >>> charge(3)
    3
    >>> obs.shutdown()
    True
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import Any

from . import asgi, conventions, wsgi
from ._runtime import shutdown
from .cache import cache_lookup, instrument_cache
from .config import Settings
from .context import bind, bound_fields, correlation_id, correlation_scope, is_suppressed, log_context, suppress
from .errors import ConfigurationError
from .exposition import metrics_asgi_app, metrics_wsgi_app, serve_metrics
from .instrument import instrument, operation, span

try:
    __version__ = version("bakhmach-obs")
except PackageNotFoundError:  # pragma: no cover - running from a checkout that was never installed
    __version__ = "0+unknown"

__all__ = [
    "ConfigurationError",
    "Settings",
    "__version__",
    "asgi",
    "bind",
    "bound_fields",
    "cache_lookup",
    "configure",
    "conventions",
    "correlation_id",
    "correlation_scope",
    "get_settings",
    "instrument",
    "instrument_cache",
    "is_suppressed",
    "log_context",
    "metrics_asgi_app",
    "metrics_wsgi_app",
    "operation",
    "serve_metrics",
    "shutdown",
    "span",
    "suppress",
    "wsgi",
]


def configure(**settings: Any) -> Settings:
    """Set up metrics, traces and logs in one call; safe to call again.

    Keyword arguments win over environment variables, which win over defaults; every setting,
    its variable, default and accepted values are listed in ``docs/configuration.md``. Besides
    the settings it accepts ``registry=`` (a prometheus_client ``CollectorRegistry``; default the
    global one), ``span_processors=`` (extra OpenTelemetry span processors), ``log_stream=``
    (where the log handler writes; default stdout), ``redaction=`` (a
    :class:`~bakhmach_obs.redaction.RedactionPolicy`) and ``slos=`` (:class:`bakhmach_obs.slo.SLO`
    objects; with the ``slo_file`` setting, latency thresholds become histogram bucket boundaries).

    Calling it again replaces the previous setup: the old tracer provider is flushed and shut down
    (within ``shutdown_timeout``), functions decorated earlier follow the new settings, and metric
    families are reused rather than registered twice.

    Returns:
        The resolved :class:`Settings`.

    Raises:
        ConfigurationError: a setting is unknown or invalid; the message names it, its
            environment variable and the accepted values.

    Example:
        >>> import bakhmach_obs
        >>> settings = bakhmach_obs.configure(service_name="backend", traces_sampler_arg=0.25, log_format="none")
        >>> settings.traces_sampler_arg
        0.25
    """
    from ._runtime import configure as _configure

    return _configure(**settings)


def get_settings() -> Settings:
    """The settings in force (environment defaults until ``configure()`` is called)."""
    from ._runtime import current

    return current().settings
