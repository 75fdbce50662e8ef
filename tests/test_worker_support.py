"""Job functions and helpers shared by the worker tests (no tests here).

The job functions live in a module that imports little, so that the process
executor's children import it quickly; they name it ``test_worker_support``
(the tests folder is on ``sys.path``, also in spawned children).
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from psycopg import sql

from chancy_core import Chancy, Job, Outcome, QueuedJob, Reference, hookimpl, job

# --- shared state of jobs that run in the test's own process (async and thread) ------------


class Gauge:
    """How many jobs run at once, and the most that ever did."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.now = 0
        self.max = 0

    def enter(self) -> None:
        with self.lock:
            self.now += 1
            self.max = max(self.max, self.now)

    def exit(self) -> None:
        with self.lock:
            self.now -= 1

    def reset(self) -> None:
        with self.lock:
            self.now = self.max = 0


GAUGE = Gauge()
ORDER: list[str] = []
STARTS: dict[str, float] = {}  # tag -> time.monotonic() when the job started
GATE = threading.Event()  # thread jobs wait on it; tests set it to let them go


# --- job functions ---------------------------------------------------------------------------


async def async_add(a: int, b: int) -> int:
    await asyncio.sleep(0)
    return a + b


def sync_add(a: int, b: int) -> int:
    return a + b


def returns_coroutine(a: int, b: int) -> Any:
    """A plain function whose result is a coroutine (a sync wrapper of an async one)."""
    return async_add(a, b)


def where() -> dict[str, Any]:
    """Which process and thread a sync job ran in."""
    return {
        "pid": os.getpid(),
        "main_thread": threading.current_thread() is threading.main_thread(),
    }


async def async_where() -> dict[str, Any]:
    return {"pid": os.getpid(), "loop": asyncio.get_running_loop() is not None}


async def noop() -> None:
    return None


async def counted(seconds: float) -> None:
    GAUGE.enter()
    try:
        await asyncio.sleep(seconds)
    finally:
        GAUGE.exit()


def counted_sync(seconds: float) -> None:
    GAUGE.enter()
    try:
        time.sleep(seconds)
    finally:
        GAUGE.exit()


async def record(tag: str) -> None:
    ORDER.append(tag)
    STARTS[tag] = time.monotonic()


RUNS: dict[str, int] = {}  # tag -> how many times a job ran


async def counted_run(tag: str, seconds: float) -> None:
    RUNS[tag] = RUNS.get(tag, 0) + 1
    await asyncio.sleep(seconds)


async def sleeper(seconds: float) -> str:
    await asyncio.sleep(seconds)
    return "slept"


def sync_sleeper(seconds: float) -> str:
    time.sleep(seconds)
    return "slept"


def gated(seconds: float) -> str:
    """A thread job that ends when the test sets GATE (or after ``seconds``)."""
    GATE.wait(seconds)
    return "released"


def pid_then_sleep(path: str, seconds: float) -> None:
    """A process job that writes its pid to ``path``, then sleeps."""
    with open(path, "w") as f:
        f.write(str(os.getpid()))
    time.sleep(seconds)


def exit_hard(code: int) -> None:
    os._exit(code)


def kill_self() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def hog(megabytes: int, hold: float) -> int:
    data = b"\x01" * (megabytes * 2**20)  # touched, so resident
    time.sleep(hold)
    return len(data)


def fail(message: str) -> None:
    raise ValueError(message)


def fail_unstorable(kind: str) -> None:
    """Fails with a message PostgreSQL text cannot hold as is (kwargs cannot carry it)."""
    raise ValueError({"nul": "nul\x00here", "surrogate": "lone \ud800 surrogate"}[kind])


async def async_fail(message: str) -> None:
    raise ValueError(message)


def fail_until(attempt: int, job_context: QueuedJob) -> int:
    """Fails until its attempt number reaches ``attempt``."""
    if job_context.attempts < attempt:
        raise RuntimeError(f"attempt {job_context.attempts} fails")
    return job_context.attempts


def exit_job() -> None:
    raise SystemExit(3)


class OddError(Exception):
    """An exception that pickles but cannot be unpickled (a custom ``__init__``)."""

    def __init__(self, a: int, b: int) -> None:
        super().__init__(f"odd {a} {b}")


def raise_odd() -> None:
    raise OddError(1, 2)


def note_progress(step: int, job_context: QueuedJob) -> None:
    """Records its progress in its own meta (saved with the outcome), then fails if asked."""
    job_context.meta["progress"] = {"step": step, "pid": os.getpid()}
    if step < 0:
        raise ValueError("failed after noting progress")


async def async_note_progress(step: int, job_context: QueuedJob) -> None:
    note_progress(step, job_context)


def context(job_context: QueuedJob) -> dict[str, Any]:
    return {
        "id": job_context.id,
        "attempts": job_context.attempts,
        "meta": job_context.meta,
        "state": job_context.state.value,
    }


