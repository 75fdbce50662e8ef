"""Fixtures of the chaos suite, its ``--short`` mode and its summary table.

``--short`` (or ``CHANCY_CHAOS_SHORT=1``) runs every component with smaller figures, for
CI. ``--chaos-json PATH`` also writes the table's figures as JSON.
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from chancy_core import Chancy
from chaos.harness import Report, Server, WorkerProcess, create_database, drop_database, own_server

SHORT_ENV = "CHANCY_CHAOS_SHORT"

_report = Report()
_started = time.monotonic()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("chaos")
    group.addoption(
        "--short",
        action="store_true",
        default=False,
        help=f"the shortened mode for CI (also ${SHORT_ENV}=1)",
    )
    group.addoption("--chaos-json", default=None, metavar="PATH", help="write the figures as JSON")


def is_short(config: pytest.Config) -> bool:
    return bool(config.getoption("--short")) or os.environ.get(SHORT_ENV, "") not in ("", "0")


@dataclass(frozen=True)
class Mode:
    """The figures of one mode."""

    short: bool

    def pick(self, full: Any, short: Any) -> Any:
        return short if self.short else full

    @property
    def name(self) -> str:
        return "short" if self.short else "full"


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def mode(request: pytest.FixtureRequest) -> Mode:
    return Mode(is_short(request.config))


@pytest.fixture(scope="session")
def report() -> Report:
    return _report


@pytest.fixture(scope="session")
def server() -> Iterator[Server]:
    """The suite's own PostgreSQL (never the shared one); tests that restart a server
    start another of their own."""
    with own_server() as found:
        yield found


async def migrate(dsn: str) -> None:
    from chancy_plugin_recovery import Recovery

    async with Chancy(dsn, autoload_plugins=False, plugins=[Recovery()]) as app:
        await app.migrate()


@pytest.fixture
async def database(server: Server) -> AsyncIterator[str]:
    """A fresh, migrated database on the suite's server (with the executions tables)."""
    dsn = create_database(server)
    await migrate(dsn)
    yield dsn
    drop_database(server, dsn)


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[list[WorkerProcess]]:
    """Every worker process a test starts: none is left behind, whatever happens."""
    started: list[WorkerProcess] = []
    yield started
    for worker in started:
        worker.cleanup()


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    if not _report.rows:
        return
    elapsed = time.monotonic() - _started
    mode = "short" if is_short(config) else "full"
    terminalreporter.section(f"chaos summary ({mode} mode, {elapsed:.0f} s)")
    for line in _report.table():
        terminalreporter.write_line(line)
    for note in _report.notes:
        terminalreporter.write_line("")
        for line in note.splitlines():
            terminalreporter.write_line(line)
    path = config.getoption("--chaos-json")
    if path:
        _report.durations["total"] = elapsed
        Path(path).write_text(_report.as_json())
