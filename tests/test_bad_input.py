"""Bad input fails with a specific ChancyError that says what to do, and writes nothing.

The first part needs no database. The rest pushes through a real PostgreSQL: one
database for the module, since each case only has to prove that nothing was written.
"""

from __future__ import annotations

import math
import os
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg import sql

from chancy_core import Chancy, Job, Limit, Queue
from chancy_core.app import mask_dsn
from chancy_core.errors import (
    ChancyError,
    ConfigurationError,
    DatabaseUnavailableError,
    InvalidJobError,
    InvalidQueueError,
    JobNotFoundError,
)
from chancy_core.job import to_json
from chancy_core.testing import TEST_ADMIN_DSN_ENV, dsn_for_database

NOW = datetime(2030, 1, 1, tzinfo=UTC)


def plain_function() -> None:
    pass


# --- Job fields -----------------------------------------------------------------------------

BAD_JOB_FIELDS = [
    ("func", "", "importable name"),
    ("func", "nodots", "importable name"),
    ("func", "1mod.func", "importable name"),
    ("func", "mod.func\n", "importable name"),
    ("func", "os.system; rm -rf /", "importable name"),
    ("func", 42, "importable name"),
    ("queue", "", "invalid queue name"),
    ("queue", "has space", "invalid queue name"),
    ("queue", "-leading", "invalid queue name"),
    ("queue", "default\n", "invalid queue name"),
    ("queue", "q" * 101, "invalid queue name"),
    ("queue", None, "invalid queue name"),
    ("kwargs", ["a"], "kwargs must be a dict"),
    ("kwargs", "a=1", "kwargs must be a dict"),
    ("meta", None, "meta must be a dict"),
    ("meta", [], "meta must be a dict"),
    ("priority", True, "use an integer"),
    ("priority", 1.5, "use an integer"),
    ("priority", "1", "use an integer"),
    ("priority", 2**31, "use an integer"),
    ("priority", -(2**31), "use an integer"),
    ("max_attempts", 0, "positive integer"),
    ("max_attempts", -1, "positive integer"),
    ("max_attempts", True, "positive integer"),
    ("max_attempts", 2.0, "positive integer"),
    ("max_attempts", 2**31, "positive integer"),
    ("scheduled_at", datetime(2030, 1, 1), "timezone-aware"),
    ("scheduled_at", "2030-01-01T00:00:00+00:00", "timezone-aware"),
    ("scheduled_at", datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=5))), "time between"),
    ("scheduled_at", datetime.max.replace(tzinfo=timezone(timedelta(hours=-5))), "time between"),
    ("limits", "30s", "list of Limit"),
    ("limits", [30], "list of Limit"),
    ("limits", (Limit(Limit.Type.TIME, 1),), "list of Limit"),
    ("unique_key", "", "non-empty string"),
    ("unique_key", "a\x00b", "without NUL"),
    ("unique_key", "\ud800", "lone surrogates"),
    ("unique_key", 7, "non-empty string"),
]


@pytest.mark.parametrize(("field", "value", "says"), BAD_JOB_FIELDS)
def test_invalid_job_field_raises_invalid_job_error_saying_what_to_use(field, value, says):
    with pytest.raises(InvalidJobError, match=says) as raised:
        Job(**{"func": "mod.func", field: value})
    assert isinstance(raised.value, ChancyError)
    assert isinstance(raised.value, ValueError)


@pytest.mark.parametrize("value", [0, -1, 1.5, True, "5", None, 2**63, 10**400])
def test_invalid_limit_value_raises_invalid_job_error_asking_for_a_positive_integer(value):
    with pytest.raises(InvalidJobError, match="use a positive integer"):
        Limit(Limit.Type.TIME, value)


def test_invalid_limit_type_raises_invalid_job_error_naming_the_valid_types():
    with pytest.raises(InvalidJobError, match=r"Limit\.Type\.TIME or Limit\.Type\.MEMORY"):
        Limit("cpu", 5)  # type: ignore[arg-type]


# --- JSON values ------------------------------------------------------------------------------


class Opaque:
    pass


