"""Render the generated dashboards to PNG from real Prometheus data (there is no Grafana here).

It starts the instrumented example shop (``tests/dashboards_app.py``) and a real Prometheus (the
Debian package, ``tests/prometheus_server.py``) that scrapes it every second and evaluates the SLO
rules ``bakhmach_obs.rules`` generates, sends traffic for ``--seconds``, then runs every panel's
queries of :func:`bakhmach_obs.dashboards.dashboards` through the Prometheus HTTP API (range
queries for graphs, instant queries for stats, bars and tables) and draws each dashboard as a grid
of panels with matplotlib, following the panels' grid positions. Panels fed by an exporter that
does not run here are drawn as "no data in this environment".

    python tools/render_dashboards.py --out docs/img/dashboards

Needs PostgreSQL on 127.0.0.1:5432 and RabbitMQ on 127.0.0.1:5672 for the pool and queue panels.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bakhmach_obs import dashboards  # noqa: E402
from bakhmach_obs.dashboards import Dashboard, Panel  # noqa: E402

EXPORTERS = {
    "node_exporter": "node_exporter",
    "postgres_exporter": "postgres_exporter",
    "kube_state_metrics": "kube-state-metrics",
    "cadvisor": "cAdvisor",
}
COLORS = ["#7eb26d", "#eab839", "#6ed0e0", "#ef843c", "#e24d42", "#1f78c1", "#ba43a9", "#705da0", "#508642", "#cca300"]
BG, PANEL_BG, TEXT, GRID = "#111217", "#181b1f", "#ccccdc", "#2c3235"


def fmt(value: float, unit: str) -> str:
    """A value as Grafana would show it in ``unit`` (the units the dashboards use)."""
    if value is None or not math.isfinite(value):
        return "-"
    if unit == "percentunit":
        return f"{value * 100:.1f}%"
    if unit == "s":
        return f"{value * 1000:.0f} ms" if abs(value) < 1 else f"{value:.2f} s"
    if unit in ("bytes", "Bps"):
        suffix = "/s" if unit == "Bps" else ""
        for step, name in ((2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
            if abs(value) >= step:
                return f"{value / step:.1f} {name}{suffix}"
        return f"{value:.0f} B{suffix}"
    if unit.startswith("suffix:"):
        return f"{value:.2f}{unit[7:]}"
    per = {"reqps": " req/s", "ops": " ops/s", "cps": " /s", "iops": " io/s"}.get(unit, "")
    if abs(value) >= 1e6:
        return f"{value / 1e6:.2f}M{per}"
    if abs(value) >= 1e3:
        return f"{value / 1e3:.1f}K{per}"
    return f"{value:.3g}{per}"


def legend(template: str, labels: dict[str, str]) -> str:
    text = re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), template).strip()
    return text or ", ".join(f"{k}={v}" for k, v in labels.items() if k != "__name__") or "value"


def substitute(expr: str, values: dict[str, str]) -> str:
    for var in sorted(values, key=len, reverse=True):
        expr = expr.replace(var, values[var])
    return expr


class Collector:
    """Runs a dashboard's queries against Prometheus over one time window."""

    def __init__(self, prom: Any, start: float, end: float, address: str) -> None:
        self.prom, self.start, self.end = prom, start, end
        span = int(end - start)
        self.values = {
            "$__rate_interval": "10s",
            "$__interval": "2s",
            "$__range": f"{span}s",
            "$service": "shop",
            "$environment": ".*",
            "$instance": address,
            "$node": ".*",
            "$namespace": ".*",
            "$funnel": ".*",
            "$slo": ".*",
        }

    def range(self, expr: str) -> list[dict[str, Any]]:
        data = self.prom.api(
            "query_range", query=substitute(expr, self.values), start=str(self.start), end=str(self.end), step="2"
        )
        return list(data["result"])

    def instant(self, expr: str) -> list[dict[str, Any]]:
        data = self.prom.api("query", query=substitute(expr, self.values), time=str(self.end))
        return list(data["result"])


def _style(ax: Any) -> None:
    ax.set_facecolor(PANEL_BG)
    for spine in ax.spines.values():
        spine.set_color(GRID)
    ax.tick_params(colors=TEXT, labelsize=6)


def _no_data(ax: Any, panel: Panel) -> None:
    exporter = EXPORTERS.get(panel.source)
    text = f"no data in this environment\n(needs {exporter})" if exporter else "no data"
    ax.text(0.5, 0.45, text, ha="center", va="center", color="#8e8e8e", fontsize=8, transform=ax.transAxes)
    ax.set_xticks([])
    ax.set_yticks([])


