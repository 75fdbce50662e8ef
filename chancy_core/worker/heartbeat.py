"""The heartbeat: the worker's row, cancellations asked by the database, lost claims."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import anyio

from chancy_core import ops
from chancy_core.errors import TRANSIENT_ERRORS

__all__ = ["Heartbeat"]

log = logging.getLogger(__name__)


class Heartbeat:
    """Registers the worker, then every ``interval`` seconds refreshes its row, stops the
    jobs someone asked to cancel, and puts back *orphans*: jobs the database says this
    worker runs but that it does not know of (a claim committed while its answer was
    lost). Only jobs claimed a while ago (``2 x interval + 2`` s) are considered, so a
    claim under way is not one. Never registers again once :meth:`unregister` ran."""

    def __init__(
        self,
        execute: Callable[[ops.Operation], Awaitable[Any]],
        *,
        register: Callable[[], ops.Operation],
        unregister: Callable[[], ops.Operation],
        own_running: Callable[[float], ops.Operation],
        release: Callable[[list[tuple[Any, Any]]], ops.Operation],
        knows: Callable[[str], bool],
        cancel: Callable[[set[str]], None],
        on_transient: Callable[[], Awaitable[None]],
        interval: float,
        worker_id: str,
        fence: Callable[[float], None] | None = None,
    ) -> None:
        self._execute = execute
        self._register = register
        self._unregister = unregister
        self._own_running = own_running
        self._release = release
        self._knows = knows
        self._cancel = cancel
        self._on_transient = on_transient
        self.interval = interval
        self.worker_id = worker_id
        #: Held while (un)registering: the heartbeat never registers after the shutdown.
        self._lock = anyio.Lock()
        self._unregistered = False
        #: Called with the heartbeat's age at each check while it is older than
        #: :attr:`fence_after`.
        self._fence = fence
        #: Seconds without a written heartbeat after which the worker fences itself
        #: (``None``: never). Set by the worker before :meth:`run`.
        self.fence_after: float | None = None
        self._last_ok = 0.0
        self.fenced = False

    async def register(self) -> None:
        """Insert or refresh the worker's row."""
        await self._execute(self._register())
        self._last_ok = anyio.current_time()
        if self.fenced:
            self.fenced = False
            log.warning("worker %s: heartbeat written again; no longer fenced", self.worker_id)

    async def watch(self) -> None:
        """Fence the worker when its heartbeat has not been written for longer than
        :attr:`fence_after` (checked every ``min(interval, 1)`` s), independently of a
        heartbeat call that hangs until its deadline."""
        if self.fence_after is None or self._fence is None:
            return
        if self._last_ok == 0.0:
            self._last_ok = anyio.current_time()
        while True:
            await anyio.sleep(min(self.interval, 1.0))
            age = anyio.current_time() - self._last_ok
            if age > self.fence_after and not self._unregistered:
                self.fenced = True
                self._fence(age)  # again at each check: jobs claimed meanwhile stop too

    async def unregister(
        self, retrying: Callable[[Callable[[], ops.Operation]], Awaitable[Any]]
    ) -> None:
        """Delete the worker's row for good; ``retrying`` runs the operation (retrying
        while the database is away)."""
        async with self._lock:
            self._unregistered = True
            await retrying(self._unregister)

    async def run(self) -> None:
        """Beat until cancelled or unregistered."""
        while True:
            await anyio.sleep(self.interval)
            try:
                async with self._lock:
                    if self._unregistered:
                        return
                    await self.register()
                rows: list[ops.OwnRunning] = await self._execute(
                    self._own_running(2 * self.interval + 2.0)
                )
                self._cancel({str(r.id) for r in rows if r.cancel_requested})
                await self._release_orphans([r for r in rows if r.claimed_a_while_ago])
            except TRANSIENT_ERRORS as exc:
                log.warning("heartbeat failed (%s); will try again", exc)
                await self._on_transient()
            except Exception:  # not the connection: still never stop beating
                log.exception("heartbeat failed; will try again")

    async def _release_orphans(self, rows: list[ops.OwnRunning]) -> None:
        orphans = [(r.id, r.token) for r in rows if not self._knows(str(r.id))]
        if orphans:
            log.warning(
                "jobs %s are running under worker %s, which is not running them (a claim"
                " whose answer was lost); putting them back to pending",
                ", ".join(str(i) for i, _ in orphans),
                self.worker_id,
            )
            await self._execute(self._release(orphans))