NON_JSON = [
    ({"a": {1, 2}}, "not JSON-serializable"),
    ({"a": b"bytes"}, "not JSON-serializable"),
    ({"a": Opaque()}, "not JSON-serializable"),
    ({"a": NOW}, "not JSON-serializable"),
    ({"a": math.nan}, "not JSON-serializable"),
    ({"a": math.inf}, "not JSON-serializable"),
    ({"a": [-math.inf]}, "not JSON-serializable"),
    ({1: "a"}, "key 1 is not a string"),
    ({"a": {None: 1}}, "key None is not a string"),
    ({"a": [{(1, 2): 1}]}, "not JSON-serializable"),
    ({"a": {1: "x", "1": "y"}}, "key 1 is not a string"),
    ({"a": "x\x00y"}, "NUL character"),
    ({"a\x00": 1}, "NUL character"),
    ({"a": ["\\\x00"]}, "NUL character"),
    ({"a": "\ud800"}, "lone surrogate"),
    ({"a": "\udfff\ud800"}, "lone surrogate"),
]


@pytest.mark.parametrize(("value", "says"), NON_JSON)
def test_value_that_postgres_json_cannot_store_is_refused_saying_why(value, says):
    with pytest.raises(ValueError, match=says) as raised:
        to_json(value)
    assert "pass only" in str(raised.value) or "encode the value" in str(raised.value)


def test_deeply_nested_value_is_refused_not_crashed_on():
    deep: Any = []
    for _ in range(100_000):
        deep = [deep]
    with pytest.raises(ValueError, match="not JSON-serializable"):
        to_json({"a": deep})


def test_circular_value_is_refused():
    loop: list[Any] = []
    loop.append(loop)
    with pytest.raises(ValueError, match="Circular reference"):
        to_json({"a": loop})


# --- Queue fields --------------------------------------------------------------------------

BAD_QUEUE_FIELDS = [
    ("name", "", "invalid queue name"),
    ("name", "a b", "invalid queue name"),
    ("name", "q\n", "invalid queue name"),
    ("concurrency", 0, "concurrency must be an integer from 1 to 10000"),
    ("concurrency", 10_001, "concurrency must be an integer from 1 to 10000"),
    ("concurrency", True, "concurrency must be an integer from 1 to 10000"),
    ("concurrency", 2.0, "concurrency must be an integer from 1 to 10000"),
    ("executor", "gevent", "executor must be one of async, thread, process"),
    ("executor_options", [], "executor_options must be a dict"),
    ("executor_options", {"a": object()}, "executor_options is not JSON-serializable"),
    ("executor_options", {"a": math.nan}, "executor_options is not JSON-serializable"),
    ("executor_options", {"a": "\x00"}, "executor_options contains a NUL"),
    ("polling_interval", 0, "polling_interval must be a number of seconds"),
    ("polling_interval", math.nan, "polling_interval must be a number of seconds"),
    ("polling_interval", True, "polling_interval must be a number of seconds"),
    ("polling_interval", "1", "polling_interval must be a number of seconds"),
    ("rate_limit", 10, "give both rate_limit and rate_limit_window"),
    ("rate_limit_window", 10, "give both rate_limit and rate_limit_window"),
    ("tags", "gpu", "tags must be a set of strings"),
    ("tags", {""}, "tags must be non-empty strings"),
    ("tags", {"a\x00"}, "without NUL"),
    ("tags", {3}, "tags must be non-empty strings"),
    ("state", "stopped", "state must be 'active' or 'paused'"),
]


@pytest.mark.parametrize(("field", "value", "says"), BAD_QUEUE_FIELDS)
def test_invalid_queue_field_raises_invalid_queue_error_saying_what_to_use(field, value, says):
    fields: dict[str, Any] = {"name": "q", field: value}
    name = fields.pop("name")
    with pytest.raises(InvalidQueueError, match=says):
        Queue(name, **fields)


@pytest.mark.parametrize(("limit", "window"), [(0, 10), (10, 0), (True, 10), (10, 1.5)])
def test_non_positive_rate_limit_raises_invalid_queue_error(limit, window):
    with pytest.raises(InvalidQueueError, match="positive integer"):
        Queue("q", rate_limit=limit, rate_limit_window=window)


# --- DSN, prefix and app configuration ---------------------------------------------------------


