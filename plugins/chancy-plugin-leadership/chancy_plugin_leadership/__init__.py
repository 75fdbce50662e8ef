"""chancy-plugin-leadership: exactly one leader among the workers, through a lease in
PostgreSQL.

The lease is one row of the plugin's table: its ``holder`` and ``expires_at``
on the database's clock. Every worker runs the ``leadership`` task (not
leader-only), which tries to take or renew the lease at once when the worker
starts and then every ``interval`` seconds, in one statement that succeeds only
for the current holder or when the lease has expired::

    INSERT ... ON CONFLICT (election) DO UPDATE SET holder = me, expires_at = now() + ttl
    WHERE holder = me OR expires_at <= now()

**Never two leaders.** A worker believes it leads (``worker.is_leader``, and
its leader-only tasks run) only until ``sent + ttl - margin``, where ``sent``
is the local time at which it *sent* its last successful renewal. The database
set ``expires_at`` to its clock when the statement ran, which is after
``sent``, plus ``ttl``; so the worker stops believing at least ``margin``
seconds before anyone else can take the lease, whatever the renewal's latency.
A renewal that fails, or hangs, never extends the belief: the worker steps
down on time even while it waits (each attempt is cut off at the deadline).
A worker that learns that someone else holds the lease steps down at once.

**Failover.** A clean shutdown (``chancy_worker_stopping``) steps down first
and then releases the lease, so another worker takes it at its next attempt,
within ``interval``. A leader that dies stops renewing: its lease expires
within ``ttl``, and another worker takes it within one more ``interval``.

Clocks: ``expires_at`` is compared on the database's clock only; each worker
measures its own deadline on its monotonic clock. ``margin`` absorbs a small
difference between the rates of those clocks and the time leader-only tasks
take to notice they were cancelled.
"""

from __future__ import annotations

import logging
from collections.abc import Generator
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, LiteralString, TypeVar

import anyio

from chancy_core import hookimpl
from chancy_core.errors import TRANSIENT_ERRORS, ConfigurationError, SchemaMissingError
from chancy_core.hookspecs import RegisterTask
from chancy_core.migrations import MigrationSet, load_migrations

if TYPE_CHECKING:
    from chancy_core import Chancy
    from chancy_core import WorkerHandle as Worker

__all__ = ["KEY", "Leadership", "Lease"]

log = logging.getLogger(__name__)

KEY = "leadership"
"""The plugin's name (it keeps nothing in ``Job.meta``)."""

#: Errors that mean the database is away for now: the attempt failed, the next one may not.
_TRANSIENT = TRANSIENT_ERRORS

T = TypeVar("T")
#: A statement generator run by ``app.execute`` (see docs/writing-plugins.md).
Operation = Generator[tuple[bytes, dict[str, Any]], list[tuple[Any, ...]], T]

# Take or renew the lease: succeeds (returns a row) only for its holder or once it expired.
ACQUIRE: LiteralString = """
INSERT INTO {leadership} AS l (election, holder, acquired_at, renewed_at, expires_at)
VALUES (%(election)s, %(holder)s, now(), now(), now() + make_interval(secs => %(ttl)s))
ON CONFLICT (election) DO UPDATE
SET holder = EXCLUDED.holder,
    acquired_at = CASE WHEN l.holder = EXCLUDED.holder AND l.expires_at > now()
                       THEN l.acquired_at ELSE now() END,
    renewed_at = now(),
    expires_at = EXCLUDED.expires_at
WHERE l.holder = EXCLUDED.holder OR l.expires_at <= now()
RETURNING l.expires_at
"""

# Give the lease up (a clean shutdown): the next attempt of any worker takes it.
RELEASE: LiteralString = """
UPDATE {leadership} SET expires_at = now()
WHERE election = %(election)s AND holder = %(holder)s AND expires_at > now()
RETURNING holder
"""

CURRENT: LiteralString = """
SELECT holder, acquired_at, expires_at, expires_at > now() FROM {leadership}
WHERE election = %(election)s
"""


@dataclass(frozen=True, slots=True)
class Lease:
    """The lease as the database has it (see :meth:`Leadership.current`)."""

    holder: str
    acquired_at: datetime
    expires_at: datetime
    valid: bool
    """Whether it had not expired when read (on the database's clock)."""


@dataclass(slots=True)
class _State:
    """What one worker's leadership task knows."""

    until: float = 0.0  # anyio.current_time() at which this worker must stop believing it leads
    stopping: bool = False


