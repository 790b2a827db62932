"""The process-wide runtime: what ``configure()`` built, swapped atomically as one object.

Instrumented call sites keep a reference to the runtime they were bound to and re-bind (once)
when ``configure()`` replaces it, so decorators applied at import time follow a later
``configure()`` and the hot path pays one identity check.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeVar

import prometheus_client
from opentelemetry import trace
from opentelemetry.sdk.trace import SpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry

from . import conventions
from .config import Settings, load_settings
from .context import SUPPRESSED
from .errors import ConfigurationError
from .metrics import CallCells, MetricSet, NullCallCells, call_cells, is_multiprocess, metric_set, set_build_info

__all__ = ["Runtime", "build_runtime", "configure", "current", "shutdown", "swap"]

_log = logging.getLogger("bakhmach_obs")


_NULL_CELLS = NullCallCells()


class _RateLimitedLog:
    """At most one warning per component per interval, with a count of what was held back."""

    def __init__(self, interval: float = 60.0) -> None:
        self.interval = interval
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}
        self._lock = threading.Lock()

    def __call__(self, component: str, exc: BaseException, redact: Callable[[str], str] | None = None) -> None:
        now = time.monotonic()
        with self._lock:
            last = self._last.get(component)
            if last is not None and now - last < self.interval:
                self._held[component] = self._held.get(component, 0) + 1
                return
            self._last[component] = now
            held = self._held.pop(component, 0)
        # An exporter's or driver's message may carry an endpoint with credentials: redact it in the
        # record itself, since the application's own handlers may see it too.
        text = redact(str(exc)) if redact is not None else str(exc)
        token = SUPPRESSED.set(True)
        try:
            _log.warning(
                "telemetry failure in %s (caught; the application is unaffected): %s: %s%s",
                component, type(exc).__name__, text,
                f" ({held} more since the last report)" if held else "",
            )  # fmt: skip
        finally:
            SUPPRESSED.reset(token)


_rate_limited = _RateLimitedLog()


class Runtime:
    """Everything the instrumentation needs, resolved once per ``configure()``."""

    def __init__(
        self,
        settings: Settings,
        registry: CollectorRegistry,
        *,
        provider: Any = None,
        tracer: trace.Tracer | None = None,
        memory: InMemorySpanExporter | None = None,
        redaction: Any = None,
    ) -> None:
        from .redaction import DEFAULT_POLICY

        self.settings = settings
        #: The one redaction policy for logs, span attributes, headers and URLs.
        self.redaction = redaction if redaction is not None else DEFAULT_POLICY.extend(settings.redact_keys)
        #: Handlers the SDK installed besides the stream handler (the Logstash shipper).
        self.log_handlers: tuple[logging.Handler, ...] = ()
        self.registry = registry
        self.metric_set: MetricSet = metric_set(registry)
        self.provider = provider
        self.tracer = tracer
        self.memory = memory
        self.processors: tuple[Any, ...] = ()
        #: Starts spans with the sampling decision made up front (None: call the tracer directly).
        self.spans: Any = None
        self.enabled = not settings.disabled
        self.metrics_enabled = self.enabled and settings.metrics_enabled
        self.exemplars = settings.exemplars and not is_multiprocess()
        #: The SLOs given to ``configure()`` (``slos=`` and the ``slo_file`` setting).
        self.slos: tuple[Any, ...] = ()
        self._cells: dict[tuple[str, str], CallCells] = {}
        self._lock = threading.Lock()

    # --- self-telemetry ---------------------------------------------------------------------
    def report_error(self, component: str, exc: BaseException) -> None:
        """Count a caught telemetry failure and log it at a limited rate. Never raises."""
        try:
            self.metric_set.get(conventions.TELEMETRY_ERRORS).labels(component).inc()
            _rate_limited(component, exc, self.redaction.redact_text)
        except Exception:  # noqa: BLE001 - the error reporter itself must never fail the app
            pass

    def start_span(self, name: str, kind: Any, attributes: Any, context: Any = None) -> Any:
        """Start a span through the fast sampler when the SDK set the provider up, else the tracer."""
        spans = self.spans
        if spans is not None:
            return spans.start(name, kind, attributes, context)
        return self.tracer.start_span(name, context=context, kind=kind, attributes=attributes)  # type: ignore[union-attr]

    def report_dropped(self, count: int) -> None:
        """Count spans that will never be delivered. Never raises."""
        with contextlib.suppress(Exception):
            self.metric_set.get(conventions.DROPPED_SPANS).inc(count)

    def report_log_dropped(self, reason: str, count: int) -> None:
        """Count log records the shipping handler discarded. Never raises."""
        with contextlib.suppress(Exception):
            self.metric_set.get(conventions.LOG_RECORDS_DROPPED).labels(reason).inc(count)

    # --- cells --------------------------------------------------------------------------------
    def call_cells(self, function: str, module: str) -> CallCells:
        """The function-call metric cells for (function, module), bound once and cached."""
        if not self.metrics_enabled:
            return _NULL_CELLS
        key = (function, module)
        cells = self._cells.get(key)
        if cells is not None:
            return cells
        cells = call_cells(self.metric_set, function, module, self.report_error)
        with self._lock:
            if len(self._cells) < 2 * self.settings.cardinality_limit:
                self._cells[key] = cells
        return cells


_lock = threading.RLock()
#: The current runtime, in a one-item list so call sites compare identity cheaply.
CURRENT: list[Runtime | None] = [None]
_global_provider_set = False
_atexit_registered = False


def _default_runtime() -> Runtime:
    """The runtime before any ``configure()``: environment settings, no handlers installed."""
    try:
        settings = load_settings({})
    except ConfigurationError as exc:
        _log.warning("ignoring invalid environment until configure() is called: %s", exc)
        settings = Settings()
    provider = trace.get_tracer_provider()
    # Only trace when the application installed an SDK provider itself; the API's proxy would
    # cost a no-op span per call for nothing.
    tracer = None
    if settings.tracing_enabled and hasattr(provider, "add_span_processor"):
        from . import __version__

        tracer = trace.get_tracer("bakhmach_obs", __version__)
    return Runtime(settings, prometheus_client.REGISTRY, tracer=tracer)


_T = TypeVar("_T", bound="_Bound")


class _Bound(Protocol):
    rt: Runtime


def per_runtime(factory: Callable[[Runtime], _T]) -> Callable[[], _T]:
    """A value built from the current runtime by ``factory``, rebuilt only when ``configure()`` replaces it.

    Adapters keep what they resolve per configuration (metric families, switches) in such a value;
    the returned function is one identity check on the hot path.
    """
    cache: list[_T | None] = [None]

    def get() -> _T:
        value = cache[0]
        if value is None or value.rt is not CURRENT[0]:
            value = cache[0] = factory(current())
        return value

    return get


def current() -> Runtime:
    """The runtime in force (a default one until ``configure()`` is called)."""
    rt = CURRENT[0]
    if rt is None:
        with _lock:
            rt = CURRENT[0]
            if rt is None:
                rt = CURRENT[0] = _default_runtime()
    return rt


def build_runtime(
    settings: Settings,
    registry: CollectorRegistry | None = None,
    span_processors: Sequence[SpanProcessor] = (),
    redaction: Any = None,
    slos: Sequence[Any] = (),
) -> Runtime:
    """Build (but do not install) a runtime: metric set, SLO buckets, build info, tracer provider."""
    from . import __version__
    from .tracing import build_tracing

    registry = prometheus_client.REGISTRY if registry is None else registry
    rt = Runtime(settings, registry, redaction=redaction)
    rt.metric_set.set_cardinality_limit(settings.cardinality_limit)
    rt.slos = _resolve_slos(settings, slos)
    if rt.metrics_enabled:
        _add_slo_buckets(rt.metric_set, rt.slos)
    if rt.enabled and settings.tracing_enabled:
        setup = build_tracing(
            settings, on_drop=rt.report_dropped,
            on_error=lambda exc: rt.report_error("exporter", exc),
            extra_processors=span_processors,
        )  # fmt: skip
        rt.provider, rt.memory, rt.processors = setup.provider, setup.memory, setup.processors
        rt.tracer = setup.provider.get_tracer("bakhmach_obs", __version__)
        if setup.ids is not None:
            from .tracing import SpanStarter

            rt.spans = SpanStarter(rt.tracer, settings, setup.ids)
    if rt.enabled and settings.logstash_address is not None:
        from .logstash import LogstashHandler

        host, port = settings.logstash_address
        rt.log_handlers = (
            LogstashHandler(
                host, port, queue_size=settings.logstash_queue_size, overflow=settings.logstash_overflow,
                on_drop=rt.report_log_dropped, on_error=lambda exc: rt.report_error("logging", exc),
            ),
        )  # fmt: skip
    if rt.metrics_enabled:
        ms = rt.metric_set
        for spec in (conventions.TELEMETRY_ERRORS, conventions.DROPPED_SPANS, conventions.LOG_RECORDS_DROPPED):
            ms.get(spec)  # the SDK's own health is exposed from the start, at zero
        set_build_info(
            rt.metric_set, settings.service_name, settings.service_version, settings.environment, __version__
        )
        if settings.runtime_metrics:
            from .runtime_metrics import register as register_runtime_metrics

            try:  # idempotent per registry: configure() again reuses the collector
                register_runtime_metrics(registry)
            except Exception as exc:  # noqa: BLE001 - runtime metrics are a bonus, never a start-up failure
                rt.report_error("runtime", exc)
    return rt


def _resolve_slos(settings: Settings, slos: Sequence[Any]) -> tuple[Any, ...]:
    """``slos=`` plus the SLOs of the ``slo_file`` setting, validated (names unique)."""
    if not slos and settings.slo_file is None:
        return ()
    from .slo import check_unique, load_slos

    if isinstance(slos, (str, bytes)):
        raise ConfigurationError("slos", slos, "a sequence of bakhmach_obs.slo.SLO (use slo_file= for a path)")
    from_file = load_slos(settings.slo_file) if settings.slo_file is not None else []
    return tuple(check_unique([*slos, *from_file]))


def _add_slo_buckets(ms: MetricSet, slos: Sequence[Any]) -> None:
    """Give each latency SLO's threshold a bucket boundary in the histogram it is measured on."""
    specs = {"http": conventions.HTTP_SERVER_DURATION, "function": conventions.FUNCTION_CALLS_DURATION}
    wanted: dict[str, set[float]] = {}
    for slo in slos:
        if slo.sli == "latency" and slo.threshold is not None:
            wanted.setdefault(slo.source, set()).add(slo.threshold)
    for source, bounds in wanted.items():
        ms.add_buckets(specs[source], bounds)


