"""Prometheus rules generated from the naming convention and the service's SLOs.

:func:`generate` returns one rule file (as a dict, ready for ``yaml.safe_dump``) with:

- per SLO, the SLI's event and error-event rates over 5 minutes (``slo:sli_events:rate5m``,
  ``slo:sli_error_events:rate5m``), then recording rules ``slo:sli_error:ratio_rate<window>`` for
  every window in :data:`~bakhmach_obs.conventions.SLO_WINDOWS` plus the SLO's own window. Each is
  the share of bad events in the window (never an average of shorter ratios): a ratio of
  increases, or for a window longer than 3 days the ratio of the summed recorded rates (see
  :func:`window_ratio_expr`), plus ``slo:objective:ratio``,
  ``slo:error_budget:ratio``, ``slo:period_burn_rate:ratio`` and
  ``slo:period_error_budget_remaining:ratio``;
- per SLO, multi-window multi-burn-rate alerts as in the Google SRE workbook
  (``ErrorBudgetBurnFast`` pages at 14.4x over 1h and 5m or 6x over 6h and 30m;
  ``ErrorBudgetBurnSlow`` opens a ticket at 3x over 1d and 2h or 1x over 3d and 6h). A
  low-traffic guard (``min_rate`` events per second over the long window) keeps one failed
  request of a quiet service from paging. ``SLOMetricAbsent`` fires when the SLI's series are missing;
- the seed's alert catalogue on the SDK's own metric names (see :func:`catalogue`).

Every alert has ``severity`` (``critical`` pages, ``warning`` opens a ticket), ``summary``,
``description`` and ``runbook_url`` (``<runbook_base_url><alert-in-kebab-case>.md``). Metric
names are built from :mod:`bakhmach_obs.conventions`; nothing here spells one.

Example:
    >>> from bakhmach_obs.rules import generate
    >>> from bakhmach_obs.slo import SLO
    >>> rules = generate([SLO(name="api-availability", service="api", target=0.999, sli="availability")])
    >>> [g["name"] for g in rules["groups"]]
    ['bakhmach_slo_api-availability', 'bakhmach_critical', 'bakhmach_warning']
    >>> [r["record"] for r in rules["groups"][0]["rules"][:3]]
    ['slo:sli_events:rate5m', 'slo:sli_error_events:rate5m', 'slo:sli_error:ratio_rate5m']
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from . import conventions as c
from .errors import ConfigurationError
from .slo import SLO, check_unique, load_slos, parse_duration

__all__ = [
    "BURN_RATE_WINDOWS",
    "DEFAULT_MIN_RATE",
    "DEFAULT_RUNBOOK_BASE_URL",
    "FORMATS",
    "BurnRateWindow",
    "CatalogueAlert",
    "SLIQuery",
    "add_cli_arguments",
    "alert_names",
    "catalogue",
    "error_events_rate_expr",
    "error_ratio_expr",
    "events_rate_expr",
    "generate",
    "prometheus_rule",
    "render",
    "run_cli",
    "runbook_url",
    "sli_query",
    "sloth_specs",
    "unknown_thresholds",
    "window_ratio_expr",
]

#: Events per second an SLI needs over an alert's long window before a burn-rate alert may fire
#: (3 per minute): below it, a single failure is a large ratio and would page for nothing.
DEFAULT_MIN_RATE = 0.05
#: Where runbook pages live; ``<alert-in-kebab-case>.md`` is appended. Point it at the rendered
#: docs or the repository (``https://git.example.com/org/repo/blob/main/docs/runbooks/``).
DEFAULT_RUNBOOK_BASE_URL = "docs/runbooks/"
#: Output formats of :func:`render`.
FORMATS = ("prometheus", "operator", "sloth")

_H = c.HTTP_SERVER_DURATION.name
_F_DURATION = c.FUNCTION_CALLS_DURATION.name


@dataclass(frozen=True)
class BurnRateWindow:
    """One burn-rate condition: the error ratio over both windows exceeds ``factor`` x the budget.

    ``factor`` is the share of a 30-day budget spent in the long window (2% in 1h gives 14.4).
    """

    alert: str
    severity: str
    long_window: str
    short_window: str
    factor: float


#: The Google SRE workbook's windows for a 30-day SLO (also sloth's ``google-30d``).
BURN_RATE_WINDOWS: tuple[BurnRateWindow, ...] = (
    BurnRateWindow("ErrorBudgetBurnFast", "critical", "1h", "5m", 14.4),
    BurnRateWindow("ErrorBudgetBurnFast", "critical", "6h", "30m", 6.0),
    BurnRateWindow("ErrorBudgetBurnSlow", "warning", "1d", "2h", 3.0),
    BurnRateWindow("ErrorBudgetBurnSlow", "warning", "3d", "6h", 1.0),
)
_ABSENT = "SLOMetricAbsent"


# --- PromQL helpers -------------------------------------------------------------------------------


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _selector(metric: str, labels: Mapping[str, str], *extra: tuple[str, str, str]) -> str:
    """``metric{a="b",...}``; ``extra`` adds ``(label, op, value)`` matchers."""
    parts = [f"{k}={_quote(v)}" for k, v in labels.items()]
    parts += [f"{k}{op}{_quote(v)}" for k, op, v in extra]
    return f"{metric}{{{','.join(parts)}}}" if parts else metric


def _le(threshold: float | None) -> str:
    """The ``le`` label value prometheus_client writes for a bucket bound (``0.5``, ``1.0``)."""
    from prometheus_client.utils import floatToGoString

    return str(floatToGoString(threshold))  # type: ignore[no-untyped-call]


def _num(value: float) -> str:
    return repr(round(float(value), 12))


def _kebab(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "-", name).lower()


def runbook_url(alert: str, base_url: str = DEFAULT_RUNBOOK_BASE_URL) -> str:
    """The runbook page of ``alert``: ``base_url`` + the name in kebab case + ``.md``.

    Example:
        >>> runbook_url("HighErrorRate", "https://docs.example.com/runbooks/")
        'https://docs.example.com/runbooks/high-error-rate.md'
    """
    return f"{base_url}{_kebab(alert)}.md"


# --- SLIs -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SLIQuery:
    """The series an SLI counts: all events, and either the bad ones or the good ones."""

    total: str
    bad: str | None = None
    good: str | None = None


def sli_query(slo: SLO) -> SLIQuery:
    """The series selectors of ``slo``'s SLI (built from the convention's metric names).

    Example:
        >>> q = sli_query(SLO(name="a", service="api", target=0.99, sli="success_ratio", feature="/orders"))
        >>> q.bad
        'http_server_request_duration_seconds_count{job="api",http_route="/orders",http_response_status_code!~"2.."}'
    """
    labels = slo.label_selector()
    if slo.source == "http":
        if slo.feature is not None:
            labels[c.LABEL_HTTP_ROUTE] = slo.feature
        total = _selector(f"{_H}_count", labels)
        if slo.sli == "availability":
            return SLIQuery(total, bad=_selector(f"{_H}_count", labels, (c.LABEL_HTTP_STATUS, "=~", "5..")))
        if slo.sli == "success_ratio":
            return SLIQuery(total, bad=_selector(f"{_H}_count", labels, (c.LABEL_HTTP_STATUS, "!~", "2..")))
        le = _le(slo.threshold)
        return SLIQuery(total, good=_selector(f"{_H}_bucket", labels, ("le", "=", le)))
    if slo.source == "function":
        if slo.feature is not None:
            labels[c.LABEL_FUNCTION] = slo.feature
        if slo.sli == "latency":
            le = _le(slo.threshold)
            return SLIQuery(
                _selector(f"{_F_DURATION}_count", labels),
                good=_selector(f"{_F_DURATION}_bucket", labels, ("le", "=", le)),
            )
        total = _selector(c.FUNCTION_CALLS.name, labels)
        return SLIQuery(total, bad=_selector(c.FUNCTION_CALLS.name, labels, (c.LABEL_RESULT, "=", c.RESULT_ERROR)))
    if slo.feature is not None:
        labels[c.LABEL_CHECK] = slo.feature
    total = _selector(c.HEALTH_CHECK_RUNS.name, labels)
    return SLIQuery(total, bad=_selector(c.HEALTH_CHECK_RUNS.name, labels, (c.LABEL_RESULT, "!=", "pass")))


def error_ratio_expr(slo: SLO, window: str, *, function: str = "increase") -> str:
    """PromQL for ``slo``'s error ratio over ``window``: bad events over all events in the window.

    It is a ratio of increases, so a 30-day ratio weighs every request equally (an average of
    5-minute ratios would not). No bad series yet counts as zero; no events at all gives no value.

    Example:
        >>> slo = SLO(name="a", service="api", target=0.99, sli="availability", source="http")
        >>> print(error_ratio_expr(slo, "1h"))
        (sum(increase(http_server_request_duration_seconds_count{job="api",http_response_status_code=~"5.."}[1h])) \
or vector(0)) / sum(increase(http_server_request_duration_seconds_count{job="api"}[1h]))
    """
    q = sli_query(slo)
    total = f"sum({function}({q.total}[{window}]))"
    if q.bad is not None:
        return f"(sum({function}({q.bad}[{window}])) or vector(0)) / {total}"
    return f"1 - sum({function}({q.good}[{window}])) / {total}"


def events_rate_expr(slo: SLO, window: str) -> str:
    """PromQL for the SLI's events per second over ``window``, from the raw series."""
    return f"sum(rate({sli_query(slo).total}[{window}]))"


