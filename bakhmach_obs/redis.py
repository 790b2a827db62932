"""Redis commands made with redis-py (sync and asyncio clients, pipelines): a span and a metric each.

:func:`instrument_redis` hooks one client instance (no global patching): its ``execute_command``
and its ``pipeline`` factory, so the pipelines it creates are covered too. Each command records

* a span of kind CLIENT named after the command (``GET``, ``CLIENT SETNAME``), with
  ``db.system.name=redis``, ``db.operation.name`` (the command), ``db.namespace`` (the database
  index, ``"0"``), ``server.address`` and ``server.port`` (or the socket path), and the correlation
  id when one is bound. Keys, values and arguments are never recorded (no ``db.query.text``). An
  exception sets ``error.type`` to its qualified class name (``redis.exceptions.ResponseError``),
  is recorded on the span (message and stack trace redacted) and re-raised unchanged. The span
  is not made current: nothing the application runs happens inside a command;
* ``db_client_operation_duration_seconds{db_system_name="redis", db_operation_name, db_collection_name="",
  db_namespace, error_type}``, ``error_type`` empty on success. The duration covers redis-py's
  retries and the reply parsing.

A pipeline's ``execute()`` is one span and one observation named ``MULTI`` (a transaction, the
default of ``client.pipeline()``) or ``PIPELINE`` (``transaction=False``), with
``db.operation.batch.size`` set to the number of queued commands. OpenTelemetry's redis
instrumentation names the span after the queued commands joined by spaces (``SET GET GET``): a
name that changes with every batch, and an unbounded label if it became a metric; redis-py's own
metrics use ``MULTI``/``PIPELINE`` too. Commands a pipeline runs immediately (``WATCH`` and the
reads after it) are recorded like the client's.

With ``cache_name=``, the client is also a cache: lookups (``GET``, ``GETEX``, ``GETDEL``,
``HGET``, ``HEXISTS``, and per key ``MGET``, ``HMGET``, ``EXISTS``) count ``hit``/``miss`` in
``cache_operations_total{cache_name, cache_operation="get"}``; writes (``SET``, ``SETEX``,
``PSETEX``, ``SETNX``, ``MSET``, ``HSET``) count ``set``, deletes (``DEL``, ``UNLINK``, ``HDEL``)
``delete``, both ``ok``, and a command that raised counts ``error``. Each counted command is
timed in ``cache_operation_duration_seconds``; the commands of a pipeline are counted from its
replies but not timed one by one. Spans of cache commands carry ``bakhmach.cache.key_hash`` (a
hash of the first key, see :func:`bakhmach_obs.cache.key_hash`).

Nothing is recorded inside ``bakhmach_obs.suppress()``, while OpenTelemetry's instrumentation
suppression is on, or when the SDK is disabled. A failure of the telemetry is counted in
``bakhmach_obs_telemetry_errors_total`` and the command runs as if uninstrumented.

redis is imported only when a function here is called; ``import bakhmach_obs`` never imports it.

Example:
    >>> import redis
    >>> from bakhmach_obs.redis import instrument_redis, uninstrument_redis
    >>> client = redis.Redis(host="127.0.0.1", port=6379, db=2)
    >>> instrument_redis(client, cache_name="sessions") is client
    True
    >>> instrument_redis(client) is client  # idempotent: the first call's settings stay
    True
    >>> uninstrument_redis(client)
    >>> client.close()
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from functools import lru_cache
from time import perf_counter
from typing import TYPE_CHECKING, Any, TypeVar

from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from . import conventions as c
from ._runtime import Runtime, current, per_runtime
from .cache import _NULL_OP, ERROR, HIT, MISS, OK, _OpCells, _Site, key_hash
from .context import CORRELATION_ID, instrumentation_suppressed
from .logs import exception_type_name
from .metrics import HistogramCell
from .tracing import record_exception

if TYPE_CHECKING:
    import redis
    import redis.asyncio

__all__ = ["DB_SYSTEM", "instrument_redis", "is_instrumented", "uninstrument_redis"]

#: ``db.system.name`` / ``db_system_name`` of every redis span and observation.
DB_SYSTEM = "redis"
#: OpenTelemetry's attribute for the number of operations in a batch.
ATTR_BATCH_SIZE = c.ATTR_DB_BATCH_SIZE
_CLIENT = SpanKind.CLIENT
#: The marker attribute the wrappers carry (idempotence, uninstrumenting).
_MARK = "_bakhmach_obs_redis"
#: Distinct commands whose span attributes and metric cells a client keeps bound.
_MAX_COMMANDS = 512

_ClientT = TypeVar("_ClientT", bound="redis.Redis | redis.asyncio.Redis")

# --- cache semantics of commands ---------------------------------------------------------------
_ONE, _EACH, _COUNT, _WRITE = 0, 1, 2, 3
#: command -> (cache operation, how its reply reads): _ONE (None is a miss, else a hit), _EACH
#: (a list: one hit or miss per element), _COUNT (an integer of keys found among the keys given),
#: _WRITE (ok).
_CACHE_COMMANDS: dict[str, tuple[str, int]] = {
    "GET": ("get", _ONE),
    "GETEX": ("get", _ONE),
    "GETDEL": ("get", _ONE),
    "HGET": ("get", _ONE),
    "HEXISTS": ("get", _ONE),
    "MGET": ("get", _EACH),
    "HMGET": ("get", _EACH),
    "EXISTS": ("get", _COUNT),
    "SET": ("set", _WRITE),
    "SETEX": ("set", _WRITE),
    "PSETEX": ("set", _WRITE),
    "SETNX": ("set", _WRITE),
    "MSET": ("set", _WRITE),
    "HSET": ("set", _WRITE),
    "DEL": ("delete", _WRITE),
    "UNLINK": ("delete", _WRITE),
    "HDEL": ("delete", _WRITE),
}


def _command_name(args: tuple[Any, ...]) -> str:
    if not args:
        return "UNKNOWN"
    name = args[0]
    if type(name) is not str:
        name = name.decode("ascii", "replace") if isinstance(name, (bytes, bytearray)) else str(name)
    return name.upper()


def _cache_counts(kind: int, reply: Any, nargs: int) -> tuple[int, int]:
    """(hits, misses) of a lookup reply; ``nargs`` is the number of arguments after the command."""
    if kind == _ONE:
        return (0, 1) if reply is None or reply is False or reply == 0 else (1, 0)
    if kind == _EACH:
        hits = sum(1 for v in reply if v is not None)
        return hits, len(reply) - hits
    found = int(reply)  # EXISTS: how many of the keys given exist (a key given twice counts twice)
    return found, max(nargs - found, 0)


# --- per runtime --------------------------------------------------------------------------------
class _Bound:
    """What a command needs from the runtime, resolved once per ``configure()``."""

    __slots__ = ("exemplars", "family", "on", "rt", "traced")

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.on = rt.enabled
        self.traced = rt.tracer is not None
        self.family: Any = None
        if rt.metrics_enabled:
            try:
                self.family = rt.metric_set.get(c.DB_CLIENT_DURATION)
            except Exception as exc:  # noqa: BLE001 - a registry failure must not break the command
                rt.report_error("metrics", exc)
        self.exemplars = rt.exemplars and self.family is not None
        self.on = self.on and (self.traced or self.family is not None)


_bound = per_runtime(_Bound)


# --- per client ---------------------------------------------------------------------------------
class _Target:
    """One instrumented client (shared with its pipelines): where it connects and what it bound."""

    __slots__ = ("attrs", "cache", "cache_name", "cells", "cells_rt", "lock", "namespace")

    def __init__(self, client: Any, cache_name: str | None) -> None:
        try:
            kwargs = client.connection_pool.connection_kwargs
        except AttributeError:
            kwargs = {}
        self.namespace = str(kwargs.get("db", 0))
        base: dict[str, Any] = {c.ATTR_DB_SYSTEM: DB_SYSTEM, c.ATTR_DB_NAMESPACE: self.namespace}
        path = kwargs.get("path")
        if path:
            base[c.ATTR_SERVER_ADDRESS] = str(path)
        else:
            base[c.ATTR_SERVER_ADDRESS] = str(kwargs.get("host", "localhost"))
            port = kwargs.get("port", 6379)
            if isinstance(port, int):
                base[c.ATTR_SERVER_PORT] = port
        self.cache_name = cache_name
        self.lock = threading.Lock()
        #: command -> span attributes (the SDK copies them; never mutated after creation).
        self.attrs: dict[str, dict[str, Any]] = {"": base}
        #: command -> HistogramCell of its successful observations, for ``cells_rt``.
        self.cells: dict[str, HistogramCell] = {}
        self.cells_rt: Runtime | None = None
        self.cache: _Site | None = None

    def attributes(self, command: str) -> dict[str, Any]:
        attrs = self.attrs.get(command)
        if attrs is None:
            attrs = {**self.attrs[""], c.ATTR_DB_OPERATION: command}
            if len(self.attrs) < _MAX_COMMANDS:
                self.attrs[command] = attrs
        return attrs

    def cell(self, b: _Bound, command: str) -> HistogramCell | None:
        if self.cells_rt is not b.rt:
            with self.lock:
                if self.cells_rt is not b.rt:
                    self.cells = {}
                    self.cache = None
                    self.cells_rt = b.rt
        cell = self.cells.get(command)
        if cell is None and b.family is not None:
            cell = HistogramCell(b.family.labels(DB_SYSTEM, command, "", self.namespace, ""))
            if len(self.cells) < _MAX_COMMANDS:
                self.cells[command] = cell
        return cell

    def cache_site(self, rt: Runtime) -> _Site | None:
        if self.cache_name is None:
            return None
        site = self.cache
        if site is None or site.rt is not rt:
            site = self.cache = _Site(rt, self.cache_name, spans=False)
        return site


class _Call:
    """One command (or pipeline execution) in flight."""

    __slots__ = ("b", "command", "span", "t0", "target")

    def __init__(self, b: _Bound, target: _Target, command: str, first_key: Any, batch: int | None) -> None:
        self.b = b
        self.target = target
        self.command = command
        self.span: Span | None = None
        if b.traced:
            try:
                attributes = target.attributes(command)
                cid = CORRELATION_ID.get()
                if batch is not None or cid is not None or first_key is not None:
                    attributes = dict(attributes)
                    if cid is not None:
                        attributes[c.ATTR_CORRELATION_ID] = cid
                    if batch is not None:
                        attributes[ATTR_BATCH_SIZE] = batch
                    if first_key is not None:
                        attributes[c.ATTR_CACHE_NAME] = target.cache_name
                        attributes[c.ATTR_CACHE_KEY_HASH] = key_hash(first_key)
                self.span = b.rt.start_span(command, _CLIENT, attributes)
            except Exception as exc:  # noqa: BLE001
                b.rt.report_error("tracing", exc)
        self.t0 = perf_counter()

    def finish(self) -> float:
        duration = perf_counter() - self.t0
        b = self.b
        if b.family is not None:
            try:
                cell = self.target.cell(b, self.command)
                if cell is not None:
                    i = cell.observe(duration)
                    if b.exemplars and self.span is not None:
                        cell.exemplar(i, duration, self.span)
            except Exception as exc:  # noqa: BLE001
                b.rt.report_error("metrics", exc)
        self._end()
        return duration

    def fail(self, exc: BaseException) -> float:
        duration = perf_counter() - self.t0
        b = self.b
        error_type = exception_type_name(exc)
        span = self.span
        if span is not None:
            try:
                if span.is_recording():
                    span.set_attribute(c.ATTR_ERROR_TYPE, error_type)
                    record_exception(span, exc, b.rt.redaction, b.rt.report_error)
                    span.set_status(Status(StatusCode.ERROR, error_type))
            except Exception as err:  # noqa: BLE001
                b.rt.report_error("tracing", err)
        if b.family is not None:
            try:
                b.family.labels(DB_SYSTEM, self.command, "", self.target.namespace, error_type).observe(duration)
            except Exception as err:  # noqa: BLE001
                b.rt.report_error("metrics", err)
        self._end()
        return duration

    def _end(self) -> None:
        if self.span is not None:
            try:
                self.span.end()
            except Exception as exc:  # noqa: BLE001
                self.b.rt.report_error("tracing", exc)


def _begin(target: _Target, command: str, args: tuple[Any, ...], batch: int | None = None) -> _Call | None:
    """Start recording, or None when nothing must be recorded (or starting failed)."""
    b = _bound()
    if not b.on or instrumentation_suppressed():
        return None
    try:
        first_key = None
        if target.cache_name is not None and b.traced and len(args) > 1 and command in _CACHE_COMMANDS:
            first_key = args[1]
        return _Call(b, target, command, first_key, batch)
    except Exception as exc:  # noqa: BLE001 - the command runs unrecorded
        b.rt.report_error("instrument", exc)
        return None


def _cache_record(call: _Call, args: tuple[Any, ...], reply: Any, exc: BaseException | None, duration: float) -> None:
    """Count a cache command of a ``cache_name`` client (never raises)."""
    spec = _CACHE_COMMANDS.get(call.command)
    if spec is None:
        return
    rt = call.b.rt
    try:
        site = call.target.cache_site(rt)
        if site is None:
            return
        cells: _OpCells = site.op(spec[0])
        if cells is _NULL_OP:
            return
        if exc is not None:
            cells.record(ERROR, duration)
        elif spec[1] == _WRITE:
            cells.record(OK, duration)
        else:
            hits, misses = _cache_counts(spec[1], reply, len(args) - 1)
            if hits + misses == 1:
                cells.record(HIT if hits else MISS, duration)
            else:
                cells.count(HIT, hits)  # one count per key, one duration per command
                cells.count(MISS, misses)
                cells.observe(duration)
    except Exception as err:  # noqa: BLE001
        rt.report_error("metrics", err)


def _pipeline_cache_record(call: _Call, stack: list[tuple[Any, ...]], replies: Any) -> None:
    """Count the cache commands of an executed pipeline from its replies (never raises)."""
    rt = call.b.rt
    try:
        site = call.target.cache_site(rt)
        if site is None or not isinstance(replies, list) or len(replies) != len(stack):
            return
        for args, reply in zip(stack, replies, strict=True):
            spec = _CACHE_COMMANDS.get(_command_name(args))
            if spec is None:
                continue
            cells = site.op(spec[0])
            if isinstance(reply, Exception):
                cells.count(ERROR, 1)
            elif spec[1] == _WRITE:
                cells.count(OK, 1)
            else:
                hits, misses = _cache_counts(spec[1], reply, len(args) - 1)
                cells.count(HIT, hits)
                cells.count(MISS, misses)
    except Exception as err:  # noqa: BLE001
        rt.report_error("metrics", err)


# --- wrappers ---------------------------------------------------------------------------------------
def _sync_command(target: _Target, original: Callable[..., Any]) -> Callable[..., Any]:
    def execute_command(*args: Any, **options: Any) -> Any:
        command = _command_name(args)
        call = _begin(target, command, args)
        if call is None:
            return original(*args, **options)
        try:
            reply = original(*args, **options)
        except BaseException as exc:
            duration = call.fail(exc)
            if target.cache_name is not None:
                _cache_record(call, args, None, exc, duration)
            raise
        duration = call.finish()
        if target.cache_name is not None:
            _cache_record(call, args, reply, None, duration)
        return reply

    return _marked(execute_command, original)


def _async_command(target: _Target, original: Callable[..., Any]) -> Callable[..., Any]:
    async def execute_command(*args: Any, **options: Any) -> Any:
        command = _command_name(args)
        call = _begin(target, command, args)
        if call is None:
            return await original(*args, **options)
        try:
            reply = await original(*args, **options)
        except BaseException as exc:
            duration = call.fail(exc)
            if target.cache_name is not None:
                _cache_record(call, args, None, exc, duration)
            raise
        duration = call.finish()
        if target.cache_name is not None:
            _cache_record(call, args, reply, None, duration)
        return reply

    return _marked(execute_command, original)


def _pipeline_name(pipe: Any) -> str:
    transaction = getattr(pipe, "is_transaction", None)
    if transaction is None:
        transaction = getattr(pipe, "transaction", False)
    return "MULTI" if transaction or getattr(pipe, "explicit_transaction", False) else "PIPELINE"


def _pipeline_stack(pipe: Any) -> list[tuple[Any, ...]]:
    """The queued commands' arguments (``command_stack`` holds ``(args, options)`` pairs)."""
    return [entry[0] for entry in pipe.command_stack]