def _seconds(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ConfigurationError(f"Leadership({what}=...) must be a positive number, not {value!r}")
    return float(value)


class Leadership:
    """Elects one leader among the workers (see the module docs).

    :param ttl: seconds a lease lasts after each renewal; a dead leader is replaced
        within ``ttl + interval``.
    :param interval: seconds between two attempts to take or renew the lease
        (default: ``ttl / 3``).
    :param margin: seconds before the lease can expire at which a leader that could not
        renew stops believing it leads (default: ``ttl / 10``).
    :param election: the lease's name: workers of one app elect one leader per name.
    """

    name = KEY

    def __init__(
        self,
        *,
        ttl: float = 30.0,
        interval: float | None = None,
        margin: float | None = None,
        election: str = "default",
    ) -> None:
        self.ttl = _seconds(ttl, "ttl")
        self.interval = self.ttl / 3 if interval is None else _seconds(interval, "interval")
        self.margin = self.ttl / 10 if margin is None else _seconds(margin, "margin")
        if self.interval + self.margin >= self.ttl:
            raise ConfigurationError(
                f"Leadership needs interval + margin < ttl (got {self.interval} + {self.margin}"
                f" >= {self.ttl}): a leader must renew before it stops believing it leads"
            )
        if not isinstance(election, str) or not election:
            raise ConfigurationError("Leadership(election=...) must be a non-empty string")
        self.election = election
        self._states: dict[str, _State] = {}

    # --- the lease -----------------------------------------------------------------------

    async def acquire(self, app: Chancy, holder: str) -> bool:
        """Take or renew the lease for ``holder``; whether it holds it now."""
        return await app.execute(self._acquire(app, holder))

    async def release(self, app: Chancy, holder: str) -> bool:
        """Give up the lease if ``holder`` holds it; whether it did."""
        return await app.execute(self._release(app, holder))

    async def current(self, app: Chancy) -> Lease | None:
        """The lease as the database has it, or ``None`` if nobody ever held it."""
        return await app.execute(self._current(app))

    def _acquire(self, app: Chancy, holder: str) -> Operation[bool]:
        params = {"election": self.election, "holder": holder, "ttl": self.ttl}
        rows = yield app.schema.render(ACQUIRE), params
        return bool(rows)

    def _release(self, app: Chancy, holder: str) -> Operation[bool]:
        rows = yield app.schema.render(RELEASE), {"election": self.election, "holder": holder}
        return bool(rows)

    def _current(self, app: Chancy) -> Operation[Lease | None]:
        rows = yield app.schema.render(CURRENT), {"election": self.election}
        if not rows:
            return None
        holder, acquired_at, expires_at, valid = rows[0]
        return Lease(holder=holder, acquired_at=acquired_at, expires_at=expires_at, valid=valid)

    # --- the task ------------------------------------------------------------------------

    async def run(self, worker: Worker) -> None:
        """Every worker's task: take or renew the lease every ``interval`` seconds, and
        make the worker lead exactly while it holds it (see the module docs)."""
        state = self._states.setdefault(worker.worker_id, _State())
        try:
            while not state.stopping:
                if worker.is_leader and anyio.current_time() >= state.until:
                    await self._step_down(worker, state, "its lease could not be renewed in time")
                await self._attempt(worker, state)
                wait = self.interval
                if worker.is_leader:  # wake up in time to step down if renewals keep failing
                    wait = min(wait, state.until - anyio.current_time())
                await anyio.sleep(max(wait, 0.0))
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(5):
                await self._give_up(worker, state, "its leadership task ended")
            if state.stopping:
                self._states.pop(worker.worker_id, None)

    async def _attempt(self, worker: Worker, state: _State) -> None:
        sent = anyio.current_time()
        # An answer after `sent + ttl - margin` would be of no use: cut the attempt off then
        # (and a leader's at its deadline, so that it steps down on time).
        deadline = state.until if worker.is_leader else sent + self.ttl - self.margin
        held: bool | None = None
        with anyio.move_on_after(max(deadline - sent, 0.0)):
            try:
                held = await self.acquire(worker.chancy, worker.worker_id)
            except SchemaMissingError:
                log.error(
                    "the leadership table does not exist: run `await chancy.migrate()` or"
                    " `chancy migrate`; no worker leads until then"
                )
            except _TRANSIENT as exc:
                log.warning(
                    "worker %s could not reach the leadership lease (%s)",
                    worker.worker_id,
                    exc,
                    extra={"worker_id": worker.worker_id},
                )
        if state.stopping:
            return
        now = anyio.current_time()
        if held and now < sent + self.ttl - self.margin:
            state.until = sent + self.ttl - self.margin
            if not worker.is_leader:
                log.info(
                    "worker %s is now the leader",
                    worker.worker_id,
                    extra={"worker_id": worker.worker_id},
                )
                await worker.set_leader(True)
        elif held is False:
            await self._step_down(worker, state, "another worker holds the lease")
        elif worker.is_leader and now >= state.until:
            await self._step_down(worker, state, "its lease could not be renewed in time")

    async def _step_down(self, worker: Worker, state: _State, why: str) -> None:
        state.until = 0.0
        if worker.is_leader:
            log.log(
                logging.INFO if state.stopping else logging.WARNING,
                "worker %s is no longer the leader: %s",
                worker.worker_id,
                why,
                extra={"worker_id": worker.worker_id},
            )
            await worker.set_leader(False)

    async def _give_up(self, worker: Worker, state: _State, why: str) -> None:
        """Step down, then release the lease (in that order: never two leaders)."""
        await self._step_down(worker, state, why)
        try:
            if await self.release(worker.chancy, worker.worker_id):
                log.info("worker %s released the leadership lease", worker.worker_id)
        except _TRANSIENT as exc:
            log.warning("could not release the leadership lease (%s); it expires by itself", exc)

    # --- hooks ---------------------------------------------------------------------------

    @hookimpl
    def chancy_migrations(self) -> MigrationSet:
        """The lease table."""
        return load_migrations(KEY, "chancy_plugin_leadership.migrations")

    @hookimpl
    def chancy_elects_leader(self) -> bool:
        """This plugin elects: leader-only tasks wait for the lease."""
        return True

    @hookimpl
    def chancy_worker_tasks(self, worker: Worker, register: RegisterTask) -> None:
        """The task that takes and renews the lease."""
        self._states[worker.worker_id] = _State()
        register("leadership", self.run)

    @hookimpl
    async def chancy_worker_stopping(self, worker: Worker) -> None:
        """Hand the lease over at once (the next attempt of any worker takes it)."""
        state = self._states.get(worker.worker_id)
        if state is not None:
            state.stopping = True
            await self._give_up(worker, state, "it is stopping")