def error_events_rate_expr(slo: SLO, window: str = "5m") -> str:
    """PromQL for the SLI's bad events per second over ``window``, from the raw series.

    No bad series yet is zero while the SLI has events, and nothing when it has none.

    Example:
        >>> slo = SLO(name="a", service="api", target=0.99, sli="availability", source="http")
        >>> print(error_events_rate_expr(slo))
        sum(rate(http_server_request_duration_seconds_count{job="api",http_response_status_code=~"5.."}[5m])) \
or 0 * sum(rate(http_server_request_duration_seconds_count{job="api"}[5m]))
    """
    q = sli_query(slo)
    total = f"sum(rate({q.total}[{window}]))"
    if q.bad is not None:
        return f"sum(rate({q.bad}[{window}])) or 0 * {total}"
    return f"{total} - sum(rate({q.good}[{window}]))"


def _raw_window_seconds(burn: Sequence[BurnRateWindow]) -> float:
    return max(parse_duration(w) for w in [*c.SLO_WINDOWS, *(x for b in burn for x in (b.short_window, b.long_window))])


def window_ratio_expr(slo: SLO, window: str, burn: Sequence[BurnRateWindow] = BURN_RATE_WINDOWS) -> str:
    """PromQL recording ``slo``'s error ratio over ``window``.

    Up to the longest alert window (3d) it is :func:`error_ratio_expr` on the raw series. A longer
    window (the SLO's 30d) would make Prometheus read 30 days of every raw series each minute;
    it sums the recorded 5-minute event rates instead. Both rates are sampled at every rule
    evaluation, so each event is counted the same number of times in both sums and the quotient is
    still the share of bad events over the window; ``rate()`` has already absorbed counter resets.
    The recorded form covers only the time since the rules were loaded.

    Example:
        >>> slo = SLO(name="a", service="api", target=0.99, sli="availability", source="http")
        >>> print(window_ratio_expr(slo, "30d"))
        sum_over_time(slo:sli_error_events:rate5m{slo="a",service="api"}[30d]) \
/ sum_over_time(slo:sli_events:rate5m{slo="a",service="api"}[30d])
    """
    if parse_duration(window) <= _raw_window_seconds(burn):
        return error_ratio_expr(slo, window)
    match = _match(slo)
    return (
        f"sum_over_time({c.SLO_SLI_ERROR_EVENTS_RATE}{match}[{window}]) "
        f"/ sum_over_time({c.SLO_SLI_EVENTS_RATE}{match}[{window}])"
    )


