"""The worker's database operations, by name: the only worker code that knows statements.

Each operation is a sans-IO generator (as the app's are): it yields
``(statement, params)`` steps and receives each step's rows, so it runs on any
connection through the app's one runner (:meth:`Chancy.execute
<chancy_core.app.Chancy.execute>`, or ``Chancy._run`` on a connection the caller
holds), which translates errors the same way everywhere (a missing table becomes
:class:`~chancy_core.errors.SchemaMissingError`, a lost connection
:class:`~chancy_core.errors.DatabaseUnavailableError`).
"""

from __future__ import annotations

import json
import uuid
import zlib
from collections.abc import Callable, Generator, Sequence
from typing import Any, NamedTuple

from chancy_core import events
from chancy_core import sql as q
from chancy_core.queue import Queue
from chancy_core.sql import Schema, queue_from_row

__all__ = [
    "Claimed",
    "IdHolder",
    "Operation",
    "OwnRunning",
    "Rows",
    "Step",
    "claim",
    "complete",
    "keyed_lock",
    "notify",
    "own_running",
    "register_worker",
    "release",
    "select_queues",
    "set_progress",
    "take_worker_id",
    "unregister_worker",
]

Rows = list[tuple[Any, ...]]
Step = tuple[bytes, dict[str, Any]]
#: A database operation: yields steps, receives their rows, returns its result.
Operation = Generator[Step, Rows, Any]

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


def notify(schema: Schema, payload: str) -> Operation:
    """Send ``payload`` on the prefix's channel (the listener's ping)."""
    yield (
        b"SELECT pg_notify(%(channel)s, %(payload)s)",
        {
            "channel": schema.channel,
            "payload": payload,
        },
    )


def select_queues(schema: Schema) -> Operation:
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


def keyed_lock(schema: Schema, queue: str) -> int:
    """The advisory lock the keyed claims of ``queue`` take in turn."""
    return zlib.crc32(f"chancy-keys:{schema.prefix}:{queue}".encode())


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
        statement = schema.render(q.CLAIM_KEYED_JOBS)
    else:
        statement = schema.render(q.CLAIM_JOBS)
    if queue.rate_limit is None:
        rows = yield statement, params
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
    rows = yield statement, {**params, "limit": granted}
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
