"""The job model: pure data, no I/O.

A :class:`Job` names an importable function and the JSON keyword arguments to
call it with. Pushing it returns a :class:`Reference`; reading it back gives a
:class:`QueuedJob`, which adds the state the queue keeps about it.

A function defined in ``__main__`` (a script) can be pushed; it is named
``__main__.func`` and only a worker running in that same program can run it.
Lambdas and nested functions cannot be imported by a worker, so
:meth:`Job.from_func` refuses them at once.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Generic, ParamSpec, Protocol, Self, TypedDict, TypeVar

from chancy_core.errors import InvalidJobError

__all__ = [
    "ErrorT",
    "IsAJob",
    "Job",
    "Limit",
    "ProgressT",
    "QueuedJob",
    "Reference",
    "job",
    "progress_sinks",
]

P = ParamSpec("P")
R = TypeVar("R", covariant=True)

_INT32_MAX = 2**31 - 1
# \Z, not $: $ also matches before a trailing newline ("default\n" is no queue name).
FUNC_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+\Z")
QUEUE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,99}\Z")
"""What a queue name may look like: letters, digits, ``_ . : -``, at most 100 characters."""

#: Functions decorated with :func:`job` in this process, by importable name.
registered_jobs: dict[str, Callable[..., Any]] = {}

#: Where :meth:`QueuedJob.set_progress` sends a running job's progress, by job id: set by
#: the worker (or the process executor's child) while it runs the job.
progress_sinks: dict[str, Callable[[float, str | None], None]] = {}


def _now() -> datetime:
    return datetime.now(UTC)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# A day inside Python's datetime range on both ends, so that a scheduled_at read back in any
# session time zone is still a valid datetime.
_EARLIEST = datetime(1, 1, 2, tzinfo=UTC)
_LATEST = datetime(9999, 12, 30, tzinfo=UTC)
# A NUL escape in JSON text: \u0000 after an even number of backslashes (r"\\u0000" is text).
_JSON_NUL = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")


def _is_unicode(text: str) -> bool:
    """Whether ``text`` is valid Unicode (no lone surrogates), i.e. storable as UTF-8."""
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


#: Function and queue names already found valid (Job's fast path); bounded.
_valid_funcs: set[str] = set()
_valid_queues: set[str] = set()
_NAME_CACHE_SIZE = 10_000

_CONTAINERS = (dict, list, tuple)
_encode_json = json.JSONEncoder(separators=(",", ":"), allow_nan=False, ensure_ascii=False).encode


def to_json(value: Any) -> str:
    """``value`` as compact JSON that PostgreSQL stores and gives back unchanged.

    Raises :class:`ValueError` with a message that completes "``<what>`` ..." and says what
    to do: for values JSON cannot encode (sets, objects, NaN, infinities), dict keys that
    are not strings (JSON would silently turn ``1`` into ``"1"``), NUL characters and lone
    surrogates (PostgreSQL cannot store either), and nesting too deep to encode.
    """
    hint = "pass only dicts with string keys, lists, strings, numbers, booleans and None"
    try:
        text = _encode_json(value)
    except (TypeError, ValueError, RecursionError) as exc:
        raise ValueError(f"is not JSON-serializable ({exc}): {hint}") from None
    pending = [value] if isinstance(value, _CONTAINERS) else []
    pop, push = pending.pop, pending.append
    while pending:  # the encoding succeeded, so there is no cycle
        item = pop()
        if isinstance(item, dict):
            for key, sub in item.items():
                if key.__class__ is not str and not isinstance(key, str):
                    raise ValueError(
                        f"is not JSON-serializable (dict key {key!r} is not a string, and JSON"
                        f" would silently turn it into one): {hint}"
                    )
                if isinstance(sub, _CONTAINERS):
                    push(sub)
        else:
            for sub in item:
                if isinstance(sub, _CONTAINERS):
                    push(sub)
    if "\\u0000" in text and _JSON_NUL.search(text):
        raise ValueError(
            "contains a NUL character, which PostgreSQL cannot store: remove it or encode"
            " the value (e.g. base64)"
        )
    if not _is_unicode(text):
        raise ValueError(
            "contains a lone surrogate character, which is not valid Unicode and cannot be"
            " stored: decode bytes with errors='replace' or encode the value (e.g. base64)"
        )
    return text


def check_queue_name(name: object, error: type[Exception] = InvalidJobError) -> str:
    """Return ``name`` if it is a valid queue name, else raise ``error`` saying why."""
    if not isinstance(name, str) or not QUEUE_NAME.match(name):
        raise error(
            f"invalid queue name {name!r}: use 1-100 letters, digits, '_', '.', ':' or '-',"
            " starting with a letter or digit"
        )
    return name


class ErrorT(TypedDict):
    """One failed attempt of a job."""

    attempt: int
    """The attempt number of the job when the error occurred."""
    traceback: str
    """The error message, typically the traceback of an exception."""


class ProgressT(TypedDict):
    """What a running job last reported with :meth:`QueuedJob.set_progress`."""

    fraction: float
    """How far the job is, from 0.0 to 1.0."""
    message: str | None
    """What it is doing, or ``None``."""


@dataclass(frozen=True, slots=True)
class Limit:
    """A resource limit applied to a job while it runs.

    ``Limit(Limit.Type.TIME, 30)`` stops the job after 30 seconds;
    ``Limit(Limit.Type.MEMORY, 256 * 2**20)`` kills it (process executor) when
    its resident memory passes 256 MiB.
    """

    class Type(enum.Enum):
        """The kind of resource a limit applies to."""

        MEMORY = "memory"
        TIME = "time"

    type_: Type
    value: int

    def __post_init__(self) -> None:
        if not isinstance(self.type_, Limit.Type):
            try:
                object.__setattr__(self, "type_", Limit.Type(self.type_))
            except ValueError:
                raise InvalidJobError(
                    f"invalid limit type {self.type_!r}: use Limit.Type.TIME or Limit.Type.MEMORY"
                ) from None
        # At most 2**63 - 1: a larger int cannot become the float a worker's deadline needs.
        if not _is_int(self.value) or not 0 < self.value < 2**63:
            unit = "seconds" if self.type_ is Limit.Type.TIME else "bytes"
            raise InvalidJobError(
                f"invalid {self.type_.value} limit {self.value!r}: use a positive integer ({unit})"
                " below 2**63"
            )

    def serialize(self) -> dict[str, Any]:
        """Return a JSON-compatible dict that :meth:`deserialize` turns back into this limit."""
        return {"t": self.type_.value, "v": self.value}

    @classmethod
    def deserialize(cls, data: dict[str, Any]) -> Limit:
        """Rebuild a limit from :meth:`serialize`'s output."""
        try:
            return cls(cls.Type(data["t"]), data["v"])
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidJobError(f"invalid serialized limit {data!r}: {exc}") from None


