"""The producer of one served queue: its slots, its wake-ups, and its claims."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio

from chancy_core import sql as q
from chancy_core.errors import TRANSIENT_ERRORS
from chancy_core.executors import Executor, make_executor
from chancy_core.ops import Claimed
from chancy_core.queue import Queue
from chancy_core.worker.runner import Running

__all__ = ["QueueProducer", "Slots"]

log = logging.getLogger(__name__)

_MAX_BACKOFF = 5.0
#: Seconds claims may wait for outcomes to be written before the producer says so (at
#: full speed they wait for each write, briefly: that is the backpressure working).
_HELD_TOO_LONG = 1.0


class Slots:
    """A queue's concurrency on this worker: its capacity, the jobs running in it, and
    the jobs still running on the queue's previous (retired) producer, which count as
    busy until they end."""

    def __init__(self, capacity: int, inherited: Slots | None = None) -> None:
        self.capacity = capacity
        #: The jobs running in these slots. Added by the producer, removed by runner tasks.
        self.running: set[Running] = set()
        self._inherited = inherited if inherited is not None and inherited.running else None

    def free(self) -> int:
        """How many more jobs may start now."""
        busy = len(self.running)
        if self._inherited is not None:
            busy += len(self._inherited.running)
        return self.capacity - busy

    def forget_inherited(self) -> None:
        """Drop the previous producer's slots once its jobs have all ended."""
        if self._inherited is not None and not self._inherited.running:
            self._inherited = None


#: Claims up to ``limit`` jobs of the queue: what the claim took.
Claim = Callable[[Queue, int], Awaitable[Claimed]]
#: Starts a claimed row on this producer (or records its failure).
Start = Callable[["QueueProducer", tuple[Any, ...], str], None]


