"""Running one claimed job: the job runner (knows no SQL) and the runner pool."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import traceback
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import Any, Generic, TypeVar

import anyio
import anyio.abc

from chancy_core.errors import JobCancelled, TimeLimitExceeded
from chancy_core.executors import Executor, UnsentResult, wants_context
from chancy_core.hooks import Guarded, HookFlags, call_event, decide, results
from chancy_core.hookspecs import WorkerHandle
from chancy_core.job import Limit, QueuedJob, progress_sinks, to_json
from chancy_core.outcome import Outcome, RetryDecision
from chancy_core.worker.completer import Completion, storable
from chancy_core.worker.functions import FunctionResolver, accepts, signature_of

__all__ = ["MAX_PROGRESS_MESSAGE", "JobRunner", "RunnerPool", "Running", "encode_result"]

log = logging.getLogger(__name__)

T = TypeVar("T")

MAX_PROGRESS_MESSAGE = 1000
"""A progress message longer than this many characters is cut (with "...")."""


def encode_result(result: Any, limit: int) -> tuple[str | None, str | None]:
    """A function's return value as ``(JSON text to store, why it was not stored)``.

    ``None`` stores nothing. A value JSON cannot encode, or whose JSON is more than
    ``limit`` bytes, is not stored and the reason says what to do instead."""
    if result is None:
        return None, None
    if isinstance(result, UnsentResult):
        return None, result.reason
    try:
        text = to_json(result)
    except ValueError as exc:
        return None, storable(f"the result {exc}")
    size = len(text) if text.isascii() else len(text.encode("utf-8"))
    if size > limit:
        return None, (
            f"the result is {size} bytes of JSON, more than the worker's max_result_bytes"
            f" ({limit}): return less (store large data elsewhere and return its key), or"
            " start the worker with a larger max_result_bytes"
        )
    return text, None


def is_cancellation(exc: BaseException) -> bool:
    """Whether ``exc`` is (or only holds) a cancellation, which must propagate."""
    if isinstance(exc, anyio.get_cancelled_exc_class() | KeyboardInterrupt):
        return True
    if isinstance(exc, BaseExceptionGroup):
        return all(is_cancellation(e) for e in exc.exceptions)
    return False


def _nothing() -> None:
    """No time limit to start."""


def _deadline(scope: anyio.CancelScope, seconds: float) -> None:
    """Start a job's time limit: its scope is cancelled ``seconds`` from now."""
    scope.deadline = anyio.current_time() + seconds


_scope_class: Callable[[], anyio.CancelScope] | None = None


def new_scope() -> anyio.CancelScope:
    """A new ``anyio.CancelScope()``, without the event-loop look-up each one costs (the
    backend's class is found once: ~0.3 µs a scope instead of ~2 µs)."""
    global _scope_class
    if _scope_class is None:
        _scope_class = type(anyio.CancelScope())
    return _scope_class()


@dataclass(eq=False, slots=True)
class Running:
    """A job this worker is executing, under the claim that took it."""

    job: QueuedJob
    token: str
    scope: anyio.CancelScope = field(default_factory=new_scope)
    stop_reason: str | None = None  # "cancel", "shutdown" or "fenced"
    #: The last progress the job reported, and how many times it reported (set by
    #: report_progress, maybe from the job's thread) / how many are written (the loop).
    progress: tuple[float, str | None] | None = None
    progress_version: int = 0
    progress_written: int = 0

    def report_progress(self, fraction: float, message: str | None) -> None:
        """Keep the job's latest progress (the progress writer sends it); never blocks."""
        if message is not None and len(message) > MAX_PROGRESS_MESSAGE:
            message = message[: MAX_PROGRESS_MESSAGE - 3] + "..."
        self.progress = (fraction, message)
        self.progress_version += 1

    def progress_json(self) -> str | None:
        """The latest progress as the JSON the ``progress`` column stores (``None``: none)."""
        progress = self.progress
        if progress is None:
            return None
        message = None if progress[1] is None else storable(progress[1])
        return json.dumps({"fraction": progress[0], "message": message}, ensure_ascii=False)

    def stop(self, reason: str) -> bool:
        """Stop the job (once); whether this call stopped it."""
        if self.stop_reason is not None:
            return False
        self.stop_reason = reason
        self.scope.cancel()
        return True


