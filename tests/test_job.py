"""The job model (chancy_core.job), as documented in the reference: no database needed."""

from __future__ import annotations

import dataclasses
import functools
import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chancy_core import ErrorT, Job, Limit, QueuedJob, Reference, job
from chancy_core.errors import ChancyError, InvalidJobError
from chancy_core.job import registered_jobs


def module_level(x: int = 0) -> int:
    return x + 1


async def module_level_async() -> None:
    return None


# --- strategies ----------------------------------------------------------------------------

names = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,8}", fullmatch=True)
funcs = st.builds(lambda parts: ".".join(parts), st.lists(names, min_size=2, max_size=4))
queues = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,30}", fullmatch=True)
texts = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=12)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False, min_value=-1e15, max_value=1e15)
    | texts,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(texts, children, max_size=3),
    max_leaves=8,
)
offsets = st.builds(
    timezone, st.timedeltas(min_value=timedelta(hours=-23), max_value=timedelta(hours=23))
)
aware_datetimes = st.datetimes(
    min_value=datetime(1, 1, 3), max_value=datetime(9999, 12, 28), timezones=offsets
)
limits = st.builds(Limit, st.sampled_from(Limit.Type), st.integers(1, 2**63 - 1))
job_fields = st.fixed_dictionaries(
    {
        "func": funcs,
        "queue": queues,
        "kwargs": st.none() | st.dictionaries(texts, json_values, max_size=4),
        "priority": st.integers(-(2**31) + 1, 2**31 - 1),
        "max_attempts": st.integers(1, 2**31 - 1),
        "scheduled_at": aware_datetimes,
        "limits": st.lists(limits, max_size=3),
        "unique_key": st.none()
        | st.text(st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1),
        "meta": st.dictionaries(texts, json_values, max_size=4),
    }
)
error_entries = st.builds(lambda a, t: ErrorT(attempt=a, traceback=t), st.integers(0, 99), texts)


# --- Job: construction ----------------------------------------------------------------------


def test_job_fields_are_keyword_only():
    with pytest.raises(TypeError):
        Job("mod.func")  # type: ignore[misc]


def test_job_is_frozen():
    j = Job(func="mod.func")
    with pytest.raises(dataclasses.FrozenInstanceError):
        j.queue = "other"  # type: ignore[misc]


def test_job_defaults_match_the_reference():
    before = datetime.now(UTC)
    j = Job(func="mod.func")
    after = datetime.now(UTC)
    assert j.queue == "default"
    assert j.kwargs == {}
    assert j.priority == 0
    assert j.max_attempts == 1
    assert before <= j.scheduled_at <= after
    assert j.scheduled_at.tzinfo is not None
    assert j.limits == []
    assert j.unique_key is None
    assert j.meta == {}


def test_job_default_containers_are_not_shared_between_jobs():
    a, b = Job(func="mod.func"), Job(func="mod.func")
    assert a.kwargs is not b.kwargs
    assert a.meta is not b.meta
    assert a.limits is not b.limits


def test_job_kwargs_may_be_none():
    assert Job(func="mod.func", kwargs=None).kwargs is None


def test_jobs_with_equal_fields_are_equal():
    at = datetime(2030, 1, 1, tzinfo=UTC)
    assert Job(func="m.f", scheduled_at=at) == Job(func="m.f", scheduled_at=at)
    assert Job(func="m.f", scheduled_at=at) != Job(func="m.g", scheduled_at=at)


# --- Job.from_func ---------------------------------------------------------------------------


def test_from_func_names_a_module_level_function_by_its_import_path():
    assert Job.from_func(module_level).func == f"{__name__}.module_level"
    assert Job.from_func(module_level_async).func == f"{__name__}.module_level_async"


def test_from_func_passes_other_fields_through():
    j = Job.from_func(module_level, queue="emails", priority=7, kwargs={"x": 1})
    assert (j.queue, j.priority, j.kwargs) == ("emails", 7, {"x": 1})


