"""Cache hit/miss metrics: a wrapper for mapping-like caches and a context manager for any backend.

Both record, under one cache name,

* ``cache_operations_total{cache_name, cache_operation, cache_result}``: lookups (``get``) end in
  ``hit`` or ``miss``; writes (``set``) and deletes (``delete``) in ``ok``; an exception raised by
  the cache (anything but the ``KeyError`` of a missing key) is ``error``;
* ``cache_operation_duration_seconds{cache_name, cache_operation}``, for every operation counted.

Only lookups produce ``hit``/``miss``, so the hit ratio is
``rate(..{cache_result="hit"}) / rate(..{cache_result=~"hit|miss"})`` whatever else the cache does.
Deleting a key that is absent is ``ok`` (the key is gone either way, as Redis ``DEL`` of an absent
key succeeds); the ``KeyError`` is still raised.

:func:`instrument_cache` wraps a ``dict``, a cachetools cache or anything with ``__getitem__``,
``get``, ``__setitem__``, ``__delitem__`` and ``pop``. It records metrics always and spans only
with ``spans=True``: an in-process lookup takes well under a microsecond, a span 1-20 µs, so spans
would cost more than the cache saves. :func:`cache_lookup` brackets one lookup in a remote or
custom backend; it makes a span by default (the block usually does I/O) and the span is current
inside the block.

Keys are never recorded: spans carry ``bakhmach.cache.key_hash``, the first 16 hex digits of the
key's BLAKE2b hash (:func:`key_hash`). Nothing is recorded inside ``bakhmach_obs.suppress()`` or
when the SDK is disabled; a failure of the telemetry itself is counted in
``bakhmach_obs_telemetry_errors_total`` and never reaches the caller.

This module imports no cache library.

Example:
    >>> from bakhmach_obs.cache import cache_lookup, instrument_cache
    >>> from bakhmach_obs.testing import capture
    >>> with capture() as cap:
    ...     sessions = instrument_cache({}, name="sessions")
    ...     sessions["a"] = 1
    ...     sessions.get("a"), sessions.get("b")
    ...     with cache_lookup("profiles") as lookup:
    ...         lookup.miss()
    (1, None)
    >>> cap.sample("cache_operations_total", cache_name="sessions", cache_operation="get", cache_result="hit")
    1.0
    >>> cap.sample("cache_operations_total", cache_name="profiles", cache_result="miss")
    1.0
"""

from __future__ import annotations

import hashlib
import threading
from bisect import bisect_left
from collections.abc import Callable, ItemsView, Iterator, KeysView, MutableMapping, ValuesView
from time import perf_counter
from types import TracebackType
from typing import Any, Generic, TypeVar

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from . import conventions as c
from ._runtime import CURRENT, Runtime, current
from .context import CORRELATION_ID, SUPPRESSED
from .logs import exception_type_name
from .metrics import _SHARE_LOCK, HistogramCell, _shared_with
from .redaction import RedactionPolicy
from .tracing import TextRedactor, record_exception

__all__ = [
    "ERROR",
    "HIT",
    "MISS",
    "OK",
    "CacheLookup",
    "InstrumentedCache",
    "cache_lookup",
    "instrument_cache",
    "key_hash",
    "uninstrument_cache",
]

_K = TypeVar("_K")
_V = TypeVar("_V")

#: ``cache_result`` values, as indexes into the pre-bound cells.
HIT, MISS, OK, ERROR = 0, 1, 2, 3
_RESULTS = c.CACHE_RESULTS  # ("hit", "miss", "ok", "error"): index i is the label value of result i
_MISSING: Any = object()
_INTERNAL = SpanKind.INTERNAL


def key_hash(key: object) -> str:
    """The first 16 hex digits of the BLAKE2b hash of a cache key: what spans carry instead of it.

    ``str`` keys hash their UTF-8 bytes, ``bytes`` keys themselves, anything else its ``repr``.
    The hash is not salted, so the same key gives the same hash in every process (useful to spot a
    hot key); a key from a small, guessable set can be found by hashing the candidates.

    Example:
        >>> key_hash("user:42")
        '...'
        >>> len(key_hash("user:42")), key_hash("user:42") == key_hash(b"user:42")
        (16, True)
    """
    if isinstance(key, str):
        data = key.encode("utf-8", "surrogatepass")
    elif isinstance(key, (bytes, bytearray, memoryview)):
        data = bytes(key)
    else:
        data = repr(key).encode("utf-8", "backslashreplace")
    return hashlib.blake2b(data, digest_size=8).hexdigest()