def _match(slo: SLO) -> str:
    """The matchers selecting ``slo``'s recorded series."""
    return _selector("", {k: v for k, v in slo.labels().items() if k != c.LABEL_SLO_FEATURE})


def unknown_thresholds(slos: Iterable[SLO]) -> list[SLO]:
    """Latency SLOs whose threshold is not a default bucket boundary of their histogram.

    Their ``le`` series exist only in services that pass the SLO to ``configure()``
    (``slos=`` or ``slo_file=``), which adds the boundary.
    """
    presets = {"http": c.HTTP_SERVER_DURATION.buckets or (), "function": c.FUNCTION_CALLS_DURATION.buckets or ()}
    return [s for s in slos if s.sli == "latency" and s.threshold not in presets[s.source]]


# --- the alert catalogue --------------------------------------------------------------------------


@dataclass(frozen=True)
class CatalogueAlert:
    """One alert of the seed's catalogue; ``threshold`` and ``for_`` can be overridden."""

    name: str
    group: str
    severity: str
    threshold: float | None
    for_: str
    summary: str
    description: str
    build: Callable[[float | None, float], str]

    def expr(self, min_rate: float = DEFAULT_MIN_RATE) -> str:
        """The alert's PromQL with its threshold (and the low-traffic guard where it applies)."""
        return self.build(self.threshold, min_rate)


def _guard(expr: str, rate: str, min_rate: float) -> str:
    return f"({expr}) and ({rate} >= {_num(min_rate)})" if min_rate > 0 else expr


def _high_error_rate(threshold: float | None, min_rate: float) -> str:
    by = "sum by (job) "
    errors = f"{by}(rate({_selector(f'{_H}_count', {}, (c.LABEL_HTTP_STATUS, '=~', '5..'))}[5m]))"
    total = f"{by}(rate({_H}_count[5m]))"
    return _guard(f"{errors} / {total} > {_num(threshold or 0)}", total, min_rate)


def _database_down(threshold: float | None, min_rate: float) -> str:
    status = _selector(c.HEALTH_CHECK_STATUS.name, {c.LABEL_CHECK: "database"})
    return f"{status} == 0 or pg_up == 0"


def _high_memory(threshold: float | None, min_rate: float) -> str:
    total, available = "node_memory_MemTotal_bytes", "node_memory_MemAvailable_bytes"
    return f"({total} - {available}) / {total} > {_num(threshold or 0)}"


