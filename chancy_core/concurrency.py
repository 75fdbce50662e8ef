"""Concurrency and order per key: at most N jobs of one key run at once, across all workers.

Name a job's key with :func:`with_key` (it goes in the job's ``meta``, so the job API
stays as documented), then give the queue a rule::

    from chancy_core import concurrency

    job = concurrency.with_key(Job.from_func(sync_customer), "customer:42")
    await concurrency.set_rule(chancy, concurrency.KeyRule("default", "customer:*", max_running=2))

A rule belongs to one queue and matches keys with a glob pattern (``*`` any text, ``?``
one character); when several rules match a key, the longest pattern wins. With
``ordered=True`` the jobs of each matching key run one at a time, in push order (id
order). ``kind="func"`` rules match function names instead of keys (per-function
limits): ``KeyRule("default", "app.tasks.report", max_running=3, kind="func")``.

How it is kept:

* The limit holds across all workers: a queue with rules is claimed by a separate
  statement that counts each key's running jobs in the database, and the keyed claims
  of one queue take turns (a transaction-scoped advisory lock per queue, taken in its
  own statement before the claim, so each claim sees the ones before it). Queues without
  rules keep the plain claim and pay nothing.
* A key's slot is its running job: it frees when the job's outcome is written, when a
  shutdown releases it, or when recovery (``chancy-plugin-recovery``) puts the job of a
  dead worker back. Until then the key counts it as running.
* Ordered keys: the next job starts only after the previous one finished. A job that is
  ``retrying`` keeps its place and the key stays blocked until it succeeds or fails for
  good; so does a first job whose ``scheduled_at`` is still in the future.
* Rules are read by workers with the queue declarations: a change reaches running
  workers at once through a notification, else within a second.
* Keys are counted per queue: jobs of the same key in two queues do not share a limit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, TypeVar

from chancy_core import sql as q
from chancy_core.errors import ConfigurationError, InvalidJobError
from chancy_core.job import Job, _is_int, _is_unicode, check_queue_name
from chancy_core.ops import Operation
from chancy_core.sql import Schema

if TYPE_CHECKING:
    from chancy_core.app import Chancy

__all__ = [
    "KEY_META",
    "KeyRule",
    "delete_rule",
    "get_rules",
    "key_of",
    "keyed_queues",
    "set_rule",
    "sync_delete_rule",
    "sync_get_rules",
    "sync_set_rule",
    "with_key",
]

KEY_META = "concurrency_key"
"""The ``meta`` entry that holds a job's concurrency key."""

J = TypeVar("J", bound=Job)

_MAX_KEY = 500


def _check_text(value: object, what: str, error: type[Exception]) -> str:
    if (
        not isinstance(value, str)
        or not value
        or len(value) > _MAX_KEY
        or "\x00" in value
        or not _is_unicode(value)
    ):
        raise error(
            f"{what} must be a non-empty string of at most {_MAX_KEY} characters without NUL"
            f" characters, not {value!r}"
        )
    return value


def with_key(job: J, key: str) -> J:
    """Return a copy of ``job`` whose concurrency key is ``key`` (e.g. ``"customer:42"``).

    The key is stored in the job's ``meta`` under :data:`KEY_META`; it limits nothing until
    a :class:`KeyRule` of the job's queue matches it."""
    _check_text(key, "a concurrency key", InvalidJobError)
    return job.with_meta({**job.meta, KEY_META: key})


def key_of(job: Job) -> str | None:
    """The concurrency key of ``job``, or ``None``."""
    key = job.meta.get(KEY_META)
    return key if isinstance(key, str) else None


def _like(pattern: str) -> str:
    """A glob (``*``, ``?``) as a LIKE pattern, LIKE's own wildcards escaped."""
    out = []
    for char in pattern:
        if char == "*":
            out.append("%")
        elif char == "?":
            out.append("_")
        elif char in "%_\\":
            out.append("\\" + char)
        else:
            out.append(char)
    return "".join(out)


