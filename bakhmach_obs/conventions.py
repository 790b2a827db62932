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
    "ACTIVE_USER_WINDOWS",
    "ASYNCIO_TASKS",
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
    "BUSINESS_ACTIVE_USERS",
    "BUSINESS_CHURN_RATIO",
    "BUSINESS_ENGAGEMENT_SCORE",
    "BUSINESS_FEATURE_USAGE",
    "BUSINESS_FUNNEL_STEP",
    "BUSINESS_OTHER",
    "BUSINESS_REVENUE",
    "BUSINESS_TRANSACTIONS",
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
    "DISK_IO_DIRECTIONS",
    "DROPPED_SPANS",
    "DURATION_BUCKETS",
    "EVENT_LOOP_LAG",
    "EXPORTER_PORTS",
    "EXTERNAL_METRICS",
    "FUNCTION_CALLS",
    "FUNCTION_CALLS_CONCURRENT",
    "FUNCTION_CALLS_DURATION",
    "GC_PAUSE",
    "GC_PAUSE_BUCKETS",
    "HEALTH_CHECK_DURATION",
    "HEALTH_CHECK_RUNS",
    "HEALTH_CHECK_STATUS",
    "HEALTH_DURATION_BUCKETS",
    "HEALTH_RESULTS",
    "HTTP_CLIENT_DURATION",
    "HTTP_KNOWN_METHODS",
    "HTTP_METHOD_OTHER",
    "HTTP_ROUTE_UNMATCHED",
    "HTTP_SERVER_ACTIVE",
    "HTTP_SERVER_DURATION",
    "HTTP_SERVER_REQUEST_SIZE",
    "HTTP_SERVER_RESPONSE_SIZE",
    "HTTP_SERVER_STREAM_DURATION",
    "HTTP_STATUS_CLIENT_CLOSED",
    "LABEL_CACHE_NAME",
    "LABEL_CACHE_OPERATION",
    "LABEL_CACHE_RESULT",
    "LABEL_CHECK",
    "LABEL_COMPONENT",
    "LABEL_CURRENCY",
    "LABEL_DB_COLLECTION",
    "LABEL_DB_NAMESPACE",
    "LABEL_DB_OPERATION",
    "LABEL_DB_SYSTEM",
    "LABEL_DEPLOYMENT_ENVIRONMENT",
    "LABEL_DISK_IO_DIRECTION",
    "LABEL_ERROR_TYPE",
    "LABEL_FEATURE",
    "LABEL_FUNCTION",
    "LABEL_FUNNEL",
    "LABEL_FUNNEL_STEP",
    "LABEL_GC_GENERATION",
    "LABEL_HTTP_METHOD",
    "LABEL_HTTP_ROUTE",
    "LABEL_HTTP_STATUS",
    "LABEL_MESSAGING_DESTINATION",
    "LABEL_MESSAGING_OPERATION",
    "LABEL_MESSAGING_SYSTEM",
    "LABEL_METRIC",
    "LABEL_MODULE",
    "LABEL_NETWORK_INTERFACE",
    "LABEL_NETWORK_IO_DIRECTION",
    "LABEL_NETWORK_TRANSPORT",
    "LABEL_POOL_NAME",
    "LABEL_POOL_STATE",
    "LABEL_REASON",
    "LABEL_RESULT",
    "LABEL_SDK_VERSION",
    "LABEL_SEGMENT",
    "LABEL_SERVER_ADDRESS",
    "LABEL_SERVICE_NAME",
    "LABEL_SERVICE_VERSION",
    "LABEL_SLO",
    "LABEL_SLO_FEATURE",
    "LABEL_SLO_SERVICE",
    "LABEL_TRANSACTION_TYPE",
    "LABEL_WINDOW",
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
    "MetricKind",
    "METRIC_OVERFLOW",
    "MetricSpec",
    "NETWORK_IO_DIRECTIONS",
    "OVERFLOW_LABEL",
    "POOL_STATES",
    "PROCESS_DISK_IO",
    "PROCESS_DISK_OPERATIONS",
    "PROCESS_NETWORK_IO",
    "PROCESS_OPEN_CONNECTIONS",
    "PROCESS_THREAD_COUNT",
    "RESERVED_LOG_FIELDS",
    "RESULT_ERROR",
    "RESULT_OK",
    "SIZE_BUCKETS",
    "SLO_BUDGET_REMAINING",
    "SLO_ERROR_BUDGET",
    "SLO_OBJECTIVE",
    "SLO_PERIOD_BURN_RATE",
    "SLO_SLI_ERROR",
    "SLO_SLI_ERROR_EVENTS_RATE",
    "SLO_SLI_EVENTS_RATE",
    "SLO_WINDOWS",
    "SPAN_ATTRIBUTES",
    "SpanAttribute",
    "TELEMETRY_COMPONENTS",
    "TELEMETRY_ERRORS",
    "emitted_series_names",
    "known_series_names",
    "metric",
    "slo_sli_error",
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
LABEL_CHECK = "check"
LABEL_DISK_IO_DIRECTION = "disk_io_direction"
LABEL_NETWORK_IO_DIRECTION = "network_io_direction"
LABEL_NETWORK_INTERFACE = "network_interface_name"
LABEL_NETWORK_TRANSPORT = "network_transport"
LABEL_GC_GENERATION = "cpython_gc_generation"
LABEL_WINDOW = "window"
LABEL_TRANSACTION_TYPE = "transaction_type"
LABEL_CURRENCY = "currency"
LABEL_FEATURE = "feature"
LABEL_FUNNEL = "funnel"
LABEL_FUNNEL_STEP = "funnel_step"
LABEL_SEGMENT = "segment"

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
#: ``http_response_status_code`` of a request the server cancelled before any response (the client
#: went away): nginx's 499, Client Closed Request. A 4xx, so it never counts as a server error.
HTTP_STATUS_CLIENT_CLOSED = 499

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
TELEMETRY_COMPONENTS = (
    "business",
    "database",
    "exporter",
    "health",
    "instrument",
    "logging",
    "messaging",
    "metrics",
    "runtime",
    "tracing",
)