@pytest.mark.parametrize(
    ("dsn", "masked"),
    [
        ("postgresql://u:s3cret@h:5432/db", "postgresql://u:***@h:5432/db"),
        ("postgres://u:s%40cret@h/db", "postgres://u:***@h/db"),
        ("postgresql://u:p@ss/w rd@h/db", "postgresql://u:***@h/db"),
        ("postgresql://u@h/db", "postgresql://u@h/db"),
        ("postgresql://h:5432/db", "postgresql://h:5432/db"),
        ("postgresql://u:x@h/db?password=s3cret", "postgresql://u:***@h/db?password=***"),
        ("host=h password=s3cret dbname=db", "host=h password=*** dbname=db"),
        ("host=h password = s3cret", "host=h password = ***"),
        ("host=h password='s3 c\\'ret' dbname=db", "host=h password=*** dbname=db"),
        ("host=h PASSWORD=s3cret", "host=h PASSWORD=***"),
        ("host=h dbname=db", "host=h dbname=db"),
    ],
)
def test_mask_dsn_hides_every_form_of_password(dsn, masked):
    assert mask_dsn(dsn) == masked


@pytest.mark.parametrize(
    "dsn",
    [
        "postgresql://u:s3cret@h/db?bogus",
        "postgresql://u:s3cret@h/db?x=1",
        "postgresql://u:s3%zzcret@h/db",
        "postgresql://u:s3 cret@h/db",
        "postgresql://u:s3cret@[h/db",
        "host=h password='s3cret",
    ],
)
def test_malformed_dsn_raises_configuration_error_with_password_masked(dsn):
    with pytest.raises(ConfigurationError, match="malformed DSN") as raised:
        Chancy(dsn)
    message = str(raised.value)
    assert "s3" not in message
    assert "***" in message
    assert "postgresql://user:password@host:5432/dbname" in message


def test_dsn_that_is_not_a_string_raises_configuration_error():
    with pytest.raises(ConfigurationError, match="must be a string"):
        Chancy(b"postgresql://h/db")  # type: ignore[arg-type]


def test_app_repr_masks_the_password():
    assert "s3cret" not in repr(Chancy("postgresql://u:s3cret@h/db"))


@pytest.mark.parametrize(
    "prefix",
    ['x"; drop table chancy_jobs; --', "Chancy_", "1abc", "", "a" * 31, "chancy_\n", "a-b", 5],
)
def test_unsafe_table_prefix_raises_configuration_error(prefix):
    with pytest.raises(ConfigurationError, match=r"invalid table prefix.*lowercase letters"):
        Chancy("postgresql://h/db", prefix=prefix)


@pytest.mark.parametrize(("low", "high"), [(0, 10), (5, 4)])
def test_invalid_pool_sizes_raise_configuration_error(low, high):
    with pytest.raises(ConfigurationError, match="min_connections"):
        Chancy("postgresql://h/db", min_connections=low, max_connections=high)


@pytest.mark.anyio
async def test_using_an_app_that_is_not_open_raises_configuration_error():
    with pytest.raises(ConfigurationError, match="async with Chancy"):
        await Chancy("postgresql://h/db").get_job(str(uuid.uuid4()))


@pytest.mark.anyio
async def test_pushing_something_that_is_not_a_job_raises_invalid_job_error():
    app = Chancy("postgresql://h/db")
    with pytest.raises(InvalidJobError, match="decorated with @job"):
        await app.push(plain_function)  # type: ignore[arg-type]
    with pytest.raises(InvalidJobError, match="decorated with @job"):
        await app.push_many([Job(func="m.f"), "m.f"])  # type: ignore[list-item]


@pytest.mark.anyio
@pytest.mark.parametrize("size", [0, -1, 1.5])
async def test_invalid_batch_size_raises_configuration_error(size):
    with pytest.raises(ConfigurationError, match="batch_size"):
        await Chancy("postgresql://h/db").push_many([Job(func="m.f")], batch_size=size)


@pytest.mark.anyio
@pytest.mark.parametrize("call", ["pause_queue", "resume_queue", "delete_queue", "get_queue"])
async def test_queue_admin_with_an_invalid_name_raises_configuration_error(call):
    with pytest.raises(ConfigurationError, match="invalid queue name"):
        await getattr(Chancy("postgresql://h/db"), call)("bad\x00name")


UNREACHABLE = "postgresql://someone:s3cret@127.0.0.1:1/db"


