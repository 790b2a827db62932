"""Metric factories over prometheus_client: injectable registry, cardinality guard, fast cells.

Every factory takes ``registry=`` (default: prometheus_client's ``REGISTRY``). Families are
created once per registry and reused, so configuring twice or rebuilding an app never raises
"Duplicated timeseries".

**Cardinality guard.** A family holds at most ``cardinality_limit`` label sets (default 2000,
OpenTelemetry's default). Past that, measurements for new label sets go to one overflow series
labelled ``otel_metric_overflow="true"`` and are counted in
``bakhmach_obs_metric_overflow_total{metric}``: nothing is dropped silently and nothing raises.

**Multiprocess.** When ``PROMETHEUS_MULTIPROC_DIR`` is set before start-up, values live in
prometheus_client's mmap files, so pre-fork servers (gunicorn, ``uvicorn --workers``) sum correctly;
the overflow series works there too. Exemplars are not supported by prometheus_client in that mode.

Example:
    >>> from prometheus_client import CollectorRegistry
    >>> from bakhmach_obs import conventions, metrics
    >>> registry = CollectorRegistry()
    >>> calls = metrics.family(conventions.FUNCTION_CALLS, registry=registry, cardinality_limit=1)
    >>> calls.labels("a", "m", "ok").inc()
    >>> calls.labels("b", "m", "ok").inc()  # over the limit: goes to the overflow series
    >>> registry.get_sample_value("function_calls_total", {"otel_metric_overflow": "true"})
    1.0
"""

from __future__ import annotations

import os
import threading
import time
import weakref
from bisect import bisect_left
from collections.abc import Callable, Iterable
from typing import Any, Generic, TypeVar

import prometheus_client
from prometheus_client import CollectorRegistry
from prometheus_client.samples import Sample

from . import conventions
from .conventions import OVERFLOW_LABEL, MetricSpec

__all__ = [
    "CallCells",
    "Counter",
    "GaugeCell",
    "HistogramCell",
    "Gauge",
    "Histogram",
    "MetricSet",
    "call_cells",
    "family",
    "is_multiprocess",
    "metric_set",
]

_M = TypeVar("_M", bound=prometheus_client.metrics.MetricWrapperBase)


def is_multiprocess() -> bool:
    """True when prometheus_client writes values to ``PROMETHEUS_MULTIPROC_DIR`` (read at import)."""
    return bool(getattr(prometheus_client.values.ValueClass, "_multiprocess", False))


class _Guard(Generic[_M]):
    """Cardinality guard mixed into prometheus_client's metric classes (parents only)."""

    _bo_limit: int = conventions.DEFAULT_CARDINALITY_LIMIT
    _bo_on_overflow: Callable[[], None] | None = None
    _bo_overflow: Any = None
    _bo_base: type

    def labels(self, *labelvalues: Any, **labelkwargs: Any) -> Any:
        """Return the child for a label set; past the limit, the overflow child."""
        if labelkwargs:
            labelvalues = tuple(labelkwargs.get(n) for n in self._labelnames)  # type: ignore[attr-defined]
            if len(labelkwargs) != len(labelvalues) or None in labelvalues:
                return super().labels(**labelkwargs)  # type: ignore[misc]  # raises the usual error
        key = tuple(v if type(v) is str else str(v) for v in labelvalues)
        child = self._metrics.get(key)  # type: ignore[attr-defined]
        if child is not None:
            return child
        full = len(self._metrics) >= self._bo_limit  # type: ignore[attr-defined]
        if full and len(key) == len(self._labelnames):  # type: ignore[attr-defined]
            return self._overflow_child()
        return super().labels(*key)  # type: ignore[misc]

    def _overflow_child(self) -> Any:
        child = self._bo_overflow
        if child is None:
            kwargs = dict(getattr(self, "_kwargs", None) or {})
            child = self._bo_base(
                self._name,  # type: ignore[attr-defined]
                self._documentation,  # type: ignore[attr-defined]
                labelnames=(OVERFLOW_LABEL,),
                registry=None,
                _labelvalues=("true",),
                **kwargs,
            )
            self._bo_overflow = child
        callback = self._bo_on_overflow
        if callback is not None:
            callback()
        return child

    def _multi_samples(self) -> Iterable[Sample]:
        yield from super()._multi_samples()  # type: ignore[misc]
        child = self._bo_overflow
        if child is not None:
            for s in child._samples():
                yield Sample(s.name, {OVERFLOW_LABEL: "true", **s.labels}, s.value, s.timestamp, s.exemplar)


