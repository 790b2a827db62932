"""Grafana dashboards generated from the naming convention (``bakhmach-obs dashboards -o DIR``).

Five dashboards, each a plain Grafana dashboard JSON model (``schemaVersion`` 39, Grafana 10.3+):

* ``system-overview.json``: host CPU, memory, disk and network (node_exporter), the service's
  processes (CPU, memory, disk and network I/O, threads, connections, file descriptors), the
  top processes and containers by resource usage, and the Python runtime (GC pauses, asyncio);
* ``application-performance.json``: request latency heatmap and p50/p95/p99 with exemplars,
  throughput, error-rate trends, Apdex with a configurable target, a per-route table, the
  ``@instrument`` functions and the SDK's own health;
* ``business-metrics.json``: transactions and revenue, active users, feature usage, conversion
  funnel, engagement and churn;
* ``infrastructure.json``: Kubernetes pod status (kube-state-metrics), database replication lag
  and connections (postgres_exporter), the client side of databases and pools, cache efficiency,
  queue depth and lag, health checks;
* ``slo.json``: error budget remaining, burn rates and SLI error ratios per SLO, from the recording
  rules ``bakhmach-obs rules`` generates.

Every PromQL expression is built from :mod:`bakhmach_obs.conventions` (the SDK's
:class:`~bakhmach_obs.conventions.MetricSpec` objects, the SLO recording-rule names and
:data:`~bakhmach_obs.conventions.EXTERNAL_METRICS` for exporters), never from a hand-written name.
Every panel has a unit and a description, and a ``${datasource}`` data source; every dashboard has
the variables ``datasource``, ``service`` (the Prometheus ``job``), ``environment`` (the
``deployment_environment`` target label; "All" also matches targets without it) and ``instance``.
Latency queries ask for exemplars: with the Prometheus data source's ``exemplarTraceIdDestinations``
set as :func:`prometheus_datasource_json_data` returns, a click on an exemplar opens the trace.

The JSON is built by the small typed helpers below rather than by ``grafana-foundation-sdk``:
that package needs Python 3.11 (``enum.StrEnum``, ``typing.Self``) while the SDK supports 3.10,
and its versions are ``<build timestamp>!<Grafana version>``, so an unpinned install resolves to
the newest build, which targets Grafana 10.1; only an exact pin is safe.

Example:
    >>> from bakhmach_obs import dashboards
    >>> models = dashboards.generate(apdex_target=0.25)
    >>> sorted(models)[:2]
    ['application-performance.json', 'business-metrics.json']
    >>> models["slo.json"]["uid"], models["slo.json"]["schemaVersion"]
    ('bakhmach-obs-slo', 39)
    >>> dashboards.APDEX_TARGETS
    (0.025, 0.25, 2.5)
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from . import conventions as c
from .conventions import MetricSpec
from .errors import ConfigurationError

__all__ = [
    "APDEX_TARGETS",
    "DEFAULT_APDEX_TARGET",
    "Dashboard",
    "Panel",
    "PanelKind",
    "Query",
    "Row",
    "SCHEMA_VERSION",
    "TRACE_DATASOURCE_UID",
    "Variable",
    "add_cli_arguments",
    "dashboards",
    "generate",
    "prometheus_datasource_json_data",
    "run_cli",
    "write",
]

#: Grafana's dashboard schema version the models are written in (Grafana 10.3 to 11.x load it as is).
SCHEMA_VERSION = 39
#: The tracing data source the exemplar links open (the generated stack provisions Jaeger with this uid).
TRACE_DATASOURCE_UID = "jaeger"
#: Apdex targets T for which both ``T`` and ``4T`` are bucket bounds of ``http_server_request_duration_seconds``.
APDEX_TARGETS: tuple[float, ...] = tuple(
    t for t in c.DURATION_BUCKETS if any(math.isclose(4 * t, b) for b in c.DURATION_BUCKETS)
)
#: 250 ms satisfied, up to 1 s tolerated.
DEFAULT_APDEX_TARGET = 0.25

PanelKind = Literal["timeseries", "stat", "gauge", "bargauge", "heatmap", "table"]
QueryFormat = Literal["time_series", "table", "heatmap"]

_DS: dict[str, str] = {"type": "prometheus", "uid": "${datasource}"}
_RATE = "$__rate_interval"
_RANGE = "$__range"
_JOB, _INSTANCE = "job", "instance"  # Prometheus target labels
_ENV = c.LABEL_DEPLOYMENT_ENVIRONMENT
_SCOPE = (f'{_JOB}=~"$service"', f'{_ENV}=~"$environment"', f'{_INSTANCE}=~"$instance"')
_ENV_ONLY = (f'{_ENV}=~"$environment"',)
_5XX = f'{c.LABEL_HTTP_STATUS}=~"5.."'
_NOT_5XX = f'{c.LABEL_HTTP_STATUS}!~"5.."'


# --- the model --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Query:
    """One PromQL target of a panel.

    Attributes:
        expr: the PromQL expression, with Grafana variables (``$service``, ``$__rate_interval``).
        legend: Grafana's legend format (``{{http_route}}``); empty for Grafana's automatic legend.
        instant: an instant query (tables, bar gauges) instead of a range query.
        exemplar: ask Prometheus for exemplars (latency histograms: links to the trace).
        format: ``time_series``, ``table`` or ``heatmap``.
        key: on the SDK's own metrics: an instrumented service under traffic must give it data
            (the end-to-end test checks exactly these).
    """

    expr: str
    legend: str = ""
    instant: bool = False
    exemplar: bool = False
    format: QueryFormat = "time_series"
    key: bool = False


@dataclass(frozen=True)
class Panel:
    """One visualisation.

    Attributes:
        title: the panel title.
        kind: the Grafana panel type.
        unit: the Grafana unit id of the values (``s``, ``reqps``, ``percentunit``, ``bytes``...);
            for a heatmap, the unit of its buckets (the y axis).
        description: what the panel shows and how to read it (the ``i`` tooltip in Grafana).
        queries: the PromQL targets (ref ids A, B, C... in order).
        source: where the data comes from: ``"sdk"`` (this library), ``"slo_rules"`` (the generated
            recording rules) or an :data:`~bakhmach_obs.conventions.EXTERNAL_METRICS` exporter.
        width, height: grid size (the grid is 24 wide).
        columns: tables only: (header, unit) for each query's value column.
        thresholds: (value, colour) steps above a green base, e.g. ``((0.01, "red"),)``.
        min, max: value range, when it is a fixed one (ratios: 0 to 1).
        stacked: stack the series of a time series panel.
    """

    title: str
    kind: PanelKind
    unit: str
    description: str
    queries: tuple[Query, ...]
    source: str = "sdk"
    width: int = 12
    height: int = 8
    columns: tuple[tuple[str, str], ...] = ()
    thresholds: tuple[tuple[float, str], ...] = ()
    min: float | None = None
    max: float | None = None
    stacked: bool = False


@dataclass(frozen=True)
class Row:
    """A titled group of panels."""

    title: str
    panels: tuple[Panel, ...]


@dataclass(frozen=True)
class Variable:
    """A query variable (multi-value, with an "All" option matching every value and none)."""

    name: str
    label: str
    query: str


@dataclass(frozen=True)
class Dashboard:
    """One dashboard: its file name, stable uid, rows of panels and extra variables."""

    file_name: str
    uid: str
    title: str
    description: str
    rows: tuple[Row, ...]
    variables: tuple[Variable, ...] = ()

    def panels(self) -> Iterator[Panel]:
        """Every panel, row by row."""
        for row in self.rows:
            yield from row.panels


# --- PromQL helpers ---------------------------------------------------------------------------


def _sel(name: str, *matchers: str, scope: Sequence[str] = _SCOPE) -> str:
    """``name{job=~"$service", ..., matchers}``."""
    return f"{name}{{{', '.join((*scope, *matchers))}}}"


def _eq(label: str, value: str) -> str:
    return f'{label}="{value}"'


def _ne(label: str, value: str) -> str:
    return f'{label}!="{value}"'


def _re(label: str, value: str) -> str:
    return f'{label}=~"{value}"'


def _ext(exporter: str, name: str) -> str:
    """An exporter's metric name, checked against :data:`~bakhmach_obs.conventions.EXTERNAL_METRICS`."""
    if name not in c.EXTERNAL_METRICS[exporter]:  # pragma: no cover - a programming error, caught by the tests
        raise KeyError(f"{name} is not listed for {exporter} in conventions.EXTERNAL_METRICS")
    return name