def _high_latency(threshold: float | None, min_rate: float) -> str:
    buckets = f"sum by (job, le) (rate({_H}_bucket[5m]))"
    return f"histogram_quantile(0.95, {buckets}) > {_num(threshold or 0)}"


def _low_cache_hit_ratio(threshold: float | None, min_rate: float) -> str:
    by = f"sum by (job, {c.LABEL_CACHE_NAME}) "
    name = c.CACHE_OPERATIONS.name
    hits = f"{by}(rate({_selector(name, {c.LABEL_CACHE_RESULT: 'hit'})}[10m]))"
    lookups = f"{by}(rate({_selector(name, {}, (c.LABEL_CACHE_RESULT, '=~', 'hit|miss'))}[10m]))"
    # a cache that never hit has no hit series yet: count it as 0 hits, or the alert could never fire
    return _guard(f"({hits} or 0 * {lookups}) / {lookups} < {_num(threshold or 0)}", lookups, min_rate)


def _pool_saturation(threshold: float | None, min_rate: float) -> str:
    by = f"sum by (job, {c.LABEL_POOL_NAME}) "
    used = f"{by}({_selector(c.DB_CONNECTION_COUNT.name, {c.LABEL_POOL_STATE: 'used'})})"
    return f"{used} / ({by}({c.DB_CONNECTION_MAX.name}) > 0) > {_num(threshold or 0)}"


def _disk_usage(threshold: float | None, min_rate: float) -> str:
    real = ("fstype", "!~", "tmpfs|ramfs|squashfs|overlay")
    avail = _selector("node_filesystem_avail_bytes", {}, real)
    size = _selector("node_filesystem_size_bytes", {}, real)
    return f"1 - {avail} / {size} > {_num(threshold or 0)}"


def _queue_lag(threshold: float | None, min_rate: float) -> str:
    by = f"max by (job, {c.LABEL_MESSAGING_SYSTEM}, {c.LABEL_MESSAGING_DESTINATION}) "
    return f"{by}({c.MESSAGING_QUEUE_LAG.name}) > {_num(threshold or 0)}"


def catalogue() -> tuple[CatalogueAlert, ...]:
    """The seed's alerts with their default thresholds, on the SDK's metric names.

    Example:
        >>> [(a.name, a.threshold, a.for_) for a in catalogue()][:3]
        [('HighErrorRate', 0.05, '5m'), ('DatabaseDown', None, '2m'), ('HighMemoryUsage', 0.9, '10m')]
    """
    return (
        CatalogueAlert(
            "HighErrorRate", "bakhmach_critical", "critical", 0.05, "5m",
            "High HTTP error rate on {{ $labels.job }}",
            "{{ $value | humanizePercentage }} of the HTTP requests of {{ $labels.job }} answered 5xx "
            "over the last 5 minutes (threshold {threshold:.0%}).",
            _high_error_rate,
        ),
        CatalogueAlert(
            "DatabaseDown", "bakhmach_critical", "critical", None, "2m",
            "Database is down ({{ $labels.job }})",
            "The readiness check `database` of {{ $labels.job }} fails, or the postgres exporter "
            "reports pg_up == 0, for 2 minutes.",
            _database_down,
        ),
        CatalogueAlert(
            "HighMemoryUsage", "bakhmach_critical", "critical", 0.9, "10m",
            "Memory usage above {threshold:.0%} on {{ $labels.instance }}",
            "{{ $value | humanizePercentage }} of the memory of {{ $labels.instance }} is in use "
            "(node exporter).",
            _high_memory,
        ),
        CatalogueAlert(
            "HighLatency", "bakhmach_warning", "warning", 1.0, "10m",
            "p95 latency of {{ $labels.job }} above {threshold_ms:g} ms",
            "The 95th percentile of HTTP request durations of {{ $labels.job }} is "
            "{{ $value | humanizeDuration }} over the last 5 minutes.",
            _high_latency,
        ),
        CatalogueAlert(
            "LowCacheHitRatio", "bakhmach_warning", "warning", 0.7, "10m",
            "Cache {{ $labels.cache_name }} hit ratio below {threshold:.0%}",
            "Only {{ $value | humanizePercentage }} of the lookups of cache {{ $labels.cache_name }} "
            "on {{ $labels.job }} hit over the last 10 minutes.",
            _low_cache_hit_ratio,
        ),
        CatalogueAlert(
            "DatabaseConnectionsHigh", "bakhmach_warning", "warning", 0.8, "10m",
            "Connection pool {{ $labels.pool_name }} above {threshold:.0%} of its size",
            "{{ $value | humanizePercentage }} of the connections pool {{ $labels.pool_name }} of "
            "{{ $labels.job }} allows are in use.",
            _pool_saturation,
        ),
        CatalogueAlert(
            "DiskUsageHigh", "bakhmach_warning", "warning", 0.8, "15m",
            "Disk {{ $labels.mountpoint }} on {{ $labels.instance }} above {threshold:.0%}",
            "{{ $value | humanizePercentage }} of the filesystem {{ $labels.mountpoint }} of "
            "{{ $labels.instance }} is used (node exporter).",
            _disk_usage,
        ),
        CatalogueAlert(
            "QueueLagHigh", "bakhmach_warning", "warning", 300.0, "5m",
            "Queue {{ $labels.messaging_destination_name }} lags more than {threshold:g} s",
            "The oldest message waiting in {{ $labels.messaging_destination_name }} "
            "({{ $labels.messaging_system }}) is {{ $value | humanizeDuration }} old.",
            _queue_lag,
        ),
    )  # fmt: skip