class Counter(_Guard[prometheus_client.Counter], prometheus_client.Counter):
    """prometheus_client ``Counter`` with the cardinality guard."""

    _bo_base = prometheus_client.Counter


class Gauge(_Guard[prometheus_client.Gauge], prometheus_client.Gauge):
    """prometheus_client ``Gauge`` with the cardinality guard."""

    _bo_base = prometheus_client.Gauge


class Histogram(_Guard[prometheus_client.Histogram], prometheus_client.Histogram):
    """prometheus_client ``Histogram`` with the cardinality guard."""

    _bo_base = prometheus_client.Histogram


_CLASSES: dict[str, type] = {"counter": Counter, "gauge": Gauge, "histogram": Histogram}


class MetricSet:
    """The SDK's metric families bound to one registry, created on first use.

    There is one per registry (see :func:`metric_set`), so a family is registered exactly once
    however often ``configure()`` runs.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.cardinality_limit = conventions.DEFAULT_CARDINALITY_LIMIT
        self._families: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._extra_buckets: dict[str, tuple[float, ...]] = {}

    def get(self, spec: MetricSpec) -> Any:
        """The family for ``spec``, created and registered on first use."""
        fam = self._families.get(spec.name)
        if fam is not None:
            return fam
        with self._lock:
            fam = self._families.get(spec.name)
            if fam is None:
                fam = self._create(spec)
                self._families[spec.name] = fam
        return fam

    def _create(self, spec: MetricSpec) -> Any:
        cls = _CLASSES[spec.kind]
        kwargs: dict[str, Any] = {"labelnames": spec.labels, "registry": self.registry}
        if spec.kind == "histogram":
            kwargs["buckets"] = self.buckets(spec)
        if spec.kind == "gauge":
            kwargs["multiprocess_mode"] = spec.multiprocess_mode
        fam = cls(spec.family, spec.help, **kwargs)
        if spec.labels:
            fam._bo_limit = self.cardinality_limit
            if spec is not conventions.METRIC_OVERFLOW:
                fam._bo_on_overflow = self._overflow_counter(spec.name)
        return fam

    def buckets(self, spec: MetricSpec) -> tuple[float, ...]:
        """The bucket bounds ``spec``'s histogram has in this registry: its preset plus added ones."""
        preset = spec.buckets or conventions.DURATION_BUCKETS
        extra = self._extra_buckets.get(spec.name)
        return tuple(sorted(set(preset) | set(extra))) if extra else tuple(preset)

    def add_buckets(self, spec: MetricSpec, bounds: Iterable[float]) -> bool:
        """Make ``bounds`` bucket boundaries of ``spec``'s histogram in this registry (for latency SLOs).

        Bounds are only ever added. When the family already exists without one of them it is
        replaced by a family with the merged buckets (its series restart from zero, which
        Prometheus treats as a counter reset); call sites bound to the previous ``configure()``
        re-bind to the new family. Returns True when the family was replaced.

        Example:
            >>> from prometheus_client import CollectorRegistry
            >>> ms = metric_set(CollectorRegistry())
            >>> ms.add_buckets(conventions.HTTP_SERVER_DURATION, [0.3])
            False
            >>> 0.3 in ms.buckets(conventions.HTTP_SERVER_DURATION)
            True
        """
        if spec.kind != "histogram":
            raise ValueError(f"{spec.name} is a {spec.kind}, not a histogram")
        new = {float(b) for b in bounds}
        if any(not 0 < b < float("inf") for b in new):
            raise ValueError(f"bucket bounds are positive finite numbers, got {sorted(new)}")
        with self._lock:
            self._extra_buckets[spec.name] = tuple(sorted(set(self._extra_buckets.get(spec.name, ())) | new))
            fam = self._families.get(spec.name)
            if fam is None or new <= set(fam._upper_bounds):
                return False
            self.registry.unregister(fam)
            self._families[spec.name] = self._create(spec)
            return True

    def _overflow_counter(self, name: str) -> Callable[[], None]:
        def on_overflow() -> None:
            self.get(conventions.METRIC_OVERFLOW).labels(name).inc()

        return on_overflow

    def set_cardinality_limit(self, limit: int) -> None:
        """Apply a new limit to existing and future families (existing series are kept)."""
        self.cardinality_limit = limit
        for fam in self._families.values():
            if getattr(fam, "_labelnames", ()):
                fam._bo_limit = limit

    def families(self) -> dict[str, Any]:
        """The families created so far, by exposed name."""
        return dict(self._families)


