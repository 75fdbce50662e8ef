"""The completer: writes outcomes in batches, fenced; reports only what was written."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import anyio
import anyio.abc

from chancy_core.job import QueuedJob
from chancy_core.outcome import Outcome

__all__ = ["Completer", "Completion", "refused", "storable"]

log = logging.getLogger(__name__)

_MAX_BACKOFF = 5.0


def refused(exc: BaseException) -> bool:
    """Whether the database refused a value for good (SQLSTATE class 22, data exception,
    or 23, integrity constraint): writing the same outcome again would fail again."""
    sqlstate = getattr(exc, "sqlstate", None)
    return isinstance(sqlstate, str) and sqlstate[:2] in ("22", "23")


def storable(text: str) -> str:
    """``text`` as PostgreSQL can store it: no NUL character, no lone surrogate."""
    if not text.isascii():
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text.replace("\x00", "\\x00") if "\x00" in text else text


@dataclass(eq=False, slots=True, kw_only=True)
class Completion:
    """One attempt's outcome as the completer writes it, fenced on its claim's token."""

    id: str
    queue: str
    token: str
    state: str
    error: str | None = None
    """The traceback text to append to the job's ``errors``."""
    scheduled_at: datetime | None = None
    """``None``: keep the row's (a retry that is due at once)."""
    meta: str | None = None
    """The job's new ``meta`` as JSON, ``None`` to keep it."""
    result: str | None = None
    """The function's return value as JSON (``None``: no result to store)."""
    result_error: str | None = None
    """Why the return value was not stored, or ``None``."""
    progress: str | None = None
    """The job's last reported progress as JSON, ``None`` to keep the row's."""
    job: QueuedJob | None = None
    """The job with its new state, for ``chancy_job_completed`` (``None``: not reported)."""
    outcome: Outcome | None = None

    def as_json(self) -> dict[str, Any]:
        """The outcome as ``COMPLETE_JOBS`` reads it (absent keys are NULL)."""
        found: dict[str, Any] = {"id": self.id, "token": self.token, "state": self.state}
        if self.error is not None:
            found["error"] = self.error
        if self.scheduled_at is not None:
            found["scheduled_at"] = self.scheduled_at.isoformat()
        if self.meta is not None:
            found["meta"] = self.meta
        if self.result is not None:
            found["result"] = self.result
        if self.result_error is not None:
            found["result_error"] = self.result_error
        if self.progress is not None:
            found["progress"] = self.progress
        return found


#: Writes one batch in one statement (retrying while the database is away); returns the
#: ids the fence accepted. Raises for a batch the database refuses.
Writer = Callable[[Sequence[Completion]], Awaitable[set[str]]]
#: Called after each write with the batch and the ids the database accepted.
OnWritten = Callable[[Sequence[Completion], set[str]], Awaitable[None]]


class Completer:
    """Writes outcomes in batches of up to ``batch``, each waiting at most ``delay``
    seconds for others to share its write: not at all once a batch is full, or when a
    producer is held back by outcomes not written yet (:meth:`hurry`). Nothing is
    reported before it is written.

    An outcome leaves the list only once written; writing one twice is harmless (the
    write is fenced). A write that fails for any other reason than a refused value (a
    trigger, a lost connection the writer gave up on, a deadline) keeps the whole batch
    and is tried again with backoff (up to 5 s), logged at WARNING; only rows the fence
    refuses are let go. A batch the database refuses (SQLSTATE class 22 or 23) is written
    one outcome at a time, and
    an outcome it still refuses without its result (``result_error`` says so), then
    without its meta (and with its error text in ASCII), so one bad value never holds
    back the others."""

    def __init__(self, write: Writer, *, batch: int, delay: float, on_written: OnWritten) -> None:
        self._write_batch = write
        self._on_written = on_written
        self.batch = batch
        self.delay = delay
        #: Recorded, not yet written. Appended by runner tasks, removed by flush().
        self._pending: list[Completion] = []
        #: Unwritten outcomes by queue (the producers' backpressure). Same owners.
        self._unwritten: dict[str, int] = {}
        #: Set when an outcome is recorded; replaced by flush() once all are written.
        self._ready = anyio.Event()
        #: Set when waiting for more outcomes is pointless (a full batch, a held-back
        #: producer); replaced by run() before each write.
        self._hurry = anyio.Event()
        #: One writer at a time: the run() task, or the shutdown.
        self._lock = anyio.Lock()

    def record(self, completion: Completion) -> None:
        """Queue an outcome for the next batch."""
        self._unwritten[completion.queue] = self._unwritten.get(completion.queue, 0) + 1
        self._pending.append(completion)
        self._ready.set()
        if len(self._pending) >= self.batch:
            self._hurry.set()

    def hurry(self) -> None:
        """Write what is recorded without waiting for more (a producer is held back)."""
        self._hurry.set()

    def unwritten(self, queue: str) -> int:
        """How many outcomes of ``queue`` are recorded but not yet written."""
        return self._unwritten.get(queue, 0)

    def holds(self, job_id: str) -> bool:
        """Whether an outcome of ``job_id`` is waiting to be written."""
        return any(c.id == job_id for c in self._pending)

    def pending_ids(self) -> list[str]:
        """The ids of the jobs whose outcomes are not written yet."""
        return [c.id for c in self._pending]

    def __len__(self) -> int:
        return len(self._pending)

    async def run(self) -> None:
        """Write outcomes as they come, until cancelled."""
        while True:
            await self._ready.wait()
            if len(self._pending) < self.batch:
                with anyio.move_on_after(self.delay):
                    await self._hurry.wait()
            self._hurry = anyio.Event()
            await self.flush()

    async def flush(self) -> None:
        """Write every recorded outcome, a batch per statement, then report them."""
        async with self._lock:
            delay = 0.1
            while self._pending:
                batch = self._pending[: self.batch]
                try:
                    accepted = await self._write(batch)
                except Exception as exc:
                    log.warning(
                        "could not write %d outcome%s (%s: %s); keeping them, retrying in %.1fs",
                        len(batch),
                        "" if len(batch) == 1 else "s",
                        type(exc).__name__,
                        exc,
                        delay,
                    )
                    await anyio.sleep(delay)
                    delay = min(delay * 2, _MAX_BACKOFF)
                    continue
                delay = 0.1
                del self._pending[: len(batch)]
                for c in batch:
                    self._unwritten[c.queue] -= 1
                await self._on_written(batch, accepted)
            self._ready = anyio.Event()

    async def _write(self, batch: list[Completion]) -> set[str]:
        try:
            return await self._write_batch(batch)
        except Exception as exc:
            if not refused(exc):
                raise  # not the values: flush() keeps the batch and tries again
            # A value the database refuses for good: isolate it.
            if len(batch) > 1:
                accepted: set[str] = set()
                for one in batch:
                    accepted |= await self._write([one])
                return accepted
            one = batch[0]
            if one.result is not None:
                log.error(
                    "could not write the result of job %s (%s); writing its outcome without it",
                    one.id,
                    exc,
                )
                reason = storable(f"the database refused the result: {exc}")
                return await self._write(
                    [dataclasses.replace(one, result=None, result_error=reason)]
                )
            if one.meta is None and (one.error is None or one.error.isascii()):
                log.error("could not write the outcome of job %s: %s", one.id, exc)
                return set()
            log.error(
                "could not write the outcome of job %s (%s); writing it without meta",
                one.id,
                exc,
            )
            error = None if one.error is None else one.error.encode("ascii", "backslashreplace")
            return await self._write(
                [
                    dataclasses.replace(
                        one, meta=None, error=None if error is None else error.decode()
                    )
                ]
            )
