"""The check registry, the single-flight runner with its cache and timeouts, and the reports."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
import errno
import inspect
import logging
import math
import os
import re
import socket
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Literal

from .. import conventions, metrics
from ..context import suppress
from ..errors import ConfigurationError

__all__ = [
    "STATES",
    "Check",
    "CheckOutcome",
    "CheckResult",
    "HealthChecks",
    "HealthReport",
    "Unavailable",
    "process_rss_bytes",
    "process_uptime_seconds",
]

_log = logging.getLogger("bakhmach_obs.health")

State = Literal["connected", "disconnected", "timeout", "error"]
Status = Literal["pass", "warn", "fail"]
Probe = Literal["live", "ready", "startup"]

#: The seed's service states: the check passed, its dependency refused or was unreachable, it did
#: not answer within its timeout, any other failure.
STATES: tuple[State, ...] = ("connected", "disconnected", "timeout", "error")

_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,62}$")
_NETWORK_ERRNOS = frozenset(
    getattr(errno, n)
    for n in ("ECONNREFUSED", "ECONNRESET", "ECONNABORTED", "EHOSTUNREACH", "ENETUNREACH", "EHOSTDOWN", "ENETDOWN")
    if hasattr(errno, n)
)


class Unavailable(ConnectionError):
    """Raise it from a check to report the dependency as ``"disconnected"`` (refused, unreachable).

    Any :class:`ConnectionError`, DNS failure or refused/unreachable socket error counts the same;
    the built-in checks turn their drivers' connection errors into this one.
    """


@dataclass(frozen=True)
class CheckResult:
    """A richer answer than ``True``/``False``: a warning, a measured value.

    Attributes:
        status: ``"pass"``, ``"warn"`` (reported, still ready) or ``"fail"``.
        observed_value: a measurement for ``application/health+json`` (``observedValue``).
        observed_unit: its unit (``observedUnit``), e.g. ``"bytes"``.
        measurement: the second half of the ``component:measurement`` key (default ``responseTime``).
        state: the seed state of a failure: ``"disconnected"`` or ``"error"`` (the default).

    Example:
        >>> from bakhmach_obs.health import CheckResult
        >>> CheckResult("warn", observed_value=0.93, observed_unit="ratio", measurement="utilization").status
        'warn'
    """

    status: Status = "pass"
    observed_value: float | int | str | None = None
    observed_unit: str | None = None
    measurement: str | None = None
    state: State | None = None


CheckReturn = bool | None | CheckResult
#: A check: a plain callable, sync or ``async``, returning ``True``/``None`` (pass), ``False``
#: (dependency unavailable) or a :class:`CheckResult`; raising counts as a failure.
Check = Callable[[], CheckReturn] | Callable[[], Awaitable[CheckReturn]]


@dataclass(frozen=True)
class CheckOutcome:
    """The result of one check as a probe reports it.

    Attributes:
        name: the registered name (the key in ``services``; the ``check`` metric label).
        critical: whether a failure makes the probe fail.
        status: ``pass``/``warn``/``fail`` (``application/health+json``; a non-critical failure
            is reported as ``warn`` there).
        state: the seed state (:data:`STATES`).
        result: ``pass``/``fail``/``timeout``, as counted in ``health_check_runs_total``.
        duration: seconds the run took (up to its timeout).
        observed_at: wall-clock time of the result (``time.time()``).
        cached: whether this answer came from the cache rather than a run for this request.
    """

    name: str
    critical: bool
    status: Status
    state: State
    result: str
    duration: float
    observed_at: float
    component_type: str = "component"
    measurement: str = "responseTime"
    observed_value: float | int | str | None = None
    observed_unit: str | None = None
    cached: bool = False

    @property
    def ok(self) -> bool:
        """True unless the check failed or timed out."""
        return self.status != "fail"


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class HealthReport:
    """What ``ready()``/``startup()`` found: the status code and every check's outcome.

    Example:
        >>> import asyncio
        >>> from bakhmach_obs.health import HealthChecks
        >>> health = HealthChecks()
        >>> health.add("database", lambda: True)
        >>> report = asyncio.run(health.ready())
        >>> report.status_code, report.body()
        (200, {'status': 'ready', 'services': {'database': 'connected'}})
        >>> report.health_json()["status"]
        'pass'
    """

    probe: Probe
    ok: bool
    checks: Mapping[str, CheckOutcome]

    @property
    def status_code(self) -> int:
        """200 when the probe passes, 503 when it fails."""
        return 200 if self.ok else 503

    @property
    def status(self) -> str:
        """The seed's ``status``: ``ready``/``not_ready`` (readiness), ``started``/``starting`` (startup)."""
        if self.probe == "startup":
            return "started" if self.ok else "starting"
        return "ready" if self.ok else "not_ready"

    def body(self, *, verbose: bool = False) -> dict[str, Any]:
        """The seed's JSON body; ``verbose`` adds ``details`` (criticality, durations, cache use)."""
        body: dict[str, Any] = {"status": self.status, "services": {n: o.state for n, o in self.checks.items()}}
        if verbose:
            body["details"] = {
                n: {"critical": o.critical, "duration_seconds": round(o.duration, 6), "cached": o.cached}
                for n, o in self.checks.items()
            }
        return body

    def health_json(self, *, verbose: bool = False) -> dict[str, Any]:
        """The ``application/health+json`` body (draft-inadarei-api-health-check).

        ``status`` is ``fail`` when a critical check failed, ``warn`` when only non-critical ones
        did (or a check warned), ``pass`` otherwise. ``checks`` are keyed ``name:measurement``;
        a failure's ``output`` is its state word only, never an exception text. ``verbose`` adds
        each run's duration as a ``responseTime`` measurement in milliseconds.
        """
        checks: dict[str, list[dict[str, Any]]] = {}
        warn = False
        for o in self.checks.values():
            status: Status = o.status if o.critical or o.status == "pass" else "warn"
            warn = warn or status == "warn"
            entry: dict[str, Any] = {"componentType": o.component_type, "status": status, "time": _iso(o.observed_at)}
            if o.observed_value is not None:
                entry["observedValue"] = o.observed_value
                if o.observed_unit:
                    entry["observedUnit"] = o.observed_unit
            if status != "pass" and o.state != "connected":  # a warning that passed has no failure state
                entry["output"] = o.state
            checks[f"{o.name}:{o.measurement}"] = [entry]
            if verbose:
                duration_ms = round(o.duration * 1000.0, 3)
                if o.measurement == "responseTime" and o.observed_value is None:
                    entry["observedValue"], entry["observedUnit"] = duration_ms, "ms"
                else:
                    timing = {"componentType": o.component_type, "status": status, "time": entry["time"]}
                    checks[f"{o.name}:responseTime"] = [{**timing, "observedValue": duration_ms, "observedUnit": "ms"}]
        overall = "fail" if not self.ok else ("warn" if warn else "pass")
        return {"status": overall, "checks": checks}