_SETS: weakref.WeakKeyDictionary[CollectorRegistry, MetricSet] = weakref.WeakKeyDictionary()
_SETS_LOCK = threading.Lock()


def metric_set(registry: CollectorRegistry | None = None) -> MetricSet:
    """The :class:`MetricSet` of ``registry`` (default: prometheus_client's ``REGISTRY``)."""
    registry = prometheus_client.REGISTRY if registry is None else registry
    with _SETS_LOCK:
        ms = _SETS.get(registry)
        if ms is None:
            ms = _SETS[registry] = MetricSet(registry)
        return ms


def family(spec: MetricSpec, *, registry: CollectorRegistry | None = None, cardinality_limit: int | None = None) -> Any:
    """The guarded metric family for a convention ``spec`` in ``registry``.

    Example:
        >>> from prometheus_client import CollectorRegistry
        >>> from bakhmach_obs import conventions, metrics
        >>> h = metrics.family(conventions.FUNCTION_CALLS_DURATION, registry=CollectorRegistry())
        >>> h.labels("charge", "shop.payments").observe(0.2)
    """
    ms = metric_set(registry)
    if cardinality_limit is not None:
        ms.set_cardinality_limit(cardinality_limit)
    return ms.get(spec)


# --- fast cells for the hot path ---------------------------------------------------------------
# prometheus_client's public ``inc``/``observe`` validate and dispatch on every call and take one
# lock per value (0.6-1.7 µs each); a function call touches five values. In single-process mode
# the SDK gives the values of one call site a shared lock (``_SharedValue``, a drop-in for
# prometheus_client's ``MutexValue``), so a call takes that lock once on entry and once on exit.
# In multiprocess mode the values are prometheus_client's mmap slots and are updated through
# their own ``inc``. Either way exposition and aggregation are exactly prometheus_client's.


class _SharedValue:
    """A float guarded by a lock shared with the other values of one call site."""

    __slots__ = ("_exemplar", "_lock", "_value")
    _multiprocess = False

    def __init__(self, lock: threading.Lock, value: float = 0.0, exemplar: Any = None) -> None:
        self._lock = lock
        self._value = value
        self._exemplar = exemplar

    def inc(self, amount: float) -> None:
        with self._lock:
            self._value += amount

    def set(self, value: float, timestamp: float | None = None) -> None:
        with self._lock:
            self._value = value

    def set_exemplar(self, exemplar: Any) -> None:
        self._exemplar = exemplar

    def get(self) -> float:
        with self._lock:
            return self._value

    def get_exemplar(self) -> Any:
        return self._exemplar


class _LazyExemplar:
    """An exemplar whose hex ids are formatted only when scraped (a sampled call stays cheap)."""

    __slots__ = ("_span_id", "_trace_id", "timestamp", "value")

    def __init__(self, trace_id: int, span_id: int, value: float, timestamp: float) -> None:
        self._trace_id, self._span_id, self.value, self.timestamp = trace_id, span_id, value, timestamp

    @property
    def labels(self) -> dict[str, str]:
        return {"trace_id": f"{self._trace_id:032x}", "span_id": f"{self._span_id:016x}"}