def _sync_execute(target: _Target, pipe: Any, original: Callable[..., Any]) -> Callable[..., Any]:
    def execute(raise_on_error: bool = True) -> Any:
        if not pipe.command_stack and not pipe.watching:
            return original(raise_on_error)
        stack = _pipeline_stack(pipe)
        name = _pipeline_name(pipe)
        call = _begin(target, name, (), len(stack))
        if call is None:
            return original(raise_on_error)
        try:
            replies = original(raise_on_error)
        except BaseException as exc:
            call.fail(exc)
            raise
        call.finish()
        if target.cache_name is not None:
            _pipeline_cache_record(call, stack, replies)
        return replies

    return _marked(execute, original)


def _async_execute(target: _Target, pipe: Any, original: Callable[..., Any]) -> Callable[..., Any]:
    async def execute(raise_on_error: bool = True) -> Any:
        if not pipe.command_stack and not pipe.watching:
            return await original(raise_on_error)
        stack = _pipeline_stack(pipe)
        name = _pipeline_name(pipe)
        call = _begin(target, name, (), len(stack))
        if call is None:
            return await original(raise_on_error)
        try:
            replies = await original(raise_on_error)
        except BaseException as exc:
            call.fail(exc)
            raise
        call.finish()
        if target.cache_name is not None:
            _pipeline_cache_record(call, stack, replies)
        return replies

    return _marked(execute, original)