def _suffix(spec: MetricSpec, suffix: str) -> str:
    return spec.name + suffix


def _by(labels: Sequence[str], op: str = "sum") -> str:
    return f"{op} by ({', '.join(labels)}) " if labels else op


def _agg(op: str, name: str, *matchers: str, by: Sequence[str] = (), scope: Sequence[str] = _SCOPE) -> str:
    """``op by (by) (name{scope, matchers})``: a gauge aggregated with ``sum``, ``max``, ``min`` or ``avg``."""
    return f"{_by(by, op)}({_sel(name, *matchers, scope=scope)})"


def _rate(name: str, *matchers: str, by: Sequence[str] = (), window: str = _RATE, scope: Sequence[str] = _SCOPE) -> str:
    """``sum by (by) (rate(name{scope, matchers}[window]))``."""
    return f"{_by(by)}(rate({_sel(name, *matchers, scope=scope)}[{window}]))"


def _share(name: str, part: str, *whole: str, by: Sequence[str] = (), window: str = _RATE) -> str:
    """The rate of ``name`` matching ``part`` over its rate matching ``whole`` (all of it when empty)."""
    return f"{_rate(name, part, by=by, window=window)} / {_rate(name, *whole, by=by, window=window)}"


def _increase(
    name: str, *matchers: str, by: Sequence[str] = (), window: str = _RANGE, scope: Sequence[str] = _SCOPE
) -> str:
    return f"{_by(by)}(increase({_sel(name, *matchers, scope=scope)}[{window}]))"


def _quantile(q: float, spec: MetricSpec, *matchers: str, by: Sequence[str] = (), window: str = _RATE) -> str:
    labels = ", ".join(("le", *by))
    return f"histogram_quantile({q}, sum by ({labels}) (rate({_sel(_suffix(spec, '_bucket'), *matchers)}[{window}])))"


def _legend(*labels: str) -> str:
    return " ".join("{{" + label + "}}" for label in labels)


def _le(bound: float) -> str:
    """A matcher for the bucket ``bound``, as prometheus_client (``1.0``) or OTLP/Prometheus 3 (``1``) write it."""
    text = repr(float(bound))
    forms = [text]
    if text.endswith(".0"):
        forms.insert(0, text[:-2])
    return 'le=~"' + "|".join(f.replace(".", "\\\\.") for f in forms) + '"'


def _check_apdex_target(target: float) -> float:
    for t in APDEX_TARGETS:
        if math.isclose(t, target):
            return t
    raise ConfigurationError(
        "apdex_target",
        target,
        f"a bucket bound T of http_server_request_duration_seconds whose 4T is a bound too: "
        f"{', '.join(repr(t) for t in APDEX_TARGETS)} (bounds: {', '.join(repr(b) for b in c.DURATION_BUCKETS)})",
    )


def _apdex(target: float, *matchers: str, by: Sequence[str] = (), window: str = _RATE) -> str:
    bucket, count = _suffix(c.HTTP_SERVER_DURATION, "_bucket"), _suffix(c.HTTP_SERVER_DURATION, "_count")
    satisfied = _rate(bucket, _le(target), _NOT_5XX, *matchers, by=by, window=window)
    tolerating = _rate(bucket, _le(4 * target), _NOT_5XX, *matchers, by=by, window=window)
    total = _rate(count, *matchers, by=by, window=window)
    # Cumulative buckets: (le=T + le=4T) / 2 = satisfied + (le=4T - le=T) / 2. Without a non-5xx request
    # the bucket sums are empty: ``or 0 * total`` makes such a route's (or period's) Apdex 0, not absent.
    return f"(({satisfied} + {tolerating}) / 2 or 0 * {total}) / {total}"


def _major_units(make: Callable[[str], str]) -> tuple[str, str]:
    """Money in each currency's major unit, and (separately) currencies outside the ISO 4217 table in minor units.

    ``make(matcher)`` is an expression over ``business_revenue_minor_units_total`` restricted by a
    ``currency`` matcher; the result divides each ISO 4217 currency by ``10**exponent`` (USD by 100,
    JPY by 1, KWD by 1000). Currencies are never added together.
    """
    from .business import CURRENCY_EXPONENTS

    groups: dict[int, list[str]] = {}
    for code, exponent in sorted(CURRENCY_EXPONENTS.items()):
        groups.setdefault(exponent, []).append(code)
    parts = []
    for exponent, codes in sorted(groups.items()):
        expr = make(_re(c.LABEL_CURRENCY, "|".join(codes)))
        parts.append(f"{expr} / {10**exponent}" if exponent else expr)
    known = "|".join(sorted((*CURRENCY_EXPONENTS, c.BUSINESS_OTHER)))
    return " or ".join(parts), make(f'{c.LABEL_CURRENCY}!~"{known}"')


# --- query and panel builders: the shapes the dashboards repeat -----------------------------


def _rate_by(name: str, *matchers: str, by: Sequence[str], scope: Sequence[str] = _SCOPE, key: bool = False) -> Query:
    """The per-second rate of ``name`` summed by ``by``, with those labels as the legend."""
    return Query(_rate(name, *matchers, by=by, scope=scope), _legend(*by), key=key)


def _agg_by(
    op: str, name: str, *matchers: str, by: Sequence[str], scope: Sequence[str] = _SCOPE, key: bool = False
) -> Query:
    """The gauge ``name`` aggregated with ``op`` by ``by``, with those labels as the legend."""
    return Query(_agg(op, name, *matchers, by=by, scope=scope), _legend(*by), key=key)


def _p95_by(spec: MetricSpec, *by: str, exemplar: bool = False, key: bool = False) -> Query:
    """The 95th percentile of the histogram ``spec`` by ``by``, with those labels as the legend."""
    return Query(_quantile(0.95, spec, by=by), _legend(*by), exemplar=exemplar, key=key)


def _share_by(name: str, part: str, *whole: str, by: Sequence[str], key: bool = False) -> Query:
    """:func:`_share` by ``by``, with those labels as the legend."""
    return Query(_share(name, part, *whole, by=by), _legend(*by), key=key)


def _ranking(expr: str, *labels: str) -> Query:
    """The series of ``expr`` now (an instant query), largest first, labelled by ``labels``."""
    return Query(f"sort_desc({expr})", _legend(*labels), instant=True, key=True)


def _money(make: Callable[[str], str], *labels: str) -> tuple[Query, Query]:
    """:func:`_major_units` of ``make`` as two queries: major units, and other currencies' ``(minor units)``."""
    major, minor = _major_units(make)
    return Query(major, _legend(*labels), key=True), Query(minor, _legend(*labels) + " (minor units)")


def _column(expr: str, key: bool = False) -> Query:
    """A table column: an instant query in table format."""
    return Query(expr, instant=True, format="table", key=key)


def _stat(
    title: str,
    unit: str,
    description: str,
    *queries: Query,
    width: int = 5,
    thresholds: tuple[tuple[float, str], ...] = (),
    ratio: bool = False,
) -> Panel:
    """A headline number, 5 high; a ``ratio`` is a share from 0 to 1."""
    low, high = (0.0, 1.0) if ratio else (None, None)
    return Panel(
        title, "stat", unit, description, queries, width=width, height=5, thresholds=thresholds, min=low, max=high
    )


