"""RabbitMQ instrumentation for pika and aio-pika, and a queue depth and lag collector.

pika (``BlockingConnection``): :func:`instrument_channel` wraps one channel's ``basic_publish``
(headers added to a copy of the message properties, via :func:`bakhmach_obs.messaging.publish`),
``basic_consume`` (each ``on_message_callback`` call runs inside
:func:`bakhmach_obs.messaging.consume`) and ``basic_get`` (recorded as a ``receive`` operation;
process what it returned inside ``messaging.consume()``). :func:`uninstrument_channel` undoes it.

aio-pika: :func:`instrument_aio_channel` makes the channel create instrumented exchanges
(``publish``) and queues (``consume`` callbacks), its default exchange included. Messages read
from ``queue.iterator()`` are processed in the application's own loop: use :func:`processing`
instead of ``message.process()`` there.

The destination is the exchange name, or the routing key when publishing to the default exchange
(it is then the queue name, so producer and consumer series match); on the consumer side it is
the queue name. Nothing is patched globally: only the channels (and the queues and exchanges they
create) given to these functions are instrumented, and calling them again changes nothing.

:class:`QueueDepthCollector` polls queue depths (and lags) from a background thread with its own
connection; see its docstring and ``docs/messaging.md`` for how lag is measured.

pika and aio-pika are imported only when a function here needs them; ``import bakhmach_obs``
never imports them.

Example:
    >>> from bakhmach_obs.rabbitmq import QueueDepthCollector
    >>> collector = QueueDepthCollector("amqp://guest:guest@127.0.0.1:5672/%2F", ["orders"], interval=15.0)
    >>> collector.running
    False
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import inspect
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from functools import cache
from time import perf_counter
from typing import Any

from . import _runtime
from . import conventions as c
from .logs import exception_type_name
from .messaging import _take_max_age, consume, message_age, publish, record_operation
from .metrics import is_multiprocess

__all__ = [
    "SYSTEM",
    "QueueDepthCollector",
    "instrument_aio_channel",
    "instrument_aio_queue",
    "instrument_channel",
    "processing",
    "uninstrument_aio_channel",
    "uninstrument_aio_queue",
    "uninstrument_channel",
]

#: ``messaging_system`` of everything recorded here.
SYSTEM = "rabbitmq"
#: Marks the wrappers this module installed (idempotence, uninstrumenting).
_MARK = "_bakhmach_obs_rabbitmq"
_PIKA_METHODS = ("basic_publish", "basic_consume", "basic_get")


def _pika() -> Any:
    """The pika module (untyped: everything from it is ``Any``), imported on first use."""
    return importlib.import_module("pika")


def _destination(exchange: str, routing_key: str) -> str:
    return exchange or routing_key


def _body_size(body: Any) -> int | None:
    return len(body) if isinstance(body, (bytes, bytearray, memoryview)) else None


# --- pika -----------------------------------------------------------------------------------------


def _wrap_on_message(queue: str, callback: Callable[..., Any]) -> Callable[..., Any]:
    if getattr(callback, _MARK, False):
        return callback

    def on_message(channel: Any, method: Any, properties: Any, body: Any) -> Any:
        with consume(
            queue,
            getattr(properties, "headers", None),
            system=SYSTEM,
            message_id=getattr(properties, "message_id", None),
            body_size=_body_size(body),
        ):
            return callback(channel, method, properties, body)

    setattr(on_message, _MARK, True)
    on_message.__wrapped__ = callback  # type: ignore[attr-defined]
    return on_message


def instrument_channel(channel: Any) -> Any:
    """Instrument a pika ``BlockingChannel`` in place and return it (calling it again changes nothing).

    * ``basic_publish``: a PRODUCER span, ``traceparent``/``x-correlation-id``/``x-published-at``
      added to a copy of ``properties`` (a new ``BasicProperties`` when None; the caller's object
      and headers are never modified), sent counter and publish duration;
    * ``basic_consume``: ``on_message_callback`` runs inside :func:`bakhmach_obs.messaging.consume`
      (CONSUMER span child of the producer's, correlation id bound, consumed counter, processing
      duration; an exception raised by the callback is recorded and re-raised unchanged);
    * ``basic_get``: ``messaging_client_operation_duration_seconds{messaging_operation_name="receive"}``.

    ``channel.consume()`` (the generator API) is not wrapped: process each message it yields
    inside ``messaging.consume(queue, properties.headers)``.
    """
    if getattr(vars(channel).get("basic_publish"), _MARK, False):
        return channel
    pika = _pika()
    basic_publish, basic_consume, basic_get = channel.basic_publish, channel.basic_consume, channel.basic_get

    def publish_(exchange: str, routing_key: str, body: Any, properties: Any = None, mandatory: bool = False) -> Any:
        props = pika.BasicProperties() if properties is None else copy.copy(properties)
        headers = dict(props.headers) if props.headers else {}
        with publish(
            _destination(exchange, routing_key),
            system=SYSTEM,
            headers=headers,
            message_id=props.message_id,
            body_size=_body_size(body),
        ) as sent:
            props.headers = sent
            return basic_publish(exchange, routing_key, body, props, mandatory)

    def consume_(queue: str, on_message_callback: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return basic_consume(queue, _wrap_on_message(queue, on_message_callback), *args, **kwargs)

    def get_(queue: str, auto_ack: bool = False) -> Any:
        t0 = perf_counter()
        try:
            result = basic_get(queue, auto_ack)
        except Exception as exc:
            record_operation("receive", queue, perf_counter() - t0, system=SYSTEM, error_type=exception_type_name(exc))
            raise
        record_operation("receive", queue, perf_counter() - t0, system=SYSTEM)
        return result

    wrappers: tuple[tuple[str, Callable[..., Any], Any], ...] = (
        ("basic_publish", publish_, basic_publish),
        ("basic_consume", consume_, basic_consume),
        ("basic_get", get_, basic_get),
    )
    for name, wrapper, original in wrappers:
        setattr(wrapper, _MARK, True)
        setattr(wrapper, "__wrapped__", original)  # noqa: B010 - a function attribute mypy does not know
        wrapper.__name__ = wrapper.__qualname__ = name
        setattr(channel, name, wrapper)
    return channel


def uninstrument_channel(channel: Any) -> None:
    """Undo :func:`instrument_channel` (consumers registered meanwhile keep their wrapped callbacks)."""
    for name in _PIKA_METHODS:
        if getattr(vars(channel).get(name), _MARK, False):
            delattr(channel, name)


# --- aio-pika -------------------------------------------------------------------------------------


def _wrap_aio_callback(queue: str, callback: Callable[[Any], Any]) -> Callable[[Any], Any]:
    if getattr(callback, _MARK, False):
        return callback

    async def on_message(message: Any) -> Any:
        with consume(
            queue,
            message.headers,
            system=SYSTEM,
            message_id=message.message_id,
            body_size=_body_size(message.body),
        ):
            result = callback(message)
            if inspect.isawaitable(result):
                result = await result
            return result

    setattr(on_message, _MARK, True)
    on_message.__wrapped__ = callback  # type: ignore[attr-defined]
    return on_message


@cache
def _aio_exchange_class(base: type) -> type:
    """``base`` (an aio-pika exchange class) with an instrumented ``publish``."""

    class InstrumentedExchange(base):  # type: ignore[misc]
        __slots__ = ()

        async def publish(self, message: Any, routing_key: str, **kwargs: Any) -> Any:
            original = message.headers
            headers = dict(original) if original else {}
            with publish(
                _destination(self.name, routing_key),
                system=SYSTEM,
                headers=headers,
                message_id=message.message_id,
                body_size=message.body_size,
            ) as sent:
                message.headers = sent
                try:
                    return await super().publish(message, routing_key, **kwargs)
                finally:
                    message.headers = original  # the caller's message is left as it was

    InstrumentedExchange.__name__ = InstrumentedExchange.__qualname__ = f"Instrumented{base.__name__}"
    setattr(InstrumentedExchange, _MARK, base)
    return InstrumentedExchange


@cache
def _aio_queue_class(base: type) -> type:
    """``base`` (an aio-pika queue class) whose ``consume`` callbacks run inside ``messaging.consume``."""

    class InstrumentedQueue(base):  # type: ignore[misc]
        __slots__ = ()

        async def consume(self, callback: Callable[[Any], Any], *args: Any, **kwargs: Any) -> Any:
            from aio_pika.abc import AbstractQueueIterator

            if not isinstance(getattr(callback, "__self__", None), AbstractQueueIterator):
                # ``queue.iterator()`` consumes into its own buffer: the processing happens in the
                # application's loop, recorded by ``processing()``, not at delivery.
                callback = _wrap_aio_callback(self.name, callback)
            return await super().consume(callback, *args, **kwargs)

    InstrumentedQueue.__name__ = InstrumentedQueue.__qualname__ = f"Instrumented{base.__name__}"
    setattr(InstrumentedQueue, _MARK, base)
    return InstrumentedQueue


def _swap_class(obj: Any, factory: Callable[[type], type]) -> None:
    cls = type(obj)
    if vars(cls).get(_MARK) is None:
        obj.__class__ = factory(cls)


def _restore_class(obj: Any) -> None:
    base = vars(type(obj)).get(_MARK)
    if base is not None:
        obj.__class__ = base


def instrument_aio_queue(queue: Any) -> Any:
    """Instrument one existing aio-pika queue in place (its ``consume`` callbacks) and return it."""
    _swap_class(queue, _aio_queue_class)
    return queue


def uninstrument_aio_queue(queue: Any) -> None:
    """Undo :func:`instrument_aio_queue` (consumers already started keep their wrapped callbacks)."""
    _restore_class(queue)


def instrument_aio_channel(channel: Any) -> Any:
    """Instrument an aio-pika channel in place and return it (calling it again changes nothing).

    Exchanges and queues the channel declares or gets from now on, and its default exchange
    (re-created on reconnection by robust channels: instrumented too), are instances of
    instrumented subclasses of the channel's own ``EXCHANGE_CLASS``/``QUEUE_CLASS``:
    ``exchange.publish`` goes through :func:`bakhmach_obs.messaging.publish` (the message's headers
    are replaced for the call and restored afterwards) and ``queue.consume(callback)`` runs each
    callback inside :func:`bakhmach_obs.messaging.consume`. Queues declared before this call: use
    :func:`instrument_aio_queue`. Messages from ``queue.iterator()``: use :func:`processing`.
    """
    if vars(channel).get(_MARK):
        return channel
    channel.EXCHANGE_CLASS = _aio_exchange_class(type(channel).EXCHANGE_CLASS)
    channel.QUEUE_CLASS = _aio_queue_class(type(channel).QUEUE_CLASS)
    exchange = vars(channel).get("default_exchange")
    if exchange is not None:
        _swap_class(exchange, _aio_exchange_class)
    setattr(channel, _MARK, True)
    return channel


def uninstrument_aio_channel(channel: Any) -> None:
    """Undo :func:`instrument_aio_channel` for what the channel creates from now on and its default exchange."""
    if not vars(channel).get(_MARK):
        return
    for name in ("EXCHANGE_CLASS", "QUEUE_CLASS", _MARK):
        with contextlib.suppress(AttributeError):
            delattr(channel, name)
    exchange = vars(channel).get("default_exchange")
    if exchange is not None:
        _restore_class(exchange)


@contextlib.asynccontextmanager
async def processing(
    message: Any,
    *,
    queue: str | None = None,
    requeue: bool = False,
    reject_on_redelivered: bool = False,
    ignore_processed: bool = False,
) -> AsyncIterator[str]:
    """``message.process()`` plus :func:`bakhmach_obs.messaging.consume`, for ``queue.iterator()`` loops.

    Yields the message's correlation id. ``queue`` names the destination (default: the message's
    routing key, which is the queue name for messages published to the default exchange). The
    settlement (ack, or reject when the block raises) is part of the span and of the duration.

    Example (not run: it needs a broker)::

        async with queue.iterator() as messages:
            async for message in messages:
                async with processing(message, queue=queue.name):
                    await handle(message.body)
    """
    with consume(
        queue if queue is not None else message.routing_key,
        message.headers,
        system=SYSTEM,
        message_id=message.message_id,
        body_size=_body_size(message.body),
    ) as cid:
        async with message.process(
            requeue=requeue, reject_on_redelivered=reject_on_redelivered, ignore_processed=ignore_processed
        ):
            yield cid


# --- queue depth and lag --------------------------------------------------------------------------


def _connection_parameters(target: Any, timeout: float) -> Any:
    """pika parameters for ``target`` (a URL or ``pika.ConnectionParameters``) with bounded timeouts."""
    pika = _pika()
    params = pika.URLParameters(target) if isinstance(target, str) else copy.deepcopy(target)
    params.socket_timeout = timeout
    params.stack_timeout = timeout
    params.blocked_connection_timeout = timeout
    params.connection_attempts = 1
    params.retry_delay = 0
    params.client_properties = {"connection_name": "bakhmach_obs queue depth collector"}
    return params


class QueueDepthCollector:
    """Polls the depth (and lag) of RabbitMQ queues into ``messaging_queue_depth`` and ``messaging_queue_lag_seconds``.

    A daemon thread with its own pika connection runs, every ``interval`` seconds and for each
    queue, one passive ``queue_declare`` (the broker's count of ready messages and of consumers).
    Every network call is bounded by ``timeout``. A failure (broker down, restarted, wrong
    address, missing queue) is counted in
    ``bakhmach_obs_telemetry_errors_total{component="messaging"}`` and logged at a limited rate;
    the collector reconnects with exponential backoff (0.5 s doubling up to ``interval``). The
    application is never blocked and never sees an exception.

    Lag, the age of the oldest waiting message (from its ``x-published-at`` header):

    * ``peek=False`` (default, no side effect on the queue): 0 when the queue is empty; else the
      oldest age among the messages consumed from the queue *in this process* since the last poll
      (recorded by ``messaging.consume``) and, when messages wait and the broker reports no
      consumer at all, at least the time since the collector first saw that (a lower bound that
      holds across processes). Run the collector in the consumer process for a full picture.
    * ``peek=True``: the head message is read with ``basic_get`` and returned at once with
      ``basic_nack(requeue=True)``: exact, but the message is marked redelivered (consumers using
      ``reject_on_redelivered`` would drop it), is unavailable to consumers for a round trip, and
      on quorum queues each peek increments its delivery count (a queue with a delivery limit,
      RabbitMQ 4's default of 20, would dead-letter it). Prefer it for classic queues only.

    A head message without the header (an uninstrumented producer) leaves the lag unknown: its
    series is removed rather than reported stale.

    Args:
        connection: an AMQP URL or a ``pika.ConnectionParameters`` (copied; timeouts overridden).
        queues: the queue names to watch.
        interval: seconds between polls.
        system: the ``messaging_system`` label.
        peek: measure the lag by peeking at the head message (see above).
        timeout: bound, in seconds, of every connection and broker call.
    """

    def __init__(
        self,
        connection: Any,
        queues: Sequence[str],
        *,
        interval: float = 15.0,
        system: str = SYSTEM,
        peek: bool = False,
        timeout: float = 5.0,
    ) -> None:
        if interval <= 0 or timeout <= 0:
            raise ValueError("interval and timeout must be positive")
        self.target = connection
        self.queues = tuple(queues)
        self.interval = float(interval)
        self.system = system
        self.peek = peek
        self.timeout = float(timeout)
        #: Failures seen so far (connections refused or lost, broker errors).
        self.errors = 0
        #: Completed polls (every queue read) so far.
        self.polls = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._connection: Any = None
        self._channel: Any = None
        self._no_consumer_since: dict[str, float] = {}

    @property
    def running(self) -> bool:
        """True while the background thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> QueueDepthCollector:
        """Start polling in a daemon thread (does nothing if already running); returns self."""
        if self.running:
            return self
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="bakhmach-obs-queue-depth", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> bool:
        """Stop polling and close the connection; True if the thread ended within ``timeout`` seconds."""
        self._stop.set()
        thread = self._thread
        if thread is None:
            return True
        thread.join(timeout)
        return not thread.is_alive()

    def __enter__(self) -> QueueDepthCollector:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- the thread -------------------------------------------------------------------------------

    def _run(self) -> None:
        failures = 0
        try:
            while not self._stop.is_set():
                try:
                    self.poll()
                    failures = 0
                    self._idle(self.interval)
                except Exception as exc:  # noqa: BLE001 - counted, logged, retried: never raised
                    self._failed(exc)
                    failures += 1
                    self._stop.wait(min(self.interval, 0.5 * 2 ** min(failures - 1, 16)))
        finally:
            self._disconnect()

    def _failed(self, exc: BaseException) -> None:
        self.errors += 1
        _runtime.current().report_error("messaging", exc)
        self._disconnect()

    def _idle(self, seconds: float) -> None:
        """Wait, servicing heartbeats about every second so the broker keeps the connection."""
        deadline = time.monotonic() + seconds
        while not self._stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self._stop.wait(min(left, 1.0))
            connection = self._connection
            if connection is not None and connection.is_open:
                connection.process_data_events(time_limit=0)

    def _connect(self) -> Any:
        if self._channel is not None and self._channel.is_open:
            return self._channel
        pika = _pika()
        if self._connection is None or not self._connection.is_open:
            self._disconnect()
            self._connection = pika.BlockingConnection(_connection_parameters(self.target, self.timeout))
        self._channel = self._connection.channel()
        return self._channel

    def _disconnect(self) -> None:
        connection, self._connection, self._channel = self._connection, None, None
        if connection is not None and connection.is_open:
            with contextlib.suppress(Exception):
                connection.close()

    # --- one poll ---------------------------------------------------------------------------------

    def poll(self) -> None:
        """Read every queue once and set the gauges (on the calling thread: only when not started).

        Raises whatever the broker connection raises; a missing queue is reported and skipped.
        """
        pika = _pika()
        rt = _runtime.current()
        depth_family = lag_family = None
        if rt.metrics_enabled:
            ms = rt.metric_set
            depth_family, lag_family = ms.get(c.MESSAGING_QUEUE_DEPTH), ms.get(c.MESSAGING_QUEUE_LAG)
        for queue in self.queues:
            if self._stop.is_set():
                return
            channel = self._connect()
            try:
                ok = channel.queue_declare(queue, passive=True).method
            except pika.exceptions.ChannelClosedByBroker as exc:  # 404: the queue does not exist (yet)
                self._channel = None
                self.errors += 1
                rt.report_error("messaging", exc)
                continue
            depth, consumers = int(ok.message_count), int(ok.consumer_count)
            lag = self._lag(channel, queue, depth, consumers)
            if depth_family is not None and lag_family is not None:
                depth_family.labels(self.system, queue).set(depth)
                if lag is not None:
                    lag_family.labels(self.system, queue).set(lag)
                elif not is_multiprocess():
                    with contextlib.suppress(KeyError):
                        lag_family.remove(self.system, queue)
        self.polls += 1

    def _lag(self, channel: Any, queue: str, depth: int, consumers: int) -> float | None:
        now = time.time()
        consumed = _take_max_age(self.system, queue)
        if depth == 0:
            self._no_consumer_since.pop(queue, None)
            return 0.0
        if self.peek:
            method, properties, _ = channel.basic_get(queue, auto_ack=False)
            if method is None:  # taken by a consumer meanwhile
                return 0.0
            channel.basic_nack(method.delivery_tag, requeue=True)
            return message_age(getattr(properties, "headers", None), now)
        lag = consumed or 0.0
        if consumers == 0:
            since = self._no_consumer_since.setdefault(queue, time.monotonic())
            lag = max(lag, time.monotonic() - since)
        else:
            self._no_consumer_since.pop(queue, None)
        return lag
