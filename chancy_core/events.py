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
``ping``   ``{"e":"ping","w":sender,"n":seq}`` a LISTEN connection's owner proving it alive
========== =================================== ==========================================

A ``ping`` (:func:`ping_payload`, read back with :func:`parse_ping`) is sent through
another connection by whoever holds a LISTEN connection (the worker's listener, the
workflow plugin's waiter) and expected back on its own: an echo that does not come in
time means a half-open connection (:class:`ListenerStalled`), which is dropped and
replaced. Pings are not events: :func:`parse` returns ``None`` for them.

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
    "PING",
    "PUSHED",
    "QUEUE",
    "WAITER_SLOTS",
    "Event",
    "ListenerStalled",
    "finishes",
    "parse",
    "parse_ping",
    "ping_payload",
    "waiter_lock",
    "waiter_slot",
]

PUSHED: Final = "pushed"
QUEUE: Final = "queue"
CANCEL: Final = "cancel"
DONE: Final = "done"
#: The kind of a LISTEN connection's proof of life (not an event; see :func:`ping_payload`).
PING: Final = "ping"
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


def ping_payload(sender: str, n: int) -> str:
    """The payload of ``sender``'s ping number ``n``, ``{"e":"ping","w":sender,"n":n}``: a
    NOTIFY a LISTEN connection's owner sends on that channel, through another connection,
    and expects back on its own to prove it alive."""
    return json.dumps({"e": PING, "w": sender, "n": n}, separators=(",", ":"))


def parse_ping(payload: str) -> tuple[str, int] | None:
    """``(sender, n)`` of a ping's payload (see :func:`ping_payload`); ``None`` for any
    other payload."""
    if f'"{PING}"' not in payload:
        return None
    try:
        data = _decode(payload)
    except ValueError:
        return None
    if not isinstance(data, dict) or data.get("e") != PING:
        return None
    sender, n = data.get("w"), data.get("n")
    if not isinstance(sender, str) or not isinstance(n, int) or isinstance(n, bool):
        return None
    return sender, n


class ListenerStalled(Exception):
    """A LISTEN connection did not deliver its own ping in time (half-open): drop it and
    reconnect."""


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