def _ratio(title: str, description: str, *queries: Query, source: str = "sdk", width: int = 12) -> Panel:
    """A time series of shares, from 0 to 1."""
    return Panel(title, "timeseries", "percentunit", description, queries, source=source, width=width, min=0.0, max=1.0)


def _rates(
    title: str,
    unit: str,
    description: str,
    names: Mapping[str, str],
    *matchers: str,
    by: str,
    scope: Sequence[str],
    source: str,
) -> Panel:
    """A time series of one rate query per ``{legend suffix: metric name}`` summed by the label ``by``."""
    queries = tuple(
        Query(_rate(name, *matchers, by=(by,), scope=scope), f"{_legend(by)} {suffix}")
        for suffix, name in names.items()
    )
    return Panel(title, "timeseries", unit, description, queries, source=source, width=8)


def _top10(
    title: str, unit: str, description: str, expr: str, by: Sequence[str], source: str, key: bool = False
) -> Panel:
    """A bar gauge of the ten largest series of ``expr`` now (an instant query), labelled by ``by``."""
    query = Query(f"topk(10, {expr})", _legend(*by), instant=True, key=key)
    return Panel(title, "bargauge", unit, description, (query,), source=source, width=6)


# --- the dashboards ---------------------------------------------------------------------------


def _system_overview() -> Dashboard:
    node = "node_exporter"
    pc = "prometheus_client"
    host = (f'{_INSTANCE}=~"$node"', *_ENV_ONLY)
    fs = ('fstype!~"tmpfs|overlay|squashfs|ramfs"',)
    cpu = _ext(pc, "process_cpu_seconds_total")
    rss = _ext(pc, "process_resident_memory_bytes")
    per_process = (_JOB, _INSTANCE)
    containers = ("namespace", "pod", "container")
    host_row = Row(
        "Host (node_exporter)",
        (
            _ratio(
                "CPU busy",
                "Share of CPU time not idle, per host (all cores).",
                Query(
                    f"1 - avg by ({_INSTANCE}) (rate("
                    f"{_sel(_ext(node, 'node_cpu_seconds_total'), _eq('mode', 'idle'), scope=host)}[{_RATE}]))",
                    _legend(_INSTANCE),
                ),
                source=node,
                width=8,
            ),
            _ratio(
                "Memory used",
                "1 - MemAvailable / MemTotal per host: memory the kernel cannot hand out without swapping.",
                Query(
                    f"1 - {_sel(_ext(node, 'node_memory_MemAvailable_bytes'), scope=host)} "
                    f"/ {_sel(_ext(node, 'node_memory_MemTotal_bytes'), scope=host)}",
                    _legend(_INSTANCE),
                ),
                source=node,
                width=8,
            ),
            _ratio(
                "Disk space used",
                "Used share of each mounted filesystem (tmpfs and overlay excluded).",
                Query(
                    f"1 - {_sel(_ext(node, 'node_filesystem_avail_bytes'), *fs, scope=host)} "
                    f"/ {_sel(_ext(node, 'node_filesystem_size_bytes'), *fs, scope=host)}",
                    _legend(_INSTANCE, "mountpoint"),
                ),
                source=node,
                width=8,
            ),
            _rates(
                "Disk throughput",
                "Bps",
                "Bytes read and written per second by the host's block devices.",
                {
                    "read": _ext(node, "node_disk_read_bytes_total"),
                    "write": _ext(node, "node_disk_written_bytes_total"),
                },
                by=_INSTANCE,
                scope=host,
                source=node,
            ),
            _rates(
                "Network throughput",
                "Bps",
                "Bytes received and transmitted per second on the host's interfaces (loopback excluded).",
                {
                    "receive": _ext(node, "node_network_receive_bytes_total"),
                    "transmit": _ext(node, "node_network_transmit_bytes_total"),
                },
                'device!="lo"',
                by=_INSTANCE,
                scope=host,
                source=node,
            ),
            Panel(
                "Load average",
                "timeseries",
                "short",
                "Runnable and uninterruptible tasks averaged over 1, 5 and 15 minutes; compare with the core count.",
                tuple(
                    Query(_sel(_ext(node, name), scope=host), f"{_legend(_INSTANCE)} {name[-2:].lstrip('d')}m")
                    for name in ("node_load1", "node_load5", "node_load15")
                ),
                source=node,
                width=8,
            ),
        ),
    )
    processes = Row(
        "Service processes",
        (
            Panel(
                "Process CPU",
                "timeseries",
                "percentunit",
                "CPU time of each service process per second (1.0 = one full core).",
                (_rate_by(cpu, by=per_process, key=True),),
                source=pc,
                width=8,
            ),
            Panel(
                "Process memory (RSS)",
                "timeseries",
                "bytes",
                "Resident set size of each service process.",
                (_agg_by("sum", rss, by=per_process, key=True),),
                source=pc,
                width=8,
            ),
            _ratio(
                "File descriptors used",
                "Open file descriptors over the process limit; running out fails every new socket and file.",
                Query(
                    f"{_sel(_ext(pc, 'process_open_fds'))} / {_sel(_ext(pc, 'process_max_fds'))}",
                    _legend(*per_process),
                    key=True,
                ),
                source=pc,
                width=8,
            ),
            _top10(
                "Top processes by CPU",
                "percentunit",
                "The ten scrape targets (services, exporters, Prometheus) using the most CPU over the time range.",
                _rate(cpu, by=per_process, window=_RANGE, scope=_ENV_ONLY),
                per_process,
                source=pc,
                key=True,
            ),
            _top10(
                "Top processes by memory",
                "bytes",
                "The ten scrape targets with the largest resident memory now.",
                _agg("sum", rss, by=per_process, scope=_ENV_ONLY),
                per_process,
                source=pc,
                key=True,
            ),
            _top10(
                "Top containers by CPU",
                "percentunit",
                "The ten containers using the most CPU over the time range (cAdvisor; 1.0 = one core).",
                _rate(
                    _ext("cadvisor", "container_cpu_usage_seconds_total"),
                    _ne("container", ""),
                    by=containers,
                    window=_RANGE,
                    scope=(),
                ),
                containers,
                source="cadvisor",
            ),
            _top10(
                "Top containers by memory",
                "bytes",
                "The ten containers with the largest working set now (cAdvisor).",
                _agg(
                    "sum",
                    _ext("cadvisor", "container_memory_working_set_bytes"),
                    _ne("container", ""),
                    by=containers,
                    scope=(),
                ),
                containers,
                source="cadvisor",
            ),
            Panel(
                "Process disk I/O",
                "timeseries",
                "Bps",
                "Bytes the service processes read from and wrote to storage per second.",
                (_rate_by(c.PROCESS_DISK_IO.name, by=(c.LABEL_DISK_IO_DIRECTION,), key=True),),
                width=8,
            ),
            Panel(
                "Process disk operations",
                "timeseries",
                "iops",
                "Read and write system calls of the service processes per second.",
                (_rate_by(c.PROCESS_DISK_OPERATIONS.name, by=(c.LABEL_DISK_IO_DIRECTION,), key=True),),
                width=8,
            ),
            Panel(
                "Process network I/O",
                "timeseries",
                "Bps",
                "Bytes received and transmitted per second on the interfaces of the service's network namespace "
                "(the container's; loopback excluded: sidecar traffic would count twice).",
                (
                    _rate_by(
                        c.PROCESS_NETWORK_IO.name,
                        _ne(c.LABEL_NETWORK_INTERFACE, "lo"),
                        by=(c.LABEL_NETWORK_IO_DIRECTION,),
                        key=True,
                    ),
                ),
                width=8,
            ),
            Panel(
                "Open connections",
                "timeseries",
                "short",
                "Open sockets of the service processes, by transport.",
                (_agg_by("sum", c.PROCESS_OPEN_CONNECTIONS.name, by=(c.LABEL_NETWORK_TRANSPORT,), key=True),),
                width=8,
            ),
            Panel(
                "Threads",
                "timeseries",
                "short",
                "Threads of each service process.",
                (Query(_sel(c.PROCESS_THREAD_COUNT.name), _legend(*per_process), key=True),),
                width=8,
            ),
        ),
    )
    runtime = Row(
        "Python runtime",
        (
            Panel(
                "GC pause p99",
                "timeseries",
                "s",
                "99th percentile of the time the garbage collector stopped the interpreter, by generation.",
                (
                    Query(
                        _quantile(0.99, c.GC_PAUSE, by=(c.LABEL_GC_GENERATION,)),
                        "gen " + _legend(c.LABEL_GC_GENERATION),
                        key=True,
                    ),
                ),
                width=8,
            ),
            Panel(
                "Asyncio tasks",
                "timeseries",
                "short",
                "Unfinished tasks of the watched event loop; a steady climb is a task leak.",
                (Query(_sel(c.ASYNCIO_TASKS.name), _legend(*per_process), key=True),),
                width=8,
            ),
            Panel(
                "Event loop lag",
                "timeseries",
                "s",
                "How late the event loop ran a callback scheduled for a known time: blocking code in async handlers.",
                (Query(_sel(c.EVENT_LOOP_LAG.name), _legend(*per_process), key=True),),
                width=8,
                thresholds=((0.1, "red"),),
            ),
        ),
    )
    return Dashboard(
        "system-overview.json",
        "bakhmach-obs-system",
        "System Overview",
        "Hosts (node_exporter), the service's processes and the Python runtime.",
        (host_row, processes, runtime),
        (
            Variable(
                "node",
                "Host",
                f"label_values({_sel(_ext(node, 'node_boot_time_seconds'), scope=_ENV_ONLY)}, {_INSTANCE})",
            ),
        ),
    )