#: ``result`` values of ``health_check_runs_total``: the check passed, failed (raised, returned a
#: failure, or its dependency refused) or did not answer within its timeout.
HEALTH_RESULTS = ("pass", "fail", "timeout")
#: ``disk_io_direction`` / ``network_io_direction`` values (OpenTelemetry's).
DISK_IO_DIRECTIONS = ("read", "write")
NETWORK_IO_DIRECTIONS = ("receive", "transmit")
#: ``window`` values of ``business_active_users``.
ACTIVE_USER_WINDOWS = ("1m", "5m", "1h", "1d")
#: The value an undeclared feature, funnel step, segment or transaction type collapses into.
BUSINESS_OTHER = "other"

# --- bucket presets -------------------------------------------------------------------------
#: OpenTelemetry's advisory buckets for request durations, in seconds.
DURATION_BUCKETS: tuple[float, ...] = (
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
)  # fmt: skip

#: OpenTelemetry's advisory buckets for database operation durations, in seconds.
DB_DURATION_BUCKETS: tuple[float, ...] = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0)
#: Cache operations are sub-millisecond to a few milliseconds.
CACHE_DURATION_BUCKETS: tuple[float, ...] = (0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0)

#: Health checks: a fraction of a millisecond (in-process) to the readiness deadline (~1 s).
HEALTH_DURATION_BUCKETS: tuple[float, ...] = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5)
#: Garbage-collector pauses: tens of microseconds (generation 0) to seconds (a full collection).
GC_PAUSE_BUCKETS: tuple[float, ...] = (0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)

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