class QueueProducer:
    """Claims one queue's jobs into its free slots; one per served queue.

    Claims at once after a full claim, else when woken (a push, a freed slot, a queue
    change) or every ``polling_interval``. Rows held (running plus outcomes not yet
    written) stay at most 2 x concurrency: a claim overlaps the write of the previous
    batch's outcomes, but claims never run ahead of a slow writer.

    When its queue is deleted, stops matching the worker's tags or changes executor, the
    producer is *retired*: it claims no more, its running jobs finish on its executor,
    and the queue's new producer counts them as busy slots."""

    def __init__(
        self,
        queue: Queue,
        *,
        claim: Claim,
        start: Start,
        unwritten: Callable[[str], int],
        on_transient: Callable[[], Awaitable[None]],
        hurry: Callable[[], None] = lambda: None,
        previous: QueueProducer | None = None,
        max_wait: float | None = None,
    ) -> None:
        self.queue = queue
        self.executor: Executor = make_executor(
            queue.executor, queue.concurrency, queue.executor_options
        )
        self.slots: Slots = Slots(queue.concurrency, None if previous is None else previous.slots)
        self._claim = claim
        self._start = start
        self._unwritten = unwritten
        #: Asks the completer to write at once: called when unwritten outcomes hold
        #: this producer back.
        self._hurry = hurry
        self._on_transient = on_transient
        #: The longest wait between claims (``None``: ``polling_interval``); 0.5 s when
        #: no wake-up can come (behind PgBouncer without ``listen_dsn``).
        self.max_wait = max_wait
        #: Set by anyone to make the fetch loop look again; replaced by the fetch loop.
        self._wake = anyio.Event()
        #: Cancelled to stop claiming (retirement, shutdown).
        self.scope = anyio.CancelScope()
        #: The last claim was full: there may be more to take (a freed slot wakes it).
        self.more = False
        self.retired = False
        #: Set when the fetch loop has exited.
        self.done = anyio.Event()

    @property
    def running(self) -> set[Running]:
        """The jobs running in this producer's slots."""
        return self.slots.running

    def wake(self) -> None:
        """Make the fetch loop claim again (a push, a freed slot, a due retry)."""
        self._wake.set()

    def update(self, queue: Queue) -> None:
        """Take the new declaration of the same queue (same executor)."""
        if queue.concurrency != self.queue.concurrency:
            self.executor.resize(queue.concurrency)
            self.slots.capacity = queue.concurrency
        self.queue = queue
        self.wake()

    def retire(self) -> None:
        """Stop claiming; running jobs go on."""
        self.retired = True
        self.scope.cancel()

    def finished(self, running: Running) -> None:
        """A job of this producer ended: free its slot."""
        self.slots.running.discard(running)
        if self.more and not self.retired:
            self.wake()

    async def run(self) -> None:
        """The fetch loop, until retired or cancelled."""
        delay = 0.1
        held_back = False
        held_since: float | None = None  # when unwritten outcomes began to hold claims back
        try:
            with self.scope:
                while True:
                    queue = self.queue
                    self.slots.forget_inherited()
                    free = self.slots.free()
                    unwritten = self._unwritten(queue.name)
                    limit = min(free, free + queue.concurrency - unwritten)
                    if free > 0 and limit <= 0:
                        self._hurry()  # the slots wait for the write, not the write for more
                        # Said once the write is slow, not in every cycle at full speed.
                        if held_since is None:
                            held_since = time.monotonic()
                        elif not held_back and time.monotonic() - held_since >= _HELD_TOO_LONG:
                            held_back = True  # once, until every outcome is written
                            log.warning(
                                "queue %s: not claiming while %d outcomes are not written yet"
                                " (the database is slow or away; they are kept and retried)",
                                queue.name,
                                unwritten,
                            )
                    else:
                        held_since = None
                    if queue.state is Queue.State.PAUSED or limit <= 0:
                        with anyio.move_on_after(self._poll(queue)):
                            await self._wake.wait()
                        self._wake = anyio.Event()
                        continue
                    self._wake = anyio.Event()  # a wake-up from now on means: claim again
                    if held_back and unwritten == 0:
                        held_back = False  # said again only after all were written
                        log.info("queue %s: every outcome written; claiming freely", queue.name)
                    try:
                        claimed, wait = await self._claim_and_start(queue, limit)
                        delay = 0.1
                    except Exception as exc:
                        if isinstance(exc, TRANSIENT_ERRORS):
                            log.warning(
                                "claiming from %s failed (%s); retrying in %.1fs",
                                queue.name,
                                exc,
                                delay,
                            )
                            await self._on_transient()
                        else:
                            log.exception("claiming from %s failed; retrying", queue.name)
                        await anyio.sleep(delay)
                        delay = min(delay * 2, _MAX_BACKOFF)
                        continue
                    self.more = claimed >= limit
                    if not self.more:
                        with anyio.move_on_after(wait):
                            await self._wake.wait()
        finally:
            self.done.set()

    def _poll(self, queue: Queue) -> float:
        """Seconds to wait for a wake-up before looking again."""
        if self.max_wait is None:
            return queue.polling_interval
        return min(queue.polling_interval, self.max_wait)

    async def _claim_and_start(self, queue: Queue, limit: int) -> tuple[int, float]:
        """Claim up to ``limit`` jobs and start them; return how many, and how long to
        wait for a wake-up before trying again if that was not all.

        The claim shields itself from cancellation once it holds a connection, and the
        jobs it took are started with no await in between: jobs claimed in the database
        are always started, so that the shutdown sees them and no claim is lost."""
        claimed = await self._claim(queue, limit)
        for row in sorted(claimed.rows, key=lambda r: (-r[q.J_PRIORITY], r[q.J_ID])):
            self._start(self, row, claimed.token)
        wait = self._poll(queue)
        if claimed.limited and queue.rate_limit_window:
            # Nothing left in this window: try again when the next one opens.
            window = queue.rate_limit_window
            wait = min(wait, window - time.time() % window + 0.01)
        return len(claimed.rows), wait