@dataclass(frozen=True)
class KeyRule:
    """A queue's limit for the keys (or function names) that match ``pattern``."""

    queue: str
    """The queue whose jobs the rule limits."""
    pattern: str
    """A glob over keys (``kind="key"``) or function names (``kind="func"``): ``*`` is any
    text, ``?`` one character; ``"*"`` matches every key."""
    max_running: int = 1
    """How many jobs of each matching key run at once, across all workers."""
    ordered: bool = False
    """Run each matching key's jobs one at a time in push (id) order; needs
    ``max_running=1``."""
    kind: Literal["key", "func"] = "key"
    """``"key"``: match the job's concurrency key; ``"func"``: its function's name."""

    def __post_init__(self) -> None:
        check_queue_name(self.queue, ConfigurationError)
        _check_text(self.pattern, "a rule's pattern", ConfigurationError)
        if self.kind not in ("key", "func"):
            raise ConfigurationError(f"a rule's kind is 'key' or 'func', not {self.kind!r}")
        if not _is_int(self.max_running) or not 1 <= self.max_running <= 10_000:
            raise ConfigurationError(
                f"max_running must be an integer from 1 to 10000, not {self.max_running!r}"
            )
        if not isinstance(self.ordered, bool):
            raise ConfigurationError(f"ordered must be True or False, not {self.ordered!r}")
        if self.ordered and self.max_running != 1:
            raise ConfigurationError(
                "an ordered rule runs one job of a key at a time: give max_running=1"
            )


def _set_op(schema: Schema, rule: KeyRule) -> Operation:
    yield (
        schema.render(q.UPSERT_CONCURRENCY_RULE),
        {
            "queue": rule.queue,
            "kind": rule.kind,
            "pattern": rule.pattern,
            "like_pattern": _like(rule.pattern),
            "max_running": rule.max_running,
            "ordered": rule.ordered,
            "channel": schema.channel,
        },
    )
    return rule


def _delete_op(schema: Schema, queue: str, pattern: str, kind: str) -> Operation:
    rows = yield (
        schema.render(q.DELETE_CONCURRENCY_RULE),
        {"queue": queue, "kind": kind, "pattern": pattern, "channel": schema.channel},
    )
    return bool(rows)


def _get_op(schema: Schema, queue: str | None) -> Operation:
    rows = yield schema.render(q.SELECT_CONCURRENCY_RULES), {"queue": queue}
    return [
        KeyRule(queue=queue, kind=kind, pattern=pattern, max_running=max_running, ordered=ordered)
        for queue, kind, pattern, max_running, ordered in rows
    ]


def keyed_queues(schema: Schema) -> Operation:
    """The names of the queues that have rules (the worker claims them with the keyed
    statement)."""
    rows = yield schema.render(q.SELECT_KEYED_QUEUES), {}
    return frozenset(row[0] for row in rows)


def _check_rule(rule: object) -> KeyRule:
    if not isinstance(rule, KeyRule):
        raise ConfigurationError(f"expected a KeyRule, not {type(rule).__name__}")
    return rule


async def set_rule(chancy: Chancy, rule: KeyRule) -> KeyRule:
    """Create or replace a rule (same queue, kind and pattern); workers follow at once."""
    rule = _check_rule(rule)
    result: KeyRule = await chancy.execute(_set_op(chancy.schema, rule))
    return result


def sync_set_rule(chancy: Chancy, rule: KeyRule) -> KeyRule:
    """Sync twin of :func:`set_rule`."""
    rule = _check_rule(rule)
    result: KeyRule = chancy.sync_execute(_set_op(chancy.schema, rule))
    return result


async def delete_rule(
    chancy: Chancy, queue: str, pattern: str, *, kind: Literal["key", "func"] = "key"
) -> bool:
    """Delete a rule; whether it existed."""
    found: bool = await chancy.execute(_delete_op(chancy.schema, queue, pattern, kind))
    return found


def sync_delete_rule(
    chancy: Chancy, queue: str, pattern: str, *, kind: Literal["key", "func"] = "key"
) -> bool:
    """Sync twin of :func:`delete_rule`."""
    found: bool = chancy.sync_execute(_delete_op(chancy.schema, queue, pattern, kind))
    return found


async def get_rules(chancy: Chancy, queue: str | None = None) -> list[KeyRule]:
    """The rules of ``queue`` (of every queue when ``None``)."""
    rules: list[KeyRule] = await chancy.execute(_get_op(chancy.schema, queue))
    return rules


def sync_get_rules(chancy: Chancy, queue: str | None = None) -> list[KeyRule]:
    """Sync twin of :func:`get_rules`."""
    rules: list[KeyRule] = chancy.sync_execute(_get_op(chancy.schema, queue))
    return rules