def _application(apdex_target: float) -> Dashboard:
    h = c.HTTP_SERVER_DURATION
    count, bucket = _suffix(h, "_count"), _suffix(h, "_bucket")
    route, status = c.LABEL_HTTP_ROUTE, c.LABEL_HTTP_STATUS
    per_route = (route, c.LABEL_HTTP_METHOD)
    t = apdex_target
    errors_ratio = f"({_rate(count, _5XX)} or vector(0)) / {_rate(count)}"
    overview = Row(
        "Overview",
        (
            _stat("Throughput", "reqps", "HTTP requests served per second.", Query(_rate(count), "req/s", key=True)),
            _stat(
                "Error rate",
                "percentunit",
                "Share of requests answered with a 5xx status.",
                Query(errors_ratio, "5xx", key=True),
                thresholds=((0.001, "orange"), (0.01, "red")),
                ratio=True,
            ),
            _stat(
                "Latency p95",
                "s",
                "95th percentile of the request duration.",
                Query(_quantile(0.95, h), "p95", key=True),
                thresholds=((0.5, "orange"), (1.0, "red")),
            ),
            _stat(
                f"Apdex (T = {t:g} s)",
                "none",
                f"Apdex = (satisfied + tolerating / 2) / all requests: satisfied <= {t:g} s, "
                f"tolerating <= {4 * t:g} s, 5xx responses count as frustrated. "
                "Change T with `bakhmach-obs dashboards --apdex-target`.",
                Query(_apdex(t), "apdex", key=True),
                thresholds=((0.0, "red"), (0.7, "orange"), (0.85, "yellow"), (0.94, "green")),
                ratio=True,
            ),
            _stat(
                "In flight",
                "short",
                "HTTP requests being served right now.",
                Query(_agg("sum", c.HTTP_SERVER_ACTIVE.name), "active", key=True),
                width=4,
            ),
        ),
    )
    latency = Row(
        "Latency",
        (
            Panel(
                "Request latency distribution",
                "heatmap",
                "s",
                "Requests per second in each latency bucket over time (the histogram's buckets); exemplars link "
                "to traces.",
                (Query(_rate(bucket, by=("le",)), _legend("le"), format="heatmap", exemplar=True, key=True),),
            ),
            Panel(
                "Latency percentiles",
                "timeseries",
                "s",
                "p50, p95 and p99 request duration, interpolated within histogram buckets; exemplars link to traces.",
                tuple(Query(_quantile(q, h), f"p{round(q * 100)}", exemplar=True, key=True) for q in (0.5, 0.95, 0.99)),
            ),
            Panel(
                "Latency p95 by route",
                "timeseries",
                "s",
                "95th percentile of the request duration per route template.",
                (_p95_by(h, route, exemplar=True, key=True),),
            ),
            Panel(
                "Apdex over time",
                "timeseries",
                "none",
                f"Apdex with T = {t:g} s (tolerating up to {4 * t:g} s; 5xx frustrated), overall and per route.",
                (
                    Query(_apdex(t), "all routes", key=True),
                    Query(_apdex(t, by=(route,)), _legend(route), key=True),
                ),
                min=0.0,
                max=1.0,
            ),
        ),
    )
    traffic = Row(
        "Traffic and errors",
        (
            Panel(
                "Throughput by route",
                "timeseries",
                "reqps",
                "Requests per second per route template (404 scans collapse into one route).",
                (_rate_by(count, by=(route,), key=True),),
                stacked=True,
            ),
            Panel(
                "Throughput by status class",
                "timeseries",
                "reqps",
                "Requests per second by status code.",
                (_rate_by(count, by=(status,), key=True),),
                stacked=True,
            ),
            _ratio(
                "Error rate by route",
                "Share of each route's requests answered with a 5xx status (routes without errors are absent).",
                _share_by(count, _5XX, by=(route,), key=True),
            ),
            Panel(
                "Errors by status",
                "timeseries",
                "reqps",
                "4xx and 5xx responses per second, by status code and route.",
                (_rate_by(count, f'{status}=~"[45].."', by=(status, route), key=True),),
            ),
            Panel(
                "Per-route summary",
                "table",
                "short",
                "Per route and method over the selected time range: request rate, 5xx share and latency percentiles.",
                (
                    _column(_rate(count, by=per_route, window=_RANGE), key=True),
                    _column(_share(count, _5XX, by=per_route, window=_RANGE)),
                    *(_column(_quantile(q, h, by=per_route, window=_RANGE), key=True) for q in (0.5, 0.95, 0.99)),
                ),
                width=24,
                height=9,
                columns=(("req/s", "reqps"), ("5xx", "percentunit"), ("p50", "s"), ("p95", "s"), ("p99", "s")),
            ),
            Panel(
                "Response size p95",
                "timeseries",
                "bytes",
                "95th percentile of response body sizes per route.",
                (_p95_by(c.HTTP_SERVER_RESPONSE_SIZE, route, key=True),),
            ),
            Panel(
                "Outgoing HTTP latency p95",
                "timeseries",
                "s",
                "95th percentile of outgoing requests' duration per downstream host; exemplars link to traces.",
                (_p95_by(c.HTTP_CLIENT_DURATION, c.LABEL_SERVER_ADDRESS, exemplar=True),),
            ),
        ),
    )
    fn, calls = c.LABEL_FUNCTION, c.FUNCTION_CALLS.name
    functions = Row(
        "Instrumented functions (@instrument)",
        (
            Panel(
                "Calls by function",
                "timeseries",
                "ops",
                "Calls per second of each instrumented function, by result (ok or error).",
                (_rate_by(calls, by=(fn, c.LABEL_RESULT), key=True),),
                width=8,
            ),
            _ratio(
                "Function error ratio",
                "Share of each function's calls that raised (functions without errors are absent).",
                _share_by(calls, _eq(c.LABEL_RESULT, c.RESULT_ERROR), by=(fn,), key=True),
                width=8,
            ),
            Panel(
                "Function latency p95",
                "timeseries",
                "s",
                "95th percentile of each instrumented function's duration; exemplars link to traces.",
                (_p95_by(c.FUNCTION_CALLS_DURATION, fn, exemplar=True, key=True),),
                width=8,
            ),
        ),
    )
    sdk = Row(
        "Telemetry health (the SDK itself)",
        (
            Panel(
                "Telemetry errors",
                "timeseries",
                "cps",
                "Failures inside the SDK's telemetry path per second, by component (the application never saw them).",
                (_rate_by(c.TELEMETRY_ERRORS.name, by=(c.LABEL_COMPONENT,)),),
                width=6,
            ),
            Panel(
                "Dropped spans",
                "timeseries",
                "cps",
                "Finished spans not delivered per second (queue full, export failed, deadline passed).",
                (Query(_rate(c.DROPPED_SPANS.name), "dropped"),),
                width=6,
            ),
            Panel(
                "Cardinality overflow",
                "timeseries",
                "cps",
                "New label sets per second routed to a metric's overflow series: a label with unbounded values.",
                (_rate_by(c.METRIC_OVERFLOW.name, by=(c.LABEL_METRIC,)),),
                width=6,
            ),
            Panel(
                "Log records dropped",
                "timeseries",
                "cps",
                "Log records the shipping handler discarded per second, by reason.",
                (_rate_by(c.LOG_RECORDS_DROPPED.name, by=(c.LABEL_REASON,)),),
                width=6,
            ),
        ),
    )
    return Dashboard(
        "application-performance.json",
        "bakhmach-obs-application",
        "Application Performance",
        "HTTP latency, throughput, errors and Apdex per route; instrumented functions; the SDK's own health.",
        (overview, latency, traffic, functions, sdk),
    )


