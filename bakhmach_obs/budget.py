"""The deployment gate: error budgets read from a live Prometheus.

``bakhmach-obs budget --prometheus URL --slo slo.yaml`` prints, for each SLO, the error ratio over
its window, the share of the budget left and the burn rates over 1h, 6h, 1d and 3d, and exits
non-zero when a budget is exhausted or below ``--min-remaining`` (the seed's "error budget enables
deployment gates"). By default it evaluates the SLI expressions itself, so it works whether or not
the generated recording rules are loaded; ``recorded=True`` reads the recording rules instead.

Exit codes: 0 every budget passes; 1 a budget is exhausted or below the minimum, or an SLO has no
data; 2 bad usage or SLO file; 3 Prometheus could not be queried (the gate fails closed).

Missing data never passes silently. An SLO whose series exist but saw no events in the window
(``no traffic``) has spent nothing and passes. An SLO whose series are missing (a selector that
matches nothing, a service that is not scraped, a latency bucket the service was not configured
with, or with ``--recorded`` rules that are not loaded) is ``NO DATA`` and fails the gate, unless
``--allow-no-data`` is given.

Example:
    >>> from bakhmach_obs.budget import BudgetStatus
    >>> from bakhmach_obs.slo import SLO
    >>> status = BudgetStatus(SLO(name="api", service="api", target=0.99), error_ratio=0.005, burn_rates={})
    >>> round(status.remaining, 6), status.passes(min_remaining=0.25)
    (0.5, True)
    >>> BudgetStatus(SLO(name="api", service="api", target=0.99), error_ratio=None, events=0).passes()
    True
    >>> BudgetStatus(SLO(name="api", service="api", target=0.99), error_ratio=None, events=None).passes()
    False
"""

from __future__ import annotations

import json
import math
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from . import conventions as c
from .rules import _selector, error_ratio_expr, sli_query
from .slo import SLO

__all__ = [
    "BURN_WINDOWS",
    "BudgetStatus",
    "PrometheusQueryError",
    "add_cli_arguments",
    "evaluate",
    "exit_code",
    "format_table",
    "query_scalar",
    "run_cli",
    "to_json",
]

#: Windows whose burn rate the gate reports besides the SLO window.
BURN_WINDOWS = ("1h", "6h", "1d", "3d")


class PrometheusQueryError(RuntimeError):
    """Prometheus could not be reached or rejected a query."""


@dataclass(frozen=True)
class BudgetStatus:
    """One SLO's budget as Prometheus reports it.

    ``error_ratio`` is ``None`` when Prometheus returned no value; ``events`` (the SLI's events in
    the window, queried only then) tells why: ``0`` is no traffic, ``None`` or more than 0 is missing
    data (see :attr:`no_data`).
    """

    slo: SLO
    error_ratio: float | None
    burn_rates: Mapping[str, float | None] = field(default_factory=dict)
    events: float | None = None

    @property
    def no_traffic(self) -> bool:
        """The SLI's series exist but counted no event in the window: nothing was spent."""
        return self.error_ratio is None and self.events == 0

    @property
    def no_data(self) -> bool:
        """No ratio although there may be traffic: the series (or the recording rules) are missing."""
        return self.error_ratio is None and not self.no_traffic

    @property
    def consumed(self) -> float | None:
        """Share of the window's budget spent (the period burn rate): 0.25 is a quarter, > 1 overspent."""
        return None if self.error_ratio is None else self.error_ratio / self.slo.budget

    @property
    def remaining(self) -> float | None:
        """Share of the budget left: 1 untouched, <= 0 exhausted."""
        consumed = self.consumed
        return None if consumed is None else 1.0 - consumed

    def passes(self, min_remaining: float = 0.0, *, allow_no_data: bool = False) -> bool:
        """False when the budget is exhausted or below ``min_remaining``, or (unless ``allow_no_data``)
        when there is no data; no traffic passes."""
        remaining = self.remaining
        if remaining is None:
            return self.no_traffic or allow_no_data
        return remaining > 0 and remaining >= min_remaining


def query_scalar(url: str, expr: str, *, timeout: float = 10.0) -> float | None:
    """The value of a one-sample instant query (``None`` for an empty result or NaN).

    Raises:
        PrometheusQueryError: connection failure, timeout, HTTP error or an API error.
    """
    full = url.rstrip("/") + "/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    try:
        with urllib.request.urlopen(full, timeout=timeout) as resp:
            body = json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        try:
            body = json.loads(exc.read() or b"{}")
        except ValueError:
            body = {}
        raise PrometheusQueryError(f"{url}: HTTP {exc.code}: {body.get('error', exc.reason)}") from None
    except (OSError, ValueError) as exc:
        raise PrometheusQueryError(f"{url}: {exc}") from None
    if body.get("status") != "success":
        raise PrometheusQueryError(f"{url}: {body.get('errorType')}: {body.get('error')}")
    data = body.get("data", {})
    result = data.get("result")
    if data.get("resultType") == "scalar":
        result = [{"value": result}]
    if not result:
        return None
    value = float(result[0]["value"][1])
    return None if math.isnan(value) or math.isinf(value) else value


def _ratio_expr(slo: SLO, window: str, recorded: bool) -> str:
    if not recorded:
        return error_ratio_expr(slo, window)
    return _selector(c.slo_sli_error(window), {c.LABEL_SLO: slo.name, c.LABEL_SLO_SERVICE: slo.service})


