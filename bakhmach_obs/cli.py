"""The ``bakhmach-obs`` command line.

Each subcommand is one :class:`Command`: a name, a one-line help, a function adding its arguments
and a function running it. Adding one (``rules``, ``dashboards``, ``stack``, ``budget``...) means
writing those two functions and appending a :class:`Command` to :data:`COMMANDS`.

Example:
    >>> from bakhmach_obs.cli import main
    >>> main(["demo", "--requests", "10", "--json"])  # doctest: +SKIP
    0
"""

from __future__ import annotations

import argparse
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
    parser.add_argument("--requests", type=_positive_int, default=200, help="checkout requests to send (default 200)")
    parser.add_argument("--seed", type=int, default=7, help="seed of the synthetic traffic (default 7)")
    parser.add_argument("--concurrency", type=_positive_int, default=16, help="requests in flight at most (default 16)")
    parser.add_argument(
        "--sample-ratio", type=_ratio, default=1.0, help="trace sampling ratio for the demo (default 1.0)"
    )
    parser.add_argument("--json", action="store_true", help="print a machine-readable JSON summary instead")


def _demo_run(args: argparse.Namespace) -> int:
    from .demo import render_text, run_demo

    summary = run_demo(
        requests=args.requests, seed=args.seed, concurrency=args.concurrency, sample_ratio=args.sample_ratio
    )
    print(json.dumps(summary, indent=2) if args.json else render_text(summary))
    return 0


#: The subcommands, in help order.
COMMANDS: tuple[Command, ...] = (
    Command(
        name="demo",
        help="run an instrumented example service under synthetic traffic and show its signals",
        description=(
            "Run a small instrumented checkout service on embedded defaults (in-process metrics "
            "registry, in-memory spans, captured JSON logs) and print RED metrics per function, "
            "a sample trace and sample log lines. Global configuration is left untouched."
        ),
        add_arguments=_demo_arguments,
        run=_demo_run,
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
