"""Background tasks plugins register, and the leadership scope of leader-only ones."""

from __future__ import annotations

import logging
from typing import Any

import anyio
import anyio.abc

from chancy_core.errors import WorkerError
from chancy_core.hooks import call_event, call_sync_event
from chancy_core.hookspecs import WorkerHandle, WorkerTask

__all__ = ["PluginTasks"]

log = logging.getLogger(__name__)


class PluginTasks:
    """Runs the tasks registered through ``chancy_worker_tasks``: each is restarted after
    a pause if it raises; leader-only ones run only while this worker leads (all
    started together when it becomes leader, all cancelled together when it stops)."""

    def __init__(self, hook: Any, worker: WorkerHandle) -> None:
        self.hook = hook
        self.worker = worker  # the WorkerHandle given to hooks and tasks
        #: Whether this worker leads. Changed only by set_leader().
        self.is_leader = False
        self._leader_tasks: list[tuple[str, WorkerTask]] = []
        self._leader_scope: anyio.CancelScope | None = None
        self._tg: anyio.abc.TaskGroup | None = None

    def start(self, tg: anyio.abc.TaskGroup) -> None:
        """Ask plugins for their tasks; start the everywhere ones in ``tg``."""
        self._tg = tg

        def register(name: str, func: WorkerTask, *, leader_only: bool = False) -> None:
            if not callable(func):
                raise WorkerError(f"plugin task {name!r} is not callable")
            if leader_only:
                self._leader_tasks.append((name, func))
            else:
                tg.start_soon(self._keep_running, name, func)

        # A plugin that raises is logged and skipped (its tasks may not run).
        call_sync_event(self.hook.chancy_worker_tasks, worker=self.worker, register=register)

    async def _keep_running(self, name: str, func: WorkerTask) -> None:
        """Run a plugin task; restart it when it fails, backing off from 1 s to 30 s
        (back to 1 s once it ran a minute without failing)."""
        delay = 1.0
        while True:
            began = anyio.current_time()
            try:
                await func(self.worker)
                return
            except Exception:
                if anyio.current_time() - began > 60.0:
                    delay = 1.0
                log.exception("plugin task %s failed; restarting it in %.0fs", name, delay)
                await anyio.sleep(delay)
                delay = min(delay * 2, 30.0)

    async def set_leader(self, leader: bool) -> None:
        """Become (or stop being) the leader: start or stop the leader-only tasks."""
        if leader == self.is_leader:
            return
        self.is_leader = leader
        assert self._tg is not None
        if leader:
            scope = self._leader_scope = anyio.CancelScope()

            async def lead() -> None:
                with scope:
                    async with anyio.create_task_group() as tg:
                        for name, func in self._leader_tasks:
                            tg.start_soon(self._keep_running, name, func)

            self._tg.start_soon(lead)
        elif self._leader_scope is not None:
            self._leader_scope.cancel()
            self._leader_scope = None
        await call_event(self.hook.chancy_leadership_changed, worker=self.worker, is_leader=leader)
