"""The seed's ``backend`` service in FastAPI, instrumented with bakhmach_obs.

Routes: ``GET /users/{user_id}`` (calls the downstream profile service over instrumented httpx),
``POST /orders``, ``POST /payments`` (over ``PAYMENT_LIMIT_CENTS`` the provider declines with
``PaymentError("Insufficient funds", error_code="PAYMENT_001")``, answered as 402), ``GET /boom``
(an unhandled exception: 500), ``GET /slow?delay=`` (a slow dependency, for latency and in-flight
gauges), ``GET /health/live``, ``/health/ready``, ``/health/startup`` and ``/metrics``. Every
request gets a duration observation by route template, a SERVER span continuing the caller's
``traceparent``, a correlation id (from ``X-Correlation-ID``, echoed back) and one JSON access-log
line on stdout.

Run it (from the repository root)::

    uvicorn examples.fastapi_service:app --port 8080 --no-access-log
    python examples/fastapi_service.py                       # PORT (default 8080), binds 127.0.0.1

    # several workers: one metrics directory, wiped before start (docs/multiprocess.md)
    export PROMETHEUS_MULTIPROC_DIR=/tmp/backend-metrics && rm -rf "$PROMETHEUS_MULTIPROC_DIR" \
        && mkdir -p "$PROMETHEUS_MULTIPROC_DIR"
    uvicorn examples.fastapi_service:app --workers 4 --port 8080 --no-access-log

Environment: the standard ``OTEL_*`` variables (``OTEL_EXPORTER_OTLP_ENDPOINT`` turns span export
on, ``OTEL_TRACES_SAMPLER``, ``OTEL_SERVICE_NAME``...) and ``BAKHMACH_OBS_*`` (see
``docs/configuration.md``); ``DOWNSTREAM_URL`` (the profile service; unset, it runs in process,
behind the same instrumented client); ``PAYMENT_LIMIT_CENTS`` (default 10000); ``PORT``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

import bakhmach_obs
from bakhmach_obs.asgi import ObservabilityMiddleware
from bakhmach_obs.health import HealthChecks, rabbitmq_check
from bakhmach_obs.http_client import instrument_httpx

# 1. Configure once, at import: every worker process imports this module and sets itself up.
#    Keyword arguments win over the environment, so only the fallback service name is given here.
bakhmach_obs.configure(service_name=os.environ.get("OTEL_SERVICE_NAME", "backend"))
logging.getLogger("httpx").setLevel(logging.WARNING)  # the CLIENT span and metric say it already

log = logging.getLogger("backend")
STARTED = time.monotonic()
PAYMENT_LIMIT_CENTS = int(os.environ.get("PAYMENT_LIMIT_CENTS", "10000"))
#: When set, accepted orders are published to the ``orders`` queue for examples/worker.py.
AMQP_URL = os.environ.get("AMQP_URL")
ORDERS_QUEUE = os.environ.get("QUEUE", "orders")
_amqp = threading.local()

#: Readiness and startup probes (docs/health.md); the queue is a dependency only when it is used.
health = HealthChecks()
if AMQP_URL:
    health.add("queue", rabbitmq_check(AMQP_URL))


def publish_order(message: dict[str, Any]) -> None:
    """Publish to RabbitMQ through an instrumented pika channel (one connection per thread).

    The PRODUCER span is a child of the request's SERVER span, and the message carries
    ``traceparent`` and the correlation id, so the worker continues the same trace.
    """
    import json

    import pika

    from bakhmach_obs.rabbitmq import instrument_channel

    channel = getattr(_amqp, "channel", None)
    if channel is None or channel.is_closed:
        connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
        channel = instrument_channel(connection.channel())
        channel.queue_declare(ORDERS_QUEUE, durable=True)
        _amqp.channel = channel
    channel.basic_publish(exchange="", routing_key=ORDERS_QUEUE, body=json.dumps(message).encode())


#: Recent FastAPI (with ``fastapi.telemetry``, e.g. 0.165) traces requests itself as soon as a global
#: OpenTelemetry SDK tracer provider exists, and configure() installs one: its SERVER span would
#: duplicate the middleware's. Turn its telemetry off (older releases keep unknown keywords in
#: ``app.extra``: harmless). See docs/fastapi.md.
FASTAPI_TELEMETRY_OFF: dict[str, Any] = {"tracing": False, "metrics": False, "logs": False, "auto_configure": False}


class PaymentError(Exception):
    """Declined by the payment provider; ``error_code`` lands in the failure log record."""

    def __init__(self, message: str, error_code: str) -> None:
        super().__init__(message)
        self.error_code = error_code


class Order(BaseModel):
    user_id: str
    sku: str
    quantity: int = 1


class Payment(BaseModel):
    user_id: str
    amount_cents: int


# --- the downstream profile service ----------------------------------------------------------------
# Its own small app: mounted at /internal, so that another instance of this service can be the
# downstream (DOWNSTREAM_URL=http://127.0.0.1:8081/internal), and called in process otherwise.

profiles = FastAPI(telemetry=FASTAPI_TELEMETRY_OFF, openapi_url=None)


@profiles.get("/profiles/{user_id}")
async def get_profile(user_id: int) -> dict[str, Any]:
    return {"user_id": f"user-{user_id}", "plan": "pro" if user_id % 2 else "free"}


def downstream_client() -> httpx.AsyncClient:
    """An instrumented client for the profile service: CLIENT spans, traceparent, correlation id."""
    url = os.environ.get("DOWNSTREAM_URL")
    if url:
        client = httpx.AsyncClient(base_url=url.rstrip("/"), timeout=5.0)
    else:
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=profiles), base_url="http://profiles.internal")
    return instrument_httpx(client)


# --- the service layer ---------------------------------------------------------------------------------


@bakhmach_obs.instrument
async def load_user(client: httpx.AsyncClient, user_id: int) -> dict[str, Any]:
    response = await client.get(f"/profiles/{user_id}")
    response.raise_for_status()
    profile: dict[str, Any] = response.json()
    return profile


@bakhmach_obs.instrument(action="payment_processing")
async def charge(user_id: str, amount_cents: int) -> str:
    await asyncio.sleep(0.002)  # the payment provider
    if amount_cents > PAYMENT_LIMIT_CENTS:
        raise PaymentError("Insufficient funds", error_code="PAYMENT_001")
    return f"ch_{user_id}_{amount_cents}"


# --- the web layer ---------------------------------------------------------------------------------


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    async with downstream_client() as client:
        app.state.downstream = client
        health.mark_started()
        yield
    bakhmach_obs.shutdown()  # flush the spans still queued before the worker exits


app = FastAPI(title="backend", lifespan=lifespan, telemetry=FASTAPI_TELEMETRY_OFF)
# 2. One middleware: metrics by route template, SERVER span, correlation id, access log.
app.add_middleware(ObservabilityMiddleware)
# 3. /metrics (the middleware excludes it; with PROMETHEUS_MULTIPROC_DIR it sums every worker).
#    A mount answers /metrics with a redirect to /metrics/, which Prometheus follows.
app.mount("/metrics", bakhmach_obs.metrics_asgi_app())
app.mount("/internal", profiles)


@app.exception_handler(PaymentError)
async def payment_declined(request: Request, exc: PaymentError) -> JSONResponse:
    return JSONResponse(
        status_code=402,
        content={"error": str(exc), "error_code": exc.error_code, "correlation_id": bakhmach_obs.correlation_id()},
    )


@app.get("/users/{user_id}")
async def get_user(user_id: int, request: Request) -> dict[str, Any]:
    with bakhmach_obs.log_context(user_id=f"user-{user_id}"):
        profile = await load_user(request.app.state.downstream, user_id)
        log.info("user loaded")
        return {"id": user_id, "profile": profile, "correlation_id": bakhmach_obs.correlation_id()}


@app.post("/orders", status_code=201)
async def create_order(order: Order) -> dict[str, Any]:
    with bakhmach_obs.log_context(user_id=order.user_id, action="order_creation"):
        log.info("order accepted", extra={"sku": order.sku, "quantity": order.quantity})
        order_id = f"ord_{order.user_id}_{order.sku}"
        if AMQP_URL:  # hand the order to examples/worker.py; blocking pika calls run off the event loop
            message = {"order_id": order_id, "sku": order.sku, "quantity": order.quantity}
            await asyncio.to_thread(publish_order, message)  # copies the context
        return {"order_id": order_id, "status": "accepted"}


@app.post("/payments", status_code=201)
async def create_payment(payment: Payment) -> dict[str, Any]:
    with bakhmach_obs.log_context(user_id=payment.user_id):
        # A decline raises PaymentError: @instrument counts, traces and logs it (error_code
        # PAYMENT_001), then the exception handler above answers 402.
        charge_id = await charge(payment.user_id, payment.amount_cents)
        return {"charge_id": charge_id, "status": "captured"}


@app.get("/boom")
async def boom() -> None:
    raise RuntimeError("unexpected failure")  # recorded as 500 with error.type, then re-raised


@app.get("/slow")
async def slow(delay: float = 1.0) -> dict[str, float]:
    delay = max(0.0, min(delay, 5.0))
    await asyncio.sleep(delay)
    return {"slept": delay}


@app.get("/health/live")
async def live() -> dict[str, Any]:
    # Excluded from metrics, spans and access logs by default. The example's own liveness adds the
    # worker pid (the multi-worker tests tell workers apart by it); health.live() is the seed's body.
    return {"status": "alive", "uptime_seconds": round(time.monotonic() - STARTED, 3), "pid": os.getpid()}


# /health/ready and /health/startup (mounted after the route above, which keeps /health/live).
app.mount("/health", health.asgi_app(probes=("ready", "startup")))


if __name__ == "__main__":
    import uvicorn

    # access_log=False: the middleware's JSON access log replaces uvicorn's text one.
    uvicorn.run(app, host="127.0.0.1", port=int(os.environ.get("PORT", "8080")), access_log=False)