def _business() -> Dashboard:
    tx, rev = c.BUSINESS_TRANSACTIONS.name, c.BUSINESS_REVENUE.name
    tt, cur = c.LABEL_TRANSACTION_TYPE, c.LABEL_CURRENCY
    feature, funnel, step, seg = c.LABEL_FEATURE, c.LABEL_FUNNEL, c.LABEL_FUNNEL_STEP, c.LABEL_SEGMENT
    funnel_sel = f'{funnel}=~"$funnel"'
    steps = _increase(c.BUSINESS_FUNNEL_STEP.name, funnel_sel, by=(funnel, step))
    money_note = (
        "A currency outside the ISO 4217 table (declared with its own exponent) is shown apart, in minor "
        "units, with (minor units) in its legend."
    )
    money = Row(
        "Transactions and revenue",
        (
            _stat(
                "Transactions in range",
                "short",
                "Business transactions over the selected time range, by type.",
                Query(_increase(tx, by=(tt,)), _legend(tt), key=True),
                width=6,
            ),
            _stat(
                "Revenue in range",
                "short",
                "Transaction amounts over the selected time range per currency, in the currency's major unit "
                f"(minor units / 10^exponent of ISO 4217: USD / 100, JPY / 1, KWD / 1000). {money_note}",
                *_money(lambda m: _increase(rev, m, by=(cur,)), cur),
                width=6,
            ),
            Panel(
                "Transactions per second",
                "timeseries",
                "ops",
                "Business transactions per second by type and currency.",
                (_rate_by(tx, by=(tt, cur), key=True),),
                width=6,
                height=5,
                stacked=True,
            ),
            Panel(
                "Average transaction value",
                "timeseries",
                "short",
                f"Revenue per transaction, per currency, in the currency's major unit. {money_note}",
                _money(lambda m: f"{_rate(rev, m, by=(cur,))} / {_rate(tx, m, by=(cur,))}", cur),
                width=6,
                height=5,
            ),
            Panel(
                "Revenue per hour",
                "timeseries",
                "short",
                "Revenue rate per transaction type and currency, scaled to an hour, in the currency's major unit "
                f"(not stacked: amounts in different currencies do not add up). {money_note}",
                _money(lambda m: f"{_rate(rev, m, by=(tt, cur))} * 3600", tt, cur),
                width=24,
            ),
        ),
    )
    users = Row(
        "Users and features",
        (
            Panel(
                "Active users",
                "timeseries",
                "short",
                "Distinct users seen over each sliding window: a HyperLogLog estimate (1.6 % standard error), no "
                "user id is ever a label. With several instances this is the largest instance's count, a lower "
                "bound of the users of all (exact when a user always reaches the same instance).",
                (_agg_by("max", c.BUSINESS_ACTIVE_USERS.name, by=(c.LABEL_WINDOW,), key=True),),
                width=8,
            ),
            Panel(
                "Feature usage in range",
                "bargauge",
                "short",
                "Uses of each declared feature over the selected time range, most used first.",
                (_ranking(_increase(c.BUSINESS_FEATURE_USAGE.name, by=(feature,)), feature),),
                width=8,
            ),
            Panel(
                "Feature usage",
                "timeseries",
                "ops",
                "Uses per second of each declared feature.",
                (_rate_by(c.BUSINESS_FEATURE_USAGE.name, by=(feature,), key=True),),
                width=8,
                stacked=True,
            ),
            Panel(
                "User engagement score",
                "timeseries",
                "short",
                "Engagement score by segment, as last computed by the batch job.",
                (_agg_by("avg", c.BUSINESS_ENGAGEMENT_SCORE.name, by=(seg,), key=True),),
            ),
            _ratio(
                "Churn",
                "Share of users who churned in the batch job's period, by segment.",
                _agg_by("max", c.BUSINESS_CHURN_RATIO.name, by=(seg,), key=True),
            ),
        ),
    )
    conversion = Row(
        "Conversion funnel",
        (
            Panel(
                "Funnel steps in range",
                "bargauge",
                "short",
                "Entries into each step of the selected funnels over the time range, widest step first.",
                (_ranking(steps, funnel, step),),
            ),
            Panel(
                "Conversion from the widest step",
                "bargauge",
                "percentunit",
                "Entries into each step over those into the funnel's widest step (normally its first) in the "
                "time range: the share of visitors who reached the step.",
                (_ranking(f"{steps} / on ({funnel}) group_left() max by ({funnel}) ({steps})", funnel, step),),
                min=0.0,
                max=1.0,
            ),
            Panel(
                "Funnel step entries",
                "timeseries",
                "ops",
                "Entries per second into each funnel step.",
                (_rate_by(c.BUSINESS_FUNNEL_STEP.name, funnel_sel, by=(funnel, step), key=True),),
                width=24,
            ),
        ),
    )
    return Dashboard(
        "business-metrics.json",
        "bakhmach-obs-business",
        "Business Metrics",
        "Transactions, revenue, active users, feature usage and conversion funnels (bakhmach_obs.business).",
        (money, users, conversion),
        (Variable("funnel", "Funnel", f"label_values({_sel(c.BUSINESS_FUNNEL_STEP.name)}, {funnel})"),),
    )