# --- the process ------------------------------------------------------------------------------------


def _process_started() -> float:
    """The process start as a ``time.monotonic()`` value (Linux /proc; else this module's import)."""
    now = time.monotonic()
    try:
        with open("/proc/self/stat", encoding="ascii") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        with open("/proc/uptime", encoding="ascii") as f:
            boot_uptime = float(f.read().split()[0])
        ticks = os.sysconf("SC_CLK_TCK")
        age = boot_uptime - int(fields[19]) / ticks  # field 22 (starttime), counted after "pid (comm)"
    except (OSError, ValueError, IndexError, AttributeError):
        return now
    return now - age if 0 <= age < 10 * 365 * 86400 else now


_STARTED = _process_started()


def process_uptime_seconds() -> float:
    """Seconds since the process started.

    Example:
        >>> from bakhmach_obs.health import process_uptime_seconds
        >>> process_uptime_seconds() >= 0
        True
    """
    return max(time.monotonic() - _STARTED, 0.0)


def process_rss_bytes() -> int:
    """The process's resident set size in bytes (0 when the platform does not tell).

    Example:
        >>> from bakhmach_obs.health import process_rss_bytes
        >>> process_rss_bytes() > 0
        True
    """
    try:
        with open("/proc/self/statm", encoding="ascii") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError, AttributeError):
        pass
    try:
        import psutil  # type: ignore[import-untyped, unused-ignore]

        return int(psutil.Process().memory_info().rss)
    except Exception:  # noqa: BLE001 - optional, best effort
        pass
    try:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # the peak: the best left
        return int(peak if sys.platform == "darwin" else peak * 1024)
    except Exception:  # noqa: BLE001
        return 0