def test_from_func_refuses_a_lambda_saying_to_define_it_at_module_level():
    with pytest.raises(InvalidJobError, match=r"cannot be imported by a worker.*module level"):
        Job.from_func(lambda: None)


def test_from_func_refuses_a_nested_function_saying_to_define_it_at_module_level():
    def nested() -> None:
        pass

    with pytest.raises(InvalidJobError, match=r"<locals>.*module level"):
        Job.from_func(nested)


def test_from_func_accepts_a_function_defined_in_main():
    namespace: dict[str, Any] = {"__name__": "__main__"}
    exec("def hello():\n    return 'hi'\n", namespace)
    assert Job.from_func(namespace["hello"]).func == "__main__.hello"


def test_from_func_names_the_function_behind_functools_wraps():
    @functools.wraps(module_level)
    def wrapper(*args: Any, **kwargs: Any) -> int:
        return module_level(*args, **kwargs)

    assert Job.from_func(wrapper).func == f"{__name__}.module_level"


def test_from_func_refuses_an_object_without_an_importable_name():
    with pytest.raises(InvalidJobError, match="module-level function"):
        Job.from_func(functools.partial(module_level, 1))


# --- Job.with_* --------------------------------------------------------------------------------

LATER = datetime(2031, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)
WITH_CASES = [
    ("with_queue", ("emails",), "queue", "emails"),
    ("with_priority", (9,), "priority", 9),
    ("with_max_attempts", (4,), "max_attempts", 4),
    ("with_scheduled_at", (LATER,), "scheduled_at", LATER),
    ("with_limits", ([Limit(Limit.Type.TIME, 5)],), "limits", [Limit(Limit.Type.TIME, 5)]),
    ("with_unique_key", ("k-1",), "unique_key", "k-1"),
    ("with_meta", ({"p": 1},), "meta", {"p": 1}),
]


@pytest.mark.parametrize(("method", "args", "field", "value"), WITH_CASES)
def test_with_method_returns_a_copy_with_only_that_field_changed(method, args, field, value):
    original = Job(func="mod.func", kwargs={"a": 1})
    changed = getattr(original, method)(*args)
    assert getattr(changed, field) == value
    assert changed == dataclasses.replace(original, **{field: value})
    assert getattr(original, field) != value  # the original is untouched


def test_with_kwargs_replaces_the_keyword_arguments():
    original = Job(func="mod.func", kwargs={"a": 1})
    changed = original.with_kwargs(b=2)
    assert changed.kwargs == {"b": 2}
    assert original.kwargs == {"a": 1}


def test_with_method_validates_the_new_value():
    with pytest.raises(InvalidJobError, match="priority"):
        Job(func="mod.func").with_priority("high")  # type: ignore[arg-type]
    with pytest.raises(InvalidJobError, match="queue name"):
        Job(func="mod.func").with_queue("no spaces allowed")


def test_with_method_on_a_queued_job_keeps_its_state():
    queued = QueuedJob(func="mod.func", id="abc", attempts=2, state=QueuedJob.State.RETRYING)
    changed = queued.with_priority(3)
    assert isinstance(changed, QueuedJob)
    assert (changed.id, changed.attempts, changed.state) == ("abc", 2, QueuedJob.State.RETRYING)


# --- pack / unpack ---------------------------------------------------------------------------


def full_job() -> Job:
    return Job(
        func="pkg.mod.func",
        queue="q:1",
        kwargs={"a": [1, 2.5, None, True], "b": {"c": "ü"}},
        priority=-3,
        max_attempts=5,
        scheduled_at=datetime(2030, 1, 2, 3, 4, 5, 678901, tzinfo=timezone(timedelta(hours=2))),
        limits=[Limit(Limit.Type.TIME, 30), Limit(Limit.Type.MEMORY, 2**28)],
        unique_key="once",
        meta={"plugin": {"n": 1}},
    )


def test_pack_gives_json_that_unpacks_to_an_equal_job():
    j = full_job()
    packed = json.loads(json.dumps(j.pack()))
    assert Job.unpack(packed) == j