HEALTH_CHECK_STATUS = MetricSpec(
    name="health_check_status",
    kind="gauge",
    unit="",
    help="Result of the latest run of a health check: 1 passed, 0 failed or timed out.",
    labels=(LABEL_CHECK,),
    multiprocess_mode="livemostrecent",
)
HEALTH_CHECK_DURATION = MetricSpec(
    name="health_check_duration_seconds",
    kind="histogram",
    unit="seconds",
    help="Duration of health-check runs (cached answers are not runs), in seconds.",
    labels=(LABEL_CHECK,),
    buckets=HEALTH_DURATION_BUCKETS,
)
HEALTH_CHECK_RUNS = MetricSpec(
    name="health_check_runs_total",
    kind="counter",
    unit="",
    help="Health-check runs by result (pass, fail, timeout); the availability SLI counts these.",
    labels=(LABEL_CHECK, LABEL_RESULT),
)

PROCESS_DISK_IO = MetricSpec(
    name="process_disk_io_bytes_total",
    kind="counter",
    unit="bytes",
    help="Bytes the process read from and wrote to storage (Linux /proc/<pid>/io).",
    labels=(LABEL_DISK_IO_DIRECTION,),
    otel_name="process.disk.io",
)
PROCESS_DISK_OPERATIONS = MetricSpec(
    name="process_disk_operations_total",
    kind="counter",
    unit="",
    help="Read and write system calls the process made (Linux /proc/<pid>/io syscr, syscw).",
    labels=(LABEL_DISK_IO_DIRECTION,),
    otel_name="process.disk.operations",
)
PROCESS_NETWORK_IO = MetricSpec(
    name="process_network_io_bytes_total",
    kind="counter",
    unit="bytes",
    help="Bytes received and transmitted on the interfaces of the process's network namespace (the container's).",
    labels=(LABEL_NETWORK_INTERFACE, LABEL_NETWORK_IO_DIRECTION),
    otel_name="process.network.io",
)
PROCESS_OPEN_CONNECTIONS = MetricSpec(
    name="process_open_connections",
    kind="gauge",
    unit="",
    help="Open network connections (sockets) of the process, by transport.",
    labels=(LABEL_NETWORK_TRANSPORT,),
    multiprocess_mode="livesum",
)
PROCESS_THREAD_COUNT = MetricSpec(
    name="process_threads",  # not ``process_thread_count``: promtool lints a ``_count`` suffix on a gauge
    kind="gauge",
    unit="",
    help="Threads of the process.",
    labels=(),
    otel_name="process.thread.count",
    multiprocess_mode="livesum",
)
GC_PAUSE = MetricSpec(
    name="python_gc_pause_seconds",
    kind="histogram",
    unit="seconds",
    help="Time the garbage collector stopped the interpreter, per collection, by generation.",
    labels=(LABEL_GC_GENERATION,),
    buckets=GC_PAUSE_BUCKETS,
)
ASYNCIO_TASKS = MetricSpec(
    name="python_asyncio_tasks",
    kind="gauge",
    unit="",
    help="Unfinished asyncio tasks of the watched event loop.",
    labels=(),
    multiprocess_mode="livesum",
)
EVENT_LOOP_LAG = MetricSpec(
    name="python_asyncio_event_loop_lag_seconds",
    kind="gauge",
    unit="seconds",
    help="How late the watched event loop ran a callback scheduled for a known time (latest probe).",
    labels=(),
    multiprocess_mode="livemax",
)