def swap(rt: Runtime | None) -> Runtime | None:
    """Install ``rt`` as the current runtime and return the previous one (``None``: default)."""
    with _lock:
        previous, CURRENT[0] = CURRENT[0], rt
    return previous


def configure(
    *,
    registry: CollectorRegistry | None = None,
    span_processors: Sequence[SpanProcessor] = (),
    log_stream: Any = None,
    redaction: Any = None,
    slos: Sequence[Any] = (),
    **kwargs: Any,
) -> Settings:
    """Set up metrics, traces and logs in one call. See ``bakhmach_obs.configure``.

    ``slos=`` (:class:`bakhmach_obs.slo.SLO` objects) and the ``slo_file`` setting declare the
    service's SLOs: latency thresholds become histogram bucket boundaries.
    """
    from .logs import install_logging
    from .redaction import RedactionPolicy

    settings = load_settings(kwargs)
    if redaction is not None and not isinstance(redaction, RedactionPolicy):
        raise ConfigurationError("redaction", redaction, "a bakhmach_obs.redaction.RedactionPolicy")
    global _global_provider_set, _atexit_registered
    with _lock:
        rt = build_runtime(settings, registry, span_processors, redaction, slos)
        if rt.provider is not None and not _global_provider_set:
            if not hasattr(trace.get_tracer_provider(), "add_span_processor"):
                trace.set_tracer_provider(rt.provider)
            _global_provider_set = True
        install_logging(settings.log_format if rt.enabled else "none", settings.log_level, log_stream, rt.log_handlers)
        previous = swap(rt)
        if not _atexit_registered:
            atexit.register(shutdown)
            _atexit_registered = True
    if previous is not None:
        _shutdown_provider(previous, previous.settings.shutdown_timeout)
    return settings