def alert_names(*, catalogue_alerts: bool = True) -> list[str]:
    """Every alert name :func:`generate` can produce (each has a runbook page)."""
    names = [*dict.fromkeys(w.alert for w in BURN_RATE_WINDOWS), _ABSENT]
    return names + [a.name for a in catalogue()] if catalogue_alerts else names


# --- generation -----------------------------------------------------------------------------------

_OVERRIDE_KEYS = ("threshold", "for", "severity", "enabled")


def _check_overrides(overrides: Mapping[str, Mapping[str, Any]], known: Sequence[str]) -> None:
    for alert, values in overrides.items():
        if alert not in known:
            raise ConfigurationError("overrides", alert, known)
        if not isinstance(values, Mapping):
            raise ConfigurationError(f"overrides[{alert!r}]", values, "a mapping of " + ", ".join(_OVERRIDE_KEYS))
        for key, value in values.items():
            if key not in _OVERRIDE_KEYS:
                raise ConfigurationError(f"overrides[{alert!r}]", key, _OVERRIDE_KEYS)
            if key == "for" and not _zero(str(value)):
                try:
                    parse_duration(str(value))
                except ValueError:
                    raise ConfigurationError(f"overrides[{alert!r}].for", value, "a duration (5m)") from None
            if key == "threshold" and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise ConfigurationError(f"overrides[{alert!r}].threshold", value, "a number")
            if key == "severity" and not (isinstance(value, str) and value):
                raise ConfigurationError(f"overrides[{alert!r}].severity", value, "a non-empty string")


def _zero(duration: str) -> bool:
    return re.fullmatch(r"0+(ms|s|m|h|d|w|y)?", duration) is not None


def _alert(
    name: str, expr: str, for_: str, severity: str, labels: Mapping[str, str], summary: str, description: str, base: str
) -> dict[str, Any]:
    rule: dict[str, Any] = {"alert": name, "expr": expr}
    if not _zero(for_):
        rule["for"] = for_
    rule["labels"] = {"severity": severity, **labels}
    rule["annotations"] = {"summary": summary, "description": description, "runbook_url": runbook_url(name, base)}
    return rule


def _windows(slo: SLO, burn: Sequence[BurnRateWindow]) -> list[str]:
    windows = list(c.SLO_WINDOWS)
    for w in [*(x for b in burn for x in (b.short_window, b.long_window)), slo.window]:
        if w not in windows:
            windows.append(w)
    return windows