class _OpCells:
    """The count of each result and the duration histogram of one (cache name, operation).

    Counter values are moved onto the histogram's lock when nobody shared them first, so one
    ``record`` takes a single lock. ``record`` never raises.
    """

    __slots__ = ("bounds", "buckets", "counts", "family", "labels", "lock", "report", "shared", "sum")

    def __init__(self, rt: Runtime, name: str, operation: str, results: tuple[int, ...]) -> None:
        ms = rt.metric_set
        self.report = rt.report_error
        self.family = ms.get(c.CACHE_OPERATIONS)
        self.labels = (name, operation)
        hist = HistogramCell(ms.get(c.CACHE_DURATION).labels(name, operation))
        self.bounds, self.sum, self.buckets, self.lock = hist.bounds, hist.sum, hist.buckets, hist.lock
        self.counts: list[Any] = [None, None, None, None]
        self.shared = self.lock is not None
        for result in results:
            self._bind(result)

    def _bind(self, result: int) -> Any:
        with _SHARE_LOCK:  # two threads binding the same child must end with one shared value
            value = self.counts[result]
            if value is not None:
                return value
            child = self.family.labels(*self.labels, _RESULTS[result])
            lock = self.lock
            if lock is not None:
                child._value = _shared_with(child._value, lock)
                if child._value._lock is not lock:
                    self.shared = False
            value = self.counts[result] = child._value
            return value

    def record(self, result: int, duration: float) -> None:
        try:
            count = self.counts[result]
            if count is None:
                count = self._bind(result)
            i = bisect_left(self.bounds, duration)
            lock = self.lock
            if self.shared and lock is not None:
                lock.acquire()  # acquire/release: half the cost of ``with lock`` on CPython 3.11
                try:
                    count._value += 1
                    self.sum._value += duration
                    self.buckets[i]._value += 1
                finally:
                    lock.release()
                return
            count.inc(1)
            if lock is None:  # multiprocess: mmap values
                self.sum.inc(duration)
                self.buckets[i].inc(1)
            else:
                with lock:
                    self.sum._value += duration
                    self.buckets[i]._value += 1
        except Exception as exc:  # noqa: BLE001 - telemetry never fails the cache operation
            self.report("metrics", exc)

    def observe(self, duration: float) -> None:
        """Time an operation whose results were counted with :meth:`count`."""
        try:
            i = bisect_left(self.bounds, duration)
            lock = self.lock
            if lock is None:
                self.sum.inc(duration)
                self.buckets[i].inc(1)
                return
            with lock:
                self.sum._value += duration
                self.buckets[i]._value += 1
        except Exception as exc:  # noqa: BLE001
            self.report("metrics", exc)

    def count(self, result: int, amount: int) -> None:
        """Add ``amount`` to one result's count without a duration (per-key results of a batch)."""
        if amount <= 0:
            return
        try:
            value = self.counts[result]
            if value is None:
                value = self._bind(result)
            value.inc(amount)
        except Exception as exc:  # noqa: BLE001
            self.report("metrics", exc)


class _NullOpCells(_OpCells):
    """Records nothing (metrics disabled)."""

    def __init__(self) -> None:
        pass

    def record(self, result: int, duration: float) -> None:
        return None

    def observe(self, duration: float) -> None:
        return None

    def count(self, result: int, amount: int) -> None:
        return None


_NULL_OP = _NullOpCells()
#: The results each operation of the wrapper pre-binds (series exist at 0 from the start).
_OPERATION_RESULTS = {"get": (HIT, MISS, ERROR), "set": (OK, ERROR), "delete": (OK, ERROR)}