def draw_panel(ax: Any, panel: Panel, data: Collector) -> None:
    from matplotlib.ticker import FuncFormatter

    _style(ax)
    ax.set_title(f"{panel.title}  [{panel.unit}]", color=TEXT, fontsize=8, loc="left")
    try:
        if panel.kind == "timeseries":
            series = [(q, s) for q in panel.queries for s in data.range(q.expr)]
            if not series:
                return _no_data(ax, panel)
            t0 = data.start
            for i, (q, s) in enumerate(series[:10]):
                xs = [float(v[0]) - t0 for v in s["values"]]
                ys = [float(v[1]) for v in s["values"]]
                ax.plot(xs, ys, color=COLORS[i % len(COLORS)], linewidth=1, label=legend(q.legend, s["metric"])[:40])
            ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: fmt(v, panel.unit)))
            ax.grid(color=GRID, linewidth=0.5)
            ax.set_xlabel("seconds", color=TEXT, fontsize=6)
            if any(line.get_label() for line in ax.get_lines()):
                ax.legend(fontsize=5, loc="upper left", facecolor=PANEL_BG, labelcolor=TEXT, edgecolor=GRID, ncol=2)
        elif panel.kind == "heatmap":
            series = data.range(panel.queries[0].expr)
            if not series:
                return _no_data(ax, panel)
            bounds = sorted({float(s["metric"]["le"]) for s in series})
            finite = [b for b in bounds if math.isfinite(b)]
            by_le = {float(s["metric"]["le"]): s for s in series}
            times = [float(v[0]) for v in series[0]["values"]]
            grid = []
            previous = [0.0] * len(times)
            for b in bounds:
                values = {float(v[0]): float(v[1]) for v in by_le[b]["values"]}
                row = [values.get(t, 0.0) for t in times]
                grid.append([max(r - p, 0.0) for r, p in zip(row, previous, strict=True)])
                previous = row
            ax.imshow(grid, aspect="auto", origin="lower", cmap="Oranges", interpolation="nearest")
            labels = [fmt(b, panel.unit) for b in finite] + ["+Inf"]
            ax.set_yticks(range(len(labels)), labels)
            ax.set_xlabel("time →", color=TEXT, fontsize=6)
            ax.set_xticks([])
        elif panel.kind in ("stat", "bargauge"):
            items = [(q, s) for q in panel.queries for s in data.instant(q.expr)]
            if not items:
                return _no_data(ax, panel)
            ax.set_xticks([])
            ax.set_yticks([])
            if panel.kind == "stat":
                shown = items[:4]
                for i, (q, s) in enumerate(shown):
                    y = 1 - (i + 0.6) / len(shown)
                    value = float(s["value"][1])
                    ax.text(0.5, y, fmt(value, panel.unit), ha="center", va="center", color=_stat_color(panel, value),
                            fontsize=16 if len(shown) == 1 else 10, weight="bold", transform=ax.transAxes)  # fmt: skip
                    if len(shown) > 1 or q.legend:
                        ax.text(0.5, y - 0.5 / len(shown) + 0.08, legend(q.legend, s["metric"]), ha="center",
                                color=TEXT, fontsize=6, transform=ax.transAxes)  # fmt: skip
            else:
                items = items[:10]
                names = [legend(q.legend, s["metric"])[:36] for q, s in items]
                values = [float(s["value"][1]) for _, s in items]
                ys = list(range(len(values)))[::-1]
                ax.barh(ys, values, color=[COLORS[i % len(COLORS)] for i in range(len(values))])
                ax.set_yticks(ys, names)
                for y, v in zip(ys, values, strict=True):
                    ax.text(v, y, " " + fmt(v, panel.unit), va="center", color=TEXT, fontsize=6)
                ax.set_xlim(0, max(values) * 1.35 if max(values) > 0 else 1)
        elif panel.kind == "table":
            rows: dict[tuple[tuple[str, str], ...], list[str]] = {}
            for i, q in enumerate(panel.queries):
                for s in data.instant(q.expr):
                    key = tuple(sorted(s["metric"].items()))
                    rows.setdefault(key, ["-"] * len(panel.queries))[i] = fmt(float(s["value"][1]), panel.columns[i][1])
            if not rows:
                return _no_data(ax, panel)
            label_keys = sorted({k for key in rows for k, _ in key if k not in ("job", "instance")})
            cells = [[dict(key).get(k, "") for k in label_keys] + values for key, values in sorted(rows.items())[:12]]
            table = ax.table(cellText=cells, colLabels=label_keys + [h for h, _ in panel.columns], loc="upper center",
                             cellLoc="left")  # fmt: skip
            table.auto_set_font_size(False)
            table.set_fontsize(6)
            for cell in table.get_celld().values():
                cell.set_facecolor(PANEL_BG)
                cell.set_edgecolor(GRID)
                cell.get_text().set_color(TEXT)
            ax.axis("off")
    except AssertionError as exc:  # a query error: show it rather than hide the panel
        ax.text(0.02, 0.5, str(exc)[:200], color="#e24d42", fontsize=5, wrap=True, transform=ax.transAxes)
    return None