@pytest.mark.anyio
async def test_unreachable_server_raises_database_unavailable_with_password_masked():
    with pytest.raises(DatabaseUnavailableError, match="cannot connect") as raised:
        async with Chancy(UNREACHABLE, connect_timeout=1):
            pass
    assert "s3cret" not in str(raised.value)
    assert "postgresql://someone:***@127.0.0.1:1/db" in str(raised.value)
    assert isinstance(raised.value, ConnectionError)


def test_unreachable_server_raises_database_unavailable_from_sync_api_too():
    with pytest.raises(DatabaseUnavailableError, match="Check that PostgreSQL is running") as err:
        Chancy(UNREACHABLE, connect_timeout=1).sync_push(Job(func="m.f"))
    assert "s3cret" not in str(err.value)


@pytest.mark.db
def test_a_missing_database_says_to_create_it_from_the_python_api_too(postgres_dsn: str) -> None:
    """The advice fits libpq's reason (new-user trial L4): not "is PostgreSQL running?"."""
    # The reason comes from the server itself (through PgBouncer the pooler answers).
    server = os.environ.get(TEST_ADMIN_DSN_ENV) or postgres_dsn
    missing = dsn_for_database(server, f"chancy_missing_{uuid.uuid4().hex[:8]}")
    with pytest.raises(DatabaseUnavailableError, match="Create the database") as err:
        Chancy(missing, connect_timeout=5).sync_push(Job(func="m.f"))
    assert "\n" not in str(err.value) and "Check that PostgreSQL is running" not in str(err.value)


# --- pushing bad input into a real database -------------------------------------------------


@pytest.fixture(scope="module")
def shared_app(postgres_dsn: str, template_database: str) -> Iterator[Chancy]:
    """One migrated database for the module's push cases, opened with the sync API."""
    name = f"chancy_bad_input_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_dsn, autocommit=True) as admin:
        admin.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                sql.Identifier(name), sql.Identifier(template_database)
            )
        )
    with Chancy(dsn_for_database(postgres_dsn, name)) as app:
        yield app
    with psycopg.connect(postgres_dsn, autocommit=True) as admin:
        admin.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


def job_count(app: Chancy) -> int:
    with app.sync_connect() as conn:
        row = conn.execute("SELECT count(*) FROM chancy_jobs").fetchone()
    assert row is not None
    return int(row[0])


def clear_jobs(app: Chancy) -> None:
    with app.sync_connect() as conn:
        conn.execute("DELETE FROM chancy_jobs")


@pytest.mark.db
@pytest.mark.parametrize(("value", "says"), NON_JSON)
@pytest.mark.parametrize("field", ["kwargs", "meta"])
def test_pushing_non_json_kwargs_or_meta_raises_invalid_job_error_and_writes_nothing(
    shared_app, field, value, says
):
    before = job_count(shared_app)
    with pytest.raises(InvalidJobError, match=f"{field} of job m.f .*{says}"):
        shared_app.sync_push(Job(func="m.f", **{field: value}))
    assert job_count(shared_app) == before


@pytest.mark.db
def test_a_batch_with_one_bad_job_writes_none_of_its_jobs(shared_app):
    before = job_count(shared_app)
    good = [Job(func="m.f", kwargs={"i": i}) for i in range(5)]
    with pytest.raises(InvalidJobError, match="NUL character"):
        shared_app.sync_push_many([*good, Job(func="m.f", kwargs={"s": "\x00"})], batch_size=2)
    assert job_count(shared_app) == before


@pytest.mark.db
@pytest.mark.parametrize("ref", ["not-a-uuid", "", "1234"])
def test_getting_a_job_by_a_malformed_reference_raises_job_not_found(shared_app, ref):
    with pytest.raises(JobNotFoundError, match="use the Reference that push"):
        shared_app.sync_get_job(ref)


@pytest.mark.db
def test_declaring_something_that_is_not_a_queue_raises_configuration_error(shared_app):
    with pytest.raises(ConfigurationError, match="takes a Queue"):
        shared_app.sync_declare("default")  # type: ignore[arg-type]


