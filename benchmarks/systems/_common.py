"""What every adapter shares: the adapter contract, the queue name and the probe job body.

See ``systems/README.md`` for the contract in prose.
"""

from __future__ import annotations

import os
import time
import urllib.parse
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

__all__ = [
    "PROBE_FILE_ENV",
    "QUEUE",
    "Adapter",
    "Client",
    "Config",
    "record_probe",
    "with_tcp_style_host",
]

#: A worker configuration: the adapter's ``SETTINGS`` with a sweep's or the run's overrides.
#: Every adapter reads ``config["concurrency"]``, the most jobs one worker runs at once.
Config = dict[str, Any]

#: The queue (or channel) every adapter uses for benchmark jobs.
QUEUE = "bench"

#: Environment variable naming the file that probe jobs append their start time to.
PROBE_FILE_ENV = "BENCH_PROBE_FILE"


class Client(Protocol):
    """A producer connection kept open across calls (so connecting is never timed)."""

    async def enqueue_bulk(self, count: int, batch_size: int) -> None:
        """Queue ``count`` no-op jobs with the system's bulk API, ``batch_size`` per call.

        Job ``i`` (0-based) carries its own argument ``i``, built right before its batch is
        pushed, as a user's code would build it.
        """

    async def push_one(self, i: int) -> None:
        """Push one no-op job carrying ``i`` with the single-job API; return once committed."""

    async def push_probe(self, pushed_at: float) -> None:
        """Push one probe job carrying ``pushed_at``; return once the push is committed."""


class Adapter(Protocol):
    """The module-level names every ``systems/<name>.py`` defines."""

    #: pip arguments that install the system into its own venv (``{repo}`` = repository root).
    REQUIREMENTS: tuple[str, ...]
    #: Interpreter the venv is built from, e.g. ``"python3"`` or ``"python3.12"``.
    PYTHON: str
    #: Literal dict: the worker settings every run starts from (``"concurrency"`` included).
    SETTINGS: Config
    #: Literal tuple of dicts: the overrides of ``SETTINGS`` that ``run.py --sweep`` tries.
    SWEEP: tuple[Config, ...]
    #: Literal dict: the overrides taken as the best configuration while no sweep was recorded.
    BEST: Config
    #: One row ``(waiting, unfinished)``: jobs not yet claimed, jobs not yet in a final state.
    PROGRESS_SQL: str
    #: One row ``(succeeded,)``: jobs that finished successfully.
    SUCCEEDED_SQL: str

    async def migrate(self, dsn: str, config: Config) -> None:
        """Install the system's schema in an empty database; declare ``bench`` per ``config``."""

    def connect(self, dsn: str) -> AbstractAsyncContextManager[Client]:
        """Open a producer; leaving the context closes it."""

    def run_worker(self, dsn: str, config: Config) -> None:
        """Run one worker configured by ``config`` until the process is terminated."""


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