class _Site:
    """One cache name bound to one runtime: its operation cells and whether to trace."""

    __slots__ = ("delete", "get", "name", "on", "rt", "set", "trace")

    def __init__(self, rt: Runtime, name: str, spans: bool) -> None:
        self.rt = rt
        self.name = name
        self.on = rt.enabled
        self.trace = spans and rt.tracer is not None
        self.get: _OpCells = _NULL_OP
        self.set: _OpCells = _NULL_OP
        self.delete: _OpCells = _NULL_OP
        if rt.metrics_enabled:
            try:
                self.get = _OpCells(rt, name, "get", _OPERATION_RESULTS["get"])
                self.set = _OpCells(rt, name, "set", _OPERATION_RESULTS["set"])
                self.delete = _OpCells(rt, name, "delete", _OPERATION_RESULTS["delete"])
            except Exception as exc:  # noqa: BLE001 - the cache works unrecorded
                rt.report_error("metrics", exc)
                self.get = self.set = self.delete = _NULL_OP
        self.on = self.on and (self.trace or self.get is not _NULL_OP)

    def op(self, operation: str) -> _OpCells:
        cells: _OpCells = getattr(self, operation)
        return cells


def _start_span(rt: Runtime, name: str, operation: str, key: object, kind: SpanKind = _INTERNAL) -> Span | None:
    """A span ``"{operation} {name}"`` with the cache attributes, or None (failures are reported)."""
    try:
        attributes: dict[str, Any] = {c.ATTR_CACHE_NAME: name, c.ATTR_CACHE_OPERATION: operation}
        if key is not _MISSING:
            attributes[c.ATTR_CACHE_KEY_HASH] = key_hash(key)
        cid = CORRELATION_ID.get()
        if cid is not None:
            attributes[c.ATTR_CORRELATION_ID] = cid
        span: Span = rt.start_span(f"{operation} {name}", kind, attributes)
        return span
    except Exception as exc:  # noqa: BLE001
        rt.report_error("tracing", exc)
        return None


class _KeyStripped:
    """The runtime's policy for one exception event, after replacing the cache key by its hash.

    :func:`~bakhmach_obs.tracing.record_exception` only calls ``redact_text``; an exception message
    (``KeyError``, a backend's error) often quotes the key, which spans never carry in clear.
    """

    __slots__ = ("_mark", "_policy", "_raw")

    def __init__(self, policy: RedactionPolicy, raw: str, mark: str) -> None:
        self._policy = policy
        self._raw = raw
        self._mark = mark

    def redact_text(self, text: str) -> str:
        return self._policy.redact_text(text.replace(self._raw, self._mark))


def _exception_policy(rt: Runtime, key: object) -> TextRedactor:
    """``rt.redaction``, preceded by the key's replacement when the key is a non-empty str or bytes."""
    if isinstance(key, (str, bytes)):
        raw = key if isinstance(key, str) else key.decode("utf-8", "replace")
        if raw:
            return _KeyStripped(rt.redaction, raw, f"<key {key_hash(key)}>")
    return rt.redaction


def _end_span(
    rt: Runtime, span: Span | None, result: int, exc: BaseException | None = None, key: object = _MISSING
) -> None:
    if span is None:
        return
    try:
        if span.is_recording():
            span.set_attribute(c.ATTR_CACHE_RESULT, _RESULTS[result])
            if exc is not None and result == ERROR:
                error_type = exception_type_name(exc)
                span.set_attribute(c.ATTR_ERROR_TYPE, error_type)
                # message and stack trace stripped of the key, then through the redaction policy
                record_exception(span, exc, _exception_policy(rt, key), rt.report_error)
                span.set_status(Status(StatusCode.ERROR, error_type))
        span.end()
    except Exception as err:  # noqa: BLE001
        rt.report_error("tracing", err)


