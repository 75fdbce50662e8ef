"""The progress writer: running jobs' latest progress, coalesced into one write per beat."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import anyio

from chancy_core import ops
from chancy_core.errors import TRANSIENT_ERRORS
from chancy_core.worker.runner import Running

__all__ = ["ProgressWriter"]

log = logging.getLogger(__name__)


class ProgressWriter:
    """Every ``interval`` seconds, writes the progress that running jobs reported since the
    last write, all in one fenced statement. A job never waits for it: reporting only
    keeps the latest value on the job's :class:`Running`; the last value is also written
    with the job's outcome (by the completer)."""

    def __init__(
        self,
        execute: Callable[[ops.Operation], Awaitable[Any]],
        write: Callable[[list[dict[str, Any]]], ops.Operation],
        running: Callable[[], Iterable[Running]],
        *,
        interval: float,
    ) -> None:
        self._execute = execute
        self._write = write
        self._running = running
        self.interval = interval

    def collect(self) -> list[dict[str, Any]]:
        """The progress reported since the last write, marked as written."""
        found: list[dict[str, Any]] = []
        for running in self._running():
            version = running.progress_version
            if version != running.progress_written:
                running.progress_written = version
                found.append(
                    {
                        "id": running.job.id,
                        "token": running.token,
                        "progress": running.progress_json(),
                    }
                )
        return found

    async def run(self) -> None:
        """Write progress every ``interval`` seconds until cancelled."""
        while True:
            await anyio.sleep(self.interval)
            batch = self.collect()
            if not batch:
                continue
            try:
                await self._execute(self._write(batch))
            except TRANSIENT_ERRORS as exc:  # the next report, or the outcome, writes it
                log.debug("writing progress failed: %s", exc)
            except Exception:
                log.exception("writing the progress of %d jobs failed", len(batch))
