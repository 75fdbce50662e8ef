"""chancy-plugin-pruner: deletes finished jobs once they are older than a retention period
chosen per final state.

A leader-only task runs :meth:`Pruner.prune` every ``interval`` seconds. For
each final state with a retention (by default ``succeeded``: one day,
``failed``: seven days) it deletes the jobs in that state whose
``completed_at`` is older than the retention, oldest first, in bounded
batches: ``DELETE ... WHERE id = ANY(ARRAY(SELECT ... LIMIT batch_size FOR UPDATE SKIP
LOCKED))``, at most ``max_batches`` statements per state and round, so one round
never holds many locks or runs long; the next round goes on where it stopped.

It only ever deletes rows in a final state: ``pending``, ``running`` and
``retrying`` jobs are never touched, whatever their timestamps. The rows are
locked as they are chosen, and the state is checked again as they are deleted,
so a job moved out of its final state meanwhile (re-queued by hand, say) stays.

Its migration adds a partial index on ``(state, completed_at)`` of finished
rows, which keeps each batch an index range scan however large the table grows.
"""

from __future__ import annotations

import logging
from collections.abc import Generator, Mapping
from datetime import timedelta
from typing import TYPE_CHECKING, Any, LiteralString, TypeVar

import anyio

from chancy_core import QueuedJob, hookimpl
from chancy_core.errors import TRANSIENT_ERRORS, ConfigurationError
from chancy_core.hookspecs import RegisterTask
from chancy_core.migrations import MigrationSet, load_migrations

if TYPE_CHECKING:
    from chancy_core import Chancy
    from chancy_core import WorkerHandle as Worker

__all__ = ["DEFAULT_RETENTION", "KEY", "Pruner"]

log = logging.getLogger(__name__)

KEY = "pruner"
"""The plugin's name (it keeps nothing in ``Job.meta``)."""

FINAL_STATES = (QueuedJob.State.SUCCEEDED.value, QueuedJob.State.FAILED.value)

DEFAULT_RETENTION: Mapping[str, timedelta] = {
    "succeeded": timedelta(days=1),
    "failed": timedelta(days=7),
}
"""What :class:`Pruner` keeps when given no ``retention``."""

#: Errors that mean the database is away for now: logged, and tried again next round.
_TRANSIENT = TRANSIENT_ERRORS

T = TypeVar("T")
#: A statement generator run by ``app.execute`` (see docs/writing-plugins.md).
Operation = Generator[tuple[bytes, dict[str, Any]], list[tuple[Any, ...]], T]

# One bounded batch of one final state, oldest first. The state is checked again as rows
# are deleted (and they are locked as they are chosen), so only finished rows ever go.
# `= ANY(ARRAY(...))`, not `IN (...)`: the planner may run an IN subquery as the inner side
# of a nested loop, once per outer row, and each run's LIMIT then picks other rows (the
# batch would not be bounded). ARRAY(...) runs it exactly once.
PRUNE: LiteralString = """
WITH deleted AS (
    DELETE FROM {jobs}
    WHERE id = ANY(ARRAY(
        SELECT id FROM {jobs}
        WHERE state = %(state)s AND completed_at < now() - %(age)s::interval
        ORDER BY completed_at
        LIMIT %(batch_size)s
        FOR UPDATE SKIP LOCKED
    )) AND state = %(state)s
    RETURNING 1
)
SELECT count(*) FROM deleted
"""


def _count_op(statement: bytes, params: dict[str, Any]) -> Operation[int]:
    """Run a statement whose one row is a count; the count."""
    ((count,),) = yield statement, params
    return int(count)


def _retention(value: Mapping[str, timedelta | float | None] | None) -> dict[str, timedelta]:
    if value is None:
        return dict(DEFAULT_RETENTION)
    if not isinstance(value, Mapping):
        raise ConfigurationError(
            "Pruner(retention=...) takes a mapping such as"
            ' {"succeeded": timedelta(days=1), "failed": timedelta(days=7)}'
        )
    kept: dict[str, timedelta] = {}
    for key, age in value.items():
        state = key.value if isinstance(key, QueuedJob.State) else key
        if state not in FINAL_STATES:
            raise ConfigurationError(
                f"Pruner(retention=...) has {key!r}: only finished jobs are pruned, give"
                f" retentions for {' and '.join(FINAL_STATES)}"
            )
        if age is None:  # keep forever
            continue
        if isinstance(age, int | float) and not isinstance(age, bool):
            age = timedelta(seconds=age)
        if not isinstance(age, timedelta) or age < timedelta(0):
            raise ConfigurationError(
                f"Pruner(retention=...) for {state!r} must be a timedelta >= 0, seconds or"
                f" None (keep forever), not {age!r}"
            )
        kept[state] = age
    return kept


def _seconds(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ConfigurationError(f"Pruner({what}=...) must be a positive number, not {value!r}")
    return float(value)


def _count(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigurationError(f"Pruner({what}=...) must be a positive integer, not {value!r}")
    return value


class Pruner:
    """Deletes finished jobs past their retention (see the module docs).

    :param retention: the age after which jobs in each final state are deleted, as a
        ``timedelta`` or seconds; ``None`` for a state keeps its jobs forever, and a state
        left out is kept too. Default: :data:`DEFAULT_RETENTION`.
    :param interval: seconds between two rounds.
    :param batch_size: jobs deleted per statement.
    :param max_batches: statements per state and round, at most.
    """

    name = KEY

    def __init__(
        self,
        *,
        retention: Mapping[str, timedelta | float | None] | None = None,
        interval: float = 60.0,
        batch_size: int = 1000,
        max_batches: int = 100,
    ) -> None:
        self.retention = _retention(retention)
        self.interval = _seconds(interval, "interval")
        self.batch_size = _count(batch_size, "batch_size")
        self.max_batches = _count(max_batches, "max_batches")

    async def prune(self, app: Chancy) -> dict[str, int]:
        """Run one round; return how many jobs of each final state were deleted."""
        statement = app.schema.render(PRUNE)
        deleted: dict[str, int] = {}
        for state, age in self.retention.items():
            deleted[state] = 0
            params = {"state": state, "age": age, "batch_size": self.batch_size}
            for _ in range(self.max_batches):
                count = await app.execute(_count_op(statement, params))
                deleted[state] += count
                if count < self.batch_size:
                    break
        if any(deleted.values()):
            log.info(
                "pruned %s",
                ", ".join(f"{n} {state}" for state, n in deleted.items()),
                extra={"pruned": deleted},
            )
        return deleted

    async def run(self, worker: Worker) -> None:
        """The leader-only task: a round every ``interval`` seconds, until cancelled."""
        while True:
            try:
                await self.prune(worker.chancy)
            except _TRANSIENT as exc:
                log.warning("pruning failed (%s); trying again in %.1fs", exc, self.interval)
            await anyio.sleep(self.interval)

    # --- hooks ---------------------------------------------------------------------------

    @hookimpl
    def chancy_migrations(self) -> MigrationSet:
        """The pruner's index on the jobs table."""
        return load_migrations(KEY, "chancy_plugin_pruner.migrations")

    @hookimpl
    def chancy_worker_tasks(self, register: RegisterTask) -> None:
        """The leader-only pruning task."""
        register("pruner", self.run, leader_only=True)