def stored_row(app: Chancy, ref: object, *, time_zone: str = "UTC") -> tuple[Any, ...]:
    """``(kwargs, meta, kwargs->>'a', scheduled_at)`` of a job as PostgreSQL has it, read
    with plain psycopg (not chancy's loaders) in a session of ``time_zone``."""
    with psycopg.connect(app.dsn) as conn:  # one transaction: SET LOCAL (also behind PgBouncer)
        conn.execute(sql.SQL("SET LOCAL TIME ZONE {}").format(sql.Literal(time_zone)))
        row = conn.execute(
            app.schema.compose(
                "SELECT kwargs, meta, kwargs->>'a', scheduled_at FROM {jobs} WHERE id = %s"
            ),
            (uuid.UUID(str(ref)),),
        ).fetchone()
    assert row is not None, f"job {ref} was not written"
    return tuple(row)


# The storable range's edges (job.py's _EARLIEST and _LATEST), also written with offsets.
SCHEDULED_EDGES = [
    datetime(1, 1, 2, tzinfo=UTC),
    datetime(1, 1, 2, 5, tzinfo=timezone(timedelta(hours=5))),
    datetime(9999, 12, 30, tzinfo=UTC),
    datetime(9999, 12, 29, 19, tzinfo=timezone(timedelta(hours=-5))),
]


@pytest.mark.db
@pytest.mark.parametrize("at", SCHEDULED_EDGES, ids=str)
def test_scheduled_at_at_the_edges_of_the_storable_range_is_stored_and_read_back(shared_app, at):
    """Stored exactly, and readable back as a datetime in any session time zone (the
    edges are a day inside Python's range so that UTC-12 and UTC+14 still fit)."""
    ref = shared_app.sync_push(Job(func="m.f", scheduled_at=at))
    got = shared_app.sync_get_job(ref)
    assert got is not None
    assert got.scheduled_at == at
    for zone, hours in (("UTC", 0), ("Etc/GMT+12", -12), ("Etc/GMT-14", 14)):  # POSIX signs
        read = stored_row(shared_app, ref, time_zone=zone)[3]
        assert read == at, zone
        assert read.utcoffset() == timedelta(hours=hours), zone  # read in that zone


# What to_json's documented rule lets through: text that only looks like a NUL escape
# (the six characters \u0000, which jsonb keeps as text), escaped backslashes, non-ASCII
# and line separators. A real NUL ("\x00", or \u0000 after an even number of backslashes
# in the JSON text) is refused instead: NON_JSON above, which writes nothing.
STORABLE = [
    {"a": "\\u0000"},  # the six characters \u0000, not a NUL
    {"a": "\\\\u0000"},  # a backslash, then the six characters
    {"a": "x\\u0000y", "\\u0000": 1},
    {"a": "😀 ü \u2028"},
    {"a": [1, 2.5, None, True, {"b": []}]},
    {},
]


@pytest.mark.db
@pytest.mark.parametrize("value", STORABLE, ids=repr)
def test_storable_value_is_stored_and_read_back_identically(shared_app, value):
    ref = shared_app.sync_push(Job(func="m.f", kwargs=value, meta=value))
    got = shared_app.sync_get_job(ref)
    assert got is not None
    assert (got.kwargs, got.meta) == (value, value)
    kwargs, meta, a, _ = stored_row(shared_app, ref)
    assert (kwargs, meta) == (value, value)
    if isinstance(value.get("a"), str):  # the server's own text of it, too
        assert a == value["a"]


# --- property: any push either round-trips exactly or fails cleanly ------------------------