# --- runs ---------------------------------------------------------------------------------------------


class _Run:
    """One execution of a check. ``future`` resolves when its outcome is known: when it returns, or
    when its deadline passes first; the check's slot stays taken until it really returns."""

    __slots__ = ("deadline", "future", "name", "outcome", "started")

    def __init__(self, name: str, started: float, deadline: float) -> None:
        self.name = name
        self.started = started
        self.deadline = deadline
        self.outcome: CheckOutcome | None = None
        self.future: concurrent.futures.Future[CheckOutcome] = concurrent.futures.Future()
        self.future.set_running_or_notify_cancel()  # a waiter giving up can never cancel it


def _is_async(fn: Callable[..., Any]) -> bool:
    if inspect.iscoroutinefunction(fn):
        return True
    call = getattr(fn, "__call__", None)  # noqa: B004 - an instance with an async __call__
    return call is not None and not inspect.isfunction(fn) and inspect.iscoroutinefunction(call)


def _is_network_error(exc: BaseException) -> bool:
    if isinstance(exc, (ConnectionError, socket.gaierror)):
        return True
    return isinstance(exc, OSError) and exc.errno in _NETWORK_ERRNOS


class _Registered:
    """A registered check with its cache, its in-flight run and the last state logged."""

    def __init__(
        self,
        name: str,
        fn: Check,
        *,
        critical: bool,
        timeout: float,
        cache_interval: float,
        startup: bool,
        asynchronous: bool,
        component_type: str,
    ) -> None:
        self.name = name
        self.fn = fn
        self.critical = critical
        self.timeout = timeout
        self.cache_interval = cache_interval
        self.startup = startup
        self.asynchronous = asynchronous
        self.component_type = component_type
        self.lock = threading.Lock()
        self.last: CheckOutcome | None = None
        self.last_at = -math.inf
        self.run: _Run | None = None
        self.logged_state: State | None = None
        #: Runs started (tests count executions with it).
        self.executions = 0

    def outcome(
        self,
        status: Status,
        state: State,
        result: str,
        duration: float,
        value: CheckResult | None = None,
    ) -> CheckOutcome:
        return CheckOutcome(
            name=self.name, critical=self.critical, status=status, state=state, result=result,
            duration=duration, observed_at=time.time(), component_type=self.component_type,
            measurement=(value.measurement if value is not None and value.measurement else "responseTime"),
            observed_value=_json_value(value.observed_value) if value is not None else None,
            observed_unit=value.observed_unit if value is not None else None,
        )  # fmt: skip

    def classify(self, value: Any, exc: BaseException | None, duration: float, late: bool) -> CheckOutcome:
        if late or isinstance(exc, (TimeoutError, asyncio.TimeoutError, asyncio.CancelledError)):
            return self.outcome("fail", "timeout", "timeout", duration)
        if exc is not None:
            state: State = "disconnected" if _is_network_error(exc) else "error"
            return self.outcome("fail", state, "fail", duration)
        if value is True or value is None:
            return self.outcome("pass", "connected", "pass", duration)
        if value is False:
            return self.outcome("fail", "disconnected", "fail", duration)
        if isinstance(value, CheckResult):
            if value.status in ("pass", "warn"):
                return self.outcome(value.status, "connected", "pass", duration, value)
            state = value.state if value.state in STATES and value.state != "connected" else "error"
            return self.outcome("fail", state, "timeout" if state == "timeout" else "fail", duration, value)
        _log.warning(
            "health check %r returned %s; expected True, False, None or a CheckResult",
            self.name, type(value).__name__, extra={"health_check": self.name},
        )  # fmt: skip
        return self.outcome("fail", "error", "fail", duration)


