"""The database operations of the worker and of pushing, by name: the code that knows
their statements (the operator's are in :mod:`chancy_core.admin`).

Each operation is a sans-IO generator, an :data:`Operation[T] <Operation>`: it yields
steps (``(statement, params)``, or :class:`CopyRows`) and receives each step's rows, and
returns its result of type ``T``. So it is written once and runs on any connection
through the app's two drivers, one async and one sync (:meth:`Chancy.execute
<chancy_core.app.Chancy.execute>` and ``sync_execute``, or ``Chancy.execute_ex`` on a
connection the caller holds; see :mod:`chancy_core.app.database`), which translate
errors the same way everywhere (a missing table becomes
:class:`~chancy_core.errors.SchemaMissingError`, a lost connection
:class:`~chancy_core.errors.DatabaseUnavailableError`).
"""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
import zlib
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

from chancy_core import events
from chancy_core import sql as q
from chancy_core.errors import InvalidJobError
from chancy_core.job import Job, Reference, to_json
from chancy_core.queue import Queue
from chancy_core.sql import Schema, queue_from_row

if TYPE_CHECKING:  # a TypeVar's default (PEP 696) is typing's from Python 3.13 only
    from typing_extensions import TypeVar

    T = TypeVar("T", default=Any)
else:
    from typing import TypeVar

    T = TypeVar("T")

__all__ = [
    "Claimed",
    "CopyRows",
    "IdHolder",
    "Operation",
    "OwnRunning",
    "Rows",
    "Statement",
    "Step",
    "claim",
    "complete",
    "copy_jobs",
    "insert_jobs",
    "keyed_lock",
    "notify",
    "own_running",
    "register_worker",
    "release",
    "select_queues",
    "set_progress",
    "take_worker_id",
    "unregister_worker",
    "uuid7",
]

Rows = list[tuple[Any, ...]]
Statement = tuple[bytes, dict[str, Any]]


@dataclass(frozen=True, slots=True)
class CopyRows:
    """A step that streams ``rows`` with ``COPY ... FROM STDIN`` (binary, the columns of
    ``types``); it receives no rows."""

    statement: bytes
    types: Sequence[str]
    rows: Sequence[tuple[Any, ...]]


Step = Statement | CopyRows
#: A database operation returning a ``T``: it yields steps and receives their rows. A bare
#: ``Operation`` is ``Operation[Any]``.
Operation = Generator[Step, Rows, T]

_encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


class Claimed(NamedTuple):
    """What a claim took."""

    rows: Rows
    """The claimed jobs, as rows of ``sql.JOB_COLUMNS``."""
    token: str
    """The claim's token: its jobs' outcomes are fenced on it."""
    limited: bool
    """Whether the queue's rate limit granted fewer jobs than asked for."""


class OwnRunning(NamedTuple):
    """A job the database says this worker runs (the heartbeat's check)."""

    id: uuid.UUID
    cancel_requested: bool
    claimed_a_while_ago: bool
    token: uuid.UUID | None


def register_worker(
    schema: Schema,
    worker_id: str,
    hostname: str,
    pid: int,
    tags: Sequence[str],
    queues: Sequence[str],
) -> Operation:
    """Insert or refresh this worker's row (registration and heartbeat)."""
    yield (
        schema.render(q.UPSERT_WORKER),
        {
            "worker_id": worker_id,
            "hostname": hostname,
            "pid": pid,
            "tags": list(tags),
            "queues": list(queues),
        },
    )


class IdHolder(NamedTuple):
    """The worker that held an id another worker asked for (see :func:`take_worker_id`)."""

    hostname: str
    pid: int
    heartbeat_age: float
    """Seconds since its last heartbeat."""
    replaced: bool
    """Whether it was dead and its row was taken over (``False``: it is alive)."""