def _pipeline_factory(target: _Target, original: Callable[..., Any], is_async: bool) -> Callable[..., Any]:
    def pipeline(*args: Any, **kwargs: Any) -> Any:
        pipe = original(*args, **kwargs)
        try:
            _instrument_pipeline(target, pipe, is_async)
        except Exception as exc:  # noqa: BLE001 - the pipeline works unrecorded
            current().report_error("instrument", exc)
        return pipe

    return _marked(pipeline, original)


def _instrument_pipeline(target: _Target, pipe: Any, is_async: bool) -> None:
    if getattr(vars(pipe).get("execute"), _MARK, False):
        return
    command = _async_command if is_async else _sync_command
    execute = _async_execute if is_async else _sync_execute
    pipe.immediate_execute_command = command(target, pipe.immediate_execute_command)
    pipe.execute = execute(target, pipe, pipe.execute)


def _marked(wrapper: Callable[..., Any], original: Callable[..., Any]) -> Callable[..., Any]:
    setattr(wrapper, _MARK, True)
    wrapper.__wrapped__ = original  # type: ignore[attr-defined]
    wrapper.__doc__ = getattr(original, "__doc__", None)
    return wrapper


@lru_cache(maxsize=1)
def _classes() -> tuple[type[Any], type[Any]]:
    import redis
    import redis.asyncio

    return redis.Redis, redis.asyncio.Redis


