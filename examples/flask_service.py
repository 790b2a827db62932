"""The seed's ``backend`` service in Flask, instrumented with bakhmach_obs (the twin of
``examples/fastapi_service.py``: same routes, same signals).

Routes: ``GET /users/<int:user_id>`` (calls the downstream profile service over instrumented
httpx), ``POST /orders``, ``POST /payments`` (over ``PAYMENT_LIMIT_CENTS`` the provider declines
with ``PaymentError("Insufficient funds", error_code="PAYMENT_001")``, answered as 402), ``GET
/boom`` (an unhandled exception: 500), ``GET /slow?delay=``, ``GET /health/live``, ``/health/ready``,
``/health/startup`` and ``/metrics``.

Run it (from the repository root) under gunicorn, with the multiprocess metrics directory set in
the shell and the hooks of :mod:`bakhmach_obs.gunicorn` (``on_starting`` wipes the directory,
``child_exit`` drops the live gauges of dead workers; see ``docs/multiprocess.md``)::

    export PROMETHEUS_MULTIPROC_DIR=/tmp/backend-metrics
    gunicorn -w 2 -b 127.0.0.1:8080 -c python:bakhmach_obs.gunicorn examples.flask_service:app

or alone, for a quick look: ``python examples/flask_service.py`` (PORT, default 8080, 127.0.0.1).

Environment: the standard ``OTEL_*`` variables (``OTEL_EXPORTER_OTLP_ENDPOINT`` turns span export
on) and ``BAKHMACH_OBS_*`` (``docs/configuration.md``); ``DOWNSTREAM_URL`` (the profile
service; unset, it runs in process behind the same instrumented client); ``PAYMENT_LIMIT_CENTS``
(default 10000); ``PORT``.
"""

from __future__ import annotations

import atexit
import logging
import os
import time
from typing import Any

import httpx
from flask import Flask, jsonify, request
from werkzeug.middleware.dispatcher import DispatcherMiddleware

import bakhmach_obs
from bakhmach_obs.flask import init_app
from bakhmach_obs.health import HealthChecks
from bakhmach_obs.http_client import instrument_httpx

# 1. Configure once, at import. gunicorn imports the app in each worker after the fork (unless
#    --preload), so every worker sets itself up; keyword arguments win over the environment.
bakhmach_obs.configure(service_name=os.environ.get("OTEL_SERVICE_NAME", "backend"))
logging.getLogger("httpx").setLevel(logging.WARNING)  # the CLIENT span and metric say it already

log = logging.getLogger("backend")
STARTED = time.monotonic()
PAYMENT_LIMIT_CENTS = int(os.environ.get("PAYMENT_LIMIT_CENTS", "10000"))


class PaymentError(Exception):
    """Declined by the payment provider; ``error_code`` lands in the failure log record."""

    def __init__(self, message: str, error_code: str) -> None:
        super().__init__(message)
        self.error_code = error_code


# --- the downstream profile service ----------------------------------------------------------------
# Its own small app: served at /internal, so that another instance can be this one's downstream
# (DOWNSTREAM_URL=http://127.0.0.1:8081/internal), and called in process otherwise.

profiles = Flask("profiles")


@profiles.get("/profiles/<int:user_id>")
def get_profile(user_id: int) -> Any:
    return jsonify(user_id=f"user-{user_id}", plan="pro" if user_id % 2 else "free")


def downstream_client() -> httpx.Client:
    """An instrumented client for the profile service: CLIENT spans, traceparent, correlation id."""
    url = os.environ.get("DOWNSTREAM_URL")
    if url:
        client = httpx.Client(base_url=url.rstrip("/"), timeout=5.0)
    else:
        client = httpx.Client(transport=httpx.WSGITransport(app=profiles), base_url="http://profiles.internal")
    return instrument_httpx(client)


downstream = downstream_client()
atexit.register(downstream.close)


# --- the service layer ---------------------------------------------------------------------------------


@bakhmach_obs.instrument
def load_user(user_id: int) -> dict[str, Any]:
    response = downstream.get(f"/profiles/{user_id}")
    response.raise_for_status()
    profile: dict[str, Any] = response.json()
    return profile


@bakhmach_obs.instrument(action="payment_processing")
def charge(user_id: str, amount_cents: int) -> str:
    time.sleep(0.002)  # the payment provider
    if amount_cents > PAYMENT_LIMIT_CENTS:
        raise PaymentError("Insufficient funds", error_code="PAYMENT_001")
    return f"ch_{user_id}_{amount_cents}"


# --- the web layer ---------------------------------------------------------------------------------

app = Flask("backend")
# 2. Metrics by route template (Flask's own, /users/<int:user_id>), SERVER span, correlation id,
#    access log.
init_app(app)
# 3. /metrics outside the instrumented app (the middleware would exclude it anyway); with
#    PROMETHEUS_MULTIPROC_DIR it sums every worker. The profile service is served at /internal.
app.wsgi_app = DispatcherMiddleware(  # type: ignore[method-assign]
    app.wsgi_app, {"/metrics": bakhmach_obs.metrics_wsgi_app(), "/internal": profiles}
)


@app.errorhandler(PaymentError)
def payment_declined(exc: PaymentError) -> Any:
    body = {"error": str(exc), "error_code": exc.error_code, "correlation_id": bakhmach_obs.correlation_id()}
    return jsonify(body), 402


@app.get("/users/<int:user_id>")
def get_user(user_id: int) -> Any:
    with bakhmach_obs.log_context(user_id=f"user-{user_id}"):
        profile = load_user(user_id)
        log.info("user loaded")
        return jsonify(id=user_id, profile=profile, correlation_id=bakhmach_obs.correlation_id())


@app.post("/orders")
def create_order() -> Any:
    order = request.get_json(force=True)
    with bakhmach_obs.log_context(user_id=order["user_id"], action="order_creation"):
        log.info("order accepted", extra={"sku": order["sku"], "quantity": order.get("quantity", 1)})
        return jsonify(order_id=f"ord_{order['user_id']}_{order['sku']}", status="accepted"), 201


@app.post("/payments")
def create_payment() -> Any:
    payment = request.get_json(force=True)
    with bakhmach_obs.log_context(user_id=payment["user_id"]):
        # A decline raises PaymentError: @instrument counts, traces and logs it (error_code
        # PAYMENT_001), then the error handler above answers 402.
        charge_id = charge(payment["user_id"], int(payment["amount_cents"]))
        return jsonify(charge_id=charge_id, status="captured"), 201


@app.get("/boom")
def boom() -> Any:
    raise RuntimeError("unexpected failure")  # Flask answers 500; recorded with error.type


@app.get("/slow")
def slow() -> Any:
    delay = max(0.0, min(float(request.args.get("delay", 1.0)), 5.0))
    time.sleep(delay)
    return jsonify(slept=delay)


@app.get("/health/live")
def live() -> Any:
    # Excluded from metrics, spans and access logs by default. The example's own liveness adds the
    # worker pid (the multi-worker tests tell workers apart by it); health.live() is the seed's body.
    return jsonify(status="alive", uptime_seconds=round(time.monotonic() - STARTED, 3), pid=os.getpid())


# /health/ready and /health/startup (docs/health.md): add checks of the dependencies the service uses.
health = HealthChecks()
app.register_blueprint(health.flask_blueprint(probes=("ready", "startup")))


if __name__ == "__main__":
    app.run(host="127.0.0.1", port=int(os.environ.get("PORT", "8080")))