class InstrumentedCache(MutableMapping[_K, _V], Generic[_K, _V]):
    """A mapping-like cache that counts its lookups, writes and deletes (see :func:`instrument_cache`).

    Counted: ``cache[k]``, ``get``, ``cache[k] = v``, ``del cache[k]``, ``pop`` and what
    ``MutableMapping`` builds on them (``setdefault``, ``update``). Passed through uncounted:
    ``k in cache`` (``if k in c: v = c[k]`` would count twice), ``len``, iteration, ``keys``,
    ``values``, ``items``, ``clear``, ``popitem`` and every other attribute of the wrapped cache
    (``maxsize``, ``currsize``, ``expire()``...). ``wrapped`` is the cache itself.
    """

    __slots__ = ("_site", "_spans", "name", "wrapped")

    def __init__(self, wrapped: MutableMapping[_K, _V], name: str, *, spans: bool = False) -> None:
        self.wrapped = wrapped
        self.name = name
        self._spans = spans
        self._site = _Site(current(), name, spans)

    def _rebind(self) -> _Site:
        site = self._site = _Site(current(), self.name, self._spans)
        return site

    # --- counted ----------------------------------------------------------------------------
    def __getitem__(self, key: _K) -> _V:
        s = self._site
        if s.rt is not CURRENT[0]:
            s = self._rebind()
        if not s.on or SUPPRESSED.get():
            return self.wrapped[key]
        if s.trace:
            return self._traced("get", key, lambda: self.wrapped[key])  # type: ignore[no-any-return]
        t0 = perf_counter()
        try:
            value = self.wrapped[key]
        except KeyError:
            s.get.record(MISS, perf_counter() - t0)
            raise
        except BaseException:
            s.get.record(ERROR, perf_counter() - t0)
            raise
        s.get.record(HIT, perf_counter() - t0)
        return value

    def get(self, key: _K, default: Any = None) -> Any:
        """``wrapped.get(key, default)``, counted as a ``get`` hit or miss."""
        s = self._site
        if s.rt is not CURRENT[0]:
            s = self._rebind()
        if not s.on or SUPPRESSED.get():
            return self.wrapped.get(key, default)
        if s.trace:
            value = self._traced("get", key, lambda: self._get_or_raise(key))
            return default if value is _MISSING else value
        t0 = perf_counter()
        try:
            value = self.wrapped.get(key, _MISSING)
        except BaseException:
            s.get.record(ERROR, perf_counter() - t0)
            raise
        if value is _MISSING:
            s.get.record(MISS, perf_counter() - t0)
            return default
        s.get.record(HIT, perf_counter() - t0)
        return value

    def _get_or_raise(self, key: _K) -> Any:
        value = self.wrapped.get(key, _MISSING)
        if value is _MISSING:
            raise _Miss
        return value

    def __setitem__(self, key: _K, value: _V) -> None:
        s = self._site
        if s.rt is not CURRENT[0]:
            s = self._rebind()
        if not s.on or SUPPRESSED.get():
            self.wrapped[key] = value
            return
        if s.trace:
            self._traced("set", key, lambda: self.wrapped.__setitem__(key, value))
            return
        t0 = perf_counter()
        try:
            self.wrapped[key] = value
        except BaseException:
            s.set.record(ERROR, perf_counter() - t0)
            raise
        s.set.record(OK, perf_counter() - t0)

    def __delitem__(self, key: _K) -> None:
        s = self._site
        if s.rt is not CURRENT[0]:
            s = self._rebind()
        if not s.on or SUPPRESSED.get():
            del self.wrapped[key]
            return
        if s.trace:
            self._traced("delete", key, lambda: self.wrapped.__delitem__(key))
            return
        t0 = perf_counter()
        try:
            del self.wrapped[key]
        except KeyError:
            s.delete.record(OK, perf_counter() - t0)
            raise
        except BaseException:
            s.delete.record(ERROR, perf_counter() - t0)
            raise
        s.delete.record(OK, perf_counter() - t0)

    def pop(self, key: _K, default: Any = _MISSING) -> Any:
        """``wrapped.pop(key[, default])``, counted as a ``delete``."""
        s = self._site
        if s.rt is not CURRENT[0]:
            s = self._rebind()
        if default is _MISSING:
            call: Callable[[], Any] = lambda: self.wrapped.pop(key)  # noqa: E731
        else:
            call = lambda: self.wrapped.pop(key, default)  # noqa: E731
        if not s.on or SUPPRESSED.get():
            return call()
        if s.trace:
            return self._traced("delete", key, call)
        t0 = perf_counter()
        try:
            value = call()
        except KeyError:
            s.delete.record(OK, perf_counter() - t0)
            raise
        except BaseException:
            s.delete.record(ERROR, perf_counter() - t0)
            raise
        s.delete.record(OK, perf_counter() - t0)
        return value

    def _traced(self, operation: str, key: _K, call: Callable[[], Any]) -> Any:
        """The slow path with a span (``spans=True``): same counts, plus the span."""
        s = self._site
        cells = s.op(operation)
        span = _start_span(s.rt, self.name, operation, key)
        t0 = perf_counter()
        try:
            value = call()
        except _Miss:
            cells.record(MISS, perf_counter() - t0)
            _end_span(s.rt, span, MISS)
            return _MISSING
        except KeyError:
            result = MISS if operation == "get" else OK
            cells.record(result, perf_counter() - t0)
            _end_span(s.rt, span, result)
            raise
        except BaseException as exc:
            cells.record(ERROR, perf_counter() - t0)
            _end_span(s.rt, span, ERROR, exc, key)
            raise
        result = HIT if operation == "get" else OK
        cells.record(result, perf_counter() - t0)
        _end_span(s.rt, span, result)
        return value

    # --- passed through ---------------------------------------------------------------------
    def __contains__(self, key: object) -> bool:
        return key in self.wrapped

    def __len__(self) -> int:
        return len(self.wrapped)

    def __iter__(self) -> Iterator[_K]:
        return iter(self.wrapped)

    def keys(self) -> KeysView[_K]:
        return self.wrapped.keys()

    def values(self) -> ValuesView[_V]:
        return self.wrapped.values()

    def items(self) -> ItemsView[_K, _V]:
        return self.wrapped.items()

    def clear(self) -> None:
        self.wrapped.clear()

    def popitem(self) -> tuple[_K, _V]:
        return self.wrapped.popitem()

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name in InstrumentedCache.__slots__:
            raise AttributeError(name)
        return getattr(self.wrapped, name)

    def __repr__(self) -> str:
        return f"InstrumentedCache({self.wrapped!r}, name={self.name!r})"


