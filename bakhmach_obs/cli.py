"""The ``bakhmach-obs`` command line.

Each subcommand is one :class:`Command`: a name, a one-line help, a function adding its arguments
and a function running it. A command implemented in its own module (``rules``, ``budget``,
``dashboards``, ``stack``) gives those as ``add_cli_arguments(parser)`` and ``run_cli(args)``, and
:func:`_module_command` imports the module only when the command line is built.

Example:
    >>> from bakhmach_obs.cli import main
    >>> main(["demo", "--requests", "10", "--json"])  # doctest: +SKIP
    0
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

__all__ = ["COMMANDS", "Command", "build_parser", "main"]


@dataclass(frozen=True)
class Command:
    """One subcommand: ``add_arguments(parser)`` declares its options, ``run(args)`` returns the exit code."""

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    description: str | None = None


# --- argument types -------------------------------------------------------------------------------


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _ratio(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number from 0 to 1, got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number from 0 to 1, got {text!r}")
    return value


# --- demo ------------------------------------------------------------------------------------------


def _demo_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--requests", type=_positive_int, default=200, help="requests to send (default 200)")
    parser.add_argument("--seed", type=int, default=7, help="seed of the synthetic traffic (default 7)")
    parser.add_argument("--concurrency", type=_positive_int, default=16, help="requests in flight at most (default 16)")
    parser.add_argument(
        "--sample-ratio", type=_ratio, default=1.0, help="trace sampling ratio for the demo (default 1.0)"
    )
    parser.add_argument("--json", action="store_true", help="print a machine-readable JSON summary instead")
    backends = parser.add_argument_group("backends (embedded defaults when not given)")
    backends.add_argument("--database-url", metavar="URL", help="postgresql://... (default: SQLite in memory)")
    backends.add_argument("--redis-url", metavar="URL", help="redis://... for the product cache (default: in process)")
    backends.add_argument("--amqp-url", metavar="URL", help="amqp://... for the orders queue (default: in process)")
    serving = parser.add_argument_group("serving")
    serving.add_argument(
        "--serve", action="store_true", help="serve the app with uvicorn and keep traffic going until Ctrl-C"
    )
    serving.add_argument("--host", default="127.0.0.1", help="address to listen on with --serve (default 127.0.0.1)")
    serving.add_argument("--port", type=int, default=8080, help="port with --serve (default 8080; 0: any free port)")
    serving.add_argument(
        "--rate", type=float, default=5.0, help="background requests per second with --serve (default 5; 0: none)"
    )
    serving.add_argument(
        "--with-prometheus", action="store_true",
        help="also start a local Prometheus (the `prometheus` binary) with the generated rules; implies --serve",
    )  # fmt: skip


#: The demo's optional dependencies, by import name: the extra that installs each.
_DEMO_EXTRAS = {
    "fastapi": "demo", "starlette": "demo", "pydantic": "demo", "httpx": "demo", "uvicorn": "demo",
    "psycopg": "postgresql", "redis": "redis", "aio_pika": "rabbitmq", "aiormq": "rabbitmq",
}  # fmt: skip


def _demo_run(args: argparse.Namespace) -> int:
    from .errors import ConfigurationError

    try:
        from . import demo

        if args.serve or args.with_prometheus:
            return demo.serve(
                host=args.host, port=args.port, rate=args.rate, seed=args.seed, database_url=args.database_url,
                redis_url=args.redis_url, amqp_url=args.amqp_url, with_prometheus=args.with_prometheus,
            )  # fmt: skip
        summary = demo.run_demo(
            requests=args.requests, seed=args.seed, concurrency=args.concurrency, sample_ratio=args.sample_ratio,
            database_url=args.database_url, redis_url=args.redis_url, amqp_url=args.amqp_url,
            progress=demo.tty_progress(sys.stderr),
        )  # fmt: skip
    except ModuleNotFoundError as exc:
        extra = _DEMO_EXTRAS.get((exc.name or "").partition(".")[0])
        if extra is None:
            raise
        print(
            f"bakhmach-obs demo: {exc.name} is not installed; install the extra: "
            f"python3 -m pip install 'bakhmach-obs[{extra}]'",
            file=sys.stderr,
        )
        return 1
    except ConfigurationError as exc:
        print(f"bakhmach-obs demo: {exc}", file=sys.stderr)
        return 2
    except ConnectionError as exc:  # a backend given by URL could not be reached
        print(f"bakhmach-obs demo: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(summary, indent=2) if args.json else demo.render_text(summary))
    return 0


# --- dashboards --------------------------------------------------------------------------------------


def _module_command(module: str, help: str, description: str) -> Command:
    """The command ``module`` implements with ``add_cli_arguments(parser)`` and ``run_cli(args)``.

    ``bakhmach_obs.<module>`` is imported when the command line is built or run, not when this
    module is imported.
    """

    def add_arguments(parser: argparse.ArgumentParser) -> None:
        importlib.import_module(f"bakhmach_obs.{module}").add_cli_arguments(parser)

    def run(args: argparse.Namespace) -> int:
        return int(importlib.import_module(f"bakhmach_obs.{module}").run_cli(args))

    return Command(name=module, help=help, add_arguments=add_arguments, run=run, description=description)


#: The subcommands, in help order.
COMMANDS: tuple[Command, ...] = (
    _module_command(
        "budget",
        "deployment gate: print each SLO's error budget from Prometheus, fail when one is spent",
        (
            "Query a live Prometheus for each SLO's error ratio, budget left and burn rates; exit 1 when a "
            "budget is exhausted or below --min-remaining, 3 when Prometheus cannot be queried (docs/slo.md)."
        ),
    ),
    _module_command(
        "dashboards",
        "write the Grafana dashboards generated from the naming convention",
        (
            "Write five Grafana dashboards (System Overview, Application Performance, Business "
            "Metrics, Infrastructure, SLOs) as JSON files into DIR, every query built from the "
            "naming convention."
        ),
    ),
    Command(
        name="demo",
        help="run an instrumented FastAPI service under synthetic traffic and show its signals",
        description=(
            "Run the instrumented checkout service (FastAPI; SQLite, an in-process cache and queue, or "
            "PostgreSQL, Redis and RabbitMQ given by URL) under seeded traffic with errors and slow "
            "requests, then print RED metrics per route, the cache hit ratio, SLO budget consumed, "
            "health probes, a sample trace and log lines. --serve keeps it running for a Prometheus "
            "to scrape; --with-prometheus starts one with the generated rules."
        ),
        add_arguments=_demo_arguments,
        run=_demo_run,
    ),
    _module_command(
        "rules",
        "write the Prometheus rule file: SLO recording rules, burn-rate alerts, the alert catalogue",
        (
            "Generate Prometheus recording and alerting rules from the naming convention and SLO files: "
            "SLI error ratios per window, multi-window multi-burn-rate alerts with a low-traffic guard, "
            "and the seed's alert catalogue, as a rule file, a PrometheusRule or a sloth spec (docs/alerts.md)."
        ),
    ),
    _module_command(
        "stack",
        "write a deployable monitoring stack (Prometheus, Alertmanager, Grafana, Jaeger, ELK) for the service",
        (
            "Write docker-compose.yml with pinned images, prometheus.yml with the generated rules, "
            "alertmanager.yml, Grafana provisioning and dashboards, and the Logstash pipeline into "
            "a directory. A .env with a random Grafana admin password is created once and kept on "
            "later runs (unless --force)."
        ),
    ),
)


def build_parser(commands: Sequence[Command] = COMMANDS) -> argparse.ArgumentParser:
    """The argument parser with one subparser per command."""
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="bakhmach-obs",
        description="Observability for Python backends: metrics, traces and logs, one naming convention.",
    )
    parser.add_argument("--version", action="version", version=f"bakhmach-obs {__version__}")
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND")
    for command in commands:
        sub = subparsers.add_parser(command.name, help=command.help, description=command.description or command.help)
        command.add_arguments(sub)
        sub.set_defaults(_run=command.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return the exit code (2 for usage errors and a missing command)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version and usage errors
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    run: Callable[[argparse.Namespace], int] | None = getattr(args, "_run", None)
    if run is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return run(args)
    except BrokenPipeError:  # output piped into `head` or similar
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