BUSINESS_TRANSACTIONS = MetricSpec(
    name="business_transactions_total",
    kind="counter",
    unit="",
    help="Business transactions by declared type and currency.",
    labels=(LABEL_TRANSACTION_TYPE, LABEL_CURRENCY),
)
BUSINESS_REVENUE = MetricSpec(
    name="business_revenue_minor_units_total",
    kind="counter",
    unit="",
    help="Transaction amounts in the currency's minor units (cents), exact integers; divide by 10^exponent to show.",
    labels=(LABEL_TRANSACTION_TYPE, LABEL_CURRENCY),
)
BUSINESS_ACTIVE_USERS = MetricSpec(
    name="business_active_users",
    kind="gauge",
    unit="",
    help="Distinct users seen over a sliding window (estimated; no user id is ever a label).",
    labels=(LABEL_WINDOW,),
    multiprocess_mode="livemax",
)
BUSINESS_FEATURE_USAGE = MetricSpec(
    name="business_feature_usage_total",
    kind="counter",
    unit="",
    help="Uses of a declared product feature.",
    labels=(LABEL_FEATURE,),
)
BUSINESS_FUNNEL_STEP = MetricSpec(
    name="business_funnel_step_total",
    kind="counter",
    unit="",
    help="Entries into a declared step of a declared conversion funnel.",
    labels=(LABEL_FUNNEL, LABEL_FUNNEL_STEP),
)
BUSINESS_ENGAGEMENT_SCORE = MetricSpec(
    name="business_user_engagement_score",
    kind="gauge",
    unit="",
    help="User engagement score computed by a batch job, by declared segment.",
    labels=(LABEL_SEGMENT,),
    multiprocess_mode="mostrecent",
)
BUSINESS_CHURN_RATIO = MetricSpec(
    name="business_churn_ratio",
    kind="gauge",
    unit="",
    help="Share of users who churned in the batch job's period (0 to 1), by declared segment.",
    labels=(LABEL_SEGMENT,),
    multiprocess_mode="mostrecent",
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
    HEALTH_CHECK_STATUS,
    HEALTH_CHECK_DURATION,
    HEALTH_CHECK_RUNS,
    PROCESS_DISK_IO,
    PROCESS_DISK_OPERATIONS,
    PROCESS_NETWORK_IO,
    PROCESS_OPEN_CONNECTIONS,
    PROCESS_THREAD_COUNT,
    GC_PAUSE,
    ASYNCIO_TASKS,
    EVENT_LOOP_LAG,
    BUSINESS_TRANSACTIONS,
    BUSINESS_REVENUE,
    BUSINESS_ACTIVE_USERS,
    BUSINESS_FEATURE_USAGE,
    BUSINESS_FUNNEL_STEP,
    BUSINESS_ENGAGEMENT_SCORE,
    BUSINESS_CHURN_RATIO,
)

_BY_NAME = {m.name: m for m in METRICS}


def metric(name: str) -> MetricSpec:
    """Look a metric up by its exposed name.

    Raises:
        KeyError: when the SDK defines no such metric.
    """
    return _BY_NAME[name]


# --- what other exporters emit ----------------------------------------------------------------
#: Metric names that generated rules and dashboards may use beside the SDK's own, by the exporter
#: that emits them. Anything a rule or a panel references must be here or in :data:`METRICS`
#: (tests parse every generated expression and check this).
EXTERNAL_METRICS: dict[str, tuple[str, ...]] = {
    "prometheus": ("up", "scrape_duration_seconds", "scrape_samples_scraped", "ALERTS", "ALERTS_FOR_STATE"),
    "prometheus_client": (
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_virtual_memory_bytes",
        "process_start_time_seconds",
        "process_open_fds",
        "process_max_fds",
        "python_gc_objects_collected_total",
        "python_gc_collections_total",
        "python_info",
    ),
    "node_exporter": (
        "node_cpu_seconds_total",
        "node_load1",
        "node_load5",
        "node_load15",
        "node_memory_MemTotal_bytes",
        "node_memory_MemAvailable_bytes",
        "node_filesystem_size_bytes",
        "node_filesystem_avail_bytes",
        "node_filesystem_readonly",
        "node_disk_read_bytes_total",
        "node_disk_written_bytes_total",
        "node_disk_reads_completed_total",
        "node_disk_writes_completed_total",
        "node_network_receive_bytes_total",
        "node_network_transmit_bytes_total",
        "node_boot_time_seconds",
    ),
    "postgres_exporter": (
        "pg_up",
        "pg_stat_activity_count",
        "pg_settings_max_connections",
        "pg_replication_lag_seconds",
        "pg_stat_database_xact_commit",
        "pg_stat_database_xact_rollback",
        "pg_database_size_bytes",
    ),
    "kube_state_metrics": (
        "kube_pod_status_phase",
        "kube_pod_status_ready",
        "kube_pod_container_status_restarts_total",
        "kube_deployment_spec_replicas",
        "kube_deployment_status_replicas_available",
    ),
    "cadvisor": (
        "container_cpu_usage_seconds_total",
        "container_memory_working_set_bytes",
        "container_network_receive_bytes_total",
        "container_network_transmit_bytes_total",
    ),
}