def _shutdown_provider(rt: Runtime, timeout: float) -> bool:
    """Flush and stop what ``rt`` exports (spans, shipped logs) within ``timeout`` seconds."""
    from .tracing import run_with_deadline

    provider = rt.provider
    handlers = rt.log_handlers
    if provider is None and not handlers:
        return True
    deadline = time.monotonic() + timeout
    # Processors and handlers get a slightly earlier deadline, so that what they could not deliver
    # is already counted when the outer deadline returns to the caller.
    inner = deadline - min(0.1, timeout * 0.1)
    root = logging.getLogger()
    for handler in handlers:
        root.removeHandler(handler)

    def remaining() -> float:
        return max(inner - time.monotonic(), 0.0)

    def stop() -> None:
        for processor in rt.processors:  # ours first, with the caller's deadline
            processor.shutdown(remaining())
        if provider is not None:
            provider.shutdown()
        for handler in handlers:
            handler.close(remaining())  # type: ignore[call-arg]

    finished = run_with_deadline(stop, timeout, "shutdown")
    clean = all(p.clean_shutdown for p in rt.processors) and all(getattr(h, "clean_shutdown", True) for h in handlers)
    return finished and clean


def shutdown(timeout: float | None = None) -> bool:
    """Flush and stop exporters; return True if that finished within the deadline.

    Returns within ``timeout`` seconds (default: the ``shutdown_timeout`` setting, 5 s) even when
    the collector hangs or refuses. Spans that could not be delivered are counted in
    ``bakhmach_obs_dropped_spans_total``, log records that could not be shipped in
    ``bakhmach_obs_log_records_dropped_total``. Metrics and stdout logging keep working
    afterwards; tracing and log shipping stop.
    """
    with _lock:
        rt = CURRENT[0]
        if rt is None or (rt.provider is None and not rt.log_handlers):
            return True
        stopped = Runtime(rt.settings, rt.registry, redaction=rt.redaction)
        stopped.slos = rt.slos
        CURRENT[0] = stopped
    return _shutdown_provider(rt, rt.settings.shutdown_timeout if timeout is None else timeout)