def is_instrumented(client: Any) -> bool:
    """True when :func:`instrument_redis` hooked ``client`` (and no :func:`uninstrument_redis` since)."""
    return bool(getattr(vars(client).get("execute_command"), _MARK, False))


def instrument_redis(client: _ClientT, *, cache_name: str | None = None) -> _ClientT:
    """Record every command of a redis-py client, in place, and return it.

    Works for ``redis.Redis`` and ``redis.asyncio.Redis`` (and their subclasses); pipelines created
    by ``client.pipeline()`` (or ``client.transaction()``) afterwards are recorded too, one span
    per ``execute()``. Calling it again on the same client changes nothing (the first
    ``cache_name`` stays). See the module docstring for what is recorded.

    Args:
        client: the client to instrument.
        cache_name: also count the client's lookups, writes and deletes as cache operations under
            this ``cache_name`` (a fixed, low-cardinality name).

    Raises:
        TypeError: ``client`` is not a redis-py ``Redis`` client (cluster clients are not
            supported yet).
    """
    sync_cls, async_cls = _classes()
    if isinstance(client, async_cls):
        is_async = True
    elif isinstance(client, sync_cls):
        is_async = False
    else:
        raise TypeError(f"instrument_redis() needs a redis.Redis or redis.asyncio.Redis, not {type(client).__name__}")
    if cache_name is not None and (not isinstance(cache_name, str) or not cache_name):
        raise ValueError("cache_name must be a non-empty string")
    if is_instrumented(client):
        return client
    target = _Target(client, cache_name)
    wrap = _async_command if is_async else _sync_command
    client.execute_command = wrap(target, client.execute_command)
    client.pipeline = _pipeline_factory(target, client.pipeline, is_async)
    return client


def uninstrument_redis(client: Any) -> None:
    """Undo :func:`instrument_redis` on ``client`` (pipelines created before keep recording).

    Does nothing when the client is not instrumented.
    """
    state = vars(client)
    for name in ("execute_command", "pipeline"):
        if getattr(state.get(name), _MARK, False):
            del state[name]
