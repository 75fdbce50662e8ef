"""What every adapter shares: the adapter contract, the queue name and the probe job body.

See ``systems/README.md`` for the contract in prose.
"""

from __future__ import annotations

import os
import time
import urllib.parse
from contextlib import AbstractAsyncContextManager
from typing import Protocol

__all__ = ["PROBE_FILE_ENV", "QUEUE", "Adapter", "Client", "record_probe", "with_tcp_style_host"]

#: The queue (or channel) every adapter uses for benchmark jobs.
QUEUE = "bench"

#: Environment variable naming the file that probe jobs append their start time to.
PROBE_FILE_ENV = "BENCH_PROBE_FILE"


class Client(Protocol):
    """A producer connection kept open across calls (so connecting is never timed)."""

    async def enqueue_bulk(self, count: int, batch_size: int) -> None:
        """Queue ``count`` no-op jobs with the system's bulk API, ``batch_size`` per call."""

    async def push_probe(self, pushed_at: float) -> None:
        """Push one probe job carrying ``pushed_at``; return once the push is committed."""


class Adapter(Protocol):
    """The module-level names every ``systems/<name>.py`` defines."""

    #: pip arguments that install the system into its own venv (``{repo}`` = repository root).
    REQUIREMENTS: tuple[str, ...]
    #: Interpreter the venv is built from, e.g. ``"python3"`` or ``"python3.12"``.
    PYTHON: str
    #: One row ``(waiting, unfinished)``: jobs not yet claimed, jobs not yet in a final state.
    PROGRESS_SQL: str
    #: One row ``(succeeded,)``: jobs that finished successfully.
    SUCCEEDED_SQL: str

    async def migrate(self, dsn: str) -> None:
        """Install the system's schema (and declare the ``bench`` queue) in an empty database."""

    def connect(self, dsn: str) -> AbstractAsyncContextManager[Client]:
        """Open a producer; leaving the context closes it."""

    def run_worker(self, dsn: str) -> None:
        """Run one worker with the peer's best settings until the process is terminated."""


def record_probe(pushed_at: float) -> None:
    """Append ``"<pushed_at> <started_at>"`` to the probe file; the first thing a probe job does."""
    started_at = time.time()
    with open(os.environ[PROBE_FILE_ENV], "a", encoding="ascii") as probe_file:
        probe_file.write(f"{pushed_at!r} {started_at!r}\n")


def with_tcp_style_host(dsn: str) -> str:
    """Give a socket-only URL (``postgresql://u@/db?host=/d``) a host name, for drivers needing one.

    The ``host`` query parameter still wins, so the connection keeps using the socket.
    """
    parts = urllib.parse.urlsplit(dsn)
    if parts.hostname:
        return dsn
    userinfo, _, _ = parts.netloc.rpartition("@")
    netloc = f"{userinfo}@localhost" if userinfo else "localhost"
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))