def evaluate(
    prometheus_url: str,
    slos: Iterable[SLO],
    *,
    windows: Sequence[str] = BURN_WINDOWS,
    recorded: bool = False,
    timeout: float = 10.0,
) -> list[BudgetStatus]:
    """Query each SLO's error ratio over its window and its burn rates over ``windows``.

    Raises:
        PrometheusQueryError: Prometheus could not be queried.
    """
    out = []
    for slo in slos:
        ratio = query_scalar(prometheus_url, _ratio_expr(slo, slo.window, recorded), timeout=timeout)
        events = None
        if ratio is None:  # no traffic, or no data? count the SLI's events in the raw series
            total = f"sum(increase({sli_query(slo).total}[{slo.window}]))"
            events = query_scalar(prometheus_url, total, timeout=timeout)
        burns: dict[str, float | None] = {}
        for w in windows:
            r = query_scalar(prometheus_url, _ratio_expr(slo, w, recorded), timeout=timeout)
            burns[w] = None if r is None else r / slo.budget
        out.append(BudgetStatus(slo, ratio, burns, events))
    return out


def exit_code(statuses: Iterable[BudgetStatus], min_remaining: float = 0.0, *, allow_no_data: bool = False) -> int:
    """0 when every budget passes, else 1."""
    return 0 if all(s.passes(min_remaining, allow_no_data=allow_no_data) for s in statuses) else 1


def _pct(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value * 100:.{digits}f}%"


def _burn(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _status(s: BudgetStatus, min_remaining: float, allow_no_data: bool = False) -> str:
    if s.remaining is None:
        if s.no_traffic:
            return "no traffic"
        return "no data (allowed)" if allow_no_data else "NO DATA"
    if s.passes(min_remaining):
        return "ok"
    return "EXHAUSTED" if s.remaining <= 0 else "BELOW MINIMUM"


def format_table(statuses: Sequence[BudgetStatus], min_remaining: float = 0.0, *, allow_no_data: bool = False) -> str:
    """The gate's report as an aligned text table."""
    windows = list(dict.fromkeys(w for s in statuses for w in s.burn_rates))
    rows = [["SLO", "SERVICE", "TARGET", "WINDOW", "ERROR RATIO", "BUDGET LEFT", *[f"BURN {w}" for w in windows]]]
    rows[0].append("STATUS")
    for s in statuses:
        rows.append(
            [
                s.slo.name, s.slo.service, f"{s.slo.target * 100:.10g}%", s.slo.window,
                _pct(s.error_ratio, 4), _pct(s.remaining), *[_burn(s.burn_rates.get(w)) for w in windows],
                _status(s, min_remaining, allow_no_data),
            ]
        )  # fmt: skip
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(r)).rstrip() for r in rows)


def to_json(
    statuses: Sequence[BudgetStatus], min_remaining: float = 0.0, *, allow_no_data: bool = False
) -> list[dict[str, Any]]:
    """The report as JSON-ready dicts."""
    return [
        {
            "slo": s.slo.name,
            "service": s.slo.service,
            "target": s.slo.target,
            "window": s.slo.window,
            "error_ratio": s.error_ratio,
            "budget_consumed": s.consumed,
            "budget_remaining": s.remaining,
            "burn_rates": dict(s.burn_rates),
            "status": _status(s, min_remaining, allow_no_data),
            "passes": s.passes(min_remaining, allow_no_data=allow_no_data),
        }
        for s in statuses
    ]


# --- command line ---------------------------------------------------------------------------------


def add_cli_arguments(parser: Any) -> None:
    """Options of ``bakhmach-obs budget``."""
    parser.add_argument("--prometheus", required=True, metavar="URL", help="Prometheus base URL")
    parser.add_argument("--slo", action="append", required=True, metavar="FILE", help="SLO file (repeatable)")
    parser.add_argument(
        "--min-remaining", type=float, default=0.0, metavar="RATIO",
        help="fail when a budget has less than this share left (0.25 = 25%%; default 0: fail only when exhausted)",
    )  # fmt: skip
    parser.add_argument(
        "--recorded", action="store_true",
        help="read the generated recording rules instead of evaluating the SLI expressions",
    )  # fmt: skip
    parser.add_argument(
        "--allow-no-data", action="store_true",
        help="pass an SLO whose series are missing (by default it fails the gate: NO DATA)",
    )  # fmt: skip
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per query (default 10)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def run_cli(args: Any) -> int:
    """Run ``bakhmach-obs budget``; see the module docstring for the exit codes."""
    import sys

    from .errors import ConfigurationError
    from .slo import check_unique, load_slos

    if not 0.0 <= args.min_remaining <= 1.0:
        print(f"bakhmach-obs budget: --min-remaining must be from 0 to 1, got {args.min_remaining}", file=sys.stderr)
        return 2
    try:
        slos = check_unique(s for path in args.slo for s in load_slos(path))
    except ConfigurationError as exc:
        print(f"bakhmach-obs budget: {exc}", file=sys.stderr)
        return 2
    try:
        statuses = evaluate(args.prometheus, slos, recorded=args.recorded, timeout=args.timeout)
    except PrometheusQueryError as exc:
        print(f"bakhmach-obs budget: cannot query Prometheus: {exc}", file=sys.stderr)
        return 3
    allow = bool(args.allow_no_data)
    if args.json:
        print(json.dumps(to_json(statuses, args.min_remaining, allow_no_data=allow), indent=2))
    else:
        print(format_table(statuses, args.min_remaining, allow_no_data=allow))
    if not allow and any(s.no_data for s in statuses):
        names = ", ".join(s.slo.name for s in statuses if s.no_data)
        print(
            f"bakhmach-obs budget: no data for {names}: check the selector, the scrape job, the latency bucket "
            "(--recorded: the recording rules); --allow-no-data passes them",
            file=sys.stderr,
        )
    return exit_code(statuses, args.min_remaining, allow_no_data=allow)