@dataclass(frozen=True, kw_only=True)
class Job:
    """A job is an immutable, stateless unit of work that can be pushed onto a
    Chancy queue and executed elsewhere."""

    func: str
    """An importable name for the function to execute, e.g. ``my_module.my_function``."""
    queue: str = "default"
    """The queue to which this job should be pushed."""
    kwargs: dict[str, Any] | None = field(default_factory=dict)
    """The keyword arguments to pass to the function (JSON-serializable)."""
    priority: int = 0
    """Jobs with higher priority values run before jobs with lower ones."""
    max_attempts: int = 1
    """How many times this job can be attempted before it is considered failed."""
    scheduled_at: datetime = field(default_factory=_now)
    """When this job may run, at the earliest (timezone-aware)."""
    limits: list[Limit] = field(default_factory=list)
    """Resource limits applied to this job while it runs."""
    unique_key: str | None = None
    """If set, at most one job with this key is pending, running or retrying at a time;
    pushing a duplicate returns the existing job's reference."""
    meta: dict[str, Any] = field(default_factory=dict)
    """Arbitrary metadata; each plugin keeps its state under its own key."""

    def __post_init__(self) -> None:
        # Fast path for the common values (exact types, names seen before); anything else
        # goes through the full checks below, which raise the errors.
        d = self.__dict__
        func, queue, priority, attempts = d["func"], d["queue"], d["priority"], d["max_attempts"]
        scheduled, limits, key = d["scheduled_at"], d["limits"], d["unique_key"]
        if (
            func.__class__ is str
            and func in _valid_funcs
            and queue.__class__ is str
            and queue in _valid_queues
            and d["kwargs"].__class__ is dict
            and d["meta"].__class__ is dict
            and priority.__class__ is int
            and -_INT32_MAX <= priority <= _INT32_MAX
            and attempts.__class__ is int
            and 1 <= attempts <= _INT32_MAX
            and scheduled.__class__ is datetime
            and scheduled.tzinfo is not None
            and _EARLIEST <= scheduled <= _LATEST
            and limits.__class__ is list
            and not limits
            and key is None
        ):
            return
        self._validate()
        if len(_valid_funcs) < _NAME_CACHE_SIZE:
            _valid_funcs.add(self.func)
        if len(_valid_queues) < _NAME_CACHE_SIZE:
            _valid_queues.add(self.queue)

    def _validate(self) -> None:
        """Every field's check; raises :class:`InvalidJobError` saying what to do."""
        if not isinstance(self.func, str) or not FUNC_NAME.match(self.func):
            raise InvalidJobError(
                f"invalid func {self.func!r}: give an importable name such as"
                " 'my_module.my_function'"
            )
        check_queue_name(self.queue)
        if self.kwargs is not None and not isinstance(self.kwargs, dict):
            raise InvalidJobError(f"kwargs must be a dict, not {type(self.kwargs).__name__}")
        if not isinstance(self.meta, dict):
            raise InvalidJobError(f"meta must be a dict, not {type(self.meta).__name__}")
        if not _is_int(self.priority) or abs(self.priority) > _INT32_MAX:
            raise InvalidJobError(
                f"invalid priority {self.priority!r}: use an integer between"
                f" {-_INT32_MAX} and {_INT32_MAX}"
            )
        if not _is_int(self.max_attempts) or not 1 <= self.max_attempts <= _INT32_MAX:
            raise InvalidJobError(
                f"invalid max_attempts {self.max_attempts!r}: use a positive integer"
            )
        if not isinstance(self.scheduled_at, datetime) or self.scheduled_at.tzinfo is None:
            raise InvalidJobError(
                f"invalid scheduled_at {self.scheduled_at!r}: use a timezone-aware datetime,"
                " e.g. datetime.now(UTC)"
            )
        if not _EARLIEST <= self.scheduled_at <= _LATEST:
            # Outside this range the row could be written but never read back into Python.
            raise InvalidJobError(
                f"invalid scheduled_at {self.scheduled_at!r}: use a time between"
                f" {_EARLIEST.isoformat()} and {_LATEST.isoformat()}"
            )
        if not isinstance(self.limits, list) or not all(
            isinstance(limit, Limit) for limit in self.limits
        ):
            raise InvalidJobError(f"limits must be a list of Limit, not {self.limits!r}")
        if self.unique_key is not None and (
            not isinstance(self.unique_key, str)
            or not self.unique_key
            or "\x00" in self.unique_key
            or not _is_unicode(self.unique_key)
        ):
            raise InvalidJobError(
                f"invalid unique_key {self.unique_key!r}: use a non-empty string without NUL bytes"
                " or lone surrogates"
            )

    @classmethod
    def from_func(cls, func: Callable[..., Any], **kwargs: Any) -> Self:
        """Create a job from a function, determining its importable name automatically.

        ``kwargs`` are the job's other fields (``queue=``, ``priority=``, ...).
        Lambdas and nested functions are refused: no worker could import them.
        """
        target = getattr(func, "__wrapped__", func)
        module = getattr(target, "__module__", None)
        qualname = getattr(target, "__qualname__", None)
        if not module or not qualname:
            raise InvalidJobError(f"{func!r} has no importable name: use a module-level function")
        if "<lambda>" in qualname or "<locals>" in qualname:
            raise InvalidJobError(
                f"{module}.{qualname} cannot be imported by a worker: define it at module level"
            )
        return cls(func=f"{module}.{qualname}", **kwargs)

    def with_kwargs(self, **kwargs: Any) -> Self:
        """Return a copy whose keyword arguments are ``kwargs``."""
        cls = type(self)
        if cls.__post_init__ is not Job.__post_init__:  # a subclass checks more: let it
            return dataclasses.replace(self, kwargs=kwargs)
        # Every other field is this (validated, frozen) job's, and ``**kwargs`` is always a
        # dict: the copy needs no check (about 4 times cheaper than ``replace``).
        copy = object.__new__(cls)
        copy.__dict__.update(self.__dict__)
        copy.__dict__["kwargs"] = kwargs
        return copy

    def with_limits(self, limits: list[Limit]) -> Self:
        """Return a copy with these resource limits."""
        return dataclasses.replace(self, limits=limits)

    def with_max_attempts(self, max_attempts: int) -> Self:
        """Return a copy that may be attempted ``max_attempts`` times."""
        return dataclasses.replace(self, max_attempts=max_attempts)

    def with_meta(self, meta: dict[str, Any]) -> Self:
        """Return a copy with this metadata."""
        return dataclasses.replace(self, meta=meta)

    def with_priority(self, priority: int) -> Self:
        """Return a copy with this priority (higher runs first)."""
        return dataclasses.replace(self, priority=priority)

    def with_queue(self, queue: str) -> Self:
        """Return a copy bound for another queue."""
        return dataclasses.replace(self, queue=queue)

    def with_scheduled_at(self, scheduled_at: datetime) -> Self:
        """Return a copy that runs no earlier than ``scheduled_at``."""
        return dataclasses.replace(self, scheduled_at=scheduled_at)

    def with_unique_key(self, unique_key: str) -> Self:
        """Return a copy with this unique key."""
        return dataclasses.replace(self, unique_key=unique_key)

    def pack(self) -> dict[str, Any]:
        """Pack the job into a JSON-compatible dict that :meth:`unpack` turns back into it."""
        return {
            "func": self.func,
            "queue": self.queue,
            "kwargs": self.kwargs,
            "priority": self.priority,
            "max_attempts": self.max_attempts,
            # In UTC: fromisoformat() drops an offset's microseconds, so the instant could move.
            "scheduled_at": self.scheduled_at.astimezone(UTC).isoformat(),
            "limits": [limit.serialize() for limit in self.limits],
            "unique_key": self.unique_key,
            "meta": self.meta,
        }

    @classmethod
    def unpack(cls, data: dict[str, Any]) -> Self:
        """Unpack a dict made by :meth:`pack` into a job."""
        values = dict(data)
        try:
            if isinstance(values.get("scheduled_at"), str):
                values["scheduled_at"] = datetime.fromisoformat(values["scheduled_at"])
            values["limits"] = [Limit.deserialize(limit) for limit in values.get("limits") or []]
            if isinstance(values.get("state"), str):
                values["state"] = QueuedJob.State(values["state"])
            for key in ("started_at", "completed_at"):
                if isinstance(values.get(key), str):
                    values[key] = datetime.fromisoformat(values[key])
            return cls(**values)
        except (TypeError, ValueError) as exc:
            if isinstance(exc, InvalidJobError):
                raise
            raise InvalidJobError(f"cannot unpack a {cls.__name__} from {data!r}: {exc}") from None