class JobRunner:
    """Runs one claimed job and returns its outcome; knows no SQL.

    Resolves the function (allow-list), calls ``chancy_job_starting``, enters the
    plugins' ``chancy_job_wrap`` context managers, runs the function in the queue's
    executor under the job's time limit, classifies what it raised, asks
    ``chancy_retry_decision`` and returns the :class:`Completion` to write (``None``
    when the shutdown stopped the job: the worker puts it back to ``pending``)."""

    def __init__(
        self,
        resolver: FunctionResolver,
        hook: Any,
        worker: WorkerHandle,
        *,
        max_result_bytes: int = 1_048_576,
    ) -> None:
        self.resolver = resolver
        self.hook = hook
        self.worker = worker  # the WorkerHandle given to hooks
        self.flags = HookFlags.of(hook)
        self.max_result_bytes = max_result_bytes

    async def run(self, running: Running, executor: Executor) -> Completion | None:
        """Run the job; its completion, or ``None`` if the shutdown stopped it."""
        sink = running.report_progress
        progress_sinks[running.job.id] = sink
        try:
            return await self._run(running, executor)
        finally:
            if progress_sinks.get(running.job.id) == sink:
                del progress_sinks[running.job.id]

    async def _run(self, running: Running, executor: Executor) -> Completion | None:
        job = running.job
        error: BaseException | None = None
        result: Any = None
        permanent = True  # errors before the function runs: another attempt cannot help
        meta_before: str | None = None
        began = time.monotonic()
        try:
            func = self.resolver.resolve(job.func)
            if self.flags.starting or self.flags.wrap or wants_context(func):
                meta_before = json.dumps(job.meta)  # the job (or a plugin) may change it
            seconds = (
                min((lim.value for lim in job.limits if lim.type_ is Limit.Type.TIME), default=None)
                if job.limits
                else None
            )
            kwargs = job.kwargs or {}
            permanent = False
            if self.flags.starting:
                await call_event(self.hook.chancy_job_starting, worker=self.worker, job=job)
            scope = running.scope
            stopped: BaseException | None = None
            began = time.monotonic()
            try:
                with scope:
                    started = _nothing if seconds is None else partial(_deadline, scope, seconds)
                    if self.flags.wrap:
                        async with AsyncExitStack() as stack:
                            for cm in self._wrappers(job):
                                await stack.enter_async_context(cm)
                            result = await executor.run(job, func, kwargs, started)
                    else:
                        result = await executor.run(job, func, kwargs, started)
            except Exception as exc:
                if not scope.cancel_called:
                    if isinstance(exc, TypeError) and not accepts(func, kwargs):
                        permanent = True  # no attempt can succeed with these kwargs
                        exc.add_note(
                            f"the job's kwargs ({', '.join(sorted(kwargs)) or 'none'}) do not"
                            f" fit the signature of {job.func}{signature_of(func)}: push it"
                            " with kwargs that do"
                        )
                    raise
                stopped = exc  # the job turned its cancellation into an error
            if scope.cancel_called:
                result = None
                if running.stop_reason in ("shutdown", "fenced"):
                    # The shutdown puts it back to pending; a fenced job is put back by
                    # the orphan check once the heartbeat is written again, or rescued
                    # by the recovery plugin.
                    return None
                if running.stop_reason == "cancel":
                    permanent = True
                    raise JobCancelled(f"job {job.id} was cancelled while running") from stopped
                raise TimeLimitExceeded(
                    f"job {job.id} exceeded its time limit of {seconds}s and was stopped"
                ) from stopped
        except Exception as exc:
            error = exc
        except BaseException as exc:  # SystemExit and the like, raised by the job
            if is_cancellation(exc):
                raise
            error = exc
        run_seconds = time.monotonic() - began
        return self._complete(running, error, result, permanent, meta_before, run_seconds)

    def _wrappers(self, job: QueuedJob) -> list[Guarded]:
        """The plugins' context managers for this job, in pluggy's call order (tryfirst
        ones outermost); a plugin that raises is logged and skipped."""
        return [
            Guarded(cm, plugin)
            for plugin, cm in results(self.hook.chancy_job_wrap, worker=self.worker, job=job)
        ]

    def _complete(
        self,
        running: Running,
        error: BaseException | None,
        result: Any,
        permanent: bool,
        meta_before: str | None,
        run_seconds: float,
    ) -> Completion:
        job = running.job
        scheduled_at: datetime | None = None
        meta_changes: dict[str, Any] | None = None
        if error is None:
            state = QueuedJob.State.SUCCEEDED
        elif permanent:
            state = QueuedJob.State.FAILED
        else:
            decision = decide(
                self.hook.chancy_retry_decision, worker=self.worker, job=job, error=error
            )
            if isinstance(decision, RetryDecision):
                meta_changes = decision.meta
                decision = decision.at
            if decision is True:
                decision = datetime.now(UTC)
            if isinstance(decision, datetime):
                if decision.tzinfo is None:
                    decision = decision.replace(tzinfo=UTC)
                state = QueuedJob.State.RETRYING
                # A retry that is due keeps the row's (past) scheduled_at: it runs at once,
                # whatever the clocks of this host and the database say.
                scheduled_at = decision if decision > datetime.now(UTC) else None
            else:
                state = QueuedJob.State.FAILED
        text = None
        result_json = result_error = None
        if error is not None:
            text = storable("".join(traceback.format_exception(error)).strip())
            _log_failure(job, state, error, scheduled_at)
        else:
            result_json, result_error = encode_result(result, self.max_result_bytes)
            if result_error is not None:
                log.warning(
                    "job %s (%s): its result was not stored: %s",
                    job.id,
                    job.func,
                    result_error,
                    extra={"job_id": job.id},
                )
            if isinstance(result, UnsentResult):
                result = None
            if log.isEnabledFor(logging.DEBUG):
                log.debug(
                    "job %s (%s) succeeded in %.3fs (attempt %d)",
                    job.id,
                    job.func,
                    run_seconds,
                    job.attempts,
                    extra={"job_id": job.id},
                )
        meta = None
        if meta_before is not None or meta_changes:
            new_meta = {**job.meta, **meta_changes} if meta_changes else job.meta
            try:
                meta = json.dumps(new_meta)
            except Exception as exc:  # not JSON, or changed meanwhile by an abandoned thread
                log.error("job %s: its meta could not be saved (%s)", job.id, exc)
            else:
                if meta == meta_before:
                    meta = None
        completion = Completion(
            id=job.id,
            queue=job.queue,
            token=running.token,
            state=state.value,
            error=text,
            scheduled_at=scheduled_at,
            meta=meta,
            result=result_json,
            result_error=result_error,
            progress=running.progress_json() if running.progress_version else None,
        )
        if self.flags.completed:
            fields = {**job.__dict__, "state": state, "result_error": result_error}
            if result_json is not None:
                fields["result"] = json.loads(result_json)
            if completion.progress is not None:
                fields["progress"] = json.loads(completion.progress)
            if meta is not None:
                fields["meta"] = json.loads(meta)
            # Not dataclasses.replace: the claimed row is not validated again.
            completion.job = QueuedJob.from_trusted(**fields)
            wait = 0.0
            if job.started_at is not None:
                wait = max(0.0, (job.started_at - job.scheduled_at).total_seconds())
            completion.outcome = Outcome(
                state=state,
                error=error,
                result=result,
                run_seconds=run_seconds,
                wait_seconds=wait,
                scheduled_at=scheduled_at,
            )
        return completion