def take_worker_id(
    schema: Schema,
    worker_id: str,
    hostname: str,
    pid: int,
    tags: Sequence[str],
    queues: Sequence[str],
    *,
    alive_within: float,
    is_dead: Callable[[str, int], bool],
) -> Operation:
    """Register ``worker_id`` unless a live worker holds it.

    Returns ``None`` when the id was free, else the :class:`IdHolder`: ``replaced`` if
    its heartbeat is older than ``alive_within`` seconds or ``is_dead(hostname, pid)``
    (this host can tell its process is gone), and then this worker took its row over;
    not replaced if it is alive (nothing is written)."""
    params = {
        "worker_id": worker_id,
        "hostname": hostname,
        "pid": pid,
        "tags": list(tags),
        "queues": list(queues),
    }
    other_host, other_pid, age = "(unknown)", 0, 0.0
    for _ in range(5):  # the row changes under us only if another worker races for the id
        if (yield schema.render(q.INSERT_NEW_WORKER), params):
            return None
        rows = yield schema.render(q.SELECT_WORKER), {"worker_id": worker_id}
        if not rows:
            continue  # unregistered meanwhile
        other_host, other_pid, last_seen, age = rows[0]
        if age < alive_within and not is_dead(other_host, other_pid):
            return IdHolder(other_host, other_pid, age, False)
        replaced = yield schema.render(q.REPLACE_WORKER), {**params, "last_seen": last_seen}
        if replaced:
            return IdHolder(other_host, other_pid, age, True)
    return IdHolder(other_host, other_pid, age, False)


def unregister_worker(schema: Schema, worker_id: str) -> Operation:
    """Delete this worker's row."""
    yield schema.render(q.DELETE_WORKER), {"worker_id": worker_id}


def notify(schema: Schema, payload: str) -> Operation[None]:
    """Send ``payload`` on the prefix's channel (the listener's ping, the app's events)."""
    yield schema.render(q.NOTIFY), {"channel": schema.channel, "payload": payload}


def select_queues(schema: Schema) -> Operation[list[Queue]]:
    """Every declared queue."""
    rows = yield schema.render(q.SELECT_QUEUES), {}
    return [queue_from_row(row) for row in rows]


def own_running(schema: Schema, worker_id: str, age: float) -> Operation:
    """The jobs the database says ``worker_id`` runs, as :class:`OwnRunning`."""
    rows = yield schema.render(q.SELECT_OWN_RUNNING), {"worker_id": worker_id, "age": age}
    return [OwnRunning(*row) for row in rows]


def release(
    schema: Schema, worker_id: str, claims: Sequence[tuple[str | uuid.UUID, str | uuid.UUID | None]]
) -> Operation:
    """Put jobs back to ``pending`` (the attempt not counted), each fenced on the
    ``(id, token)`` of the claim that took it; returns the ids released."""
    if not claims:
        return []
    rows = yield (
        schema.render(q.RELEASE_JOBS),
        {
            "ids": [uuid.UUID(str(i)) for i, _ in claims],
            "tokens": [None if t is None else uuid.UUID(str(t)) for _, t in claims],
            "worker_id": worker_id,
        },
    )
    return [str(row[0]) for row in rows]


KEYED_WALK = 100
"""The keyed claim looks at the first ``KEYED_WALK + 4 * limit`` runnable jobs in claim
order (the walk); only when their keys let too few of them run does it look per key."""

KEYED_MANY_KEYS = 200
"""From this many keys with runnable jobs in a queue, the keyed claim walks ten times as
far before it looks per key."""


def keyed_lock(schema: Schema, queue: str) -> int:
    """The advisory lock the keyed claims of ``queue`` take in turn."""
    return zlib.crc32(f"chancy-keys:{schema.prefix}:{queue}".encode())


def _claim_keyed(schema: Schema, params: dict[str, Any]) -> Operation:
    """The keyed claim's statements, each seeing the earlier ones' jobs running; their rows.

    The walk; when it was not enough, the per-key look-up, unless the queue has
    ``KEYED_MANY_KEYS`` keys or more: then first a walk ten times as long (the per-key
    look-up costs a probe or two per key)."""
    limit = params["limit"]
    window = KEYED_WALK + 4 * limit
    found = yield schema.render(q.CLAIM_KEYED_JOBS), {**params, "window": window}
    walked = found[0][-1]  # each row ends with the walk's size (one row of NULLs if none)
    rows = [row[:-1] for row in found if row[0] is not None]
    if len(rows) >= limit or walked < window:
        return rows
    counted = yield (
        schema.render(q.COUNT_KEYED_KEYS),
        {"queue": params["queue"], "most": KEYED_MANY_KEYS},
    )
    if counted[0][0] >= KEYED_MANY_KEYS:
        wide = 10 * window
        found = yield (
            schema.render(q.CLAIM_KEYED_JOBS),
            {**params, "limit": limit - len(rows), "window": wide},
        )
        rows += [row[:-1] for row in found if row[0] is not None]
        if len(rows) >= limit or found[0][-1] < wide:
            return rows
    more = yield (
        schema.render(q.CLAIM_KEYED_PER_KEY),
        {**params, "limit": limit - len(rows), "window": window},
    )
    return rows + more