def test_queued_job_pack_unpack_round_trips_its_state():
    queued = QueuedJob(
        **{f.name: getattr(full_job(), f.name) for f in dataclasses.fields(Job)},
        id="0190a1b2-0000-7000-8000-000000000000",
        started_at=datetime(2030, 1, 2, 3, 5, tzinfo=UTC),
        completed_at=datetime(2030, 1, 2, 3, 6, tzinfo=UTC),
        attempts=2,
        state=QueuedJob.State.FAILED,
        errors=[ErrorT(attempt=1, traceback="boom"), ErrorT(attempt=2, traceback="again")],
    )
    packed = json.loads(json.dumps(queued.pack()))
    assert packed["state"] == "failed"
    assert QueuedJob.unpack(packed) == queued


@given(job_fields)
def test_any_valid_job_round_trips_through_pack_and_json(fields):
    j = Job(**fields)
    assert Job.unpack(json.loads(json.dumps(j.pack()))) == j


@given(
    job_fields,
    st.sampled_from(QueuedJob.State),
    st.integers(0, 100),
    st.none() | aware_datetimes,
    st.lists(error_entries, max_size=3),
)
def test_any_queued_job_round_trips_through_pack_and_json(fields, state, attempts, at, errors):
    queued = QueuedJob(
        **fields, id="x", state=state, attempts=attempts, started_at=at, errors=errors
    )
    assert QueuedJob.unpack(json.loads(json.dumps(queued.pack()))) == queued


def test_unpack_of_a_queued_job_as_a_plain_job_is_refused():
    data = QueuedJob(func="m.f", id="x").pack()
    with pytest.raises(InvalidJobError, match="cannot unpack a Job"):
        Job.unpack(data)


@pytest.mark.parametrize(
    "data",
    [
        {},
        {"func": "m.f", "scheduled_at": "not a date"},
        {"func": "m.f", "limits": [{"t": "time"}]},
        {"func": "m.f", "unknown_field": 1},
        {"func": 42},
    ],
)
def test_unpack_of_malformed_data_raises_invalid_job_error(data):
    with pytest.raises(InvalidJobError):
        Job.unpack(data)


# --- QueuedJob ------------------------------------------------------------------------------


def test_queued_job_is_a_job_with_state_defaults():
    queued = QueuedJob(func="mod.func", id="abc")
    assert isinstance(queued, Job)
    assert queued.attempts == 0
    assert queued.state is QueuedJob.State.PENDING
    assert queued.errors == []
    assert queued.started_at is None
    assert queued.completed_at is None


def test_queued_job_requires_an_id():
    with pytest.raises(TypeError):
        QueuedJob(func="mod.func")  # type: ignore[call-arg]


def test_queued_job_states_are_the_documented_five():
    assert {s.value for s in QueuedJob.State} == {
        "pending",
        "running",
        "succeeded",
        "failed",
        "retrying",
    }


def test_error_entry_has_attempt_and_traceback():
    assert ErrorT.__required_keys__ == frozenset({"attempt", "traceback"})


# --- Limit ----------------------------------------------------------------------------------


@pytest.mark.parametrize("limit", [Limit(Limit.Type.TIME, 30), Limit(Limit.Type.MEMORY, 2**30)])
def test_limit_serialize_gives_json_that_deserializes_to_an_equal_limit(limit):
    assert Limit.deserialize(json.loads(json.dumps(limit.serialize()))) == limit


@given(limits)
def test_any_limit_round_trips_through_serialize(limit):
    assert Limit.deserialize(limit.serialize()) == limit


def test_limit_accepts_its_type_by_value():
    assert Limit("time", 5) == Limit(Limit.Type.TIME, 5)  # type: ignore[arg-type]


def test_limit_types_are_time_and_memory():
    assert {t.value for t in Limit.Type} == {"time", "memory"}


def test_limit_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        Limit(Limit.Type.TIME, 5).value = 6  # type: ignore[misc]


@pytest.mark.parametrize("data", [{}, {"t": "time"}, {"t": "cpu", "v": 1}, {"t": "time", "v": 0}])
def test_limit_deserialize_of_malformed_data_raises_invalid_job_error(data):
    with pytest.raises(InvalidJobError, match="invalid"):
        Limit.deserialize(data)