def _infrastructure() -> Dashboard:
    ksm, pg = "kube_state_metrics", "postgres_exporter"
    ns = ('namespace=~"$namespace"',)
    kube = Row(
        "Kubernetes (kube-state-metrics)",
        (
            Panel(
                "Pods by phase",
                "timeseries",
                "short",
                "Pods in the selected namespaces by phase (Running, Pending, Failed...).",
                (_agg_by("sum", _ext(ksm, "kube_pod_status_phase"), *ns, by=("phase",), scope=()),),
                source=ksm,
                width=6,
                stacked=True,
            ),
            Panel(
                "Pods not ready",
                "stat",
                "short",
                "Pods whose Ready condition is false.",
                (
                    Query(
                        _agg("sum", _ext(ksm, "kube_pod_status_ready"), *ns, _eq("condition", "false"), scope=()),
                        "not ready",
                    ),
                ),
                source=ksm,
                width=6,
                thresholds=((1, "red"),),
            ),
            _top10(
                "Container restarts (1 h)",
                "short",
                "Pods with the most container restarts over the last hour: crash loops show here first.",
                _increase(
                    _ext(ksm, "kube_pod_container_status_restarts_total"),
                    *ns,
                    by=("namespace", "pod"),
                    window="1h",
                    scope=(),
                ),
                ("namespace", "pod"),
                source=ksm,
            ),
            _ratio(
                "Deployment replicas available",
                "Available replicas over desired replicas per deployment.",
                Query(
                    f"{_sel(_ext(ksm, 'kube_deployment_status_replicas_available'), *ns, scope=())} "
                    f"/ {_sel(_ext(ksm, 'kube_deployment_spec_replicas'), *ns, scope=())}",
                    _legend("namespace", "deployment"),
                ),
                source=ksm,
                width=6,
            ),
        ),
    )
    db = c.DB_CLIENT_DURATION
    system, pool = c.LABEL_DB_SYSTEM, c.LABEL_POOL_NAME
    database = Row(
        "Databases",
        (
            Panel(
                "Replication lag",
                "timeseries",
                "s",
                "How far each PostgreSQL replica is behind its primary (postgres_exporter).",
                (_agg_by("max", _ext(pg, "pg_replication_lag_seconds"), by=(_INSTANCE,), scope=_ENV_ONLY),),
                source=pg,
                width=8,
                thresholds=((30, "orange"), (300, "red")),
            ),
            _ratio(
                "Server connections used",
                "PostgreSQL backends over max_connections per server (postgres_exporter).",
                Query(
                    f"{_agg('sum', _ext(pg, 'pg_stat_activity_count'), by=(_INSTANCE,), scope=_ENV_ONLY)} "
                    f"/ {_agg('max', _ext(pg, 'pg_settings_max_connections'), by=(_INSTANCE,), scope=_ENV_ONLY)}",
                    _legend(_INSTANCE),
                ),
                source=pg,
                width=8,
            ),
            _rates(
                "Transactions committed / rolled back",
                "ops",
                "PostgreSQL transactions per second per server (postgres_exporter).",
                {
                    "commit": _ext(pg, "pg_stat_database_xact_commit"),
                    "rollback": _ext(pg, "pg_stat_database_xact_rollback"),
                },
                by=_INSTANCE,
                scope=_ENV_ONLY,
                source=pg,
            ),
            Panel(
                "Query latency p95",
                "timeseries",
                "s",
                "95th percentile of database client operations per system and operation, as the service saw them; "
                "exemplars link to traces.",
                (_p95_by(db, system, c.LABEL_DB_OPERATION, exemplar=True, key=True),),
                width=8,
            ),
            Panel(
                "Database operations",
                "timeseries",
                "ops",
                "Database client operations per second, by system and operation.",
                (_rate_by(_suffix(db, "_count"), by=(system, c.LABEL_DB_OPERATION), key=True),),
                width=8,
                stacked=True,
            ),
            Panel(
                "Database errors",
                "timeseries",
                "ops",
                "Failed database operations per second by error type.",
                (
                    _rate_by(
                        _suffix(db, "_count"), _ne(c.LABEL_ERROR_TYPE, ""), by=(system, c.LABEL_ERROR_TYPE), key=True
                    ),
                ),
                width=8,
            ),
            _ratio(
                "Pool utilisation",
                "Connections in use over the pool's maximum, per client-side pool; at 1.0 checkouts wait.",
                Query(
                    f"{_agg('sum', c.DB_CONNECTION_COUNT.name, _eq(c.LABEL_POOL_STATE, 'used'), by=(pool,))} "
                    f"/ {_agg('sum', c.DB_CONNECTION_MAX.name, by=(pool,))}",
                    _legend(pool),
                    key=True,
                ),
                width=8,
            ),
            Panel(
                "Pool checkout wait p95",
                "timeseries",
                "s",
                "95th percentile of the time to get a connection from each pool.",
                (_p95_by(c.DB_CONNECTION_WAIT, pool, key=True),),
                width=8,
            ),
            Panel(
                "Pool checkout timeouts",
                "timeseries",
                "cps",
                "Checkouts per second that timed out waiting for a connection.",
                (_rate_by(c.DB_CONNECTION_TIMEOUTS.name, by=(pool,)),),
                width=8,
            ),
        ),
    )
    co = c.CACHE_OPERATIONS.name
    cache_name, result = c.LABEL_CACHE_NAME, c.LABEL_CACHE_RESULT
    cache = Row(
        "Caches",
        (
            _ratio(
                "Cache hit ratio",
                "Hits over lookups (hits + misses) per cache.",
                _share_by(co, _eq(result, "hit"), _re(result, "hit|miss"), by=(cache_name,), key=True),
                width=8,
            ),
            Panel(
                "Cache operations",
                "timeseries",
                "ops",
                "Cache operations per second by cache and result (hit, miss, ok, error).",
                (_rate_by(co, by=(cache_name, result), key=True),),
                width=8,
                stacked=True,
            ),
            Panel(
                "Cache latency p95",
                "timeseries",
                "s",
                "95th percentile of cache operations per cache and operation.",
                (_p95_by(c.CACHE_DURATION, cache_name, c.LABEL_CACHE_OPERATION, key=True),),
                width=8,
            ),
        ),
    )
    dest = c.LABEL_MESSAGING_DESTINATION
    queues = Row(
        "Queues",
        (
            Panel(
                "Queue depth",
                "timeseries",
                "short",
                "Messages waiting per queue, as last reported by the broker.",
                (_agg_by("max", c.MESSAGING_QUEUE_DEPTH.name, by=(dest,), key=True),),
                width=6,
            ),
            Panel(
                "Queue lag",
                "timeseries",
                "s",
                "Age of the oldest waiting message per queue (alert above 5 minutes).",
                (_agg_by("max", c.MESSAGING_QUEUE_LAG.name, by=(dest,), key=True),),
                width=6,
                thresholds=((300, "red"),),
            ),
            Panel(
                "Messages sent / consumed",
                "timeseries",
                "ops",
                "Messages published and consumed per second per destination.",
                (
                    Query(_rate(c.MESSAGING_SENT.name, by=(dest,)), "sent " + _legend(dest), key=True),
                    Query(_rate(c.MESSAGING_CONSUMED.name, by=(dest,)), "consumed " + _legend(dest), key=True),
                ),
                width=6,
            ),
            Panel(
                "Message processing p95",
                "timeseries",
                "s",
                "95th percentile of the time to process one consumed message; exemplars link to traces.",
                (_p95_by(c.MESSAGING_PROCESS_DURATION, dest, exemplar=True, key=True),),
                width=6,
            ),
        ),
    )
    check = c.LABEL_CHECK
    health = Row(
        "Health checks",
        (
            Panel(
                "Health check status",
                "stat",
                "none",
                "Latest result of each health check: 1 passed, 0 failed or timed out (worst instance shown).",
                (_agg_by("min", c.HEALTH_CHECK_STATUS.name, by=(check,), key=True),),
                thresholds=((0, "red"), (1, "green")),
                min=0.0,
                max=1.0,
            ),
            Panel(
                "Health check runs",
                "timeseries",
                "ops",
                "Health-check runs per second by check and result (pass, fail, timeout).",
                (_rate_by(c.HEALTH_CHECK_RUNS.name, by=(check, c.LABEL_RESULT), key=True),),
                stacked=True,
            ),
        ),
    )
    return Dashboard(
        "infrastructure.json",
        "bakhmach-obs-infrastructure",
        "Infrastructure",
        "Kubernetes pods, databases and replication, connection pools, caches, queues and health checks.",
        (kube, database, cache, queues, health),
        (Variable("namespace", "Namespace", f"label_values({_ext(ksm, 'kube_pod_status_phase')}, namespace)"),),
    )