def _slo_group(
    slo: SLO,
    burn: Sequence[BurnRateWindow],
    min_rate: float,
    base: str,
    overrides: Mapping[str, Mapping[str, Any]],
) -> dict[str, Any]:
    labels = slo.labels()
    match = _match(slo)
    rules: list[dict[str, Any]] = [
        {"record": c.SLO_SLI_EVENTS_RATE, "expr": events_rate_expr(slo, "5m"), "labels": dict(labels)},
        {"record": c.SLO_SLI_ERROR_EVENTS_RATE, "expr": error_events_rate_expr(slo, "5m"), "labels": dict(labels)},
    ]
    rules += [
        {"record": c.slo_sli_error(w), "expr": window_ratio_expr(slo, w, burn), "labels": dict(labels)}
        for w in _windows(slo, burn)
    ]
    budget = slo.budget
    rules += [
        {"record": c.SLO_OBJECTIVE, "expr": f"vector({_num(slo.target)})", "labels": dict(labels)},
        {"record": c.SLO_ERROR_BUDGET, "expr": f"vector({_num(budget)})", "labels": dict(labels)},
        {
            "record": c.SLO_PERIOD_BURN_RATE,
            "expr": f"{c.slo_sli_error(slo.window)}{match} / {_num(budget)}",
            "labels": dict(labels),
        },
        {"record": c.SLO_BUDGET_REMAINING, "expr": f"1 - {c.SLO_PERIOD_BURN_RATE}{match}", "labels": dict(labels)},
    ]
    target = f"{slo.target * 100:.10g}% over {slo.window}"
    for alert in dict.fromkeys(b.alert for b in burn):
        conditions = [b for b in burn if b.alert == alert]
        o = overrides.get(alert, {})
        if not o.get("enabled", True):
            continue
        parts = []
        for b in conditions:
            level = _num(b.factor * budget)
            cond = (
                f"{c.slo_sli_error(b.long_window)}{match} > {level} "
                f"and {c.slo_sli_error(b.short_window)}{match} > {level}"
            )
            if min_rate > 0:  # the recorded 5m rates averaged: no raw range over the long window
                cond += (
                    f" and on() (sum(avg_over_time({c.SLO_SLI_EVENTS_RATE}{match}[{b.long_window}]))"
                    f" >= {_num(min_rate)})"
                )
            parts.append(f"({cond})")
        speed = " or ".join(f"{b.factor:g}x over {b.long_window} and {b.short_window}" for b in conditions)
        rules.append(
            _alert(
                alert, " or ".join(parts), str(o.get("for", "0s")), str(o.get("severity", conditions[0].severity)),
                labels,
                f"SLO {slo.name} of {slo.service} is burning its error budget ({conditions[0].severity})",
                f"The error ratio of SLO {slo.name} ({target}) is {{{{ $value | humanizePercentage }}}}, "
                f"above the burn-rate threshold ({speed} the budget of {_num(budget)}).",
                base,
            )
        )  # fmt: skip
    o = overrides.get(_ABSENT, {})
    if o.get("enabled", True):
        q = sli_query(slo)
        expr = f"absent({q.total})" + (f" or absent({q.good})" if q.good is not None else "")
        rules.append(
            _alert(
                _ABSENT, expr, str(o.get("for", "10m")), str(o.get("severity", "warning")), labels,
                f"No data for SLO {slo.name} of {slo.service}",
                f"The series SLO {slo.name} is computed from are missing (`{q.good or q.total}`): the "
                "service is not scraped, its selector matches nothing, or (latency SLOs) the histogram "
                "has no bucket at the threshold because the service was configured without this SLO.",
                base,
            )
        )  # fmt: skip
    return {"name": f"bakhmach_slo_{slo.name}", "rules": rules}


def generate(
    slos: Iterable[SLO] = (),
    *,
    slo_file: str | Path | Sequence[str | Path] | None = None,
    catalogue_alerts: bool = True,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    min_rate: float = DEFAULT_MIN_RATE,
    runbook_base_url: str = DEFAULT_RUNBOOK_BASE_URL,
    burn_rate_windows: Sequence[BurnRateWindow] = BURN_RATE_WINDOWS,
    strict_buckets: bool = False,
) -> dict[str, Any]:
    """One Prometheus rule file (``{"groups": [...]}``) for ``slos`` and the alert catalogue.

    Args:
        slos: the SLOs (:class:`~bakhmach_obs.slo.SLO`, e.g. from :func:`~bakhmach_obs.slo.load_slos`).
        slo_file: SLO file(s) to read as well (``None``: none).
        catalogue_alerts: include the seed's alert catalogue (:func:`catalogue`).
        overrides: per alert name, any of ``threshold`` (catalogue alerts), ``for``, ``severity``
            and ``enabled``: ``{"HighErrorRate": {"threshold": 0.02, "for": "10m"}}``.
        min_rate: the low-traffic guard, events per second over an alert's long window (0: off).
        runbook_base_url: prefix of every ``runbook_url``.
        burn_rate_windows: the burn-rate conditions (default: the SRE workbook's, for 30 days).
        strict_buckets: refuse a latency threshold that is not a default bucket boundary.

    Raises:
        ConfigurationError: an unknown override, a repeated SLO name, or (``strict_buckets``)
            a threshold outside the default buckets.
    """
    slo_list = check_unique([*slos, *_from_files(slo_file)])
    overrides = dict(overrides or {})
    _check_overrides(overrides, alert_names())
    if isinstance(min_rate, bool) or not isinstance(min_rate, (int, float)) or min_rate < 0:
        raise ConfigurationError("min_rate", min_rate, "a number of events per second >= 0")
    if strict_buckets:
        for slo in unknown_thresholds(slo_list):
            raise ConfigurationError(
                f"SLO {slo.name!r} threshold", slo.threshold,
                "a default bucket boundary (or generate without strict_buckets and configure the "
                "service with this SLO, which adds the boundary)",
            )  # fmt: skip
    groups = [_slo_group(slo, burn_rate_windows, min_rate, runbook_base_url, overrides) for slo in slo_list]
    if catalogue_alerts:
        by_group: dict[str, list[dict[str, Any]]] = {}
        for alert in catalogue():
            o = overrides.get(alert.name, {})
            if not o.get("enabled", True):
                by_group.setdefault(alert.group, [])
                continue
            if "threshold" in o:
                alert = replace(alert, threshold=float(o["threshold"]))
            fmt = {"threshold": alert.threshold or 0, "threshold_ms": (alert.threshold or 0) * 1000}
            by_group.setdefault(alert.group, []).append(
                _alert(
                    alert.name, alert.expr(min_rate), str(o.get("for", alert.for_)),
                    str(o.get("severity", alert.severity)), {},
                    _fill(alert.summary, fmt), _fill(alert.description, fmt), runbook_base_url,
                )
            )  # fmt: skip
        groups += [{"name": name, "rules": rules} for name, rules in by_group.items() if rules]
    return {"groups": groups}