def _json_value(value: Any) -> float | int | str | None:
    """``observedValue`` as JSON can carry it: NaN/infinity and other types become None (never a repr)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


# --- the registry -----------------------------------------------------------------------------------

Starter = Callable[[_Registered, _Run], None]


def _number(setting: str, value: Any, *, minimum: float, strict: bool, accepted: str) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or (value <= minimum if strict else value < minimum):
        raise ConfigurationError(setting, value, accepted)
    return float(value)


class HealthChecks:
    """A registry of health checks and the liveness, readiness and startup probes over it.

    Args:
        deadline: overall readiness deadline in seconds (default 0.8, below Kubernetes's 1 s
            ``timeoutSeconds``); every check's timeout must fit in it.
        timeout: default per-check timeout (0.5 s).
        cache_interval: default seconds a result is reused (1.0); ``0`` still shares one
            in-flight run between concurrent probes.
        verbose: who may ask for ``?verbose``: ``False`` (nobody, the default), ``True``
            (anyone) or a token string (requests with ``Authorization: Bearer <token>``).
        require_mark_started: the startup probe waits for :meth:`mark_started` even when every
            startup check passes.
        registry: prometheus_client registry for the check metrics (default: the configured one).

    Raises:
        ConfigurationError: a value is out of range; the message names it and what is accepted.

    Example:
        >>> import asyncio
        >>> from bakhmach_obs.health import HealthChecks
        >>> health = HealthChecks(deadline=0.8)
        >>> health.add("database", lambda: True)
        >>> health.add("cache", lambda: False, critical=False)  # reported, but keeps 200
        >>> report = asyncio.run(health.ready())
        >>> report.status_code, report.body()["services"]
        (200, {'database': 'connected', 'cache': 'disconnected'})
        >>> sorted(health.live())
        ['memory_usage_mb', 'status', 'uptime_seconds']
    """

    def __init__(
        self,
        *,
        deadline: float = 0.8,
        timeout: float = 0.5,
        cache_interval: float = 1.0,
        verbose: bool | str = False,
        require_mark_started: bool = False,
        registry: Any = None,
    ) -> None:
        self.deadline = _number(
            "health.deadline", deadline, minimum=0, strict=True, accepted="a number of seconds > 0 (keep it below 1 s)"
        )
        self.timeout = _number("health.timeout", timeout, minimum=0, strict=True,
                               accepted=f"a number of seconds > 0 and <= the deadline ({self.deadline})")  # fmt: skip
        if self.timeout > self.deadline:
            raise ConfigurationError(
                "health.timeout", timeout, f"a number of seconds <= the deadline ({self.deadline})"
            )
        self.cache_interval = _number("health.cache_interval", cache_interval, minimum=0, strict=False,
                                      accepted="a number of seconds >= 0")  # fmt: skip
        if not isinstance(verbose, (bool, str)) or verbose == "":
            raise ConfigurationError("health.verbose", verbose, "False, True or a non-empty token string")
        self.verbose = verbose
        self.require_mark_started = bool(require_mark_started)
        self.registry = registry
        self._checks: dict[str, _Registered] = {}
        self._lock = threading.Lock()
        self._started = False
        self._ready_state: bool | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._background: asyncio.AbstractEventLoop | None = None

    # --- registration -----------------------------------------------------------------------------
    def add(
        self,
        name: str,
        check: Check,
        *,
        critical: bool = True,
        timeout: float | None = None,
        cache_interval: float | None = None,
        startup: bool = False,
        asynchronous: bool | None = None,
        component_type: str | None = None,
    ) -> None:
        """Register ``check`` under ``name`` (the key in ``services`` and the ``check`` label).

        Args:
            name: letters, digits, ``_``, ``.``, ``-``; starts with a letter; unique.
            check: a callable, sync or ``async``, taking no argument.
            critical: a failure makes the probe fail (503); otherwise it is reported only.
            timeout: seconds before the run counts as ``"timeout"`` (default: the registry's).
            cache_interval: seconds a result is reused (default: the registry's).
            startup: the check belongs to the startup probe instead of readiness.
            asynchronous: force how it runs (default: detected; ``async def`` runs on the event
                loop, anything else in a thread of its own).
            component_type: ``componentType`` in ``application/health+json`` (built-in checks
                set it: ``datastore``, ``component``, ``system``).

        Raises:
            ConfigurationError: invalid or duplicate name, bad timeout or interval.
        """
        if not isinstance(name, str) or not _NAME.match(name):
            raise ConfigurationError("health check name", name, "letters, digits, '_', '.', '-' (1-63, a letter first)")
        if not callable(check):
            raise ConfigurationError("health check", check, "a callable taking no argument (sync or async)")
        t = self.timeout if timeout is None else timeout
        t = _number("health.timeout", t, minimum=0, strict=True,
                    accepted=f"a number of seconds > 0 and <= the deadline ({self.deadline})")  # fmt: skip
        if t > self.deadline:
            raise ConfigurationError("health.timeout", t, f"a number of seconds <= the deadline ({self.deadline})")
        interval = self.cache_interval if cache_interval is None else cache_interval
        interval = _number(
            "health.cache_interval", interval, minimum=0, strict=False, accepted="a number of seconds >= 0"
        )
        if not isinstance(critical, bool):
            raise ConfigurationError("health.critical", critical, "True or False")
        ctype = component_type or getattr(check, "component_type", None) or "component"
        if not isinstance(ctype, str):
            raise ConfigurationError("health.component_type", ctype, "a string such as 'datastore' or 'component'")
        registered = _Registered(
            name, check, critical=critical, timeout=t, cache_interval=interval, startup=bool(startup),
            asynchronous=_is_async(check) if asynchronous is None else bool(asynchronous), component_type=ctype,
        )  # fmt: skip
        with self._lock:
            if name in self._checks:
                raise ConfigurationError("health check name", name, "a name not registered yet")
            self._checks = {**self._checks, name: registered}

    def check(self, name: str, **options: Any) -> Callable[[Callable[[], Any]], Callable[[], Any]]:
        """Decorator form of :meth:`add`.

        Example:
            >>> from bakhmach_obs.health import HealthChecks
            >>> health = HealthChecks()
            >>> @health.check("queue", critical=False)
            ... def queue() -> bool:
            ...     return True
            >>> health.names()
            ('queue',)
        """

        def register(fn: Callable[[], Any]) -> Callable[[], Any]:
            self.add(name, fn, **options)
            return fn

        return register

    def names(self) -> tuple[str, ...]:
        """The registered check names, in registration order."""
        return tuple(self._checks)

    def executions(self, name: str) -> int:
        """How many times the check ``name`` has been started (cached answers are not runs)."""
        return self._checks[name].executions

    # --- mounting -------------------------------------------------------------------------------
    def asgi_app(self, probes: Iterable[str] = ("live", "ready", "startup")) -> Callable[..., Any]:
        """An ASGI app serving ``/live``, ``/ready``, ``/startup``: ``app.mount("/health", health.asgi_app())``.

        It also answers ``/health/live`` etc. when it is the whole server (a probe-only port).
        """
        from ._web import asgi_app

        return asgi_app(self, probes)

    def wsgi_app(self, probes: Iterable[str] = ("live", "ready", "startup")) -> Callable[..., Any]:
        """A WSGI app serving the probes (behind werkzeug's ``DispatcherMiddleware`` at ``/health``)."""
        from ._web import wsgi_app

        return wsgi_app(self, probes)

    def flask_blueprint(self, url_prefix: str = "/health", probes: Iterable[str] = ("live", "ready", "startup")) -> Any:
        """A Flask ``Blueprint`` serving the probes: ``app.register_blueprint(health.flask_blueprint())``."""
        from ._web import flask_blueprint

        return flask_blueprint(self, url_prefix, probes)

    def django_urls(
        self, prefix: str = "health/", probes: Iterable[str] = ("live", "ready", "startup"), asynchronous: bool = False
    ) -> list[Any]:
        """Django URL patterns: ``urlpatterns += health.django_urls()``."""
        from ._web import django_urls

        return django_urls(self, prefix, probes, asynchronous)

    # --- probes ---------------------------------------------------------------------------------
    def live(self) -> dict[str, Any]:
        """The liveness body: never touches a dependency.

        ``{"status": "alive", "uptime_seconds": <int>, "memory_usage_mb": <int>}``, memory being
        the resident set size in MiB.
        """
        return {
            "status": "alive",
            "uptime_seconds": int(process_uptime_seconds()),
            "memory_usage_mb": round(process_rss_bytes() / 1048576),
        }

    def mark_started(self) -> None:
        """The application finished starting: the startup probe answers 200 from now on."""
        if not self._started:
            self._started = True
            _log.info("application started", extra={"health_probe": "startup"})

    @property
    def started(self) -> bool:
        """Whether the startup probe has passed (it then stays passed)."""
        return self._started

    def _selected(self, startup: bool) -> list[_Registered]:
        return [c for c in self._checks.values() if c.startup is startup]

    async def ready(self) -> HealthReport:
        """Run the readiness checks concurrently (cached, single-flight) within the deadline.

        Never raises: a check's exception is its failure.
        """
        report = HealthReport("ready", *_verdict(await self._evaluate(self._selected(False))))
        self._note_readiness(report)
        return report

    def ready_sync(self) -> HealthReport:
        """:meth:`ready` for threads without an event loop (WSGI servers).

        Sync checks run in threads as under :meth:`ready`; async checks run on one background
        event loop owned by this registry (started on first use, stopped by :meth:`close`).
        """
        report = HealthReport("ready", *_verdict(self._evaluate_sync(self._selected(False))))
        self._note_readiness(report)
        return report

    async def startup(self) -> HealthReport:
        """The startup probe: 503 until :meth:`mark_started` or every startup check passed once."""
        if self._started:
            return HealthReport("startup", True, {})
        return self._note_startup(await self._evaluate(self._selected(True)))

    def startup_sync(self) -> HealthReport:
        """:meth:`startup` for threads without an event loop."""
        if self._started:
            return HealthReport("startup", True, {})
        return self._note_startup(self._evaluate_sync(self._selected(True)))

    def _note_startup(self, outcomes: dict[str, CheckOutcome]) -> HealthReport:
        ok, _ = _verdict(outcomes)
        if ok and not self.require_mark_started:
            self.mark_started()
        return HealthReport("startup", self._started, outcomes)

    def _note_readiness(self, report: HealthReport) -> None:
        previous, self._ready_state = self._ready_state, report.ok
        if (previous is None and report.ok) or previous == report.ok:
            return
        if report.ok:
            _log.info("readiness changed: ready", extra={"health_probe": "ready", "health_status": "ready"})
            return
        failing = {n: o.state for n, o in report.checks.items() if o.critical and not o.ok}
        _log.warning(
            "readiness changed: not ready (%s)", ", ".join(f"{n}={s}" for n, s in failing.items()),
            extra={"health_probe": "ready", "health_status": "not_ready", "health_failing": failing},
        )  # fmt: skip

    # --- evaluation -----------------------------------------------------------------------------
    def _begin(self, checks: Iterable[_Registered], start: Starter) -> tuple[dict[str, Any], list[_Run]]:
        """Cached outcomes, or in-flight runs to wait for (starting the runs that are due)."""
        results: dict[str, Any] = {}
        pending: list[_Run] = []
        for check in checks:
            now = time.monotonic()
            expired: _Run | None = None
            hung: CheckOutcome | None = None
            fresh_run: _Run | None = None
            with check.lock:
                last = check.last
                run = check.run
                freshness = check.cache_interval
                if last is not None and last.result == "timeout":
                    freshness = max(freshness, check.timeout)
                if last is not None and now - check.last_at < freshness:
                    results[check.name] = _cached(last)
                    continue
                if run is None:
                    run = fresh_run = check.run = _Run(check.name, now, now + check.timeout)
                    check.executions += 1
                elif now < run.deadline:
                    pass  # join the in-flight run
                elif run.outcome is None:
                    expired = run
                else:  # still hanging after its timeout: due again, and a timeout again, recorded at
                    # the timeout (not the growing age of the one hung run, which would skew the histogram)
                    hung = check.outcome("fail", "timeout", "timeout", check.timeout)
                    check.last, check.last_at = hung, now
            if expired is not None:
                results[check.name] = self._expire(check, expired)
            elif hung is not None:
                self._record(check, hung, None)
                results[check.name] = hung
            else:
                results[check.name] = run
                pending.append(run)
                if fresh_run is not None:
                    try:
                        start(check, fresh_run)
                    except Exception as exc:  # noqa: BLE001 - e.g. no thread could be started
                        self._complete(check, fresh_run, None, exc)
        return results, pending

    def _finish(self, results: dict[str, Any]) -> dict[str, CheckOutcome]:
        out: dict[str, CheckOutcome] = {}
        for name, value in results.items():
            if isinstance(value, _Run):
                check = self._checks[name]
                value = value.outcome if value.outcome is not None else self._expire(check, value)
            out[name] = value
        return out

    async def _evaluate(self, checks: list[_Registered]) -> dict[str, CheckOutcome]:
        if not checks:
            return {}
        loop = asyncio.get_running_loop()
        end = time.monotonic() + self.deadline
        results, pending = self._begin(checks, lambda c, r: self._start_on(loop, c, r))
        waiters = {r: _waiter(loop, r.future) for r in pending if r.outcome is None}
        while waiters:  # until every run answered or passed its own deadline, within the overall one
            until = min(min(r.deadline for r in waiters), end)
            await asyncio.wait(
                waiters.values(), timeout=max(until - time.monotonic(), 0.0), return_when=asyncio.FIRST_COMPLETED
            )
            if self._settle(waiters, end):
                break
        return self._finish(results)

    def _evaluate_sync(self, checks: list[_Registered]) -> dict[str, CheckOutcome]:
        if not checks:
            return {}
        end = time.monotonic() + self.deadline
        results, pending = self._begin(checks, self._start_sync_caller)
        futures = {r: r.future for r in pending if r.outcome is None}
        while futures:
            until = min(min(r.deadline for r in futures), end)
            concurrent.futures.wait(
                futures.values(),
                timeout=max(until - time.monotonic(), 0.0),
                return_when=concurrent.futures.FIRST_COMPLETED,
            )
            if self._settle(futures, end):
                break
        return self._finish(results)

    def _settle(self, waiting: dict[_Run, Any], end: float) -> bool:
        """Drop answered runs, expire those past their deadline; True when the overall deadline passed."""
        now = time.monotonic()
        for run in list(waiting):
            if run.outcome is None and now >= run.deadline:
                self._expire(self._checks[run.name], run)
            if run.outcome is not None:
                del waiting[run]
        return now >= end

    # --- starting runs --------------------------------------------------------------------------
    def _start_thread(self, check: _Registered, run: _Run) -> None:
        ctx = contextvars.copy_context()
        thread = threading.Thread(
            target=ctx.run, args=(self._run_sync, check, run), name=f"bakhmach-obs-health-{check.name}", daemon=True
        )
        thread.start()

    def _start_on(self, loop: asyncio.AbstractEventLoop, check: _Registered, run: _Run) -> None:
        if not check.asynchronous:
            self._start_thread(check, run)
            return
        task = loop.create_task(self._run_async(check, run))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _start_sync_caller(self, check: _Registered, run: _Run) -> None:
        if not check.asynchronous:
            self._start_thread(check, run)
            return
        coro = self._run_async(check, run)
        try:
            asyncio.run_coroutine_threadsafe(coro, self._background_loop())
        except BaseException:  # the loop closed meanwhile (close() raced): the caller records the failure
            coro.close()
            raise

    def _background_loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            loop = self._background
            if loop is None or loop.is_closed():
                loop = self._background = asyncio.new_event_loop()
                threading.Thread(target=loop.run_forever, name="bakhmach-obs-health-loop", daemon=True).start()
            return loop

    def close(self) -> None:
        """Stop the background event loop :meth:`ready_sync` starts for async checks (if any).

        A check still running there is cancelled first (its run ends as ``"timeout"`` and frees
        its slot, so a later probe runs it again on a new loop); the wait is bounded (about 2 s).
        """
        with self._lock:
            loop, self._background = self._background, None
        if loop is None or loop.is_closed():
            return
        done = threading.Event()

        async def cancel_runs() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            if tasks:
                await asyncio.wait(tasks, timeout=1.0)

        def stop() -> None:
            loop.stop()
            done.set()

        # a check ignoring its cancellation; a dead loop: stop anyway
        with contextlib.suppress(concurrent.futures.TimeoutError, RuntimeError):
            asyncio.run_coroutine_threadsafe(cancel_runs(), loop).result(timeout=1.5)
        loop.call_soon_threadsafe(stop)
        if done.wait(2.0):
            for _ in range(200):  # run_forever returns right after stop(); then the loop can close
                if not loop.is_running():
                    loop.close()
                    break
                time.sleep(0.005)

    # --- running ------------------------------------------------------------------------------------
    def _run_sync(self, check: _Registered, run: _Run) -> None:
        try:
            with suppress():
                value = check.fn()
            if inspect.isawaitable(value):
                close = getattr(value, "close", None)
                if close is not None:
                    close()
                raise TypeError(f"health check {check.name!r} returned an awaitable: declare it 'async def'")
        except Exception as exc:  # noqa: BLE001 - a failing check is a result, not an error
            self._complete(check, run, None, exc)
        else:
            self._complete(check, run, value, None)

    async def _run_async(self, check: _Registered, run: _Run) -> None:
        try:
            with suppress():
                awaitable = check.fn()
                if not inspect.isawaitable(awaitable):
                    value: Any = awaitable
                else:
                    value = await asyncio.wait_for(awaitable, max(run.deadline - time.monotonic(), 0.0))
        except asyncio.CancelledError as exc:  # the loop is shutting down: never leave the slot taken
            self._complete(check, run, None, exc)
            raise
        except Exception as exc:  # noqa: BLE001
            self._complete(check, run, None, exc)
        else:
            self._complete(check, run, value, None)

    def _complete(self, check: _Registered, run: _Run, value: Any, exc: BaseException | None) -> None:
        finished = time.monotonic()
        duration = finished - run.started
        with check.lock:
            if check.run is run:
                check.run = None
            late_known = run.outcome is not None
            if not late_known:
                outcome = check.classify(value, exc, duration, late=finished > run.deadline)
                run.outcome = outcome
                check.last, check.last_at = outcome, finished
        if late_known:
            _log.info(
                "health check %r finished %.3f s after its timeout", check.name, finished - run.deadline,
                extra={"health_check": check.name},
            )  # fmt: skip
            return
        run.future.set_result(outcome)
        self._record(check, outcome, exc)

    def _expire(self, check: _Registered, run: _Run) -> CheckOutcome:
        now = time.monotonic()
        with check.lock:
            if run.outcome is not None:
                return run.outcome
            outcome = run.outcome = check.outcome("fail", "timeout", "timeout", now - run.started)
            check.last, check.last_at = outcome, now
        run.future.set_result(outcome)
        self._record(check, outcome, None)
        return outcome

    # --- telemetry ------------------------------------------------------------------------------
    def _record(self, check: _Registered, outcome: CheckOutcome, exc: BaseException | None) -> None:
        """Metrics for a run, and a log record when the check's state changed."""
        from .. import _runtime

        rt = _runtime.current()
        try:
            if rt.metrics_enabled:
                registry = self.registry if self.registry is not None else rt.registry
                name = check.name
                metrics.family(conventions.HEALTH_CHECK_STATUS, registry=registry).labels(name).set(
                    0 if outcome.status == "fail" else 1
                )
                metrics.family(conventions.HEALTH_CHECK_DURATION, registry=registry).labels(name).observe(
                    outcome.duration
                )
                metrics.family(conventions.HEALTH_CHECK_RUNS, registry=registry).labels(name, outcome.result).inc()
        except Exception as err:  # noqa: BLE001 - telemetry never fails a probe
            rt.report_error("health", err)
        with check.lock:
            previous, check.logged_state = check.logged_state, outcome.state
        if previous == outcome.state or (previous is None and outcome.state == "connected"):
            return
        extra: dict[str, Any] = {"health_check": check.name, "health_state": outcome.state, "critical": check.critical}
        if previous is not None:
            extra["previous_state"] = previous
        if outcome.state == "connected":
            _log.info("health check %r recovered: connected", check.name, extra=extra)
            return
        detail = ""
        if exc is not None:
            cause = exc.__cause__ or exc
            extra["error_type"] = f"{type(cause).__module__}.{type(cause).__qualname__}"
            # Redacted here, not only by the SDK's formatter: the record may reach the application's
            # own handlers, and a driver's message often carries a connection string with a password.
            detail = rt.redaction.redact_text(f": {type(cause).__name__}: {str(cause)[:300]}")
        _log.warning("health check %r failed: %s%s", check.name, outcome.state, detail, extra=extra)


def _waiter(loop: asyncio.AbstractEventLoop, future: concurrent.futures.Future[CheckOutcome]) -> asyncio.Future[None]:
    """An asyncio future on ``loop`` done when ``future`` is; never cancels it, never fails on a closed loop."""
    waiter: asyncio.Future[None] = loop.create_future()

    def settle() -> None:
        if not waiter.done():
            waiter.set_result(None)

    def done(_: object) -> None:
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nobody is waiting any more
            loop.call_soon_threadsafe(settle)

    future.add_done_callback(done)
    return waiter


def _cached(outcome: CheckOutcome) -> CheckOutcome:
    from dataclasses import replace

    return replace(outcome, cached=True)


def _verdict(outcomes: dict[str, CheckOutcome]) -> tuple[bool, dict[str, CheckOutcome]]:
    return all(o.ok for o in outcomes.values() if o.critical), outcomes