def _slo() -> Dashboard:
    slo = c.LABEL_SLO
    sel = (f'{slo}=~"$slo"',)

    def rec(name: str) -> str:
        return _sel(name, *sel, scope=())

    budget = rec(c.SLO_ERROR_BUDGET)

    def burn(window: str) -> str:
        return f"{rec(c.slo_sli_error(window))} / on ({slo}) group_left() {budget}"

    overview = Row(
        "Error budget",
        (
            Panel(
                "Budget remaining",
                "stat",
                "percentunit",
                "Share of each SLO's error budget still unspent over its window "
                "(1 = untouched, 0 or less = exhausted).",
                (Query(rec(c.SLO_BUDGET_REMAINING), _legend(slo), key=True),),
                width=8,
                thresholds=((0.0, "red"), (0.25, "orange"), (0.5, "green")),
                max=1.0,
            ),
            Panel(
                "SLO summary",
                "table",
                "percentunit",
                "Per SLO: objective, error budget, budget remaining and the burn rate over the SLO window "
                "(1 = spending exactly the budget).",
                tuple(
                    _column(f"max by ({slo}, {c.LABEL_SLO_SERVICE}) ({name})", key=True)
                    for name in (rec(c.SLO_OBJECTIVE), budget, rec(c.SLO_BUDGET_REMAINING), rec(c.SLO_PERIOD_BURN_RATE))
                ),
                width=16,
                columns=(
                    ("objective", "percentunit"),
                    ("error budget", "percentunit"),
                    ("budget remaining", "percentunit"),
                    ("burn rate (window)", "suffix:x"),
                ),
            ),
            Panel(
                "Budget remaining over time",
                "timeseries",
                "percentunit",
                "Error budget remaining per SLO; the slope is the burn.",
                (Query(rec(c.SLO_BUDGET_REMAINING), _legend(slo), key=True),),
                width=24,
                thresholds=((0.0, "red"),),
                max=1.0,
            ),
        ),
    )
    burns = Row(
        "Burn rates",
        (
            Panel(
                "Burn rate by window",
                "timeseries",
                "suffix:x",
                "SLI error ratio over each window divided by the error budget: 14.4x over 1 h spends 2% of a "
                "30-day budget, the fast-burn page threshold; 1x spends it exactly over the SLO window.",
                tuple(Query(burn(w), f"{_legend(slo)} {w}", key=True) for w in ("5m", "1h", "6h", "3d")),
                thresholds=((6, "orange"), (14.4, "red")),
            ),
            Panel(
                "Burn rate over the SLO window",
                "timeseries",
                "suffix:x",
                "Average burn rate since the start of the SLO window: above 1 the budget runs out before the "
                "window ends.",
                (Query(rec(c.SLO_PERIOD_BURN_RATE), _legend(slo), key=True),),
                thresholds=((1, "red"),),
            ),
            Panel(
                "SLI error ratio",
                "timeseries",
                "percentunit",
                "Share of bad events per SLO over 5 minutes and 1 hour, against the error budget.",
                (
                    Query(rec(c.slo_sli_error("5m")), f"{_legend(slo)} 5m", key=True),
                    Query(rec(c.slo_sli_error("1h")), f"{_legend(slo)} 1h", key=True),
                    Query(budget, f"{_legend(slo)} budget", key=True),
                ),
            ),
            Panel(
                "Availability vs objective",
                "timeseries",
                "percentunit",
                "Good-event ratio over the SLO window (1 - burn rate x budget) and the objective.",
                (
                    Query(
                        f"1 - {rec(c.SLO_PERIOD_BURN_RATE)} * on ({slo}) group_left() {budget}",
                        f"{_legend(slo)} actual",
                        key=True,
                    ),
                    Query(rec(c.SLO_OBJECTIVE), f"{_legend(slo)} objective", key=True),
                ),
            ),
        ),
    )
    return Dashboard(
        "slo.json",
        "bakhmach-obs-slo",
        "SLOs",
        "Error budgets and burn rates per SLO, from the recording rules `bakhmach-obs rules` generates.",
        (overview, burns),
        (Variable("slo", "SLO", f"label_values({c.SLO_OBJECTIVE}, {slo})"),),
    )


def dashboards(*, apdex_target: float = DEFAULT_APDEX_TARGET) -> tuple[Dashboard, ...]:
    """The dashboards as :class:`Dashboard` models (what :func:`generate` renders to Grafana JSON).

    Raises:
        ConfigurationError: ``apdex_target`` is not in :data:`APDEX_TARGETS`.
    """
    target = _check_apdex_target(apdex_target)
    return (_system_overview(), _application(target), _business(), _infrastructure(), _slo())


# --- Grafana JSON -----------------------------------------------------------------------------


def _thresholds(steps: Sequence[tuple[float, str]]) -> dict[str, Any]:
    base = "red" if steps and steps[0][1] == "red" and steps[0][0] <= 0 else "green"
    items: list[dict[str, Any]] = [{"color": base, "value": None}]
    items += [{"color": color, "value": value} for value, color in steps if not (value <= 0 and color == base)]
    return {"mode": "absolute", "steps": items}


def _target(query: Query, ref: str) -> dict[str, Any]:
    return {
        "datasource": dict(_DS),
        "refId": ref,
        "expr": query.expr,
        "legendFormat": query.legend or "__auto",
        "range": not query.instant,
        "instant": query.instant,
        "format": query.format,
        "exemplar": query.exemplar,
        "editorMode": "code",
    }


def _options(panel: Panel) -> dict[str, Any]:
    reduce = {"calcs": ["lastNotNull"], "fields": "", "values": False}
    if panel.kind == "timeseries":
        return {
            "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True, "calcs": []},
            "tooltip": {"mode": "multi", "sort": "desc"},
        }
    if panel.kind == "stat":
        return {
            "reduceOptions": reduce,
            "colorMode": "value",
            "graphMode": "area",
            "justifyMode": "auto",
            "orientation": "auto",
            "textMode": "auto",
        }
    if panel.kind == "gauge":
        return {"reduceOptions": reduce, "showThresholdLabels": False, "showThresholdMarkers": True}
    if panel.kind == "bargauge":
        return {
            "reduceOptions": {**reduce, "values": True},
            "orientation": "horizontal",
            "displayMode": "gradient",
            "showUnfilled": True,
            "valueMode": "color",
        }
    if panel.kind == "heatmap":
        return {
            "calculate": False,
            "yAxis": {"axisPlacement": "left", "unit": panel.unit, "reverse": False},
            "rowsFrame": {"layout": "auto"},
            "color": {"mode": "scheme", "scheme": "Oranges", "scale": "exponential", "exponent": 0.5, "steps": 64},
            "cellGap": 1,
            "cellValues": {"unit": "reqps"},
            "filterValues": {"le": 1e-9},
            "showValue": "never",
            "legend": {"show": True},
            "tooltip": {"mode": "single", "yHistogram": False, "showColorScale": False},
            "exemplars": {"color": "rgba(255,0,255,0.7)"},
        }
    return {"showHeader": True, "cellHeight": "sm", "footer": {"show": False, "reducer": ["sum"], "fields": ""}}