class _Miss(Exception):
    """``get`` found nothing (traced path only)."""


def instrument_cache(mapping: MutableMapping[_K, _V], *, name: str, spans: bool = False) -> InstrumentedCache[_K, _V]:
    """Wrap a mapping-like cache so its lookups, writes and deletes are counted under ``name``.

    Returns a proxy; keep using the proxy instead of the cache (pass it to cachetools'
    ``@cached(cache=...)``, for instance). Wrapping a proxy returns it unchanged. The metric cells
    are bound here, once, and again only after ``configure()`` replaced the runtime.

    Args:
        mapping: a ``dict``, a cachetools cache, or anything with ``__getitem__``, ``get``,
            ``__setitem__``, ``__delitem__`` and ``pop``.
        name: the ``cache_name`` label: a fixed, low-cardinality name (``"profiles"``).
        spans: also make one INTERNAL span per operation (off by default: see the module docs).

    Example:
        >>> from bakhmach_obs.cache import instrument_cache
        >>> from bakhmach_obs.testing import capture
        >>> with capture() as cap:
        ...     cache = instrument_cache({}, name="rates")
        ...     cache["eur"] = 1.1
        ...     cache["eur"], cache.get("usd", 0.0)
        (1.1, 0.0)
        >>> cap.sample("cache_operations_total", cache_name="rates", cache_operation="get", cache_result="miss")
        1.0
    """
    if isinstance(mapping, InstrumentedCache):
        return mapping
    if not name or not isinstance(name, str):
        raise ValueError("instrument_cache() needs a non-empty cache name")
    return InstrumentedCache(mapping, name, spans=spans)


def uninstrument_cache(cache: MutableMapping[_K, _V]) -> MutableMapping[_K, _V]:
    """The cache behind a proxy from :func:`instrument_cache` (anything else is returned as is)."""
    return cache.wrapped if isinstance(cache, InstrumentedCache) else cache


# --- cache_lookup -------------------------------------------------------------------------------
_lookup_lock = threading.Lock()
#: (runtime, cache name, operation) -> cells; reset when configure() replaces the runtime.
_lookup_cells: dict[tuple[str, str], _OpCells] = {}
_lookup_rt: list[Runtime | None] = [None]


def _lookup_op(rt: Runtime, name: str, operation: str) -> _OpCells:
    if _lookup_rt[0] is not rt:
        with _lookup_lock:
            if _lookup_rt[0] is not rt:
                _lookup_cells.clear()
                _lookup_rt[0] = rt
    key = (name, operation)
    cells = _lookup_cells.get(key)
    if cells is not None:
        return cells
    if not rt.metrics_enabled:
        return _NULL_OP
    cells = _OpCells(rt, name, operation, ())
    with _lookup_lock:
        if len(_lookup_cells) < rt.settings.cardinality_limit:
            _lookup_cells[key] = cells
    return cells


