"""The one naming convention: every metric, label, span and log-field name the SDK uses.

This module is the single source of truth. Instrumentation, adapters, the rule and dashboard
generators and ``docs/conventions.md`` all read from here; nothing else spells a telemetry name.

The convention is OpenTelemetry's semantic conventions rendered as Prometheus names the way the
OTel → Prometheus compatibility specification does it: dots become underscores, the unit becomes
a suffix (``s`` → ``_seconds``, ``By`` → ``_bytes``), monotonic sums end in ``_total``. Where OTel
has no convention (function calls, the SDK's own health) one is defined here in the same style.

Example:
    >>> from bakhmach_obs import conventions as c
    >>> c.FUNCTION_CALLS.name
    'function_calls_total'
    >>> c.FUNCTION_CALLS.labels
    ('function', 'module', 'result')
    >>> c.FUNCTION_CALLS_DURATION.otel_name
    'function.calls.duration'
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = [
    "ATTR_CACHE_KEY_HASH",
    "ATTR_CACHE_NAME",
    "ATTR_CACHE_OPERATION",
    "ATTR_CACHE_RESULT",
    "ATTR_CLIENT_ADDRESS",
    "ATTR_CODE_FUNCTION_NAME",
    "ATTR_CODE_NAMESPACE",
    "ATTR_CORRELATION_ID",
    "ATTR_DB_BATCH_SIZE",
    "ATTR_DB_COLLECTION",
    "ATTR_DB_NAMESPACE",
    "ATTR_DB_OPERATION",
    "ATTR_DB_QUERY_TEXT",
    "ATTR_DB_STATUS_CODE",
    "ATTR_DB_STORED_PROCEDURE",
    "ATTR_DB_SYSTEM",
    "ATTR_ERROR_TYPE",
    "ATTR_HTTP_METHOD",
    "ATTR_HTTP_METHOD_ORIGINAL",
    "ATTR_HTTP_ROUTE",
    "ATTR_HTTP_STATUS",
    "ATTR_MESSAGING_BODY_SIZE",
    "ATTR_MESSAGING_DESTINATION",
    "ATTR_MESSAGING_MESSAGE_ID",
    "ATTR_MESSAGING_OPERATION",
    "ATTR_MESSAGING_OPERATION_TYPE",
    "ATTR_MESSAGING_SYSTEM",
    "ATTR_PROTOCOL_VERSION",
    "ATTR_REQUEST_BODY_SIZE",
    "ATTR_RESPONSE_BODY_SIZE",
    "ATTR_SERVER_ADDRESS",
    "ATTR_SERVER_PORT",
    "ATTR_URL_FULL",
    "ATTR_URL_PATH",
    "ATTR_URL_QUERY",
    "ATTR_URL_SCHEME",
    "ATTR_USER_AGENT",
    "BUILD_INFO",
    "CACHE_DURATION",
    "CACHE_DURATION_BUCKETS",
    "CACHE_OPERATIONS",
    "CACHE_RESULTS",
    "DB_CLIENT_DURATION",
    "DB_CONNECTION_COUNT",
    "DB_CONNECTION_MAX",
    "DB_CONNECTION_TIMEOUTS",
    "DB_CONNECTION_WAIT",
    "DB_DURATION_BUCKETS",
    "DEFAULT_CARDINALITY_LIMIT",
    "DROPPED_SPANS",
    "DURATION_BUCKETS",
    "FUNCTION_CALLS",
    "FUNCTION_CALLS_CONCURRENT",
    "FUNCTION_CALLS_DURATION",
    "HTTP_CLIENT_DURATION",
    "HTTP_KNOWN_METHODS",
    "HTTP_METHOD_OTHER",
    "HTTP_ROUTE_UNMATCHED",
    "HTTP_SERVER_ACTIVE",
    "HTTP_SERVER_DURATION",
    "HTTP_SERVER_REQUEST_SIZE",
    "HTTP_SERVER_RESPONSE_SIZE",
    "HTTP_SERVER_STREAM_DURATION",
    "LABEL_CACHE_NAME",
    "LABEL_CACHE_OPERATION",
    "LABEL_CACHE_RESULT",
    "LABEL_COMPONENT",
    "LABEL_DB_COLLECTION",
    "LABEL_DB_NAMESPACE",
    "LABEL_DB_OPERATION",
    "LABEL_DB_SYSTEM",
    "LABEL_DEPLOYMENT_ENVIRONMENT",
    "LABEL_ERROR_TYPE",
    "LABEL_FUNCTION",
    "LABEL_HTTP_METHOD",
    "LABEL_HTTP_ROUTE",
    "LABEL_HTTP_STATUS",
    "LABEL_MESSAGING_DESTINATION",
    "LABEL_MESSAGING_OPERATION",
    "LABEL_MESSAGING_SYSTEM",
    "LABEL_METRIC",
    "LABEL_MODULE",
    "LABEL_POOL_NAME",
    "LABEL_POOL_STATE",
    "LABEL_REASON",
    "LABEL_RESULT",
    "LABEL_SDK_VERSION",
    "LABEL_SERVER_ADDRESS",
    "LABEL_SERVICE_NAME",
    "LABEL_SERVICE_VERSION",
    "LOG_DROP_REASONS",
    "LOG_FIELDS",
    "LOG_RECORDS_DROPPED",
    "LogField",
    "MESSAGING_CONSUMED",
    "MESSAGING_OPERATION_DURATION",
    "MESSAGING_PROCESS_DURATION",
    "MESSAGING_QUEUE_DEPTH",
    "MESSAGING_QUEUE_LAG",
    "MESSAGING_SENT",
    "METRICS",
    "METRIC_OVERFLOW",
    "MetricKind",
    "MetricSpec",
    "OVERFLOW_LABEL",
    "POOL_STATES",
    "RESERVED_LOG_FIELDS",
    "RESULT_ERROR",
    "RESULT_OK",
    "SIZE_BUCKETS",
    "SPAN_ATTRIBUTES",
    "SpanAttribute",
    "TELEMETRY_COMPONENTS",
    "TELEMETRY_ERRORS",
    "metric",
]

MetricKind = Literal["counter", "histogram", "gauge"]


@dataclass(frozen=True)
class MetricSpec:
    """One metric family as it appears in the Prometheus exposition.

    Attributes:
        name: the exposed family name, e.g. ``function_calls_total``. Counters end in ``_total``.
        kind: ``counter``, ``histogram`` or ``gauge``.
        unit: the base unit suffix (``seconds``, ``bytes``) or ``""`` for a plain count.
        help: the HELP text.
        labels: label keys, in the order the SDK binds them.
        buckets: upper bounds for histograms (``+Inf`` is implied).
        otel_name: the OpenTelemetry instrument name this renders, or ``None``.
        multiprocess_mode: how a gauge aggregates across pre-fork workers.
    """

    name: str
    kind: MetricKind
    unit: str
    help: str
    labels: tuple[str, ...]
    buckets: tuple[float, ...] | None = None
    otel_name: str | None = None
    multiprocess_mode: str = "livesum"

    @property
    def family(self) -> str:
        """The name prometheus_client expects (counters without their ``_total`` suffix)."""
        if self.kind == "counter" and self.name.endswith("_total"):
            return self.name[: -len("_total")]
        return self.name


@dataclass(frozen=True)
class SpanAttribute:
    """A span attribute key and what it carries."""

    key: str
    description: str


@dataclass(frozen=True)
class LogField:
    """A field of the JSON log record."""

    name: str
    description: str


# --- label keys -----------------------------------------------------------------------------
LABEL_FUNCTION = "function"
LABEL_MODULE = "module"
LABEL_RESULT = "result"
LABEL_SERVICE_NAME = "service_name"
LABEL_SERVICE_VERSION = "service_version"
LABEL_DEPLOYMENT_ENVIRONMENT = "deployment_environment"
LABEL_SDK_VERSION = "sdk_version"
LABEL_COMPONENT = "component"
LABEL_METRIC = "metric"
LABEL_REASON = "reason"
LABEL_HTTP_METHOD = "http_request_method"
LABEL_HTTP_ROUTE = "http_route"
LABEL_HTTP_STATUS = "http_response_status_code"
LABEL_SERVER_ADDRESS = "server_address"
LABEL_DB_SYSTEM = "db_system_name"
LABEL_DB_OPERATION = "db_operation_name"
LABEL_DB_COLLECTION = "db_collection_name"
LABEL_DB_NAMESPACE = "db_namespace"
LABEL_ERROR_TYPE = "error_type"
LABEL_POOL_NAME = "pool_name"
LABEL_POOL_STATE = "state"
LABEL_CACHE_NAME = "cache_name"
LABEL_CACHE_OPERATION = "cache_operation"
LABEL_CACHE_RESULT = "cache_result"
LABEL_MESSAGING_SYSTEM = "messaging_system"
LABEL_MESSAGING_OPERATION = "messaging_operation_name"
LABEL_MESSAGING_DESTINATION = "messaging_destination_name"

#: ``cache_result`` values: a lookup hit or missed; a write/delete succeeded or failed.
CACHE_RESULTS = ("hit", "miss", "ok", "error")
#: ``state`` values of ``db_client_connection_count``.
POOL_STATES = ("idle", "used")

#: ``http_request_method`` for methods outside the known set (OTel's rule, keeps cardinality bounded).
HTTP_METHOD_OTHER = "_OTHER"
#: The methods kept as they are (RFC 9110 plus PATCH); anything else becomes ``_OTHER``.
HTTP_KNOWN_METHODS = frozenset(("CONNECT", "DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT", "TRACE"))
#: ``http_route`` for requests no route matched (404 scans collapse into this one value).
HTTP_ROUTE_UNMATCHED = "__unmatched__"

#: Values of the ``result`` label.
RESULT_OK = "ok"
RESULT_ERROR = "error"

#: Label put on the single series that collects label sets past the cardinality limit
#: (OpenTelemetry's ``otel.metric.overflow`` attribute, rendered for Prometheus).
OVERFLOW_LABEL = "otel_metric_overflow"

#: Series per metric family before new label sets go to the overflow series (OTel's default).
DEFAULT_CARDINALITY_LIMIT = 2000

#: Values of ``reason`` on ``bakhmach_obs_log_records_dropped_total``: the shipping queue was
#: full, the record could not be encoded, or ``shutdown()``'s deadline passed with it unsent.
LOG_DROP_REASONS = ("queue_full", "encoding", "shutdown")

#: Components named by ``bakhmach_obs_telemetry_errors_total{component}``.
TELEMETRY_COMPONENTS = ("database", "exporter", "instrument", "logging", "messaging", "metrics", "tracing")

# --- bucket presets -------------------------------------------------------------------------
#: OpenTelemetry's advisory buckets for request durations, in seconds.
DURATION_BUCKETS: tuple[float, ...] = (
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
)  # fmt: skip

#: OpenTelemetry's advisory buckets for database operation durations, in seconds.
DB_DURATION_BUCKETS: tuple[float, ...] = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0)
#: Cache operations are sub-millisecond to a few milliseconds.
CACHE_DURATION_BUCKETS: tuple[float, ...] = (0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0)

#: Body sizes in bytes (powers of 4 from 64 B to 64 MiB).
SIZE_BUCKETS: tuple[float, ...] = tuple(float(64 * 4**i) for i in range(11))

# --- metrics --------------------------------------------------------------------------------
FUNCTION_CALLS = MetricSpec(
    name="function_calls_total",
    kind="counter",
    unit="",
    help="Calls of an instrumented function or operation, by result (ok or error).",
    labels=(LABEL_FUNCTION, LABEL_MODULE, LABEL_RESULT),
    otel_name="function.calls",
)
FUNCTION_CALLS_DURATION = MetricSpec(
    name="function_calls_duration_seconds",
    kind="histogram",
    unit="seconds",
    help="Duration of calls of an instrumented function or operation, in seconds.",
    labels=(LABEL_FUNCTION, LABEL_MODULE),
    buckets=DURATION_BUCKETS,
    otel_name="function.calls.duration",
)
FUNCTION_CALLS_CONCURRENT = MetricSpec(
    name="function_calls_concurrent",
    kind="gauge",
    unit="",
    help="Calls of an instrumented function or operation in progress right now.",
    labels=(LABEL_FUNCTION, LABEL_MODULE),
    otel_name="function.calls.concurrent",
    multiprocess_mode="livesum",
)
BUILD_INFO = MetricSpec(
    name="bakhmach_obs_build_info",
    kind="gauge",
    unit="",
    help="Always 1; labels identify the running service build and the SDK version.",
    labels=(LABEL_SERVICE_NAME, LABEL_SERVICE_VERSION, LABEL_DEPLOYMENT_ENVIRONMENT, LABEL_SDK_VERSION),
    multiprocess_mode="max",
)
TELEMETRY_ERRORS = MetricSpec(
    name="bakhmach_obs_telemetry_errors_total",
    kind="counter",
    unit="",
    help="Failures inside the SDK's own telemetry path, caught so the application never sees them.",
    labels=(LABEL_COMPONENT,),
)
DROPPED_SPANS = MetricSpec(
    name="bakhmach_obs_dropped_spans_total",
    kind="counter",
    unit="",
    help="Finished spans that were not delivered: queue full, export failed or deadline passed.",
    labels=(),
)
METRIC_OVERFLOW = MetricSpec(
    name="bakhmach_obs_metric_overflow_total",
    kind="counter",
    unit="",
    help=("New label sets routed to a metric's overflow series because the metric had reached its cardinality limit."),
    labels=(LABEL_METRIC,),
)

LOG_RECORDS_DROPPED = MetricSpec(
    name="bakhmach_obs_log_records_dropped_total",
    kind="counter",
    unit="",
    help="Log records the shipping handler (Logstash) discarded instead of blocking the application.",
    labels=(LABEL_REASON,),
)

HTTP_SERVER_DURATION = MetricSpec(
    name="http_server_request_duration_seconds",
    kind="histogram",
    unit="seconds",
    help=(
        "Duration of HTTP server requests, until the last byte of the response was sent; for streaming "
        "responses, until the first byte (see http_server_stream_duration_seconds)."
    ),
    labels=(LABEL_HTTP_METHOD, LABEL_HTTP_ROUTE, LABEL_HTTP_STATUS),
    buckets=DURATION_BUCKETS,
    otel_name="http.server.request.duration",
)
HTTP_SERVER_STREAM_DURATION = MetricSpec(
    name="http_server_stream_duration_seconds",
    kind="histogram",
    unit="seconds",
    help="Full duration of streaming and server-sent-event responses, kept out of the request latency.",
    labels=(LABEL_HTTP_METHOD, LABEL_HTTP_ROUTE, LABEL_HTTP_STATUS),
    buckets=(0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0),
)
HTTP_SERVER_ACTIVE = MetricSpec(
    name="http_server_active_requests",
    kind="gauge",
    unit="",
    help="HTTP server requests in progress right now.",
    labels=(LABEL_HTTP_METHOD,),
    otel_name="http.server.active_requests",
    multiprocess_mode="livesum",
)
HTTP_SERVER_REQUEST_SIZE = MetricSpec(
    name="http_server_request_body_size_bytes",
    kind="histogram",
    unit="bytes",
    help="Size of HTTP server request bodies, in bytes.",
    labels=(LABEL_HTTP_METHOD, LABEL_HTTP_ROUTE),
    buckets=SIZE_BUCKETS,
    otel_name="http.server.request.body.size",
)
HTTP_SERVER_RESPONSE_SIZE = MetricSpec(
    name="http_server_response_body_size_bytes",
    kind="histogram",
    unit="bytes",
    help="Size of HTTP server response bodies, in bytes.",
    labels=(LABEL_HTTP_METHOD, LABEL_HTTP_ROUTE, LABEL_HTTP_STATUS),
    buckets=SIZE_BUCKETS,
    otel_name="http.server.response.body.size",
)
HTTP_CLIENT_DURATION = MetricSpec(
    name="http_client_request_duration_seconds",
    kind="histogram",
    unit="seconds",
    help="Duration of outgoing HTTP requests, until the response headers arrived.",
    labels=(LABEL_HTTP_METHOD, LABEL_SERVER_ADDRESS, LABEL_HTTP_STATUS),
    buckets=DURATION_BUCKETS,
    otel_name="http.client.request.duration",
)

DB_CLIENT_DURATION = MetricSpec(
    name="db_client_operation_duration_seconds",
    kind="histogram",
    unit="seconds",
    help="Duration of database client operations; error_type is empty on success.",
    labels=(LABEL_DB_SYSTEM, LABEL_DB_OPERATION, LABEL_DB_COLLECTION, LABEL_DB_NAMESPACE, LABEL_ERROR_TYPE),
    buckets=DB_DURATION_BUCKETS,
    otel_name="db.client.operation.duration",
)
DB_CONNECTION_COUNT = MetricSpec(
    name="db_client_connection_count",
    kind="gauge",
    unit="",
    help="Connections of a client-side pool, by state (idle or used).",
    labels=(LABEL_POOL_NAME, LABEL_POOL_STATE),
    otel_name="db.client.connection.count",
    multiprocess_mode="livesum",
)
DB_CONNECTION_MAX = MetricSpec(
    name="db_client_connection_max",
    kind="gauge",
    unit="",
    help="Most connections a client-side pool allows.",
    labels=(LABEL_POOL_NAME,),
    otel_name="db.client.connection.max",
    multiprocess_mode="livesum",
)
DB_CONNECTION_WAIT = MetricSpec(
    name="db_client_connection_wait_time_seconds",
    kind="histogram",
    unit="seconds",
    help="Time spent waiting to check a connection out of a pool.",
    labels=(LABEL_POOL_NAME,),
    buckets=DB_DURATION_BUCKETS,
    otel_name="db.client.connection.wait_time",
)
DB_CONNECTION_TIMEOUTS = MetricSpec(
    name="db_client_connection_timeouts_total",
    kind="counter",
    unit="",
    help="Connection checkouts from a pool that timed out.",
    labels=(LABEL_POOL_NAME,),
    otel_name="db.client.connection.timeouts",
)
CACHE_OPERATIONS = MetricSpec(
    name="cache_operations_total",
    kind="counter",
    unit="",
    help="Cache operations by result: hit or miss for lookups, ok or error otherwise.",
    labels=(LABEL_CACHE_NAME, LABEL_CACHE_OPERATION, LABEL_CACHE_RESULT),
)
CACHE_DURATION = MetricSpec(
    name="cache_operation_duration_seconds",
    kind="histogram",
    unit="seconds",
    help="Duration of cache operations, in seconds.",
    labels=(LABEL_CACHE_NAME, LABEL_CACHE_OPERATION),
    buckets=CACHE_DURATION_BUCKETS,
)
MESSAGING_OPERATION_DURATION = MetricSpec(
    name="messaging_client_operation_duration_seconds",
    kind="histogram",
    unit="seconds",
    help="Duration of messaging client operations (publish, receive, settle).",
    labels=(LABEL_MESSAGING_SYSTEM, LABEL_MESSAGING_OPERATION, LABEL_MESSAGING_DESTINATION, LABEL_ERROR_TYPE),
    buckets=DURATION_BUCKETS,
    otel_name="messaging.client.operation.duration",
)
MESSAGING_SENT = MetricSpec(
    name="messaging_client_sent_messages_total",
    kind="counter",
    unit="",
    help="Messages a producer sent.",
    labels=(LABEL_MESSAGING_SYSTEM, LABEL_MESSAGING_DESTINATION, LABEL_ERROR_TYPE),
    otel_name="messaging.client.sent.messages",
)
MESSAGING_CONSUMED = MetricSpec(
    name="messaging_client_consumed_messages_total",
    kind="counter",
    unit="",
    help="Messages a consumer received.",
    labels=(LABEL_MESSAGING_SYSTEM, LABEL_MESSAGING_DESTINATION, LABEL_ERROR_TYPE),
    otel_name="messaging.client.consumed.messages",
)
MESSAGING_PROCESS_DURATION = MetricSpec(
    name="messaging_process_duration_seconds",
    kind="histogram",
    unit="seconds",
    help="Duration of processing one consumed message.",
    labels=(LABEL_MESSAGING_SYSTEM, LABEL_MESSAGING_DESTINATION, LABEL_ERROR_TYPE),
    buckets=DURATION_BUCKETS,
    otel_name="messaging.process.duration",
)
MESSAGING_QUEUE_DEPTH = MetricSpec(
    name="messaging_queue_depth",
    kind="gauge",
    unit="",
    help="Messages waiting in a queue, as last reported by the broker.",
    labels=(LABEL_MESSAGING_SYSTEM, LABEL_MESSAGING_DESTINATION),
    multiprocess_mode="max",
)
MESSAGING_QUEUE_LAG = MetricSpec(
    name="messaging_queue_lag_seconds",
    kind="gauge",
    unit="seconds",
    help="Age of the oldest waiting message, from its publish-time header (the seed's lag alert).",
    labels=(LABEL_MESSAGING_SYSTEM, LABEL_MESSAGING_DESTINATION),
    multiprocess_mode="max",
)

#: Every metric family the SDK can emit, in documentation order.
METRICS: tuple[MetricSpec, ...] = (
    FUNCTION_CALLS,
    FUNCTION_CALLS_DURATION,
    FUNCTION_CALLS_CONCURRENT,
    BUILD_INFO,
    TELEMETRY_ERRORS,
    DROPPED_SPANS,
    METRIC_OVERFLOW,
    LOG_RECORDS_DROPPED,
    HTTP_SERVER_DURATION,
    HTTP_SERVER_STREAM_DURATION,
    HTTP_SERVER_ACTIVE,
    HTTP_SERVER_REQUEST_SIZE,
    HTTP_SERVER_RESPONSE_SIZE,
    HTTP_CLIENT_DURATION,
    DB_CLIENT_DURATION,
    DB_CONNECTION_COUNT,
    DB_CONNECTION_MAX,
    DB_CONNECTION_WAIT,
    DB_CONNECTION_TIMEOUTS,
    CACHE_OPERATIONS,
    CACHE_DURATION,
    MESSAGING_OPERATION_DURATION,
    MESSAGING_SENT,
    MESSAGING_CONSUMED,
    MESSAGING_PROCESS_DURATION,
    MESSAGING_QUEUE_DEPTH,
    MESSAGING_QUEUE_LAG,
)

_BY_NAME = {m.name: m for m in METRICS}


def metric(name: str) -> MetricSpec:
    """Look a metric up by its exposed name.

    Raises:
        KeyError: when the SDK defines no such metric.
    """
    return _BY_NAME[name]


# --- span attributes ------------------------------------------------------------------------
ATTR_CODE_FUNCTION_NAME = "code.function.name"
ATTR_CODE_NAMESPACE = "code.namespace"
ATTR_ERROR_TYPE = "error.type"
ATTR_CORRELATION_ID = "bakhmach.correlation_id"
ATTR_HTTP_METHOD = "http.request.method"
ATTR_HTTP_METHOD_ORIGINAL = "http.request.method_original"
ATTR_HTTP_ROUTE = "http.route"
ATTR_HTTP_STATUS = "http.response.status_code"
ATTR_URL_PATH = "url.path"
ATTR_URL_QUERY = "url.query"
ATTR_URL_SCHEME = "url.scheme"
ATTR_URL_FULL = "url.full"
ATTR_SERVER_ADDRESS = "server.address"
ATTR_SERVER_PORT = "server.port"
ATTR_CLIENT_ADDRESS = "client.address"
ATTR_USER_AGENT = "user_agent.original"
ATTR_PROTOCOL_VERSION = "network.protocol.version"
ATTR_REQUEST_BODY_SIZE = "http.request.body.size"
ATTR_RESPONSE_BODY_SIZE = "http.response.body.size"
ATTR_DB_SYSTEM = "db.system.name"
ATTR_DB_NAMESPACE = "db.namespace"
ATTR_DB_OPERATION = "db.operation.name"
ATTR_DB_COLLECTION = "db.collection.name"
ATTR_DB_QUERY_TEXT = "db.query.text"
ATTR_DB_STATUS_CODE = "db.response.status_code"
ATTR_DB_BATCH_SIZE = "db.operation.batch.size"
ATTR_DB_STORED_PROCEDURE = "db.stored_procedure.name"
ATTR_CACHE_NAME = "bakhmach.cache.name"
ATTR_CACHE_OPERATION = "bakhmach.cache.operation"
ATTR_CACHE_RESULT = "bakhmach.cache.result"
ATTR_CACHE_KEY_HASH = "bakhmach.cache.key_hash"
ATTR_MESSAGING_SYSTEM = "messaging.system"
ATTR_MESSAGING_OPERATION = "messaging.operation.name"
ATTR_MESSAGING_OPERATION_TYPE = "messaging.operation.type"
ATTR_MESSAGING_DESTINATION = "messaging.destination.name"
ATTR_MESSAGING_MESSAGE_ID = "messaging.message.id"
ATTR_MESSAGING_BODY_SIZE = "messaging.message.body.size"

SPAN_ATTRIBUTES: tuple[SpanAttribute, ...] = (
    SpanAttribute(ATTR_CODE_FUNCTION_NAME, "Fully qualified name of the instrumented function."),
    SpanAttribute(ATTR_CODE_NAMESPACE, "Module that defines the instrumented function."),
    SpanAttribute(
        ATTR_ERROR_TYPE,
        "On failure: the exception's qualified class name, or `_OTHER` when `record_error_if` "
        "marked a returned value as an error.",
    ),
    SpanAttribute(ATTR_CORRELATION_ID, "The request's correlation id, when one is bound."),
    SpanAttribute(ATTR_HTTP_METHOD, "HTTP method, or `_OTHER` for a method outside the known set."),
    SpanAttribute(ATTR_HTTP_METHOD_ORIGINAL, "The method as received, when it was replaced by `_OTHER`."),
    SpanAttribute(ATTR_HTTP_ROUTE, "The route template (`/users/{user_id}`), never the raw path."),
    SpanAttribute(ATTR_HTTP_STATUS, "HTTP response status code."),
    SpanAttribute(ATTR_URL_PATH, "Server spans: the request path."),
    SpanAttribute(ATTR_URL_QUERY, "Server spans: the query string, redacted."),
    SpanAttribute(ATTR_URL_SCHEME, "`http` or `https`."),
    SpanAttribute(ATTR_URL_FULL, "Client spans: the full URL, with userinfo and signed-URL keys redacted."),
    SpanAttribute(ATTR_SERVER_ADDRESS, "Host the request was sent to (client) or received on (server)."),
    SpanAttribute(ATTR_SERVER_PORT, "Port of that host."),
    SpanAttribute(ATTR_CLIENT_ADDRESS, "Server spans: the peer's address."),
    SpanAttribute(ATTR_USER_AGENT, "The `User-Agent` header."),
    SpanAttribute(ATTR_PROTOCOL_VERSION, "HTTP version: `1.1`, `2`."),
    SpanAttribute(ATTR_REQUEST_BODY_SIZE, "Request body size in bytes, when known."),
    SpanAttribute(ATTR_RESPONSE_BODY_SIZE, "Response body size in bytes."),
    SpanAttribute(ATTR_DB_SYSTEM, "Database system: `postgresql`, `mysql`, `sqlite`, `redis`."),
    SpanAttribute(ATTR_DB_NAMESPACE, "Database (schema) name."),
    SpanAttribute(ATTR_DB_OPERATION, "Operation parsed from the statement (`SELECT`) or the command (`GET`)."),
    SpanAttribute(ATTR_DB_COLLECTION, "Table parsed from the statement, when there is one."),
    SpanAttribute(ATTR_DB_QUERY_TEXT, "Opt-in: the statement with every literal replaced by `?`."),
    SpanAttribute(ATTR_DB_STATUS_CODE, "The database's error code on failure (SQLSTATE...)."),
    SpanAttribute(ATTR_DB_BATCH_SIZE, "Statements in an `executemany` batch, or commands in a Redis pipeline."),
    SpanAttribute(ATTR_DB_STORED_PROCEDURE, "The procedure called with `callproc`."),
    SpanAttribute(ATTR_CACHE_NAME, "Cache name given to the wrapper."),
    SpanAttribute(ATTR_CACHE_OPERATION, "`get`, `set`, `delete`..."),
    SpanAttribute(ATTR_CACHE_RESULT, "`hit`, `miss`, `ok` or `error`."),
    SpanAttribute(ATTR_CACHE_KEY_HASH, "A short hash of the key; the key itself is never recorded."),
    SpanAttribute(ATTR_MESSAGING_SYSTEM, "Messaging system: `rabbitmq`."),
    SpanAttribute(ATTR_MESSAGING_OPERATION, "`publish`, `process`, `receive`, `ack`..."),
    SpanAttribute(ATTR_MESSAGING_OPERATION_TYPE, "`send`, `process`, `receive`, `settle`."),
    SpanAttribute(ATTR_MESSAGING_DESTINATION, "Queue or exchange/routing-key name."),
    SpanAttribute(ATTR_MESSAGING_MESSAGE_ID, "Message id, when the producer set one."),
    SpanAttribute(ATTR_MESSAGING_BODY_SIZE, "Message body size in bytes."),
)

# --- log fields -----------------------------------------------------------------------------
#: Fields the JSON formatter owns: bound context and ``extra=`` can never replace them.
RESERVED_LOG_FIELDS = frozenset(
    ("timestamp", "service", "level", "message", "logger", "correlation_id", "trace_id", "span_id", "trace_flags")
)

LOG_FIELDS: tuple[LogField, ...] = (
    LogField("timestamp", "RFC 3339 UTC time with milliseconds and a `Z` suffix."),
    LogField("service", "The configured service name."),
    LogField("level", "DEBUG, INFO, WARNING, ERROR or CRITICAL."),
    LogField("message", "The formatted log message."),
    LogField("logger", "The stdlib logger name."),
    LogField("correlation_id", "The request's correlation id, when one is bound."),
    LogField("trace_id", "32 lowercase hex digits of the current span's trace, absent outside a span."),
    LogField("span_id", "16 lowercase hex digits of the current span, absent outside a span."),
    LogField(
        "trace_flags",
        "W3C trace flags of the current span, two hex digits; bit 0 set (`01`, `03`) means sampled. "
        "Absent outside a span.",
    ),
    LogField("user_id", "The acting user, when bound."),
    LogField("action", "The business action, from `@instrument(action=...)` or a bound field."),
    LogField("error", "The exception message, on failure."),
    LogField("error_type", "The exception's qualified class name, on failure."),
    LogField("error_code", "The exception's `error_code` attribute, when it has one."),
    LogField("duration_ms", "Duration of the failed call, in milliseconds."),
    LogField("stacktrace", "The formatted traceback, on failure (never local variables)."),
)