class CallCells:
    """The values of one call site: ok/error counters, the concurrency gauge and the histogram.

    ``start()`` and ``stop()`` never raise: a failure is passed to ``report`` and the call goes on.
    """

    __slots__ = ("active", "bounds", "buckets", "error", "lock", "ok", "report", "sum")

    def __init__(
        self, ok: Any, error: Any, active: Any, hist: Any, report: Callable[[str, BaseException], None]
    ) -> None:
        self.report = report
        self.bounds = tuple(hist._upper_bounds)
        with _SHARE_LOCK:
            existing = ok._value
            self.lock = existing._lock if isinstance(existing, _SharedValue) else threading.Lock()
            for child, attr in ((ok, "_value"), (error, "_value"), (active, "_value"), (hist, "_sum")):
                setattr(child, attr, self._shared(getattr(child, attr)))
            hist._buckets[:] = [self._shared(b) for b in hist._buckets]
            self.ok, self.error, self.active = ok._value, error._value, active._value
            self.sum, self.buckets = hist._sum, hist._buckets

    def _shared(self, value: Any) -> Any:
        if isinstance(value, _SharedValue) and value._lock is self.lock:
            return value
        return _SharedValue(self.lock, value.get(), value.get_exemplar())

    def start(self) -> None:
        try:
            with self.lock:
                self.active._value += 1
        except Exception as exc:  # noqa: BLE001 - telemetry never fails the call
            self.report("instrument", exc)

    def stop(self, ok: bool, duration: float) -> int:
        """Record a finished call; returns the bucket index (for an exemplar)."""
        try:
            i = bisect_left(self.bounds, duration)
            with self.lock:
                (self.ok if ok else self.error)._value += 1
                self.sum._value += duration
                self.buckets[i]._value += 1
                self.active._value -= 1
            return i
        except Exception as exc:  # noqa: BLE001
            self.report("instrument", exc)
            return -1

    def exemplar(self, index: int, duration: float, trace_id: int, span_id: int) -> None:
        """Attach a ``trace_id``/``span_id`` exemplar to bucket ``index`` (last one wins)."""
        if index >= 0:
            self.buckets[index]._exemplar = _LazyExemplar(trace_id, span_id, duration, time.time())


#: Held while a child's values are swapped for shared ones: threads binding the same fresh child at
#: once (a new route's first burst) must end with one set of values, not one each, detached and lost.
_SHARE_LOCK = threading.Lock()


def _lock_of(value: Any) -> threading.Lock:
    return value._lock if isinstance(value, _SharedValue) else threading.Lock()


def _shared_with(value: Any, lock: threading.Lock) -> Any:
    """``value`` as a :class:`_SharedValue` on ``lock`` (already shared values keep their own lock)."""
    if isinstance(value, _SharedValue):
        return value
    return _SharedValue(lock, value.get(), value.get_exemplar())


class HistogramCell:
    """A histogram child observed under one lock (``observe`` costs one lock, a bisect, two adds).

    A child keeps the lock it was first given, so several cells may wrap the same child safely.
    In multiprocess mode the child's mmap values are updated through ``inc``.
    """

    __slots__ = ("bounds", "buckets", "lock", "sum")

    def __init__(self, child: Any) -> None:
        self.bounds = tuple(child._upper_bounds)
        if is_multiprocess():
            self.lock: threading.Lock | None = None
            self.sum, self.buckets = child._sum, child._buckets
            return
        with _SHARE_LOCK:
            lock = self.lock = _lock_of(child._sum)
            child._sum = _shared_with(child._sum, lock)
            child._buckets[:] = [_shared_with(b, lock) for b in child._buckets]
            self.sum, self.buckets = child._sum, child._buckets

    def observe(self, value: float) -> int:
        """Record ``value``; returns the bucket index."""
        i = bisect_left(self.bounds, value)
        lock = self.lock
        if lock is None:
            self.sum.inc(value)
            self.buckets[i].inc(1)
            return i
        with lock:
            self.sum._value += value
            self.buckets[i]._value += 1
        return i

    def exemplar(self, index: int, value: float, span: Any) -> None:
        """Attach ``span``'s ids to bucket ``index`` when the span is sampled (last one wins).

        No-op in multiprocess mode, whose files keep no exemplars.
        """
        if self.lock is not None:
            ctx = span.get_span_context()
            if ctx.trace_flags.sampled:  # a trace_id exemplar only when the trace exists
                self.buckets[index]._exemplar = _LazyExemplar(ctx.trace_id, ctx.span_id, value, time.time())


