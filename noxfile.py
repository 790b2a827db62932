"""Sessions: `nox` runs lint, tests and minimal (the README's test command); `nox -s bench` benchmarks."""

from __future__ import annotations

import nox

nox.options.sessions = ["lint", "tests", "minimal", "docs"]
nox.options.reuse_existing_virtualenvs = False
nox.options.error_on_missing_interpreters = True


@nox.session
def tests(session: nox.Session) -> None:
    """The whole test suite against real services (see tests/conftest.py for the skip policy)."""
    session.install(".[test,docs]")
    session.run("pytest", "--durations=15", *session.posargs)


@nox.session
def minimal(session: nox.Session) -> None:
    """`import bakhmach_obs` works with no extra installed and imports no framework or driver."""
    session.install(".")
    session.run(
        "python",
        "-c",
        "import sys, bakhmach_obs, bakhmach_obs.testing;"
        "heavy = sorted(m for m in ('starlette', 'fastapi', 'flask', 'django', 'sqlalchemy', 'psycopg',"
        " 'redis', 'pika', 'aio_pika', 'httpx', 'requests', 'pytest') if m in sys.modules);"
        "assert not heavy, f'imported optional dependencies at import time: {heavy}';"
        "print('import bakhmach_obs OK without extras', bakhmach_obs.__version__)",
    )
    session.run("bakhmach-obs", "--version")


@nox.session
def lint(session: nox.Session) -> None:
    """ruff (lint + format check), mypy --strict, and generated docs up to date."""
    session.install(".[lint,test]")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
    session.run("mypy")
    session.run("python", "-m", "bakhmach_obs._docgen", "--check")


@nox.session
def bench(session: nox.Session) -> None:
    """Per-call overhead of @instrument against hand-rolled ideals (ratios; not a test)."""
    session.install(".[orjson,test,bench]")
    session.run("python", "benchmarks/bench_instrument.py", *session.posargs)
    session.run("python", "benchmarks/bench_logs.py", *session.posargs)
    session.run("python", "benchmarks/bench_http.py", *session.posargs)
    session.run("python", "benchmarks/bench_dbapi.py", *session.posargs)
    session.run("python", "benchmarks/bench_redis.py", *session.posargs)
    session.run("python", "benchmarks/bench_business.py", *session.posargs)


@nox.session
def docs(session: nox.Session) -> None:
    """The documentation site: generated reference pages current, then `mkdocs build --strict`."""
    session.install(".[docs]")
    session.run("python", "-m", "bakhmach_obs._docgen", "--check")
    session.run(
        "mkdocs",
        "build",
        "--strict",
        "--site-dir",
        f"{session.create_tmp()}/site",
        env={"NO_MKDOCS_2_WARNING": "1"},
    )


@nox.session
def docgen(session: nox.Session) -> None:
    """Regenerate docs/conventions.md and docs/configuration.md from the code."""
    session.install(".")
    session.run("python", "-m", "bakhmach_obs._docgen")