def claim(
    schema: Schema, queue: Queue, limit: int, worker_id: str, *, keyed: bool = False
) -> Operation:
    """Claim up to ``limit`` jobs of ``queue`` under a fresh token; :class:`Claimed`.

    With a rate limit, tokens of the current window are taken first and unused ones given
    back: run it in a transaction then (the row lock makes workers take turns). ``keyed``
    (the queue has concurrency rules, :mod:`chancy_core.concurrency`): the keyed claim,
    after the queue's keyed-claim lock; run it in a transaction too."""
    token = str(uuid.uuid4())
    params = {"queue": queue.name, "limit": limit, "worker_id": worker_id, "token": token}
    if keyed:
        yield schema.render(q.LOCK_KEYED_CLAIMS), {"lock": keyed_lock(schema, queue.name)}
    if queue.rate_limit is None:
        if keyed:
            rows = yield from _claim_keyed(schema, params)
        else:
            rows = yield schema.render(q.CLAIM_JOBS), params
        return Claimed(rows, token, False)
    rate = {
        "queue": queue.name,
        "window": queue.rate_limit_window,
        "limit": queue.rate_limit,
        "wanted": limit,
    }
    yield schema.render(q.ENSURE_RATE_ROW), rate
    granted_rows = yield schema.render(q.TAKE_RATE_TOKENS), rate
    granted = granted_rows[0][0] if granted_rows else 0
    if not granted:
        return Claimed([], token, True)
    if keyed:
        rows = yield from _claim_keyed(schema, {**params, "limit": granted})
    else:
        rows = yield schema.render(q.CLAIM_JOBS), {**params, "limit": granted}
    if len(rows) < granted:
        yield (
            schema.render(q.RETURN_RATE_TOKENS),
            {"queue": queue.name, "unused": granted - len(rows)},
        )
    return Claimed(rows, token, granted < limit)


def complete(schema: Schema, worker_id: str, outcomes: Sequence[dict[str, Any]]) -> Operation:
    """Write outcomes (as ``COMPLETE_JOBS`` reads them), fenced; returns the ids written."""
    rows = yield (
        schema.render(q.COMPLETE_JOBS),
        {
            "outcomes": _encode(outcomes),
            "worker_id": worker_id,
            "channel": schema.channel,
            "waiters": events.waiter_lock(schema.channel),
            "slot": events.waiter_slot(worker_id),
        },
    )
    return {row[0] for row in rows}


def set_progress(schema: Schema, worker_id: str, progress: Sequence[dict[str, Any]]) -> Operation:
    """Write running jobs' latest progress (``{"id", "token", "progress"}`` each, progress as
    JSON text), fenced on each claim's token."""
    yield (
        schema.render(q.SET_PROGRESS),
        {"progress": _encode(progress), "worker_id": worker_id},
    )


# --- pushing -----------------------------------------------------------------------------------

_last_ms = 0
_seq = 0
_uuid_lock = threading.Lock()


def uuid7() -> uuid.UUID:
    """A time-ordered UUID (version 7), increasing within this process."""
    global _last_ms, _seq
    with _uuid_lock:
        ms = time.time_ns() // 1_000_000
        if ms > _last_ms:
            _last_ms, _seq = ms, 0
        else:
            _seq += 1
            if _seq > 0xFFF:
                _last_ms, _seq = _last_ms + 1, 0
        ms, seq = _last_ms, _seq
    rand = int.from_bytes(os.urandom(8)) & ((1 << 62) - 1)
    return uuid.UUID(int=(ms << 80) | (0x7 << 76) | (seq << 64) | (0b10 << 62) | rand)


def _json(value: Any, what: str, job: Job) -> str:
    if not value:
        return "{}" if isinstance(value, dict) else to_json(value)
    try:
        # Refuses non-JSON values, non-string dict keys (JSON would silently turn 1 into "1"),
        # NUL characters and lone surrogates, each saying what to do instead.
        return to_json(value)
    except ValueError as exc:
        raise InvalidJobError(f"{what} of job {job.func} {exc}") from None


def _limits(job: Job) -> str:
    return json.dumps([limit.serialize() for limit in job.limits]) if job.limits else "[]"


