"""The notification protocol: what is sent on a prefix's channel, and how it is read.

Every event is one JSON object sent with ``pg_notify`` on :attr:`Schema.channel
<chancy_core.sql.Schema.channel>` (``<prefix>events``), its kind under ``"e"``:

========== =================================== ==========================================
kind       payload                             sent by / meaning
========== =================================== ==========================================
``pushed`` ``{"e":"pushed","q":queue}``        a push: the queue has new jobs to claim
``queue``  ``{"e":"queue","q":queue}``         a queue was declared, changed or deleted
``cancel`` ``{"e":"cancel","ids":[id,...]}``   running jobs were asked to stop
``done``   ``{"e":"done","ids":[id,...]}``     jobs reached ``succeeded`` or ``failed``
========== =================================== ==========================================

A worker sends ``done`` only while someone waits: a waiter holds the shared session
advisory locks ``(waiter_lock(channel), slot)`` for every slot below
:data:`WAITER_SLOTS` (``wait_for_job`` does) *before* it reads the job's state, and the
completion statement tries its worker's slot (:func:`waiter_slot`) exclusively and
notifies only when it cannot take it. The waiter's lock waits for a completion that holds
it, so a job finished unannounced is always seen by the waiter's read that follows.
Workers spread over the slots so that two completions rarely collide (a collision only
sends a ``done`` no one needs). (Cancelling a waiting job and the recovery plugin always
send ``done``.)

The core's statements emit them in ``chancy_core.sql`` (inside the statement that
makes the change, so an event is sent only if the change commits); plugins may send
them too (the recovery plugin sends ``pushed``). Anyone may NOTIFY on the channel:
:func:`parse` ignores anything malformed instead of failing.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass
from typing import Final

__all__ = [
    "CANCEL",
    "DONE",
    "PUSHED",
    "QUEUE",
    "WAITER_SLOTS",
    "Event",
    "finishes",
    "parse",
    "waiter_lock",
    "waiter_slot",
]

PUSHED: Final = "pushed"
QUEUE: Final = "queue"
CANCEL: Final = "cancel"
DONE: Final = "done"
_KINDS = frozenset({PUSHED, QUEUE, CANCEL, DONE})


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    """One notification, read."""

    kind: str
    """``pushed``, ``queue``, ``cancel`` or ``done``."""
    queue: str | None = None
    """The queue of a ``pushed`` or ``queue`` event."""
    ids: frozenset[str] = frozenset()
    """The job ids of a ``cancel`` or ``done`` event."""


_decode = json.JSONDecoder().decode


def parse(payload: str) -> Event | None:
    """Read a notification's payload; ``None`` if it is not a well-formed event."""
    try:
        data = _decode(payload)
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    kind = data.get("e")
    if kind not in _KINDS:
        return None
    queue = data.get("q")
    ids = data.get("ids")
    return Event(
        kind=kind,
        queue=queue if isinstance(queue, str) else None,
        ids=frozenset(str(i) for i in ids) if isinstance(ids, list) else frozenset(),
    )


def finishes(payload: str, job_id: str) -> bool:
    """Whether the notification says the job ``job_id`` reached a final state."""
    if job_id not in payload:  # cheap: most notifications are about other jobs
        return False
    event = parse(payload)
    return event is not None and event.kind == DONE and job_id in event.ids


#: How many advisory locks a waiter holds (one per slot); see the module's docstring.
WAITER_SLOTS: Final = 16


def waiter_lock(channel: str) -> int:
    """The first key (an int4) of the advisory locks a waiter for ``done`` events on
    ``channel`` holds shared, one per slot (the second key)."""
    key = zlib.crc32(f"chancy-waiters:{channel}".encode())
    return key - 2**32 if key >= 2**31 else key


def waiter_slot(worker_id: str) -> int:
    """The slot whose waiter lock a worker's completions try."""
    return zlib.crc32(worker_id.encode()) % WAITER_SLOTS