@dataclass(frozen=True, kw_only=True)
class QueuedJob(Job):
    """A job that has been pushed onto a queue, with the state the queue keeps
    about it (its attempts, errors and timestamps)."""

    class State(enum.Enum):
        """Where a job is in its life. ``succeeded`` and ``failed`` are final."""

        PENDING = "pending"
        RUNNING = "running"
        SUCCEEDED = "succeeded"
        FAILED = "failed"
        RETRYING = "retrying"

    id: str
    """The unique identifier of this job instance."""
    started_at: datetime | None = None
    """When the current or last attempt started."""
    completed_at: datetime | None = None
    """When the job reached a final state."""
    attempts: int = 0
    """How many times this job has been attempted."""
    state: State = State.PENDING
    """The current state of this job."""
    errors: list[ErrorT] = field(default_factory=list)
    """One entry per failed attempt."""
    result: Any = None
    """What the job's function returned (as JSON), once it succeeded; ``None`` until
    then, when it returned ``None``, or when the result could not be stored (see
    :attr:`result_error`)."""
    result_error: str | None = None
    """Why a successful job's result was not stored (not JSON-serializable, larger than
    the worker's ``max_result_bytes``, or not sent back by its process); ``None`` if it
    was."""
    progress: ProgressT | None = None
    """The progress the job last reported (:meth:`set_progress`), ``None`` if none."""

    def set_progress(self, fraction: float, message: str | None = None) -> None:
        """Report how far this job is, from inside it (``job_context.set_progress(0.5,
        "half way")``): ``fraction`` from 0.0 to 1.0 and an optional message.

        Never blocks: the worker writes the latest value to the job's ``progress`` every
        ``progress_interval`` seconds at most, and the last one with the job's outcome.
        Works in every executor; outside a worker (a plain call of the function) it does
        nothing. Raises :class:`ValueError` for a fraction outside 0..1 or a message
        that is not a string."""
        if (
            isinstance(fraction, bool)
            or not isinstance(fraction, int | float)
            or not 0.0 <= fraction <= 1.0
        ):
            raise ValueError(
                f"progress fraction must be a number from 0.0 to 1.0, not {fraction!r}"
            )
        if message is not None and not isinstance(message, str):
            raise ValueError(f"progress message must be a string or None, not {message!r}")
        sink = progress_sinks.get(self.id)
        if sink is not None:
            sink(float(fraction), message)

    @classmethod
    def from_trusted(cls, **fields: Any) -> Self:
        """Build from every field without validating them: for rows read back from the
        database, whose columns the schema already constrains (validating each claimed
        job would cost more than running a small one). Pass every field."""
        job = object.__new__(cls)
        job.__dict__.update(fields)
        return job

    def pack(self) -> dict[str, Any]:
        """Pack the job and its state into a JSON-compatible dict."""
        return {
            **super().pack(),
            "id": self.id,
            "started_at": self.started_at.astimezone(UTC).isoformat() if self.started_at else None,
            "completed_at": (
                self.completed_at.astimezone(UTC).isoformat() if self.completed_at else None
            ),
            "attempts": self.attempts,
            "state": self.state.value,
            "errors": list(self.errors),
            "result": self.result,
            "result_error": self.result_error,
            "progress": None if self.progress is None else dict(self.progress),
        }


