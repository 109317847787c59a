"""Developer tasks: ``nox -s tests``, ``nox -s lint``, ``nox -s typecheck``, ``nox -s bench``."""

from __future__ import annotations

import nox

nox.options.sessions = ["tests", "lint", "typecheck"]
nox.options.reuse_existing_virtualenvs = True

PYTHON = "3.11"


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """Run the test suite against the installed package, with branch coverage.

    The whole suite (no arguments; one worker per core) prints the coverage report and
    fails below pyproject.toml's ``fail_under``; ``nox -s tests -- ARGS`` runs pytest
    ARGS, unmeasured.
    """
    session.install("-e", ".[test]")
    if session.posargs:
        session.run("pytest", *session.posargs)
        return
    # One worker per core (pytest-xdist): on two cores the measured suite takes two
    # thirds of the time it takes in one process.
    session.run("pytest", "-n", "auto", "--cov", "--cov-report=term")


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """ruff: lint and formatting."""
    session.install("ruff>=0.6")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session(python=PYTHON)
def typecheck(session: nox.Session) -> None:
    """mypy --strict on the package, the tests and this file."""
    session.install("-e", ".[test]", "mypy>=1.10", "nox", "types-pexpect")
    session.run("mypy")


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """triochat against ``ncat --chat`` (apt-get install ncat); ``-- --quick`` for a short run."""
    session.install("-e", ".")
    session.run("python", "benchmarks/run.py", *session.posargs)