def _stat_color(panel: Panel, value: float) -> str:
    color = "#73bf69"
    if panel.thresholds and panel.thresholds[0][1] == "red" and panel.thresholds[0][0] <= 0:
        color = "#f2495c"
    for threshold, name in panel.thresholds:
        if value >= threshold:
            color = {"red": "#f2495c", "orange": "#ff9830", "yellow": "#fade2a", "green": "#73bf69"}.get(name, color)
    return color


def render(dashboard: Dashboard, data: Collector, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    model = dashboards.generate()[dashboard.file_name]
    placed = [p for p in model["panels"]]
    height = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in placed)
    unit_w, unit_h = 18 / 24, 0.36
    fig = plt.figure(figsize=(18, height * unit_h + 0.8), dpi=72, facecolor=BG)
    fig.text(0.01, 1 - 0.3 / (height * unit_h + 0.8), f"{dashboard.title}  ·  rendered from real Prometheus data by "
             "tools/render_dashboards.py (not a Grafana screenshot)", color=TEXT, fontsize=11, va="top")  # fmt: skip
    top = 0.8
    total_h = height * unit_h + top
    specs = {p.title: p for p in dashboard.panels()}
    for p in placed:
        g = p["gridPos"]
        left, width = g["x"] * unit_w / 18, g["w"] * unit_w / 18
        bottom = 1 - (top + (g["y"] + g["h"]) * unit_h) / total_h
        h = g["h"] * unit_h / total_h
        if p["type"] == "row":
            fig.text(left + 0.005, bottom + h / 2, p["title"], color=TEXT, fontsize=10, weight="bold", va="center")
            continue
        pad_x, pad_y = 0.035, 0.055 * (unit_h * 8 / total_h) / (unit_h * 8 / total_h)
        ax = fig.add_axes((left + pad_x * width, bottom + 0.18 * h, width * (1 - 1.5 * pad_x), h * 0.66 - pad_y * 0))
        draw_panel(ax, specs[p["title"]], data)
    path = out / dashboard.file_name.replace(".json", ".png")
    fig.savefig(path, facecolor=BG, dpi=72)
    plt.close(fig)
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "img" / "dashboards")
    parser.add_argument("--seconds", type=float, default=60.0, help="traffic duration (default 60)")
    args = parser.parse_args()

    from bakhmach_obs import rules
    from bakhmach_obs.slo import SLO
    from tests.dashboards_app import drive, running_shop
    from tests.prometheus_server import PrometheusServer

    args.out.mkdir(parents=True, exist_ok=True)
    slos = [
        SLO(name="shop-availability", service="shop", target=0.99, sli="availability", source="http"),
        SLO(name="shop-latency", service="shop", target=0.95, sli="latency", threshold=0.5, source="http"),
    ]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "rules.yml").write_text(rules.render("prometheus", slos))
        shop = running_shop(
            work,
            pg_dsn="host=127.0.0.1 port=5432 user=postgres dbname=test",
            amqp_url="amqp://guest:guest@127.0.0.1:5672/%2F",
        )
        with (
            shop as address,
            PrometheusServer(work, scrape_targets=[address], rule_files=[work / "rules.yml"], job="shop") as prom,
        ):
            prom.wait_for_targets_up()
            start = time.time()
            waves = threading.Thread(target=lambda: _waves(drive, address, args.seconds))
            waves.start()
            waves.join()
            time.sleep(3)
            end = time.time()
            data = Collector(prom, start, end, address)
            for d in dashboards.dashboards():
                path = render(d, data, args.out)
                print(f"{path} {path.stat().st_size // 1024} KiB")
    return 0


def _waves(drive: Any, address: str, seconds: float) -> None:
    """Traffic in waves (4, 12, 6 clients...) so the graphs show changes rather than flat lines."""
    deadline = time.monotonic() + seconds
    for i, clients in enumerate([4, 12, 6, 16, 3, 10] * 100):
        left = deadline - time.monotonic()
        if left <= 0:
            break
        drive(address, seconds=min(seconds / 6, left), concurrency=clients, seed=i)


if __name__ == "__main__":
    raise SystemExit(main())
