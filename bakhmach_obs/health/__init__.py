"""Health checks as a plug-in: a registry of checks and the liveness, readiness and startup probes.

Application code fills a :class:`HealthChecks` with plain callables (sync or ``async``) and mounts
it; the probes answer with the seed's bodies::

    GET /health/live     200 {"status": "alive", "uptime_seconds": 864000, "memory_usage_mb": 512}
    GET /health/ready    200 {"status": "ready", "services": {"database": "connected", ...}}
                         503 {"status": "not_ready", "services": {"database": "disconnected", ...}}
    GET /health/startup  503 until started, then 200 for ever

* **Liveness never touches a dependency** (a liveness probe that does restarts every pod when a
  shared database blips).
* **Readiness** runs the checks concurrently, each within its timeout, all within one deadline
  (0.8 s by default, below Kubernetes's 1 s ``timeoutSeconds``). A critical failure answers 503
  with the failing service's state (``disconnected``, ``timeout``, ``error``); a non-critical one
  is reported and keeps 200.
* **Cached and single-flight:** a result is reused for the check's ``cache_interval``, and
  concurrent probes share one in-flight run, so a flood of probes runs each dependency check at
  most once per interval. Sync checks run in a thread each (at most one per check: a hung check
  keeps its slot and reports ``timeout`` again instead of piling up threads); async checks run on
  the event loop and are cancelled at their timeout.
* ``Accept: application/health+json`` or ``?format=health+json`` gives the IETF health-check
  format; ``?verbose`` adds durations when allowed (``verbose=``). Responses carry
  ``Cache-Control: no-store`` and never an exception text: details go to the log.
* Metrics ``health_check_status{check}``, ``health_check_duration_seconds{check}``,
  ``health_check_runs_total{check,result}``; a log record (logger ``bakhmach_obs.health``) on every
  state change.

Example:
    >>> import asyncio
    >>> from bakhmach_obs.health import HealthChecks
    >>> health = HealthChecks()
    >>> health.add("database", lambda: True)
    >>> async def cache() -> bool:
    ...     return True
    >>> health.add("cache", cache, critical=False, timeout=0.2, cache_interval=5.0)
    >>> report = asyncio.run(health.ready())
    >>> report.status_code, report.body()
    (200, {'status': 'ready', 'services': {'database': 'connected', 'cache': 'connected'}})
"""

from __future__ import annotations

from . import checks
from ._core import (
    STATES,
    Check,
    CheckOutcome,
    CheckResult,
    HealthChecks,
    HealthReport,
    Unavailable,
    process_rss_bytes,
    process_uptime_seconds,
)
from .checks import disk_check, http_check, memory_check, rabbitmq_check, redis_check, sql_check, tcp_check

__all__ = [
    "STATES",
    "Check",
    "CheckOutcome",
    "CheckResult",
    "HealthChecks",
    "HealthReport",
    "Unavailable",
    "checks",
    "disk_check",
    "http_check",
    "memory_check",
    "process_rss_bytes",
    "process_uptime_seconds",
    "rabbitmq_check",
    "redis_check",
    "sql_check",
    "tcp_check",
]
