"""A worker consuming the ``orders`` queue with pika, instrumented with bakhmach_obs.

For each message it continues the producer's trace (the HTTP request that published the order),
binds the producer's correlation id, and stores the order in PostgreSQL. Through the DB-API
adapter when ``bakhmach_obs.dbapi`` is available (a CLIENT span per query), otherwise through an
``@bakhmach_obs.instrument``-ed function. A :class:`~bakhmach_obs.rabbitmq.QueueDepthCollector`
exports ``messaging_queue_depth`` and ``messaging_queue_lag_seconds`` for the queue, and the
metrics are served on ``METRICS_PORT``.

Run it (from the repository root)::

    python examples/worker.py

Environment: ``AMQP_URL`` (default ``amqp://guest:guest@127.0.0.1:5672/%2F``), ``QUEUE``
(default ``orders``), ``DATABASE_URL`` (default ``host=127.0.0.1 user=postgres dbname=test``),
``METRICS_PORT`` (default 9101), plus the standard ``OTEL_*`` and ``BAKHMACH_OBS_*`` variables.
"""

from __future__ import annotations

import json
import logging
import os
import signal
from typing import Any

import pika
import psycopg

import bakhmach_obs
from bakhmach_obs.rabbitmq import QueueDepthCollector, instrument_channel

bakhmach_obs.configure(service_name=os.environ.get("OTEL_SERVICE_NAME", "worker"))
logging.getLogger("pika").setLevel(logging.WARNING)  # connection chatter; the spans and metrics say the rest
log = logging.getLogger("worker")

AMQP_URL = os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")
QUEUE = os.environ.get("QUEUE", "orders")
DATABASE_URL = os.environ.get("DATABASE_URL", "host=127.0.0.1 user=postgres dbname=test")


def _db_adapter() -> Any:
    """``bakhmach_obs.dbapi.instrument_connection`` (a CLIENT span and metric per query), if available."""
    try:
        from bakhmach_obs.dbapi import instrument_connection
    except ImportError:  # pragma: no cover - without it, the @instrument span below only
        return None
    return instrument_connection


def connect_database() -> Any:
    conn = psycopg.connect(DATABASE_URL, autocommit=True)
    instrument_connection = _db_adapter()
    if instrument_connection is not None:
        conn = instrument_connection(conn, db_system="postgresql")
    conn.execute("CREATE TABLE IF NOT EXISTS orders (id text PRIMARY KEY, sku text, quantity int)")
    return conn


@bakhmach_obs.instrument(action="order_fulfilment")
def store_order(db: Any, order: dict[str, Any]) -> None:
    db.execute(
        "INSERT INTO orders (id, sku, quantity) VALUES (%s, %s, %s) ON CONFLICT (id) DO NOTHING",
        (order["order_id"], order["sku"], order.get("quantity", 1)),
    )


def main() -> None:
    bakhmach_obs.serve_metrics(port=int(os.environ.get("METRICS_PORT", "9101")))
    collector = QueueDepthCollector(AMQP_URL, [QUEUE], interval=15.0).start()
    db = connect_database()
    connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    channel = instrument_channel(connection.channel())
    channel.queue_declare(QUEUE, durable=True)
    channel.basic_qos(prefetch_count=10)

    def on_message(ch: Any, method: Any, properties: Any, body: bytes) -> None:
        # Inside: the CONSUMER span "process orders" (child of the producer's span) is current and
        # the producer's correlation id is bound, so the log record and the query join the trace.
        try:
            order = json.loads(body)
            store_order(db, order)
        except Exception:
            # store_order's span and function_calls_total already carry the error. Not re-raised:
            # an exception escaping the callback would be recorded on the process span too, but
            # pika would then stop start_consuming(), i.e. the worker.
            log.exception("order rejected")
            ch.basic_nack(method.delivery_tag, requeue=False)
            return
        log.info("order stored", extra={"order_id": order["order_id"]})
        ch.basic_ack(method.delivery_tag)

    channel.basic_consume(QUEUE, on_message)
    signal.signal(signal.SIGTERM, lambda *_: channel.stop_consuming())
    try:
        channel.start_consuming()
    except KeyboardInterrupt:
        pass
    finally:
        if connection.is_open:
            connection.close()
        db.close()
        collector.stop()
        bakhmach_obs.shutdown()


if __name__ == "__main__":
    main()
