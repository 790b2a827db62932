"""Quickstart: the typical application code, runnable as is (``python examples/quickstart.py``).

1. ``configure()`` once at start-up: JSON logs on stdout, Prometheus metrics, OpenTelemetry spans
   (exported over OTLP when ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set).
2. ``@instrument`` on sync and async functions: each call counts in ``function_calls_total``,
   times in ``function_calls_duration_seconds``, gets a span, and a failure logs one ERROR record
   with ``error``, ``error_code``, ``action``, ``duration_ms`` and ``trace_id``.
3. Bind a correlation id and the user per request; every log record carries them.
4. Serve ``/metrics`` (here a standalone server on a free port; in a web app mount
   ``bakhmach_obs.metrics_asgi_app()``).
"""

from __future__ import annotations

import asyncio
import urllib.request

import bakhmach_obs
from bakhmach_obs.context import set_correlation_id


class PaymentError(Exception):
    """Declined by the payment provider; ``error_code`` ends up in the failure log record."""

    def __init__(self, message: str, error_code: str) -> None:
        super().__init__(message)
        self.error_code = error_code


@bakhmach_obs.instrument
def validate_amount(amount_cents: int) -> int:
    if amount_cents <= 0:
        raise ValueError("amount must be positive")
    return amount_cents


@bakhmach_obs.instrument(action="payment_processing")
async def charge(user_id: str, amount_cents: int) -> str:
    await asyncio.sleep(0.01)  # the payment provider
    if amount_cents > 10_000:
        raise PaymentError("Insufficient funds", error_code="PAYMENT_001")
    return f"ch_{user_id}_{amount_cents}"


async def handle_payment(request_id: str, user_id: str, amount_cents: int) -> str:
    """What a request handler (or middleware) does: bind the request's ids, call the service."""
    set_correlation_id(request_id)
    with bakhmach_obs.log_context(user_id=user_id):
        try:
            return await charge(user_id, validate_amount(amount_cents))
        except PaymentError:
            return "declined"  # already counted, traced and logged by @instrument


async def main() -> None:
    results = await asyncio.gather(
        handle_payment("req-12344", "user-788", 2_500),
        handle_payment("req-12345", "user-789", 24_500),  # logs the ERROR record of the seed example
    )
    print("results:", results)


if __name__ == "__main__":
    bakhmach_obs.configure(service_name="backend")
    server = bakhmach_obs.serve_metrics(port=0)  # port 0: any free port
    try:
        asyncio.run(main())
        url = f"http://127.0.0.1:{server.server_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            exposition = response.read().decode()
        print(f"GET {url} (function_calls_total):")
        for line in exposition.splitlines():
            if line.startswith("function_calls_total{"):
                print(" ", line)
    finally:
        server.shutdown()
        server.server_close()
        bakhmach_obs.shutdown()