def insert_jobs(schema: Schema, jobs: Sequence[Job]) -> Operation[list[Reference]]:
    """Insert ``jobs`` (one statement, a ``pushed`` event per queue in it); returns their
    references, in order, or for a ``unique_key`` an unfinished job already holds, that
    job's. A key freed meanwhile (its job finished) is inserted again."""
    if len(jobs) == 1 and jobs[0].unique_key is None:  # every plain push(): no arrays
        job = jobs[0]
        job_id = uuid7()
        yield (
            schema.render(q.INSERT_JOB),
            {
                "id": job_id,
                "queue": job.queue,
                "func": job.func,
                "kwargs": _json(job.kwargs, "kwargs", job),
                "meta": _json(job.meta, "meta", job),
                "priority": job.priority,
                "max_attempts": job.max_attempts,
                "scheduled_at": job.scheduled_at,
                "limits": _limits(job),
                "channel": schema.channel,
            },
        )
        return [Reference(str(job_id))]
    ids = [uuid7() for _ in jobs]
    params: dict[str, Any] = {
        "ids": ids,
        "queues": [j.queue for j in jobs],
        "funcs": [j.func for j in jobs],
        "kwargs": [_json(j.kwargs, "kwargs", j) for j in jobs],
        "metas": [_json(j.meta, "meta", j) for j in jobs],
        "priorities": [j.priority for j in jobs],
        "max_attempts": [j.max_attempts for j in jobs],
        "scheduled_at": [j.scheduled_at for j in jobs],
        "limits": [_limits(j) for j in jobs],
        "unique_keys": [j.unique_key for j in jobs],
        "channel": schema.channel,
    }
    refs = [Reference(str(i)) for i in ids]
    positions = list(range(len(jobs)))  # where each row of params stands in `jobs`
    for _ in range(5):
        inserted = {row[0] for row in (yield schema.render(q.INSERT_JOBS), params)}
        conflicts = [
            n
            for n, (i, key) in enumerate(zip(params["ids"], params["unique_keys"], strict=True))
            if key is not None and i not in inserted
        ]
        if not conflicts:
            return refs
        keys = [params["unique_keys"][n] for n in conflicts]
        holders: dict[str, Any] = dict((yield schema.render(q.SELECT_UNIQUE), {"keys": keys}))
        again = []
        for n, key in zip(conflicts, keys, strict=True):
            if key in holders:
                refs[positions[n]] = Reference(str(holders[key]))
            else:  # the job holding the key finished meanwhile: insert this one again
                again.append(n)
        if not again:
            return refs
        params = {k: [v[n] for n in again] if isinstance(v, list) else v for k, v in params.items()}
        positions = [positions[n] for n in again]
        params["ids"] = [uuid7() for _ in again]
        for n, new_id in zip(positions, params["ids"], strict=True):
            refs[n] = Reference(str(new_id))
    raise InvalidJobError("unique keys kept conflicting while pushing; try again")


# jsonb's binary format is a version byte (1) and the JSON text: COPY sends the already
# checked text as is (declared bytea), instead of having psycopg encode it again.
_JSONB_EMPTY_OBJECT = b"\x01{}"
_JSONB_EMPTY_LIST = b"\x01[]"


def _jsonb(text: str) -> bytes:
    return b"\x01" + text.encode()


def copy_jobs(schema: Schema, jobs: Sequence[Job]) -> Operation[list[Reference]]:
    """Stream ``jobs`` (none with a ``unique_key``) with binary ``COPY``, then send one
    ``pushed`` event per queue; returns their references. Every value is checked when the
    operation is built, before it takes a connection. Run it in a transaction."""
    refs = []
    rows = []
    for job in jobs:
        job_id = uuid7()
        refs.append(Reference(str(job_id)))
        meta = _JSONB_EMPTY_OBJECT if job.meta == {} else _jsonb(_json(job.meta, "meta", job))
        limits = _jsonb(_limits(job)) if job.limits else _JSONB_EMPTY_LIST
        rows.append(
            (
                job_id,
                job.queue,
                job.func,
                _jsonb(_json(job.kwargs, "kwargs", job)),
                meta,
                job.priority,
                job.max_attempts,
                job.scheduled_at,
                limits,
            )
        )
    queues = sorted({job.queue for job in jobs})
    return _copied(
        schema, CopyRows(schema.render(q.COPY_JOBS), q.COPY_JOBS_TYPES, rows), queues, refs
    )


def _copied(
    schema: Schema, copy: CopyRows, queues: list[str], refs: list[Reference]
) -> Operation[list[Reference]]:
    yield copy
    yield schema.render(q.NOTIFY_PUSHED), {"queues": queues, "channel": schema.channel}
    return refs