NUL_AND_SURROGATES = st.sampled_from(["\x00", "\ud800", "\udfff"])
any_text = st.text(st.characters() | NUL_AND_SURROGATES, max_size=8)
clean_text = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=8)
json_leaves = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False, min_value=-1e15, max_value=1e15)
    | clean_text
)
bad_leaves = st.sampled_from([math.nan, math.inf, b"x", frozenset({1}), NOW, Opaque()]) | any_text
valid_json = st.recursive(
    json_leaves,
    lambda kids: st.lists(kids, max_size=3) | st.dictionaries(clean_text, kids, max_size=3),
    max_leaves=8,
)
any_json = st.recursive(
    json_leaves | bad_leaves,
    lambda kids: (
        st.lists(kids, max_size=3)
        | st.dictionaries(any_text | st.integers() | st.none() | st.booleans(), kids, max_size=3)
    ),
    max_leaves=8,
)
offsets = st.builds(
    timezone,
    st.timedeltas(min_value=timedelta(hours=-23), max_value=timedelta(hours=23)),
)
valid_times = st.datetimes(
    min_value=datetime(1, 1, 3), max_value=datetime(9999, 12, 28), timezones=offsets
)
valid_limits = st.lists(
    st.builds(Limit, st.sampled_from(Limit.Type), st.integers(1, 2**62)), max_size=2
)
FUNC_PATTERN = r"[A-Za-z_][A-Za-z0-9_]{0,6}(\.[A-Za-z_][A-Za-z0-9_]{0,6}){1,2}"
VALID_FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "func": st.from_regex(
        r"[A-Za-z_][A-Za-z0-9_]{0,6}(\.[A-Za-z_][A-Za-z0-9_]{0,6}){1,2}", fullmatch=True
    ),
    "queue": st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,12}", fullmatch=True),
    "kwargs": st.none() | st.dictionaries(clean_text, valid_json, max_size=3),
    "priority": st.integers(-(2**31) + 1, 2**31 - 1),
    "max_attempts": st.integers(1, 2**31 - 1),
    "scheduled_at": valid_times,
    "limits": valid_limits,
    "unique_key": st.none()
    | st.text(st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1),
    "meta": st.dictionaries(clean_text, valid_json, max_size=3),
}
ANY_FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "func": VALID_FIELDS["func"] | any_text,
    "queue": VALID_FIELDS["queue"] | any_text,
    "kwargs": st.none() | st.dictionaries(any_text, any_json, max_size=3) | any_json,
    "priority": st.integers() | st.booleans() | st.floats(),
    "max_attempts": st.integers() | st.booleans() | st.floats(),
    "scheduled_at": valid_times
    | st.datetimes()
    | st.datetimes(timezones=offsets)
    | st.just("2030-01-01"),
    "limits": valid_limits | st.lists(st.integers(), min_size=1, max_size=2),
    "unique_key": st.none() | any_text | st.integers(),
    "meta": st.dictionaries(any_text, any_json, max_size=3) | any_json,
}
DB_SETTINGS = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def assert_round_trips(app: Chancy, job: Job) -> None:
    ref = app.sync_push(job)
    got = app.sync_get_job(ref)
    assert got is not None
    assert got.id == ref
    for field in ("func", "queue", "kwargs", "priority", "max_attempts", "scheduled_at"):
        assert getattr(got, field) == getattr(job, field), field
    assert (got.limits, got.unique_key, got.meta) == (job.limits, job.unique_key, job.meta)
    assert (got.state, got.attempts, got.errors) == (got.State.PENDING, 0, [])


@pytest.mark.db
@DB_SETTINGS
@given(st.fixed_dictionaries(VALID_FIELDS))
def test_any_valid_job_round_trips_exactly_through_push_and_get(shared_app, fields):
    clear_jobs(shared_app)
    assert_round_trips(shared_app, Job(**fields))


@pytest.mark.db
@DB_SETTINGS
@given(st.fixed_dictionaries(ANY_FIELDS))
def test_any_job_either_round_trips_or_fails_with_chancy_error_writing_nothing(shared_app, fields):
    clear_jobs(shared_app)
    try:
        job = Job(**fields)
        assert_round_trips(shared_app, job)
    except ChancyError as exc:
        assert str(exc)
        assert job_count(shared_app) == 0


@pytest.mark.db
@DB_SETTINGS
@given(st.lists(st.sampled_from([None, "a", "b", "c"]), max_size=20), st.integers(1, 7))
def test_push_many_gives_one_row_per_unique_key_in_any_batching(shared_app, keys, batch_size):
    clear_jobs(shared_app)
    jobs = [Job(func="m.f", unique_key=key, kwargs={"i": i}) for i, key in enumerate(keys)]
    refs = shared_app.sync_push_many(jobs, batch_size=batch_size)
    assert len(refs) == len(jobs)
    unkeyed = [ref for ref, key in zip(refs, keys, strict=True) if key is None]
    assert len(set(unkeyed)) == len(unkeyed)
    for key in set(keys) - {None}:
        first = keys.index(key)
        assert {ref for ref, k in zip(refs, keys, strict=True) if k == key} == {refs[first]}
        got = shared_app.sync_get_job(refs[first])
        assert got is not None
        assert got.kwargs == {"i": first}  # the first job with the key is the one kept
    assert job_count(shared_app) == len(unkeyed) + len(set(keys) - {None})
