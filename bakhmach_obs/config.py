"""Settings: one frozen object built from ``configure(**kwargs)``, the environment and defaults.

Precedence is keyword argument, then environment variable, then default. The standard
OpenTelemetry variables are honoured where OTel defines one (``OTEL_SERVICE_NAME``,
``OTEL_TRACES_SAMPLER``...); ``BAKHMACH_OBS_*`` covers the rest. Every setting is declared once
in :data:`SETTINGS`, which also generates ``docs/configuration.md``.

Invalid values raise :class:`~bakhmach_obs.errors.ConfigurationError` naming the setting, its
environment variable and the accepted values.

Example:
    >>> from bakhmach_obs.config import load_settings
    >>> s = load_settings({"service_name": "checkout"}, environ={"OTEL_TRACES_SAMPLER_ARG": "0.5"})
    >>> (s.service_name, s.traces_sampler, s.traces_sampler_arg)
    ('checkout', 'parentbased_traceidratio', 0.5)
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any
from urllib.parse import unquote, urlsplit

from .conventions import DEFAULT_CARDINALITY_LIMIT
from .errors import ConfigurationError

__all__ = ["SETTINGS", "SettingSpec", "Settings", "load_settings"]

SAMPLERS = (
    "always_on",
    "always_off",
    "traceidratio",
    "parentbased_always_on",
    "parentbased_always_off",
    "parentbased_traceidratio",
)
EXPORTERS = ("otlp", "console", "memory", "none")
LOG_FORMATS = ("json", "console", "none")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
OVERFLOW_POLICIES = ("drop_oldest", "drop_newest")
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


@dataclass(frozen=True)
class Settings:
    """The resolved configuration. Build it with :func:`load_settings`; never mutate it."""

    service_name: str = "unknown_service"
    service_version: str = "unknown"
    environment: str = "unknown"
    resource_attributes: Mapping[str, str] = field(default_factory=dict)
    disabled: bool = False
    metrics_enabled: bool = True
    tracing_enabled: bool = True
    traces_sampler: str = "parentbased_traceidratio"
    traces_sampler_arg: float = 0.1
    traces_exporter: tuple[str, ...] = ()
    otlp_endpoint: str | None = None
    export_timeout: float = 10.0
    shutdown_timeout: float = 5.0
    max_queue_size: int = 2048
    max_export_batch_size: int = 512
    schedule_delay: float = 5.0
    cardinality_limit: int = DEFAULT_CARDINALITY_LIMIT
    exemplars: bool = True
    runtime_metrics: bool = True
    log_level: str = "INFO"
    log_format: str = "json"
    logstash_address: tuple[str, int] | None = None
    logstash_queue_size: int = 10000
    logstash_overflow: str = "drop_oldest"
    redact_keys: tuple[str, ...] = ()
    slo_file: str | None = None


Parser = Callable[[Any, "SettingSpec"], Any]


@dataclass(frozen=True)
class SettingSpec:
    """How one setting is named, read, documented and validated."""

    name: str
    env: tuple[str, ...]
    default: str
    accepted: str
    description: str
    parse: Parser


# --- parsers ----------------------------------------------------------------------------------


def _env_name(spec: SettingSpec) -> str | None:
    return spec.env[0] if spec.env else None


def _fail(spec: SettingSpec, value: object) -> ConfigurationError:
    return ConfigurationError(spec.name, value, spec.accepted, env=_env_name(spec))


def _nonempty_str(value: Any, spec: SettingSpec) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _fail(spec, value)
    return value.strip()


def _bool(value: Any, spec: SettingSpec) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        low = value.strip().lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
    raise _fail(spec, value)


def _choice(choices: tuple[str, ...], *, upper: bool = False) -> Parser:
    def parse(value: Any, spec: SettingSpec) -> str:
        if isinstance(value, str):
            norm = value.strip().upper() if upper else value.strip().lower()
            if upper and norm == "WARN":
                norm = "WARNING"
            if norm in choices:
                return norm
        raise _fail(spec, value)

    return parse


def _ratio(value: Any, spec: SettingSpec) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise _fail(spec, value) from None
    if isinstance(value, bool) or not 0.0 <= number <= 1.0:
        raise _fail(spec, value)
    return number


def _positive(kind: type, *, scale: float = 1.0) -> Parser:
    def parse(value: Any, spec: SettingSpec) -> Any:
        try:
            number = kind(value)
        except (TypeError, ValueError):
            raise _fail(spec, value) from None
        if isinstance(value, bool) or number <= 0:
            raise _fail(spec, value)
        return number * scale if scale != 1.0 else number

    return parse


def _exporters(value: Any, spec: SettingSpec) -> tuple[str, ...]:
    items = value.split(",") if isinstance(value, str) else value
    try:
        names = tuple(dict.fromkeys(str(i).strip().lower() for i in items if str(i).strip()))
    except TypeError:
        raise _fail(spec, value) from None
    if not names or any(n not in EXPORTERS for n in names) or ("none" in names and len(names) > 1):
        raise _fail(spec, value)
    return () if names == ("none",) else names


def _endpoint(value: Any, spec: SettingSpec) -> str:
    if not isinstance(value, str):
        raise _fail(spec, value)
    try:
        parts = urlsplit(value.strip())
        port = parts.port  # raises ValueError on a malformed port
    except ValueError:
        raise _fail(spec, value) from None
    if parts.scheme not in ("http", "https") or not parts.hostname or port == 0:
        raise _fail(spec, value)
    return value.strip()


def _address(value: Any, spec: SettingSpec) -> tuple[str, int]:
    if isinstance(value, tuple) and len(value) == 2:
        value = f"{value[0]}:{value[1]}"
    if not isinstance(value, str):
        raise _fail(spec, value)
    host, sep, port = value.strip().rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise _fail(spec, value)
    return host, int(port)


def _names(value: Any, spec: SettingSpec) -> tuple[str, ...]:
    items = value.split(",") if isinstance(value, str) else value
    try:
        names = tuple(dict.fromkeys(str(i).strip().lower() for i in items if str(i).strip()))
    except TypeError:
        raise _fail(spec, value) from None
    return names


def _resource(value: Any, spec: SettingSpec) -> dict[str, str]:
    if isinstance(value, Mapping):
        return {str(k): str(v) for k, v in value.items()}
    if not isinstance(value, str):
        raise _fail(spec, value)
    result: dict[str, str] = {}
    for item in value.split(","):
        if not item.strip():
            continue
        key, sep, val = item.partition("=")
        if not sep or not key.strip():
            raise _fail(spec, value)
        result[unquote(key.strip())] = unquote(val.strip())
    return result


SETTINGS: tuple[SettingSpec, ...] = (
    SettingSpec("service_name", ("OTEL_SERVICE_NAME",), "`unknown_service`", "a non-empty string",
                "Logical service name: `service.name`, the `service` log field and a build-info label. "
                "Also read from `service.name` in `OTEL_RESOURCE_ATTRIBUTES`.", _nonempty_str),
    SettingSpec("service_version", ("BAKHMACH_OBS_SERVICE_VERSION",), "`unknown`", "a non-empty string",
                "Version of the running build (`service.version`). Also read from `OTEL_RESOURCE_ATTRIBUTES`.",
                _nonempty_str),
    SettingSpec("environment", ("BAKHMACH_OBS_ENVIRONMENT",), "`unknown`", "a non-empty string",
                "Deployment environment (`deployment.environment.name`). Also read from "
                "`OTEL_RESOURCE_ATTRIBUTES`.", _nonempty_str),
    SettingSpec("resource_attributes", ("OTEL_RESOURCE_ATTRIBUTES",), "empty",
                "a mapping, or `key=value` pairs separated by commas (values URL-encoded)",
                "Extra OpenTelemetry resource attributes for every span.", _resource),
    SettingSpec("disabled", ("BAKHMACH_OBS_DISABLED",), "`false`", "true/false, 1/0, yes/no, on/off",
                "Turn every signal off: instrumented code runs as if undecorated.", _bool),
    SettingSpec("metrics_enabled", ("BAKHMACH_OBS_METRICS_ENABLED",), "`true`", "true/false, 1/0, yes/no, on/off",
                "Record Prometheus metrics.", _bool),
    SettingSpec("tracing_enabled", ("BAKHMACH_OBS_TRACING_ENABLED", "OTEL_SDK_DISABLED"), "`true`",
                "true/false, 1/0, yes/no, on/off",
                "Create spans. `OTEL_SDK_DISABLED=true` also turns tracing off.", _bool),
    SettingSpec("traces_sampler", ("OTEL_TRACES_SAMPLER",), "`parentbased_traceidratio`", ", ".join(SAMPLERS),
                "Head sampler, as the OpenTelemetry specification names them.", _choice(SAMPLERS)),
    SettingSpec("traces_sampler_arg", ("OTEL_TRACES_SAMPLER_ARG",), "`0.1`", "a number from 0 to 1",
                "Sampling ratio for the `traceidratio` samplers (the seed's 10 %).", _ratio),
    SettingSpec("traces_exporter", ("OTEL_TRACES_EXPORTER",), "`otlp` when an endpoint is set, else `none`",
                "otlp, console, memory, none (comma-separated for several)",
                "Where finished spans go. `memory` keeps them in process (demo, tests).", _exporters),
    SettingSpec("otlp_endpoint", ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"), "unset",
                "an http:// or https:// URL with a host",
                "OTLP/HTTP traces endpoint. The signal-specific variable is used as is; the generic one "
                "gets `/v1/traces` appended, as the OTel specification says.", _endpoint),
    SettingSpec("export_timeout", ("BAKHMACH_OBS_EXPORT_TIMEOUT",), "`10`", "a positive number of seconds",
                "Deadline of one export request, retries included.", _positive(float)),
    SettingSpec("shutdown_timeout", ("BAKHMACH_OBS_SHUTDOWN_TIMEOUT",), "`5`", "a positive number of seconds",
                "`shutdown()` returns within this, even when the collector hangs.", _positive(float)),
    SettingSpec("max_queue_size", ("OTEL_BSP_MAX_QUEUE_SIZE",), "`2048`", "a positive integer",
                "Finished spans waiting for export; past it spans are dropped and counted.", _positive(int)),
    SettingSpec("max_export_batch_size", ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE",), "`512`", "a positive integer",
                "Spans per export request.", _positive(int)),
    SettingSpec("schedule_delay", ("OTEL_BSP_SCHEDULE_DELAY",), "`5000` ms (`5` s as a keyword)",
                "a positive number (milliseconds in the variable, seconds as a keyword)",
                "Longest wait between exports.", _positive(float)),
    SettingSpec("cardinality_limit", ("BAKHMACH_OBS_CARDINALITY_LIMIT",), "`2000`", "a positive integer",
                "Series per metric before new label sets go to the `otel_metric_overflow` series.",
                _positive(int)),
    SettingSpec("exemplars", ("BAKHMACH_OBS_EXEMPLARS",), "`true`", "true/false, 1/0, yes/no, on/off",
                "Attach `trace_id`/`span_id` exemplars to duration histograms for sampled spans "
                "(served in OpenMetrics; off in multiprocess mode).", _bool),
    SettingSpec("runtime_metrics", ("BAKHMACH_OBS_RUNTIME_METRICS",), "`true`", "true/false, 1/0, yes/no, on/off",
                "Collect process runtime metrics at scrape time: disk and network I/O, connections, threads, "
                "GC pauses (and event-loop lag once `bakhmach_obs.runtime_metrics.watch_loop()` runs).", _bool),
    SettingSpec("log_level", ("BAKHMACH_OBS_LOG_LEVEL",), "`INFO`", ", ".join(LOG_LEVELS) + " (WARN = WARNING)",
                "Root logger level when the SDK installs its handler.", _choice(LOG_LEVELS, upper=True)),
    SettingSpec("log_format", ("BAKHMACH_OBS_LOG_FORMAT",), "`json`", ", ".join(LOG_FORMATS),
                "`json`: one JSON object per line on stdout; `console`: readable lines; `none`: leave "
                "logging alone.", _choice(LOG_FORMATS)),
    SettingSpec("logstash_address", ("BAKHMACH_OBS_LOGSTASH_ADDRESS",), "unset (no shipping)",
                "`host:port` (IPv6 as `[::1]:5000`)",
                "Also ship every record as one JSON line over TCP to Logstash's `tcp` input with the "
                "`json_lines` codec (the seed's `logstash:5000`). Never blocks the application.", _address),
    SettingSpec("logstash_queue_size", ("BAKHMACH_OBS_LOGSTASH_QUEUE_SIZE",), "`10000`", "a positive integer",
                "Records held in memory while Logstash is slow or down.", _positive(int)),
    SettingSpec("logstash_overflow", ("BAKHMACH_OBS_LOGSTASH_OVERFLOW",), "`drop_oldest`",
                ", ".join(OVERFLOW_POLICIES),
                "Which record to discard when the shipping queue is full (counted either way).",
                _choice(OVERFLOW_POLICIES)),
    SettingSpec("redact_keys", ("BAKHMACH_OBS_REDACT_KEYS",), "none",
                "key names, comma-separated (case-insensitive)",
                "Extra keys whose values are replaced by `[REDACTED]` in logs and span attributes, on top of "
                "the built-in denylist. Pass `redaction=RedactionPolicy(...)` to `configure()` to replace the "
                "policy itself.", _names),
    SettingSpec("slo_file", ("BAKHMACH_OBS_SLO_FILE",), "unset", "the path of an SLO file (docs/slo.md)",
                "SLOs of this service. A latency SLO's threshold becomes a bucket boundary of the duration "
                "histogram it is measured on, so the generated rules have an exact `le`. Read and validated "
                "at `configure()` (`slos=[SLO(...)]` does the same from code).", _nonempty_str),
)  # fmt: skip

_SPECS = {s.name: s for s in SETTINGS}
_FIELDS = {f.name for f in fields(Settings)}
assert set(_SPECS) == _FIELDS, "every Settings field must be declared in SETTINGS"


def _from_env(spec: SettingSpec, environ: Mapping[str, str]) -> tuple[bool, Any]:
    """Return (found, value) for a setting from the environment, applying per-variable quirks."""
    for env in spec.env:
        raw = environ.get(env)
        if raw is None or raw.strip() == "":
            continue
        if env == "OTEL_SDK_DISABLED":
            disabled = _bool(raw, SettingSpec(spec.name, (env,), "", spec.accepted, "", _bool))
            return True, not disabled
        if env == "OTEL_EXPORTER_OTLP_ENDPOINT":
            return True, raw.strip().rstrip("/") + "/v1/traces"
        if env == "OTEL_BSP_SCHEDULE_DELAY":
            return True, _positive(float)(raw, spec) / 1000.0
        return True, spec.parse(raw, SettingSpec(spec.name, (env,), spec.default, spec.accepted, "", spec.parse))
    return False, None


def load_settings(kwargs: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Resolve settings: keyword argument, then environment variable, then default.

    Args:
        kwargs: keyword arguments given to ``configure()``; ``None`` values count as not given.
        environ: the environment (default: ``os.environ``).

    Raises:
        ConfigurationError: for an unknown setting or an invalid value.
    """
    kwargs = {k: v for k, v in (kwargs or {}).items() if v is not None}
    environ = os.environ if environ is None else environ
    unknown = sorted(set(kwargs) - _FIELDS)
    if unknown:
        raise ConfigurationError(unknown[0], kwargs[unknown[0]], sorted(_FIELDS))

    values: dict[str, Any] = {}
    for spec in SETTINGS:
        if spec.name in kwargs:
            values[spec.name] = spec.parse(kwargs[spec.name], spec)
            continue
        found, value = _from_env(spec, environ)
        if found:
            values[spec.name] = value

    resource = dict(values.get("resource_attributes", {}))
    for name, key in (
        ("service_name", "service.name"),
        ("service_version", "service.version"),
        ("environment", "deployment.environment.name"),
        ("environment", "deployment.environment"),
    ):
        if name not in values and resource.get(key):
            values[name] = _SPECS[name].parse(resource[key], _SPECS[name])

    if "traces_exporter" not in values:
        values["traces_exporter"] = ("otlp",) if values.get("otlp_endpoint") else ()
    elif "otlp" in values["traces_exporter"] and not values.get("otlp_endpoint"):
        values["otlp_endpoint"] = "http://localhost:4318/v1/traces"  # the OTel default
    return Settings(**values)