def _log_failure(
    job: QueuedJob, state: QueuedJob.State, error: BaseException, at: datetime | None
) -> None:
    """One INFO line per failed attempt: cancelled, retried or failed for good."""
    first = next((line for line in str(error).splitlines() if line.strip()), "")
    what = f"{type(error).__name__}: {first}"[:300] if first else type(error).__name__
    extra = {"job_id": job.id, "func": job.func, "attempt": job.attempts}
    if isinstance(error, JobCancelled):
        log.info(
            "job %s (%s) was cancelled on attempt %d", job.id, job.func, job.attempts, extra=extra
        )
    elif state is QueuedJob.State.RETRYING:
        log.info(
            "job %s (%s) attempt %d of %d failed (%s); retrying %s",
            job.id,
            job.func,
            job.attempts,
            job.max_attempts,
            what,
            "at once" if at is None else f"at {at.isoformat(timespec='seconds')}",
            extra=extra,
        )
    else:
        log.info(
            "job %s (%s) failed on attempt %d of %d: %s",
            job.id,
            job.func,
            job.attempts,
            job.max_attempts,
            what,
            extra=extra,
        )


class RunnerPool(Generic[T]):
    """Long-lived runner tasks: a claimed job goes to an idle runner through a future
    (a hand-over costs ~1.5 µs; anyio's memory stream, with its checkpoint and event per
    item, ~15 µs; a new task ~40 µs); a new runner starts only when none is idle, so there
    are as many as jobs ever ran at once. (The worker runs on asyncio: psycopg's async
    connections need it.)"""

    def __init__(self, run: Callable[[T], Awaitable[None]]) -> None:
        self._run = run
        #: The futures idle runners wait on. Changed by submit() and the runners (one loop).
        self._idle: list[asyncio.Future[T]] = []
        self._tg: anyio.abc.TaskGroup | None = None

    def start(self, tg: anyio.abc.TaskGroup) -> None:
        """Start new runners in ``tg`` from now on."""
        self._tg = tg

    def submit(self, item: T) -> None:
        """Run ``item`` on an idle runner, or on a new one."""
        idle = self._idle
        while idle:
            waiting = idle.pop()
            if not waiting.done():  # not a runner cancelled while idle
                waiting.set_result(item)
                return
        assert self._tg is not None, "RunnerPool.start() was not called"
        self._tg.start_soon(self._runner, item)

    async def _runner(self, item: T) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._run(item)
            waiting: asyncio.Future[T] = loop.create_future()
            self._idle.append(waiting)
            item = await waiting

    async def aclose(self) -> None:
        """Forget the idle runners (they are cancelled with their group)."""
        self._idle.clear()
