"""The set of queues a worker serves, following their declarations as they change."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass

import anyio
import anyio.abc

from chancy_core.errors import TRANSIENT_ERRORS
from chancy_core.queue import Queue
from chancy_core.worker.producer import QueueProducer

__all__ = ["Changes", "QueueSet", "diff"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Changes:
    """What to do to go from the served queues to the wanted ones."""

    retire: frozenset[str]
    """Deleted, no longer matching, or with another executor: their producers retire."""
    update: frozenset[str]
    """Changed otherwise (concurrency, polling, state...): updated in place."""
    start: frozenset[str]
    """Not served yet (or retired above): a new producer starts."""


def diff(served: Mapping[str, Queue], wanted: Mapping[str, Queue]) -> Changes:
    """The changes from ``served`` to ``wanted`` (both by name)."""
    retire = {
        name
        for name, queue in served.items()
        if name not in wanted
        or (wanted[name].executor, wanted[name].executor_options)
        != (queue.executor, queue.executor_options)
    }
    update = {n for n, q in served.items() if n not in retire and wanted[n] != q}
    start = {n for n in wanted if n not in served or n in retire}
    return Changes(frozenset(retire), frozenset(update), frozenset(start))


#: Builds the producer of a queue, given the queue's retired producer whose jobs still run.
MakeProducer = Callable[[Queue, QueueProducer | None], QueueProducer]


class QueueSet:
    """The producers of the served queues, and those retired whose jobs still run."""

    def __init__(self, tags: frozenset[str], make: MakeProducer) -> None:
        self.tags = tags
        self._make = make
        #: Served queues' producers by name. Changed only by apply() (the watcher task).
        self.producers: dict[str, QueueProducer] = {}
        #: Retired producers whose jobs still run; closed when their last job ends.
        self._retired: set[QueueProducer] = set()
        #: Set when the declarations may have changed (a ``queue`` event, a reconnect).
        self.changed = anyio.Event()
        self._tg: anyio.abc.TaskGroup | None = None
        self._closing = False

    def start(self, tg: anyio.abc.TaskGroup) -> None:
        """Start producers (and close retired executors) in ``tg`` from now on."""
        self._tg = tg

    def get(self, name: str) -> QueueProducer | None:
        """The producer serving ``name``, if any."""
        return self.producers.get(name)

    def all(self) -> list[QueueProducer]:
        """Every producer, served and retired."""
        return [*self.producers.values(), *self._retired]

    def wake_all(self) -> None:
        """Make every producer claim again (after missed notifications)."""
        for producer in self.producers.values():
            producer.wake()

    def close(self) -> None:
        """Start no producer from now on (the shutdown); retire none."""
        self._closing = True
        for producer in self.all():
            producer.scope.cancel()  # stop claiming; running jobs go on

    def apply(self, declared: Iterable[Queue]) -> None:
        """Serve the declared queues that match the worker's tags."""
        if self._closing:
            return
        assert self._tg is not None
        wanted = {queue.name: queue for queue in declared if queue.served_by(self.tags)}
        changes = diff({n: p.queue for n, p in self.producers.items()}, wanted)
        previous: dict[str, QueueProducer] = {}
        for name in changes.retire:
            producer = self.producers.pop(name)
            producer.retire()
            if producer.running:
                self._retired.add(producer)
            else:
                self._close(producer)
            previous[name] = producer
            log.info("stopped serving queue %s", name)
        for name in changes.update:
            self.producers[name].update(wanted[name])
        for name in sorted(changes.start):
            old = previous.get(name) or next(
                (r for r in self._retired if r.queue.name == name), None
            )
            queue = wanted[name]
            producer = self._make(queue, old if old is not None and old.running else None)
            self.producers[name] = producer
            self._tg.start_soon(producer.run)
            log.info(
                "serving queue %s (%s, concurrency %d)", name, queue.executor, queue.concurrency
            )

    def job_ended(self, producer: QueueProducer) -> None:
        """A job of ``producer`` ended and its slot is free: close a retired producer
        whose last job it was, and wake the queue's current producer."""
        producer_of_queue = self.producers.get(producer.queue.name)
        if producer.retired:
            # Closing (the shutdown), it stays listed: the worker's final clean-up closes it.
            if not producer.running and producer in self._retired and not self._closing:
                self._retired.discard(producer)
                self._close(producer)
            if producer_of_queue is not None:
                producer_of_queue.wake()  # a slot of the queue's new producer freed

    def _close(self, producer: QueueProducer) -> None:
        assert self._tg is not None
        self._tg.start_soon(producer.executor.aclose)

    async def run(self, read: Callable[[], Awaitable[list[Queue]]]) -> None:
        """Re-read the declarations when told to (a ``queue`` event), or every second at
        most (a missed event)."""
        while True:
            interval = min((p.queue.polling_interval for p in self.producers.values()), default=1.0)
            with anyio.move_on_after(min(interval, 1.0)):
                await self.changed.wait()
            self.changed = anyio.Event()
            try:
                self.apply(await read())
            except TRANSIENT_ERRORS as exc:
                log.warning("could not read the queues (%s); will try again", exc)
            except Exception:  # not the connection: the watcher never dies of it
                log.exception("could not read the queues; will try again")