def _from_files(slo_file: str | Path | Sequence[str | Path] | None) -> list[SLO]:
    if slo_file is None:
        return []
    paths = [slo_file] if isinstance(slo_file, (str, Path)) else list(slo_file)
    return [s for path in paths for s in load_slos(path)]


def _fill(template: str, values: Mapping[str, float]) -> str:
    """Substitute ``{threshold...}`` fields, leaving Prometheus' ``{{ ... }}`` templates alone."""

    def sub(match: re.Match[str]) -> str:
        return format(values[match.group(1)], match.group(2) or "")

    return re.sub(r"(?<!\{)\{(threshold(?:_ms)?)(?::([^}]*))?\}(?!\})", sub, template)


def prometheus_rule(
    slos: Iterable[SLO] = (),
    *,
    name: str = "bakhmach-obs",
    namespace: str | None = None,
    labels: Mapping[str, str] | None = None,
    **options: Any,
) -> dict[str, Any]:
    """The rule file as a prometheus-operator ``PrometheusRule`` object (``options`` as :func:`generate`).

    ``labels`` must match your Prometheus' ``ruleSelector`` (often ``release: <helm release>``).
    """
    metadata: dict[str, Any] = {"name": name}
    if namespace:
        metadata["namespace"] = namespace
    metadata["labels"] = dict(labels) if labels else {"app.kubernetes.io/part-of": "bakhmach-obs"}
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": metadata,
        "spec": generate(slos, **options),
    }


def sloth_specs(slos: Iterable[SLO], *, runbook_base_url: str = DEFAULT_RUNBOOK_BASE_URL) -> list[dict[str, Any]]:
    """sloth ``prometheus/v1`` specs, one per service, with the same SLI queries.

    sloth takes the SLO window from its ``--default-slo-period`` (30d unless set), not from the spec.

    Example:
        >>> spec = sloth_specs([SLO(name="api-ok", service="api", target=0.99)])[0]
        >>> spec["slos"][0]["sli"]["events"]["total_query"]
        'sum(rate(http_server_request_duration_seconds_count{job="api"}[{{.window}}]))'
    """
    services: dict[str, list[dict[str, Any]]] = {}
    for slo in check_unique(slos):
        q = sli_query(slo)
        total = f"sum(rate({q.total}[{{{{.window}}}}]))"
        if q.bad is not None:
            error = f"(sum(rate({q.bad}[{{{{.window}}}}])) or vector(0))"
        else:
            error = f"({total} - sum(rate({q.good}[{{{{.window}}}}])))"
        entry: dict[str, Any] = {"name": slo.name, "objective": float(f"{slo.target * 100:.10g}")}
        if slo.description:
            entry["description"] = slo.description
        if slo.feature is not None:
            entry["labels"] = {c.LABEL_SLO_FEATURE: slo.feature}
        entry["sli"] = {"events": {"error_query": error, "total_query": total}}
        entry["alerting"] = {
            "name": "ErrorBudgetBurn",
            "annotations": {
                "summary": f"SLO {slo.name} of {slo.service} is burning its error budget",
                "runbook_url": runbook_url("ErrorBudgetBurn", runbook_base_url),
            },
            "page_alert": {"labels": {"severity": "critical"}},
            "ticket_alert": {"labels": {"severity": "warning"}},
        }
        services.setdefault(slo.service, []).append(entry)
    return [{"version": "prometheus/v1", "service": svc, "slos": entries} for svc, entries in services.items()]


def render(fmt: str = "prometheus", slos: Iterable[SLO] = (), **options: Any) -> str:
    """The YAML text of the rules in ``fmt`` (``prometheus``, ``operator`` or ``sloth``).

    ``options`` go to :func:`generate` (or :func:`prometheus_rule`; for ``sloth`` only
    ``runbook_base_url`` applies).
    """
    header = "# Generated by `bakhmach-obs rules` from the bakhmach_obs naming convention. Do not edit.\n"
    from ._yaml import dump, dump_all

    if fmt == "prometheus":
        return header + dump(generate(slos, **options))
    if fmt == "operator":
        return header + dump(prometheus_rule(slos, **options))
    if fmt == "sloth":
        base = options.get("runbook_base_url", DEFAULT_RUNBOOK_BASE_URL)
        return header + dump_all(sloth_specs(slos, runbook_base_url=base))
    raise ConfigurationError("format", fmt, FORMATS)