# --- Reference ----------------------------------------------------------------------------


def test_reference_equals_a_reference_with_the_same_identifier():
    assert Reference("a") == Reference("a")
    assert Reference("a") != Reference("b")


def test_reference_equals_its_identifier_string():
    assert Reference("a") == "a"
    assert "a" == Reference("a")  # noqa: SIM300 (the reflected comparison is the point)
    assert Reference("a") != "b"


def test_reference_is_not_equal_to_other_types():
    assert Reference("1") != 1
    assert Reference("a") != None  # noqa: E711


def test_reference_hashes_like_its_identifier():
    refs = {Reference("a"): 1}
    assert refs[Reference("a")] == 1
    assert refs["a"] == 1
    assert len({Reference("a"), Reference("a"), "a"}) == 1


def test_reference_str_is_its_identifier():
    assert str(Reference("abc")) == "abc"


def test_reference_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        Reference("a").identifier = "b"  # type: ignore[misc]


# --- @job ---------------------------------------------------------------------------------


@job(queue="emails", priority=5, max_attempts=3)
def decorated_send(to: str) -> str:
    return f"sent to {to}"


@job()
def decorated_plain() -> str:
    return "plain"


def test_job_decorator_keeps_the_function_callable():
    assert decorated_send("a@example.com") == "sent to a@example.com"
    assert decorated_plain() == "plain"


def test_job_decorator_attaches_a_job_carrying_the_options():
    template = decorated_send.job
    assert isinstance(template, Job)
    assert template.func == f"{__name__}.decorated_send"
    assert (template.queue, template.priority, template.max_attempts) == ("emails", 5, 3)
    assert decorated_plain.job.queue == "default"


def test_job_decorator_registers_the_function_by_its_import_path():
    assert registered_jobs[f"{__name__}.decorated_send"] is decorated_send


def test_job_decorator_template_can_be_adjusted_before_pushing():
    adjusted = decorated_send.job.with_kwargs(to="b@example.com").with_queue("low")
    assert (adjusted.kwargs, adjusted.queue) == ({"to": "b@example.com"}, "low")
    assert decorated_send.job.queue == "emails"


def test_job_decorator_refuses_a_nested_function():
    with pytest.raises(InvalidJobError, match="module level"):

        @job()
        def nested() -> None:
            pass


def test_job_decorator_refuses_invalid_options_at_decoration_time():
    with pytest.raises(ChancyError, match="priority"):
        job(priority="urgent")(module_level)
    assert not hasattr(module_level, "job")


def test_with_kwargs_copies_every_other_field_like_replace():
    base = Job(func="a.b", queue="q", priority=3, meta={"m": 1}, unique_key="k")
    copy = base.with_kwargs(x=1)
    assert copy == dataclasses.replace(base, kwargs={"x": 1})
    assert base.kwargs == {}  # the original is unchanged
    queued = QueuedJob.from_trusted(
        **{
            **dataclasses.asdict(base),
            "id": "i",
            "state": QueuedJob.State.PENDING,
            "started_at": None,
            "completed_at": None,
            "attempts": 0,
            "errors": [],
        }
    )
    assert queued.with_kwargs(y=2) == dataclasses.replace(queued, kwargs={"y": 2})


def test_names_seen_valid_do_not_let_invalid_values_through():
    Job(func="a.b", queue="q")  # the fast path now knows these names
    with pytest.raises(InvalidJobError, match="priority"):
        Job(func="a.b", queue="q", priority=True)
    with pytest.raises(InvalidJobError, match="kwargs"):
        Job(func="a.b", queue="q", kwargs=[1])  # type: ignore[arg-type]
    with pytest.raises(InvalidJobError, match="scheduled_at"):
        Job(func="a.b", queue="q", scheduled_at=datetime(2020, 1, 1))
    with pytest.raises(InvalidJobError, match="func"):
        Job(func="a.b\n", queue="q")