async def async_context(job_context: QueuedJob) -> dict[str, Any]:
    return context(job_context)


@job(queue="registered")
def registered_job(x: int) -> int:
    return x * 10


# --- plugins ----------------------------------------------------------------------------------


class Recorder:
    """Records what the job hooks saw: starts, results and errors by job id."""

    name = "recorder"

    def __init__(self) -> None:
        self.started: dict[str, float] = {}
        self.results: dict[str, Any] = {}
        self.errors: dict[str, BaseException | None] = {}
        self.states: dict[str, str] = {}

    @hookimpl
    def chancy_job_starting(self, job: QueuedJob) -> None:
        self.started[job.id] = time.monotonic()

    @hookimpl
    def chancy_job_completed(self, job: QueuedJob, outcome: Outcome) -> None:
        self.results[job.id] = outcome.result
        self.errors[job.id] = outcome.error
        self.states[job.id] = outcome.state.value
        assert job.state is outcome.state


# --- helpers ----------------------------------------------------------------------------------


async def wait_until(
    check: Callable[[], Awaitable[bool]] | Callable[[], bool],
    *,
    timeout: float = 5.0,
    interval: float = 0.02,
    what: str = "condition",
) -> None:
    """Poll ``check`` (sync or async) until it is true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if not isinstance(value, bool):
            value = await value
        if value:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(interval)


async def query(chancy: Chancy, template: str, params: Any = None) -> list[tuple[Any, ...]]:
    """Run SQL whose ``{name}`` placeholders are the app's tables (``{jobs}``)."""
    async with chancy.pool.connection() as conn:
        cur = await conn.execute(chancy.schema.compose(template), params)  # type: ignore[arg-type]
        return await cur.fetchall() if cur.description else []


async def job_row(chancy: Chancy, ref: Reference | str) -> dict[str, Any]:
    """The job's row as a dict (every column, also taken_by and cancelled_at)."""
    async with chancy.pool.connection() as conn:
        cur = await conn.execute(
            chancy.schema.compose("SELECT * FROM {jobs} WHERE id = %s"), (uuid.UUID(str(ref)),)
        )
        row = await cur.fetchone()
        assert row is not None and cur.description is not None
        return dict(zip([c.name for c in cur.description], row, strict=True))


async def wait_state(
    chancy: Chancy, ref: Reference | str, *states: str, timeout: float = 5.0
) -> QueuedJob:
    """Wait until the job is in one of ``states``; return it."""
    found: list[QueuedJob] = []

    async def check() -> bool:
        current = await chancy.get_job(ref)
        assert current is not None
        found[:] = [current]
        return current.state.value in states

    await wait_until(check, timeout=timeout, what=f"job {ref} to be {'/'.join(states)}")
    return found[0]


async def wait_row(
    chancy: Chancy, ref: Reference | str, *states: str, timeout: float = 5.0
) -> dict[str, Any]:
    """Like :func:`wait_state`, reading the raw row (for rows that are not valid jobs)."""
    found: list[dict[str, Any]] = []

    async def check() -> bool:
        found[:] = [await job_row(chancy, ref)]
        return found[0]["state"] in states

    await wait_until(check, timeout=timeout, what=f"row {ref} to be {'/'.join(states)}")
    return found[0]


async def wait_all(
    chancy: Chancy, refs: list[Reference], *states: str, timeout: float = 5.0
) -> list[QueuedJob]:
    found: list[QueuedJob] = []

    async def check() -> bool:
        jobs = await chancy.get_jobs(refs)
        found[:] = [j for j in jobs if j is not None]
        return len(found) == len(refs) and all(j.state.value in states for j in found)

    await wait_until(check, timeout=timeout, what=f"{len(refs)} jobs to be {'/'.join(states)}")
    return found


async def insert_row(chancy: Chancy, **columns: Any) -> str:
    """Insert a job row directly, bypassing every check of push(); return its id."""
    columns.setdefault("id", uuid.uuid4())
    columns.setdefault("queue", "default")
    statement = sql.SQL("INSERT INTO {} ({}) VALUES ({})").format(
        sql.Identifier(chancy.schema.name("jobs")),
        sql.SQL(", ").join(map(sql.Identifier, columns)),
        sql.SQL(", ").join([sql.Placeholder()] * len(columns)),
    )
    async with chancy.pool.connection() as conn:
        await conn.execute(statement, list(columns.values()))
    return str(columns["id"])


def raised(job: QueuedJob | dict[str, Any], index: int = -1) -> str:
    """The last line of an error entry: the exception the attempt ended with (for errors
    without notes)."""
    errors = job["errors"] if isinstance(job, dict) else job.errors
    return str(errors[index]["traceback"]).strip().splitlines()[-1]


def make_job(func: Callable[..., Any], queue: str = "default", **kwargs: Any) -> Job:
    return Job.from_func(func, queue=queue, kwargs=kwargs)