def observe_with_exemplar(child: Any, value: float, span: Any) -> None:
    """``child.observe(value)``, with ``span``'s ids as the exemplar when ``span`` is given and sampled.

    For histogram children observed through prometheus_client (not a :class:`HistogramCell`).
    """
    if span is not None:
        ctx = span.get_span_context()
        if ctx.trace_flags.sampled:  # a trace_id exemplar only when the trace exists
            child.observe(value, {"trace_id": f"{ctx.trace_id:032x}", "span_id": f"{ctx.span_id:016x}"})
            return
    child.observe(value)


class GaugeCell:
    """A gauge or counter child updated under its own lock, without per-call validation."""

    __slots__ = ("value",)

    def __init__(self, child: Any) -> None:
        if is_multiprocess():
            self.value = child._value
            return
        with _SHARE_LOCK:
            child._value = _shared_with(child._value, _lock_of(child._value))
            self.value = child._value

    def inc(self, amount: float) -> None:
        self.value.inc(amount)


class MultiprocessCallCells(CallCells):
    """The same values as mmap slots (``PROMETHEUS_MULTIPROC_DIR``): updated through ``inc``."""

    def __init__(
        self, ok: Any, error: Any, active: Any, hist: Any, report: Callable[[str, BaseException], None]
    ) -> None:
        self.report = report
        self.bounds = tuple(hist._upper_bounds)
        self.ok, self.error, self.active = ok._value, error._value, active._value
        self.sum, self.buckets = hist._sum, hist._buckets

    def start(self) -> None:
        try:
            self.active.inc(1)
        except Exception as exc:  # noqa: BLE001
            self.report("instrument", exc)

    def stop(self, ok: bool, duration: float) -> int:
        try:
            i = bisect_left(self.bounds, duration)
            (self.ok if ok else self.error).inc(1)
            self.sum.inc(duration)
            self.buckets[i].inc(1)
            self.active.inc(-1)
            return i
        except Exception as exc:  # noqa: BLE001
            self.report("instrument", exc)
            return -1

    def exemplar(self, index: int, duration: float, trace_id: int, span_id: int) -> None:
        return None  # prometheus_client keeps no exemplars in multiprocess mode


class NullCallCells(CallCells):
    """Cells that record nothing (metrics disabled)."""

    def __init__(self) -> None:
        self.bounds = (float("inf"),)

    def start(self) -> None:
        return None

    def stop(self, ok: bool, duration: float) -> int:
        return -1

    def exemplar(self, index: int, duration: float, trace_id: int, span_id: int) -> None:
        return None


def call_cells(ms: MetricSet, function: str, module: str, report: Callable[[str, BaseException], None]) -> CallCells:
    """Bind the three function-call metrics of (function, module) into one :class:`CallCells`."""
    calls = ms.get(conventions.FUNCTION_CALLS)
    args = (
        calls.labels(function, module, conventions.RESULT_OK),
        calls.labels(function, module, conventions.RESULT_ERROR),
        ms.get(conventions.FUNCTION_CALLS_CONCURRENT).labels(function, module),
        ms.get(conventions.FUNCTION_CALLS_DURATION).labels(function, module),
    )
    if is_multiprocess():
        return MultiprocessCallCells(*args, report)
    return CallCells(*args, report)


def set_build_info(ms: MetricSet, service_name: str, service_version: str, environment: str, sdk: str) -> None:
    """Set ``bakhmach_obs_build_info`` to 1 for this build (replacing an earlier label set)."""
    fam = ms.get(conventions.BUILD_INFO)
    if not is_multiprocess():
        fam.clear()
    fam.labels(service_name, service_version, environment, sdk).set(1)


def multiprocess_registry() -> CollectorRegistry:
    """A fresh registry aggregating every worker's values from ``PROMETHEUS_MULTIPROC_DIR``."""
    from prometheus_client import multiprocess

    from . import _runtime

    registry = CollectorRegistry()
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if path and _runtime.current().settings.runtime_metrics:
        from .runtime_metrics import MultiprocessCollector as RuntimeCollector

        # First: it writes each live worker's disk I/O into files the collector below then sums.
        registry.register(RuntimeCollector(path))
    multiprocess.MultiProcessCollector(registry, path=path)  # type: ignore[no-untyped-call]
    return registry