# --- command line ---------------------------------------------------------------------------------


def add_cli_arguments(parser: Any) -> None:
    """Options of ``bakhmach-obs rules``."""
    parser.add_argument("--slo", action="append", default=[], metavar="FILE", help="SLO file (repeatable)")
    parser.add_argument("--format", choices=FORMATS, default="prometheus", help="output format (default prometheus)")
    parser.add_argument("-o", "--output", metavar="FILE", help="write here instead of stdout")
    parser.add_argument("--no-catalogue", action="store_true", help="only the SLO rules, not the seed's alerts")
    parser.add_argument(
        "--min-rate", type=float, default=DEFAULT_MIN_RATE, metavar="PER_SECOND",
        help=f"low-traffic guard: events/s an SLI needs before a burn-rate alert fires (default {DEFAULT_MIN_RATE})",
    )  # fmt: skip
    parser.add_argument(
        "--runbook-base-url", default=DEFAULT_RUNBOOK_BASE_URL, metavar="URL",
        help=f"prefix of every runbook_url (default {DEFAULT_RUNBOOK_BASE_URL})",
    )  # fmt: skip
    parser.add_argument(
        "--set", action="append", default=[], metavar="ALERT.KEY=VALUE",
        help="override an alert's threshold, for or severity: --set HighErrorRate.threshold=0.02",
    )  # fmt: skip
    parser.add_argument("--disable", action="append", default=[], metavar="ALERT", help="leave an alert out")
    parser.add_argument(
        "--strict-buckets", action="store_true",
        help="fail when a latency threshold is not a default bucket boundary",
    )  # fmt: skip
    parser.add_argument("--name", default="bakhmach-obs", help="PrometheusRule name (operator format)")
    parser.add_argument("--namespace", help="PrometheusRule namespace (operator format)")


def _parse_sets(items: Sequence[str], disabled: Sequence[str]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        target, sep, value = item.partition("=")
        alert, dot, key = target.partition(".")
        if not sep or not dot or not alert or not key:
            raise ConfigurationError("--set", item, "ALERT.KEY=VALUE, e.g. HighErrorRate.threshold=0.02")
        parsed: Any = value
        if key == "threshold":
            try:
                parsed = float(value)
            except ValueError:
                raise ConfigurationError(f"--set {alert}.threshold", value, "a number") from None
        out.setdefault(alert, {})[key] = parsed
    for alert in disabled:
        out.setdefault(alert, {})["enabled"] = False
    return out


def run_cli(args: Any) -> int:
    """Run ``bakhmach-obs rules``; 0 on success, 2 on a bad SLO file or option."""
    import sys

    try:
        slos = _from_files(args.slo)
        for slo in unknown_thresholds(slos):
            print(
                f"warning: SLO {slo.name}: threshold {slo.threshold:g}s is not a default bucket boundary; "
                f'le="{_le(slo.threshold)}" exists only if the service is configured with this '
                "SLO (configure(slo_file=...) or slos=[...]) - otherwise SLOMetricAbsent fires",
                file=sys.stderr,
            )
        options: dict[str, Any] = {"runbook_base_url": args.runbook_base_url}
        if args.format == "sloth":
            ignored = [
                flag
                for flag, used in (
                    ("--set", bool(args.set)),
                    ("--disable", bool(args.disable)),
                    ("--no-catalogue", args.no_catalogue),
                    ("--min-rate", args.min_rate != DEFAULT_MIN_RATE),
                    ("--strict-buckets", args.strict_buckets),
                )
                if used
            ]
            if ignored:  # sloth generates its own alerts and has no catalogue: say so instead of dropping them
                print(
                    f"warning: {', '.join(ignored)} do not apply to --format sloth (sloth writes its own "
                    "burn-rate alerts; the alert catalogue is only in the prometheus and operator formats)",
                    file=sys.stderr,
                )
        else:
            options.update(
                catalogue_alerts=not args.no_catalogue, overrides=_parse_sets(args.set, args.disable),
                min_rate=args.min_rate, strict_buckets=args.strict_buckets,
            )  # fmt: skip
        if args.format == "operator":
            options.update(name=args.name, namespace=args.namespace)
        text = render(args.format, slos, **options)
    except ConfigurationError as exc:
        print(f"bakhmach-obs rules: {exc}", file=sys.stderr)
        return 2
    if args.output:
        with open(args.output, "w", encoding="utf-8") as fh:
            fh.write(text)
    else:
        sys.stdout.write(text)
    return 0
