"""bakhmach_obs.rabbitmq against a real RabbitMQ (127.0.0.1:5672, guest/guest; skipped when absent).

Every test uses its own uuid-named queues and deletes them; the shared broker is never stopped:
broker outages are simulated with a TCP proxy in front of it whose connections are cut.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

import bakhmach_obs
from bakhmach_obs import messaging
from bakhmach_obs.rabbitmq import (
    QueueDepthCollector,
    instrument_aio_channel,
    instrument_channel,
    processing,
    uninstrument_aio_channel,
    uninstrument_channel,
)
from bakhmach_obs.testing import Capture, capture

from .tcp_proxy import TcpProxy

try:  # tests/ as a rootdir-relative directory (pytest's default "prepend" import mode)
    from conftest import need
except ImportError:  # pragma: no cover
    from tests.conftest import need

pika = pytest.importorskip("pika")

HOST = os.environ.get("RABBITMQ_HOST", "127.0.0.1")
PORT = int(os.environ.get("RABBITMQ_PORT", "5672"))
URL = f"amqp://guest:guest@{HOST}:{PORT}/%2F"
PG_DSN = os.environ.get("BAKHMACH_OBS_PG_DSN", "host=127.0.0.1 port=5432 user=postgres dbname=test")

pytestmark = pytest.mark.services


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


@pytest.fixture
def broker() -> str:
    need(_reachable(HOST, PORT), f"RabbitMQ is not reachable on {HOST}:{PORT}")
    return URL


@pytest.fixture
def connection(broker: str) -> Iterator[Any]:
    conn = pika.BlockingConnection(pika.URLParameters(broker))
    try:
        yield conn
    finally:
        if conn.is_open:
            conn.close()


@pytest.fixture
def queue(connection: Any) -> Iterator[str]:
    name = f"bakhmach-obs-test-{uuid.uuid4().hex}"
    channel = connection.channel()
    channel.queue_declare(name)
    try:
        yield name
    finally:
        if channel.is_open:
            channel.queue_delete(name)
            channel.close()


def _publish(channel: Any, queue: str, n: int, **props: Any) -> None:
    for i in range(n):
        channel.basic_publish("", queue, f"message {i}".encode(), pika.BasicProperties(**props))


def _depth(connection: Any, queue: str) -> int:
    channel = connection.channel()
    try:
        return int(channel.queue_declare(queue, passive=True).method.message_count)
    finally:
        channel.close()


# --- pika -----------------------------------------------------------------------------------------


def test_pika_publish_consume_one_trace_per_message_exact_counts(connection, queue):
    n = 5
    channel = instrument_channel(connection.channel())
    assert instrument_channel(channel) is channel  # idempotent
    seen: list[tuple[str | None, int]] = []

    def on_message(ch: Any, method: Any, properties: Any, body: bytes) -> None:
        from opentelemetry import trace

        seen.append((bakhmach_obs.correlation_id(), trace.get_current_span().get_span_context().trace_id))
        ch.basic_ack(method.delivery_tag)
        if len(seen) == n:
            ch.stop_consuming()

    caller_props = pika.BasicProperties(headers={"custom": "kept"}, message_id="m-1")
    with capture() as cap:
        for i in range(n):
            with bakhmach_obs.correlation_scope(f"req-{i}"):
                channel.basic_publish("", queue, b"{}", caller_props)
        channel.basic_consume(queue, on_message)
        channel.start_consuming()
    channel.close()
    assert caller_props.headers == {"custom": "kept"}  # the caller's properties are never modified

    producers, consumers = cap.spans(f"publish {queue}"), cap.spans(f"process {queue}")
    assert len(producers) == len(consumers) == n
    by_trace = {p.context.trace_id: p for p in producers}
    assert len(by_trace) == n
    for span in consumers:
        parent = by_trace[span.context.trace_id]
        assert span.parent.span_id == parent.context.span_id
        assert span.attributes["bakhmach.correlation_id"] == parent.attributes["bakhmach.correlation_id"]
        assert span.attributes["messaging.message.id"] == "m-1"
        assert span.attributes["messaging.system"] == "rabbitmq"
    assert sorted(cid for cid, _ in seen) == [f"req-{i}" for i in range(n)]
    assert {tid for _, tid in seen} == set(by_trace)
    sent = cap.sample("messaging_client_sent_messages_total", messaging_destination_name=queue, error_type="")
    consumed = cap.sample("messaging_client_consumed_messages_total", messaging_destination_name=queue, error_type="")
    assert sent == consumed == n
    assert cap.sample("messaging_process_duration_seconds_count", messaging_destination_name=queue, error_type="") == n


class OrderRejected(Exception):
    pass


def test_pika_processing_error_is_recorded_and_reraised(connection, queue):
    channel = instrument_channel(connection.channel())
    error = OrderRejected("no stock")

    def on_message(ch: Any, method: Any, properties: Any, body: bytes) -> None:
        ch.basic_nack(method.delivery_tag, requeue=False)
        raise error

    with capture() as cap:
        channel.basic_publish("", queue, b"{}")
        channel.basic_consume(queue, on_message)
        with pytest.raises(OrderRejected) as info:
            channel.start_consuming()
    assert info.value is error
    connection.close()  # the exception left the consumer registered: drop it with the connection
    error_type = f"{__name__}.OrderRejected"
    assert cap.sample("messaging_process_duration_seconds_count", error_type=error_type) == 1
    assert cap.sample("messaging_client_consumed_messages_total", messaging_destination_name=queue) == 1
    (span,) = cap.spans(f"process {queue}")
    assert span.status.status_code.name == "ERROR" and span.attributes["error.type"] == error_type


#: An exception message quoting a bearer token and a card number (both must never reach a span).
SECRET_MESSAGE = "charge failed: Bearer s3cr3t-tok, card 4111 1111 1111 1111 declined"


def _check_redacted_exception(spans: list[Any]) -> None:
    """One ``exception`` event per span, type and plain text kept, no secret in any event attribute."""
    assert spans
    for span in spans:
        (event,) = span.events
        attributes = event.attributes
        assert attributes["exception.type"] == f"{__name__}.OrderRejected"
        assert attributes["exception.message"] == "charge failed: Bearer [REDACTED], card [REDACTED] declined"
        assert "OrderRejected: charge failed" in attributes["exception.stacktrace"]
        for value in attributes.values():
            assert "s3cr3t-tok" not in str(value) and "4111 1111" not in str(value)


def test_pika_processing_error_message_is_redacted_on_the_span(connection, queue):
    channel = instrument_channel(connection.channel())

    def on_message(ch: Any, method: Any, properties: Any, body: bytes) -> None:
        ch.basic_nack(method.delivery_tag, requeue=False)
        raise OrderRejected(SECRET_MESSAGE)

    with capture() as cap:
        channel.basic_publish("", queue, b"{}")
        channel.basic_consume(queue, on_message)
        with pytest.raises(OrderRejected, match="s3cr3t-tok"):  # the application's exception is untouched
            channel.start_consuming()
    connection.close()  # the exception left the consumer registered: drop it with the connection
    _check_redacted_exception(cap.spans(f"process {queue}"))


async def test_aio_pika_processing_error_message_is_redacted_on_the_span(broker):
    aio_pika = pytest.importorskip("aio_pika")
    connection = await aio_pika.connect(broker)
    try:
        with capture() as cap:
            channel = instrument_aio_channel(await connection.channel())
            queue = await channel.declare_queue(f"bakhmach-obs-test-{uuid.uuid4().hex}")
            await channel.default_exchange.publish(aio_pika.Message(b"{}"), queue.name)
            message = await queue.get(timeout=10)
            with pytest.raises(OrderRejected, match="s3cr3t-tok"):
                async with processing(message, queue=queue.name):
                    raise OrderRejected(SECRET_MESSAGE)
            await queue.delete(if_unused=False, if_empty=False)
            uninstrument_aio_channel(channel)
    finally:
        await connection.close()
    _check_redacted_exception(cap.spans(f"process {queue.name}"))


def test_pika_malformed_traceparent_starts_new_trace(connection, queue):
    raw = connection.channel()  # not instrumented: the producer sets broken headers itself
    _publish(raw, queue, 1, headers={"traceparent": "00-zzzz-broken", "x-correlation-id": "ok-id"})
    raw.close()
    channel = instrument_channel(connection.channel())
    with capture() as cap:
        method, properties, _body = channel.basic_get(queue, auto_ack=True)
        assert method is not None
        with messaging.consume(queue, properties.headers) as cid:
            assert cid == "ok-id"
    channel.close()
    (span,) = cap.spans(f"process {queue}")
    assert span.parent is None
    assert cap.sample("messaging_client_operation_duration_seconds_count", messaging_operation_name="receive") == 1


def test_pika_uninstrument_channel(connection, queue):
    channel = instrument_channel(connection.channel())
    uninstrument_channel(channel)
    with capture() as cap:
        channel.basic_publish("", queue, b"{}")
    method, properties, _ = channel.basic_get(queue, auto_ack=True)
    channel.close()
    assert method is not None and not (properties.headers or {}).get("traceparent")
    assert cap.spans() == []


# --- aio-pika -------------------------------------------------------------------------------------


async def test_aio_pika_publish_consume_callback_and_iterator(broker):
    aio_pika = pytest.importorskip("aio_pika")
    n = 4
    connection = await aio_pika.connect(broker)
    try:
        with capture() as cap:
            channel = instrument_aio_channel(await connection.channel())
            assert instrument_aio_channel(channel) is channel
            queue = await channel.declare_queue(f"bakhmach-obs-test-{uuid.uuid4().hex}")

            async def publish(i: int) -> None:
                with bakhmach_obs.correlation_scope(f"aio-{i}"):
                    await channel.default_exchange.publish(aio_pika.Message(b"{}", message_id=f"id-{i}"), queue.name)

            done = asyncio.Event()
            seen: list[str | None] = []

            async def on_message(message: Any) -> None:
                async with message.process():
                    seen.append(bakhmach_obs.correlation_id())
                    if len(seen) == n // 2:
                        done.set()

            for i in range(n // 2):
                await publish(i)
            tag = await queue.consume(on_message)
            await asyncio.wait_for(done.wait(), 10)
            await queue.cancel(tag)
            # the rest through the iterator and processing(), one failing
            for i in range(n // 2, n):
                await publish(i)

            async def drain() -> None:
                async with queue.iterator() as messages:
                    async for message in messages:
                        with contextlib.suppress(OrderRejected):
                            async with processing(message, queue=queue.name) as cid:
                                seen.append(cid)
                                if len(seen) == n // 2 + 1:
                                    raise OrderRejected("no stock")
                        if len(seen) == n:
                            return

            await asyncio.wait_for(drain(), 10)
            await queue.delete(if_unused=False, if_empty=False)
            uninstrument_aio_channel(channel)
    finally:
        await connection.close()
    assert sorted(seen) == [f"aio-{i}" for i in range(n)]
    producers, consumers = cap.spans(f"publish {queue.name}"), cap.spans(f"process {queue.name}")
    assert len(producers) == len(consumers) == n
    parents = {p.context.span_id: p for p in producers}
    for span in consumers:
        producer = parents[span.parent.span_id]
        assert producer.context.trace_id == span.context.trace_id
        assert producer.attributes["messaging.message.id"] == span.attributes["messaging.message.id"]
    assert cap.sample("messaging_client_sent_messages_total", messaging_destination_name=queue.name) == n
    assert cap.sample("messaging_client_consumed_messages_total", messaging_destination_name=queue.name) == n
    assert cap.sample("messaging_process_duration_seconds_count", error_type=f"{__name__}.OrderRejected") == 1


# --- the queue depth collector ---------------------------------------------------------------------


def _wait(predicate: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.02)


def _gauges(cap: Capture, queue: str) -> tuple[float | None, float | None]:
    labels = {"messaging_destination_name": queue}
    return cap.sample("messaging_queue_depth", **labels), cap.sample("messaging_queue_lag_seconds", **labels)


def test_collector_depth_and_peeked_lag(connection, queue):
    k = 3
    channel = instrument_channel(connection.channel())
    before = time.time()
    with capture():
        _publish(channel, queue, k)
    time.sleep(0.3)
    with capture() as cap:
        collector = QueueDepthCollector(URL, [queue], interval=0.1, peek=True).start()
        try:
            _wait(lambda: collector.polls >= 2)
        finally:
            assert collector.stop(5.0)
        depth, lag = _gauges(cap, queue)
    assert depth == k
    assert lag is not None and 0.3 <= lag <= time.time() - before  # the oldest message's age when polled
    assert collector.errors == 0
    # peeking left every message in place, the oldest still first
    assert _depth(connection, queue) == k
    _method, _, body = channel.basic_get(queue, auto_ack=True)
    assert body == b"message 0"
    channel.close()


def test_collector_lag_without_peek(connection, queue):
    channel = instrument_channel(connection.channel())
    collector = QueueDepthCollector(URL, [queue], interval=0.1, timeout=2.0)
    try:
        with capture() as cap:
            _publish(channel, queue, 2)
            collector.poll()  # messages waiting and no consumer at all: a lower bound, from 0
            time.sleep(0.3)
            collector.poll()
            depth, lag = _gauges(cap, queue)
            assert depth == 2 and lag is not None and lag >= 0.3
            # what this process consumed: its age (an uninstrumented producer stamped it 100 s ago)
            raw = connection.channel()
            raw.basic_publish(
                "", queue, b"old", pika.BasicProperties(headers={"x-published-at": str(time.time() - 100)})
            )
            raw.close()
            for _ in range(3):
                _method, properties, _ = channel.basic_get(queue, auto_ack=True)
                with messaging.consume(queue, properties.headers):
                    pass
            _publish(channel, queue, 1)
            collector.poll()
            assert _gauges(cap, queue) == (1, pytest.approx(100, abs=5))
            channel.basic_get(queue, auto_ack=True)
            collector.poll()
            assert _gauges(cap, queue) == (0, 0)  # empty: no lag
    finally:
        collector._disconnect()
        channel.close()


def test_collector_refused_connection_keeps_running_counts_errors_and_stops_in_time():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with capture() as cap:
        collector = QueueDepthCollector(f"amqp://guest:guest@127.0.0.1:{port}/%2F", ["q"], interval=0.2, timeout=1.0)
        collector.start()
        _wait(lambda: collector.errors >= 3)
        assert collector.running
        t0 = time.monotonic()
        assert collector.stop(2.0)
        assert time.monotonic() - t0 < 2.0
    assert not collector.running
    assert cap.sample("bakhmach_obs_telemetry_errors_total", component="messaging") >= 3


def test_collector_survives_a_broker_outage(broker, connection, queue):
    channel = connection.channel()
    _publish(channel, queue, 2)
    channel.close()
    proxy = TcpProxy((HOST, PORT)).start()
    try:
        with capture() as cap:
            collector = QueueDepthCollector(
                f"amqp://guest:guest@127.0.0.1:{proxy.port}/%2F", [queue], interval=0.1, timeout=1.0
            ).start()
            try:
                _wait(lambda: collector.polls >= 2)
                proxy.stop()  # the broker "restarts": connections cut, new ones refused
                _wait(lambda: collector.errors >= 2)
                assert collector.running
                polls = collector.polls
                proxy.start()  # back up: the collector reconnects by itself
                _wait(lambda: collector.polls > polls + 1)
            finally:
                assert collector.stop(3.0)
            assert _gauges(cap, queue)[0] == 2
            assert cap.sample("bakhmach_obs_telemetry_errors_total", component="messaging") >= 2
    finally:
        proxy.stop()


def test_collector_missing_queue_is_reported_and_skipped(broker, queue):
    with capture() as cap:
        collector = QueueDepthCollector(broker, [f"missing-{uuid.uuid4().hex}", queue], interval=0.1)
        try:
            collector.poll()
            collector.poll()
        finally:
            collector._disconnect()
        assert _gauges(cap, queue)[0] == 0
    assert collector.errors == 2 and collector.polls == 2


# --- end to end: HTTP request -> publish -> consume -> database query ----------------------------


def _database_available() -> bool:
    try:
        import psycopg
    except ImportError:
        return False
    try:
        with psycopg.connect(PG_DSN, connect_timeout=2):
            return True
    except psycopg.OperationalError:
        return False


async def test_one_trace_from_http_request_through_the_queue_to_the_database(broker, connection, queue):
    pytest.importorskip("fastapi")
    import httpx
    from fastapi import FastAPI

    from bakhmach_obs.asgi import ObservabilityMiddleware

    need(_database_available(), "PostgreSQL is not reachable (BAKHMACH_OBS_PG_DSN)")
    import psycopg

    try:
        from bakhmach_obs import dbapi
    except ImportError:
        dbapi = None

    channel = instrument_channel(connection.channel())
    app = FastAPI(telemetry={"tracing": False, "metrics": False, "logs": False, "auto_configure": False})
    app.add_middleware(ObservabilityMiddleware)

    @app.post("/orders", status_code=202)
    async def create_order() -> dict[str, str]:
        channel.basic_publish("", queue, b'{"sku": "A-1"}')
        return {"status": "queued"}

    @bakhmach_obs.instrument
    def store_order(conn: Any) -> int:
        return int(conn.execute("SELECT 1").fetchone()[0])

    result: dict[str, Any] = {}

    def worker() -> None:
        with pika.BlockingConnection(pika.URLParameters(broker)) as conn, psycopg.connect(PG_DSN) as db:
            if dbapi is not None:
                db = dbapi.instrument_connection(db, db_system="postgresql")
            ch = instrument_channel(conn.channel())

            def on_message(ch: Any, method: Any, properties: Any, body: bytes) -> None:
                result["cid"] = bakhmach_obs.correlation_id()
                result["value"] = store_order(db)
                ch.basic_ack(method.delivery_tag)
                ch.stop_consuming()

            ch.basic_consume(queue, on_message)
            ch.start_consuming()

    with capture() as cap:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            response = await client.post("/orders", headers={"X-Correlation-ID": "order-req-1"})
        assert response.status_code == 202
        thread = threading.Thread(target=worker)
        thread.start()
        await asyncio.to_thread(thread.join, 20)
        assert not thread.is_alive()
    channel.close()
    assert result == {"cid": "order-req-1", "value": 1}
    (server,) = [s for s in cap.spans() if s.kind.name == "SERVER"]
    (producer,) = cap.spans(f"publish {queue}")
    (consumer,) = cap.spans(f"process {queue}")
    (store,) = [s for s in cap.spans() if s.name.endswith("store_order")]
    assert {s.context.trace_id for s in (server, producer, consumer, store)} == {server.context.trace_id}
    assert producer.parent.span_id == server.context.span_id
    assert consumer.parent.span_id == producer.context.span_id
    assert store.parent.span_id == consumer.context.span_id
    if dbapi is not None:  # the query's own CLIENT span, under the worker's function span
        (query,) = [s for s in cap.spans() if s.kind.name == "CLIENT" and s.attributes.get("db.system.name")]
        assert query.attributes["db.system.name"] == "postgresql"
        assert query.context.trace_id == server.context.trace_id
        assert query.parent.span_id == store.context.span_id