#: Default scrape ports of the exporters above (the seed's postgres exporter on 9187).
EXPORTER_PORTS: dict[str, int] = {"node_exporter": 9100, "postgres_exporter": 9187, "kube_state_metrics": 8080}

# --- SLO recording rules ----------------------------------------------------------------------
#: Label keys the generated SLO rules put on every series they record.
LABEL_SLO = "slo"
LABEL_SLO_SERVICE = "service"
LABEL_SLO_FEATURE = "feature"
#: Windows the SLI error ratio is recorded at (the SLO's own window is added per SLO).
SLO_WINDOWS = ("5m", "30m", "1h", "2h", "6h", "1d", "3d")
#: ``slo:sli_error:ratio_rate5m`` and so on: the SLI's error ratio over a window, as a ratio of increases.
SLO_SLI_ERROR = "slo:sli_error:ratio_rate{window}"
#: Per-second SLI events and error events over 5 minutes. A window longer than the longest of
#: ``SLO_WINDOWS`` is computed from these with ``sum_over_time`` instead of raw range vectors.
SLO_SLI_EVENTS_RATE = "slo:sli_events:rate5m"
SLO_SLI_ERROR_EVENTS_RATE = "slo:sli_error_events:rate5m"
#: The SLO's target (0.999), its error budget (0.001), the burn rate over the SLO window, and the
#: share of the window's budget still unspent (1 = untouched, <= 0 = exhausted).
SLO_OBJECTIVE = "slo:objective:ratio"
SLO_ERROR_BUDGET = "slo:error_budget:ratio"
SLO_PERIOD_BURN_RATE = "slo:period_burn_rate:ratio"
SLO_BUDGET_REMAINING = "slo:period_error_budget_remaining:ratio"


def slo_sli_error(window: str) -> str:
    """The recorded error-ratio series of an SLI over ``window``.

    Example:
        >>> slo_sli_error("5m")
        'slo:sli_error:ratio_rate5m'
    """
    return SLO_SLI_ERROR.format(window=window)


def emitted_series_names() -> frozenset[str]:
    """Every series name the SDK emits, with histogram and counter sample suffixes expanded.

    Example:
        >>> "http_server_request_duration_seconds_bucket" in emitted_series_names()
        True
    """
    names: set[str] = set()
    for m in METRICS:
        if m.kind == "histogram":
            names.update(m.name + suffix for suffix in ("_bucket", "_sum", "_count", "_created"))
        elif m.kind == "counter":
            names.update((m.name, m.family + "_created"))
        else:
            names.add(m.name)
    return frozenset(names)


def known_series_names() -> frozenset[str]:
    """:func:`emitted_series_names` plus every :data:`EXTERNAL_METRICS` name: what rules may reference."""
    external = {n for names in EXTERNAL_METRICS.values() for n in names}
    return emitted_series_names() | external


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
    SpanAttribute(
        ATTR_CORRELATION_ID,
        "The correlation id: the one bound for server and consumer spans, the `X-Correlation-ID` sent "
        "for client spans.",
    ),
    SpanAttribute(ATTR_HTTP_METHOD, "HTTP method, or `_OTHER` for a method outside the known set."),
    SpanAttribute(ATTR_HTTP_METHOD_ORIGINAL, "The method as received, when it was replaced by `_OTHER`."),
    SpanAttribute(ATTR_HTTP_ROUTE, "The route template (`/users/{user_id}`), never the raw path."),
    SpanAttribute(ATTR_HTTP_STATUS, "HTTP response status code."),
    SpanAttribute(ATTR_URL_PATH, "Server spans: the request path."),
    SpanAttribute(ATTR_URL_QUERY, "Server spans: the query string, redacted."),
    SpanAttribute(ATTR_URL_SCHEME, "`http` or `https`."),
    SpanAttribute(
        ATTR_URL_FULL,
        "Client spans: the full URL; userinfo and signed-URL keys redacted, the query and fragment through the "
        "redaction patterns.",
    ),
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