def _panel(panel: Panel, panel_id: int, x: int, y: int) -> dict[str, Any]:
    refs = [chr(ord("A") + i) for i in range(len(panel.queries))]
    defaults: dict[str, Any] = {
        "unit": "short" if panel.kind == "heatmap" else panel.unit,
        "color": {"mode": "thresholds" if panel.kind in ("stat", "gauge") else "palette-classic"},
        "thresholds": _thresholds(panel.thresholds),
        "mappings": [],
    }
    if panel.min is not None:
        defaults["min"] = panel.min
    if panel.max is not None:
        defaults["max"] = panel.max
    if panel.kind == "timeseries":
        defaults["custom"] = {
            "drawStyle": "line",
            "lineWidth": 1,
            "fillOpacity": 20 if panel.stacked else 10,
            "showPoints": "never",
            "spanNulls": False,
            "stacking": {"mode": "normal" if panel.stacked else "none", "group": "A"},
            "thresholdsStyle": {"mode": "dashed" if panel.thresholds else "off"},
        }
    model: dict[str, Any] = {
        "id": panel_id,
        "type": panel.kind,
        "title": panel.title,
        "description": panel.description,
        "datasource": dict(_DS),
        "gridPos": {"h": panel.height, "w": panel.width, "x": x, "y": y},
        "targets": [_target(q, ref) for q, ref in zip(panel.queries, refs, strict=True)],
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": _options(panel),
    }
    if panel.kind == "table":
        model["transformations"] = [
            {"id": "merge", "options": {}},
            {"id": "organize", "options": {"excludeByName": {"Time": True}, "indexByName": {}, "renameByName": {}}},
        ]
        model["fieldConfig"]["overrides"] = [
            {
                "matcher": {"id": "byName", "options": f"Value #{ref}"},
                "properties": [{"id": "displayName", "value": header}, {"id": "unit", "value": unit}],
            }
            for ref, (header, unit) in zip(refs, panel.columns, strict=True)
        ]
    return model


def _variables(dashboard: Dashboard) -> list[dict[str, Any]]:
    up = _ext("prometheus", "up")
    service = Variable("service", "Service", f"label_values({c.BUILD_INFO.name}, {_JOB})")
    environment = Variable("environment", "Environment", f'label_values({up}{{{_JOB}=~"$service"}}, {_ENV})')
    instance = Variable(
        "instance", "Instance", f'label_values({up}{{{_JOB}=~"$service", {_ENV}=~"$environment"}}, {_INSTANCE})'
    )
    result: list[dict[str, Any]] = [
        {
            "name": "datasource",
            "label": "Data source",
            "type": "datasource",
            "query": "prometheus",
            "current": {},
            "hide": 0,
            "includeAll": False,
            "multi": False,
            "options": [],
            "refresh": 1,
            "regex": "",
            "skipUrlSync": False,
        }
    ]
    for var in (service, environment, instance, *dashboard.variables):
        result.append(
            {
                "name": var.name,
                "label": var.label,
                "type": "query",
                "datasource": dict(_DS),
                "definition": var.query,
                "query": {"query": var.query, "refId": f"{var.name}-variable-query"},
                "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
                "hide": 0,
                "includeAll": True,
                "allValue": ".*",
                "multi": True,
                "options": [],
                "refresh": 2,
                "regex": "",
                "skipUrlSync": False,
                "sort": 1,
            }
        )
    return result


def _grafana(dashboard: Dashboard, *, refresh: str, time_from: str) -> dict[str, Any]:
    panels: list[dict[str, Any]] = []
    next_id, y = 1, 0
    for row in dashboard.rows:
        panels.append(
            {
                "id": next_id,
                "type": "row",
                "title": row.title,
                "collapsed": False,
                "gridPos": {"h": 1, "w": 24, "x": 0, "y": y},
                "panels": [],
            }
        )
        next_id, y = next_id + 1, y + 1
        x, line_height = 0, 0
        for panel in row.panels:
            if x + panel.width > 24:
                x, y, line_height = 0, y + line_height, 0
            panels.append(_panel(panel, next_id, x, y))
            next_id, x, line_height = next_id + 1, x + panel.width, max(line_height, panel.height)
        y += line_height
    return {
        "id": None,
        "uid": dashboard.uid,
        "title": dashboard.title,
        "description": dashboard.description,
        "tags": ["bakhmach-obs"],
        "timezone": "browser",
        "editable": True,
        "graphTooltip": 1,
        "schemaVersion": SCHEMA_VERSION,
        "version": 1,
        "refresh": refresh,
        "time": {"from": time_from, "to": "now"},
        "timepicker": {},
        "fiscalYearStartMonth": 0,
        "liveNow": False,
        "weekStart": "",
        "annotations": {
            "list": [
                {
                    "builtIn": 1,
                    "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                    "enable": True,
                    "hide": True,
                    "iconColor": "rgba(0, 211, 255, 1)",
                    "name": "Annotations & Alerts",
                    "type": "dashboard",
                }
            ]
        },
        "links": [
            {
                "type": "dashboards",
                "title": "bakhmach-obs dashboards",
                "tags": ["bakhmach-obs"],
                "asDropdown": True,
                "includeVars": True,
                "keepTime": True,
                "icon": "external link",
                "targetBlank": False,
                "tooltip": "",
                "url": "",
            }
        ],
        "templating": {"list": _variables(dashboard)},
        "panels": panels,
    }


def generate(
    *, apdex_target: float = DEFAULT_APDEX_TARGET, refresh: str = "30s", time_from: str = "now-3h"
) -> dict[str, dict[str, Any]]:
    """Every dashboard as a Grafana JSON model, by file name.

    Args:
        apdex_target: the Apdex T in seconds (satisfied up to T, tolerating up to 4T); one of
            :data:`APDEX_TARGETS`, the bounds T of ``http_server_request_duration_seconds`` whose 4T
            is a bound too (0.025, 0.25, 2.5 with the default buckets).
        refresh: the dashboards' auto-refresh interval.
        time_from: the default time range start (``now-3h``).

    Raises:
        ConfigurationError: ``apdex_target`` has no matching buckets.

    Example:
        >>> models = generate()
        >>> [v["name"] for v in models["infrastructure.json"]["templating"]["list"]][:4]
        ['datasource', 'service', 'environment', 'instance']
    """
    return {
        d.file_name: _grafana(d, refresh=refresh, time_from=time_from) for d in dashboards(apdex_target=apdex_target)
    }


def write(directory: str | Path, **options: Any) -> list[Path]:
    """Write :func:`generate`'s dashboards into ``directory`` (created if needed); return the paths."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, model in generate(**options).items():
        path = out / name
        path.write_text(json.dumps(model, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        paths.append(path)
    return paths


def prometheus_datasource_json_data(trace_datasource_uid: str = TRACE_DATASOURCE_UID) -> Mapping[str, Any]:
    """``jsonData`` for a provisioned Prometheus data source so exemplars link to the trace view.

    The SDK's exemplars carry the trace id in the ``trace_id`` label (and ``span_id``); Grafana
    opens that trace in the data source ``trace_datasource_uid`` (Jaeger or Tempo).

    Example:
        >>> prometheus_datasource_json_data()["exemplarTraceIdDestinations"]
        [{'name': 'trace_id', 'datasourceUid': 'jaeger'}]
    """
    return {
        "httpMethod": "POST",
        "exemplarTraceIdDestinations": [{"name": "trace_id", "datasourceUid": trace_datasource_uid}],
    }


def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``bakhmach-obs dashboards``."""
    targets = ", ".join(f"{t:g}" for t in APDEX_TARGETS)
    parser.add_argument("-o", "--output", required=True, metavar="DIR", help="directory to write the JSON files into")
    parser.add_argument(
        "--apdex-target",
        type=float,
        default=DEFAULT_APDEX_TARGET,
        metavar="SECONDS",
        help=f"Apdex T: satisfied up to T, tolerating up to 4T; one of {targets} (default {DEFAULT_APDEX_TARGET:g})",
    )
    parser.add_argument("--refresh", default="30s", help="dashboard auto-refresh interval (default 30s)")
    parser.add_argument("--time-from", default="now-3h", help="start of the default time range (default now-3h)")


def run_cli(args: argparse.Namespace) -> int:
    """Write the dashboards; print one path per line. A bad option prints the error and returns 2."""
    try:
        paths = write(args.output, apdex_target=args.apdex_target, refresh=args.refresh, time_from=args.time_from)
    except ConfigurationError as exc:
        print(f"bakhmach-obs dashboards: {exc}", file=sys.stderr)
        return 2
    for path in paths:
        print(path)
    return 0