@dataclass(frozen=True, slots=True, eq=False)
class Reference:
    """References a job in the queue; returned by ``push``, ``push_many`` and
    ``push_many_ex``. Compares equal to another Reference or to its identifier."""

    identifier: str

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Reference):
            return self.identifier == other.identifier
        if isinstance(other, str):
            return self.identifier == other
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self.identifier)

    def __str__(self) -> str:
        return self.identifier


class IsAJob(Protocol, Generic[P, R]):
    """A function decorated with :func:`job`: still callable, with a ``job`` attribute."""

    job: Job

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Call the function itself (not a push)."""


def job(**options: Any) -> Callable[[Callable[P, R]], IsAJob[P, R]]:
    """Turn a module-level function into a job, keeping it callable.

    ``options`` are :class:`Job` fields (``queue=``, ``priority=``, ...). The
    function gains a ``job`` attribute to push or adjust, and is registered so
    that a worker restricted to registered jobs may run it::

        @job(queue="emails")
        def send(to: str) -> None: ...

        await chancy.push(send)
        await chancy.push(send.job.with_kwargs(to="a@example.com"))
    """

    def decorate(func: Callable[P, R]) -> IsAJob[P, R]:
        template = Job.from_func(func, **options)
        func.job = template  # type: ignore[attr-defined]
        registered_jobs[template.func] = func
        return func  # type: ignore[return-value]

    return decorate