class CacheLookup:
    """One cache operation in progress (see :func:`cache_lookup`): call :meth:`hit` or :meth:`miss`.

    ``result`` is the result recorded (or to be recorded): ``"hit"``, ``"miss"``, ``"ok"`` or
    ``"error"``. Works with ``with`` and ``async with``.
    """

    __slots__ = ("_cells", "_result", "_rt", "_span", "_t0", "_token", "key", "name", "operation", "spans")

    def __init__(self, name: str, operation: str, key: object, spans: bool) -> None:
        self.name = name
        self.operation = operation
        self.key = key
        self.spans = spans
        self._result = OK
        self._rt: Runtime | None = None
        self._cells: _OpCells = _NULL_OP
        self._span: Span | None = None
        self._token: object = None
        self._t0 = 0.0

    @property
    def result(self) -> str:
        return _RESULTS[self._result]

    def hit(self) -> None:
        """The lookup found the value."""
        self._result = HIT

    def miss(self) -> None:
        """The lookup found nothing."""
        self._result = MISS

    def __enter__(self) -> CacheLookup:
        self._rt = None
        rt = CURRENT[0]
        if rt is None:
            rt = current()
        if not rt.enabled or SUPPRESSED.get():
            return self
        self._rt = rt
        try:
            self._cells = _lookup_op(rt, self.name, self.operation)
        except Exception as exc:  # noqa: BLE001
            rt.report_error("metrics", exc)
            self._cells = _NULL_OP
        if self.spans and rt.tracer is not None:
            span = self._span = _start_span(rt, self.name, self.operation, self.key)
            if span is not None:
                try:
                    self._token = otel_context.attach(trace.set_span_in_context(span))
                except Exception as exc:  # noqa: BLE001
                    rt.report_error("tracing", exc)
        self._t0 = perf_counter()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        rt = self._rt
        if rt is None:
            return
        duration = perf_counter() - self._t0
        self._rt = None
        if exc is not None:
            self._result = ERROR
        if self._token is not None:
            try:
                otel_context.detach(self._token)  # type: ignore[arg-type]
            except Exception as err:  # noqa: BLE001
                rt.report_error("tracing", err)
            self._token = None
        self._cells.record(self._result, duration)
        span, self._span = self._span, None
        _end_span(rt, span, self._result, exc, self.key)

    async def __aenter__(self) -> CacheLookup:
        return self.__enter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.__exit__(exc_type, exc, traceback)


def cache_lookup(cache_name: str, operation: str = "get", *, key: object = _MISSING, spans: bool = True) -> CacheLookup:
    """Record one operation on any cache backend: ``with cache_lookup("profiles") as lookup: ...``.

    Inside the block call ``lookup.hit()`` or ``lookup.miss()``. On exit the operation is counted
    in ``cache_operations_total{cache_name, cache_operation=operation, cache_result}`` and timed in
    ``cache_operation_duration_seconds``: ``hit``/``miss`` as called (the last call wins), ``ok``
    when neither was called (a write, say), ``error`` when the block raised; the exception
    propagates unchanged. A span ``"{operation} {cache_name}"`` covers the block unless
    ``spans=False``; pass ``key=`` to put its hash on the span (the key itself is never recorded).

    Example:
        >>> from bakhmach_obs.cache import cache_lookup
        >>> from bakhmach_obs.testing import capture
        >>> backend = {"u1": "Ada"}
        >>> with capture() as cap:
        ...     for user in ("u1", "u2"):
        ...         with cache_lookup("profiles", key=user) as lookup:
        ...             value = backend.get(user)
        ...             lookup.hit() if value is not None else lookup.miss()
        ...     with cache_lookup("profiles", "set"):
        ...         backend["u2"] = "Bob"
        >>> [cap.sample("cache_operations_total", cache_name="profiles", cache_result=r) for r in ("hit", "miss", "ok")]
        [1.0, 1.0, 1.0]
        >>> [s.name for s in cap.spans()]
        ['get profiles', 'get profiles', 'set profiles']
    """
    return CacheLookup(cache_name, operation, key, spans)
