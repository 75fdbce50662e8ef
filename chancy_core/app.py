"""The application: DSN, connection pools, plugins, and every call that
reads or writes jobs and queues.

Each database operation is written once, as a generator that yields
``(statement, params)`` and receives the rows; the async API and the sync
twins (``sync_*``) differ only in the connection that runs it.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
import uuid
from collections.abc import Iterable, Sequence
from typing import Any, LiteralString, Self

import anyio
import pluggy
import psycopg
import psycopg.conninfo
import psycopg.errors
from psycopg import sql
from psycopg.adapt import AdaptersMap
from psycopg.types.json import Jsonb, set_json_loads
from psycopg_pool import AsyncConnectionPool, ConnectionPool

from chancy_core import events, hooks
from chancy_core import sql as q
from chancy_core.errors import (
    ConfigurationError,
    DatabaseUnavailableError,
    InvalidJobError,
    JobNotFoundError,
    SchemaMissingError,
)
from chancy_core.hooks import implemented
from chancy_core.job import (
    IsAJob,
    Job,
    QueuedJob,
    Reference,
    check_queue_name,
    to_json,
)
from chancy_core.migrations import MigrationSet, apply, load_migrations
from chancy_core.ops import Operation
from chancy_core.plugins import build_plugin_manager
from chancy_core.queue import Queue
from chancy_core.sql import job_from_row, queue_from_row

__all__ = ["COPY_MIN_JOBS", "DSN_ENV", "Chancy", "mask_dsn"]

log = logging.getLogger(__name__)

DSN_ENV = "CHANCY_DSN"
FINAL_STATES = frozenset({QueuedJob.State.SUCCEEDED, QueuedJob.State.FAILED})

AnyExecutor = (
    psycopg.AsyncConnection[Any]
    | psycopg.AsyncCursor[Any]
    | psycopg.Connection[Any]
    | psycopg.Cursor[Any]
)

# A URI's password runs to the last '@' (a password with a raw '@', '/' or space is a common
# mistake, and then masking must still hide all of it); a keyword's to the end of its value.
_SECRET = re.compile(
    r"(://[^:/@?#\s]*:)(.*)(@)|((?:password|passwd)\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)",
    re.IGNORECASE,
)


def mask_dsn(dsn: str) -> str:
    """Return ``dsn`` with any password replaced by ``***``."""

    def hide(match: re.Match[str]) -> str:
        if match[1] is not None:  # user:password@ (an empty password stays empty)
            return f"{match[1]}{'***' if match[2] else ''}{match[3]}"
        return f"{match[4]}***"

    return _SECRET.sub(hide, dsn)


def _mask_secrets_of(dsn: str, text: str) -> str:
    """``text`` (an error about ``dsn``) with ``dsn``'s passwords masked wherever they
    appear: libpq's messages about a malformed DSN may quote the password on its own."""
    for match in _SECRET.finditer(dsn):
        secret = (match[2] if match[1] is not None else match[5]).strip("'")
        if secret:
            text = text.replace(secret, "***")
    return mask_dsn(text)


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


#: From this many jobs without unique keys, push_many streams them with binary COPY
#: (measured against the INSERT: about 1.15x at 500, 1,000 and 10,000 a call, 0.9x at 100).
COPY_MIN_JOBS = 500


# jsonb's binary format is a version byte (1) and the JSON text: COPY sends the already
# checked text as is (declared bytea), instead of having psycopg encode it again.
_JSONB_EMPTY_OBJECT = b"\x01{}"
_JSONB_EMPTY_LIST = b"\x01[]"


def _jsonb(text: str) -> bytes:
    return b"\x01" + text.encode()


def _copy_rows(jobs: list[Job]) -> tuple[list[Reference], list[tuple[Any, ...]], list[str]]:
    """References, COPY_JOBS rows (every value checked first) and the queues of ``jobs``."""
    rows = []
    refs = []
    for job in jobs:
        job_id = uuid7()
        refs.append(Reference(str(job_id)))
        meta = _JSONB_EMPTY_OBJECT if job.meta == {} else _jsonb(_json(job.meta, "meta", job))
        limits = (
            _jsonb(json.dumps([limit.serialize() for limit in job.limits]))
            if job.limits
            else _JSONB_EMPTY_LIST
        )
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
    return refs, rows, sorted({job.queue for job in jobs})


def _single(statement: bytes, params: dict[str, Any]) -> Operation:
    yield statement, params


def _copyable(jobs: list[Job]) -> bool:
    return len(jobs) >= COPY_MIN_JOBS and all(job.unique_key is None for job in jobs)


def _job_id(ref: Reference | str) -> uuid.UUID:
    identifier = ref.identifier if isinstance(ref, Reference) else ref
    try:
        return uuid.UUID(identifier)
    except (TypeError, ValueError, AttributeError):
        raise JobNotFoundError(
            f"{identifier!r} is not a job reference: use the Reference that push() returned"
        ) from None


def _lost_connection(exc: psycopg.Error) -> bool:
    """Whether ``exc`` means the connection failed (not, say, a deadlock, which is also an
    ``OperationalError``): no SQLSTATE, connection exceptions (08) or a shutdown (57P)."""
    state = exc.sqlstate
    return state is None or state.startswith(("08", "57P"))


_decode = json.JSONDecoder().decode


def _loads(data: bytes | str) -> Any:
    """json.loads for jsonb values, short-cutting the empty ones most jobs have."""
    if len(data) == 2:
        if data == b"{}":
            return {}
        if data == b"[]":
            return []
    return _decode(data if isinstance(data, str) else data.decode())


#: The adapters of chancy's connections: psycopg's, with the faster jsonb loader.
ADAPTERS = AdaptersMap(psycopg.adapters)
set_json_loads(_loads, ADAPTERS)


class Chancy:
    """A chancy application: where jobs are pushed, read and administered.

    ``dsn`` is resolved in this order: the argument, ``$CHANCY_DSN``, else an
    embedded PostgreSQL (see :mod:`chancy_core.embedded`). Use it as an async
    or a sync context manager to open and close its connection pool::

        async with Chancy("postgresql://localhost/app") as chancy:
            await chancy.migrate()
            ref = await chancy.push(my_job)

    Several apps with different ``prefix`` share one database without
    colliding. ``plugins`` are plugin instances; installed plugins are also
    discovered (see :mod:`chancy_core.plugins`).
    """

    def __init__(
        self,
        dsn: str | None = None,
        *,
        plugins: Sequence[object] | None = None,
        prefix: str = "chancy_",
        autoload_plugins: bool | None = None,
        min_connections: int = 1,
        max_connections: int = 10,
        connect_timeout: float = 10.0,
    ) -> None:
        self.schema = q.Schema(prefix)
        if dsn is not None:
            self._check_dsn(dsn)
        if not 1 <= min_connections <= max_connections:
            raise ConfigurationError(
                "need 1 <= min_connections <= max_connections, got"
                f" {min_connections} and {max_connections}"
            )
        self._dsn = dsn
        self.min_connections = min_connections
        self.max_connections = max_connections
        self.connect_timeout = connect_timeout
        self.plugins: pluggy.PluginManager = build_plugin_manager(
            plugins, autoload=autoload_plugins
        )
        self._pool: AsyncConnectionPool[psycopg.AsyncConnection[Any]] | None = None
        self._sync_pool: ConnectionPool[psycopg.Connection[Any]] | None = None
        self._sync_lock = threading.Lock()

    # --- connections ---------------------------------------------------------------------

    @staticmethod
    def _check_dsn(dsn: str) -> None:
        if not isinstance(dsn, str):
            raise ConfigurationError(f"the DSN must be a string, not {type(dsn).__name__}")
        try:
            psycopg.conninfo.conninfo_to_dict(dsn)
        except psycopg.ProgrammingError as exc:
            raise ConfigurationError(
                f"malformed DSN {mask_dsn(dsn)!r} ({_mask_secrets_of(dsn, str(exc).strip())}): use"
                " 'postgresql://user:password@host:5432/dbname' or 'host=... dbname=...'"
            ) from None

    @property
    def dsn(self) -> str:
        """The resolved DSN (starting the embedded server if that is the default)."""
        if self._dsn is None:
            env = os.environ.get(DSN_ENV)
            if env:
                self._check_dsn(env)
                self._dsn = env
            else:
                from chancy_core.embedded import embedded_dsn

                self._dsn = embedded_dsn()
        return self._dsn

    def _connect_kwargs(self) -> dict[str, Any]:
        return {
            "autocommit": True,
            "connect_timeout": max(1, int(self.connect_timeout)),
            "context": ADAPTERS,
        }

    def _unavailable(self, exc: Exception) -> DatabaseUnavailableError:
        return DatabaseUnavailableError(
            f"cannot connect to {mask_dsn(self.dsn)!r}:"
            f" {_mask_secrets_of(self.dsn, str(exc).strip())}. Check that"
            " PostgreSQL is running and that the DSN (or CHANCY_DSN) is right"
        )

    async def connect(self) -> psycopg.AsyncConnection[Any]:
        """Open a dedicated connection (autocommit), outside the pool."""
        dsn = await anyio.to_thread.run_sync(lambda: self.dsn)
        try:
            return await psycopg.AsyncConnection.connect(dsn, **self._connect_kwargs())
        except psycopg.OperationalError as exc:
            raise self._unavailable(exc) from exc

    def sync_connect(self) -> psycopg.Connection[Any]:
        """Open a dedicated sync connection (autocommit), outside the pool."""
        try:
            return psycopg.Connection.connect(self.dsn, **self._connect_kwargs())
        except psycopg.OperationalError as exc:
            raise self._unavailable(exc) from exc

    async def open(self) -> None:
        """Open the async connection pool (done by ``async with``)."""
        if self._pool is not None:
            return
        probe = await self.connect()  # a clear error now rather than a pool timeout later
        await probe.close()
        pool: AsyncConnectionPool[psycopg.AsyncConnection[Any]] = AsyncConnectionPool(
            self.dsn,
            min_size=self.min_connections,
            max_size=self.max_connections,
            kwargs=self._connect_kwargs(),
            open=False,
            timeout=self.connect_timeout,
            name=f"chancy:{self.schema.prefix}",
        )
        await pool.open(wait=True, timeout=self.connect_timeout)
        self._pool = pool

    async def close(self) -> None:
        """Close the pools."""
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close()
        if self._sync_pool is not None:
            await anyio.to_thread.run_sync(self.sync_close)

    def sync_open(self) -> None:
        """Open the sync connection pool (done by ``with`` and by the first ``sync_*`` call)."""
        with self._sync_lock:
            if self._sync_pool is not None:
                return
            self.sync_connect().close()
            pool: ConnectionPool[psycopg.Connection[Any]] = ConnectionPool(
                self.dsn,
                min_size=self.min_connections,
                max_size=self.max_connections,
                kwargs=self._connect_kwargs(),
                open=False,
                timeout=self.connect_timeout,
                name=f"chancy-sync:{self.schema.prefix}",
            )
            pool.open(wait=True, timeout=self.connect_timeout)
            self._sync_pool = pool

    def sync_close(self) -> None:
        """Close the sync pool."""
        with self._sync_lock:
            if self._sync_pool is not None:
                pool, self._sync_pool = self._sync_pool, None
                pool.close()

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def __enter__(self) -> Self:
        self.sync_open()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.sync_close()

    @property
    def pool(self) -> AsyncConnectionPool[psycopg.AsyncConnection[Any]]:
        """The async pool; raises if the app was not opened."""
        if self._pool is None:
            raise ConfigurationError(
                "the app is not open: use `async with Chancy(...) as chancy:` or"
                " `await chancy.open()` first"
            )
        return self._pool

    def _sync_pool_opened(self) -> ConnectionPool[psycopg.Connection[Any]]:
        if self._sync_pool is None:
            self.sync_open()
        assert self._sync_pool is not None
        return self._sync_pool

    # --- running operations --------------------------------------------------------------

    def _translate(self, exc: psycopg.Error) -> Exception:
        if isinstance(exc, psycopg.errors.UndefinedTable):
            return SchemaMissingError(
                f"the tables of prefix {self.schema.prefix!r} do not exist: run"
                " `await chancy.migrate()` or `chancy migrate` first"
            )
        if isinstance(exc, psycopg.OperationalError) and _lost_connection(exc):
            return self._unavailable(exc)
        return exc

    async def _run(self, target: AnyExecutor, op: Operation) -> Any:
        try:
            step = next(op)
            while True:
                cur = await target.execute(*step)  # type: ignore[misc]
                rows = await cur.fetchall() if cur.description else []
                step = op.send(rows)
        except StopIteration as done:
            return done.value
        except psycopg.Error as exc:
            raise self._translate(exc) from exc

    def _run_sync(self, target: AnyExecutor, op: Operation) -> Any:
        try:
            step = next(op)
            while True:
                cur = target.execute(*step)
                rows = cur.fetchall() if cur.description else []  # type: ignore[union-attr]
                step = op.send(rows)
        except StopIteration as done:
            return done.value
        except psycopg.Error as exc:
            raise self._translate(exc) from exc

    async def execute(self, op: Operation, *, transaction: bool = False) -> Any:
        """Run an operation on a pooled connection (in one transaction if asked)."""
        try:
            async with self.pool.connection() as conn:
                if not transaction:
                    return await self._run(conn, op)
                async with conn.transaction():
                    return await self._run(conn, op)
        except psycopg.OperationalError as exc:
            raise self._translate(exc) from exc

    def sync_execute(self, op: Operation, *, transaction: bool = False) -> Any:
        """Run an operation on a pooled sync connection (in one transaction if asked)."""
        try:
            with self._sync_pool_opened().connection() as conn:
                if not transaction:
                    return self._run_sync(conn, op)
                with conn.transaction():
                    return self._run_sync(conn, op)
        except psycopg.OperationalError as exc:
            raise self._translate(exc) from exc

    # --- migrations ----------------------------------------------------------------------

    def migration_sets(self) -> list[MigrationSet]:
        """The core's migrations, then each plugin's, in registration order."""
        sets = [load_migrations("core", "chancy_core.migrations.core")]
        sets += [s for s in reversed(self.plugins.hook.chancy_migrations(app=self)) if s]
        return sets

    async def migrate(self) -> list[str]:
        """Apply every pending migration (core and plugins); return the ones applied.

        Idempotent, and safe when several processes call it at once.
        """
        conn = await self.connect()
        async with conn:
            return await apply(conn, self.schema, self.migration_sets())

    # --- pushing -------------------------------------------------------------------------

    def _as_jobs(self, jobs: Iterable[Job | IsAJob[..., Any]]) -> list[Job]:
        result: list[Job] = []
        for item in jobs:
            found = item if isinstance(item, Job) else getattr(item, "job", None)
            if not isinstance(found, Job):
                raise InvalidJobError(
                    f"cannot push {item!r}: push a Job, or a function decorated with @job"
                )
            result.append(found)
        if result and implemented(self.plugins.hook.chancy_before_push):
            hooks.call_sync_event(self.plugins.hook.chancy_before_push, app=self, jobs=result)
        return result

    def _push_op(self, jobs: list[Job]) -> Operation:
        if len(jobs) == 1 and jobs[0].unique_key is None:
            job = jobs[0]
            job_id = uuid7()
            yield (
                self.schema.render(q.INSERT_JOB),
                {
                    "id": job_id,
                    "queue": job.queue,
                    "func": job.func,
                    "kwargs": _json(job.kwargs, "kwargs", job),
                    "meta": _json(job.meta, "meta", job),
                    "priority": job.priority,
                    "max_attempts": job.max_attempts,
                    "scheduled_at": job.scheduled_at,
                    "limits": (
                        json.dumps([limit.serialize() for limit in job.limits])
                        if job.limits
                        else "[]"
                    ),
                    "channel": self.schema.channel,
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
            "limits": [
                json.dumps([limit.serialize() for limit in j.limits]) if j.limits else "[]"
                for j in jobs
            ],
            "unique_keys": [j.unique_key for j in jobs],
            "channel": self.schema.channel,
        }
        refs = [Reference(str(i)) for i in ids]
        positions = list(range(len(jobs)))  # where each row of params stands in `jobs`
        for _ in range(5):
            inserted = {row[0] for row in (yield self.schema.render(q.INSERT_JOBS), params)}
            conflicts = [
                n
                for n, (i, key) in enumerate(zip(params["ids"], params["unique_keys"], strict=True))
                if key is not None and i not in inserted
            ]
            if not conflicts:
                return refs
            keys = [params["unique_keys"][n] for n in conflicts]
            holders: dict[str, Any] = dict(
                (yield self.schema.render(q.SELECT_UNIQUE), {"keys": keys})
            )
            again = []
            for n, key in zip(conflicts, keys, strict=True):
                if key in holders:
                    refs[positions[n]] = Reference(str(holders[key]))
                else:  # the job holding the key finished meanwhile: insert this one again
                    again.append(n)
            if not again:
                return refs
            params = {
                k: [v[n] for n in again] if isinstance(v, list) else v for k, v in params.items()
            }
            positions = [positions[n] for n in again]
            params["ids"] = [uuid7() for _ in again]
            for n, new_id in zip(positions, params["ids"], strict=True):
                refs[n] = Reference(str(new_id))
        raise InvalidJobError("unique keys kept conflicting while pushing; try again")

    async def push(self, job: Job | IsAJob[..., Any]) -> Reference:
        """Push one job; return its reference (or the existing job's, for a duplicate
        ``unique_key``)."""
        return (await self.push_many([job]))[0]

    async def push_many(
        self, jobs: Iterable[Job | IsAJob[..., Any]], *, batch_size: int = 1000
    ) -> list[Reference]:
        """Push many jobs in one transaction, one statement per ``batch_size`` jobs (from
        :data:`COPY_MIN_JOBS` jobs without unique keys: one binary ``COPY``)."""
        found = self._as_jobs(jobs)
        batches = self._batches(found, batch_size)
        try:  # connecting and committing fail outside _run: say so as clearly
            if _copyable(found):
                copied, rows, queues = _copy_rows(found)
                async with self.pool.connection() as conn, conn.transaction():
                    try:
                        async with conn.cursor().copy(self.schema.render(q.COPY_JOBS)) as copy:
                            copy.set_types(q.COPY_JOBS_TYPES)
                            for row in rows:
                                await copy.write_row(row)
                    except psycopg.Error as exc:
                        raise self._translate(exc) from exc
                    params = {"queues": queues, "channel": self.schema.channel}
                    await self._run(conn, _single(self.schema.render(q.NOTIFY_PUSHED), params))
                return copied
            if len(batches) == 1:
                # One INSERT statement is atomic on its own (autocommit): no BEGIN and
                # COMMIT round trips. A unique-key conflict's retries need no snapshot.
                async with self.pool.connection() as conn:
                    one: list[Reference] = await self._run(conn, self._push_op(batches[0]))
                    return one
            async with self.pool.connection() as conn, conn.transaction():
                refs: list[Reference] = []
                for batch in batches:
                    refs += await self._run(conn, self._push_op(batch))
                return refs
        except psycopg.OperationalError as exc:
            raise self._translate(exc) from exc

    async def push_many_ex(
        self,
        target: psycopg.AsyncConnection[Any] | psycopg.AsyncCursor[Any],
        jobs: Iterable[Job | IsAJob[..., Any]],
        *,
        batch_size: int = 1000,
    ) -> list[Reference]:
        """Push jobs inside the caller's transaction (on its connection or cursor):
        a rollback leaves none of them behind."""
        refs: list[Reference] = []
        for batch in self._batches(self._as_jobs(jobs), batch_size):
            refs += await self._run(target, self._push_op(batch))
        return refs

    def sync_push(self, job: Job | IsAJob[..., Any]) -> Reference:
        """Sync twin of :meth:`push`."""
        return self.sync_push_many([job])[0]

    def sync_push_many(
        self, jobs: Iterable[Job | IsAJob[..., Any]], *, batch_size: int = 1000
    ) -> list[Reference]:
        """Sync twin of :meth:`push_many`."""
        found = self._as_jobs(jobs)
        batches = self._batches(found, batch_size)
        try:
            if _copyable(found):  # as push_many
                copied, rows, queues = _copy_rows(found)
                with self._sync_pool_opened().connection() as conn, conn.transaction():
                    try:
                        with conn.cursor().copy(self.schema.render(q.COPY_JOBS)) as copy:
                            copy.set_types(q.COPY_JOBS_TYPES)
                            for row in rows:
                                copy.write_row(row)
                    except psycopg.Error as exc:
                        raise self._translate(exc) from exc
                    params = {"queues": queues, "channel": self.schema.channel}
                    self._run_sync(conn, _single(self.schema.render(q.NOTIFY_PUSHED), params))
                return copied
            if len(batches) == 1:  # one statement: atomic without a transaction (push_many)
                with self._sync_pool_opened().connection() as conn:
                    one: list[Reference] = self._run_sync(conn, self._push_op(batches[0]))
                    return one
            with self._sync_pool_opened().connection() as conn, conn.transaction():
                refs: list[Reference] = []
                for batch in batches:
                    refs += self._run_sync(conn, self._push_op(batch))
                return refs
        except psycopg.OperationalError as exc:
            raise self._translate(exc) from exc

    def sync_push_many_ex(
        self,
        target: psycopg.Connection[Any] | psycopg.Cursor[Any],
        jobs: Iterable[Job | IsAJob[..., Any]],
        *,
        batch_size: int = 1000,
    ) -> list[Reference]:
        """Sync twin of :meth:`push_many_ex` (e.g. inside a Django or Flask transaction)."""
        refs: list[Reference] = []
        for batch in self._batches(self._as_jobs(jobs), batch_size):
            refs += self._run_sync(target, self._push_op(batch))
        return refs

    @staticmethod
    def _batches(jobs: list[Job], size: int) -> list[list[Job]]:
        if not isinstance(size, int) or size < 1:
            raise ConfigurationError(f"batch_size must be a positive integer, not {size!r}")
        return [jobs[i : i + size] for i in range(0, len(jobs), size)]

    # --- reading and cancelling ----------------------------------------------------------

    def _get_op(self, refs: Sequence[Reference | str]) -> Operation:
        ids = [_job_id(ref) for ref in refs]
        rows = yield self.schema.render(q.SELECT_JOBS), {"ids": ids}
        by_id = {str(row[0]): job_from_row(row) for row in rows}
        return [by_id.get(str(i)) for i in ids]

    async def get_job(self, ref: Reference | str) -> QueuedJob | None:
        """The job's current state, or ``None`` if it does not exist."""
        found: list[QueuedJob | None] = await self.execute(self._get_op([ref]))
        return found[0]

    async def get_jobs(self, refs: Sequence[Reference | str]) -> list[QueuedJob | None]:
        """Many jobs in one query, in the order of ``refs`` (``None`` where missing)."""
        found: list[QueuedJob | None] = await self.execute(self._get_op(refs))
        return found

    def sync_get_job(self, ref: Reference | str) -> QueuedJob | None:
        """Sync twin of :meth:`get_job`."""
        found: list[QueuedJob | None] = self.sync_execute(self._get_op([ref]))
        return found[0]

    def _cancel_op(self, refs: Sequence[Reference | str]) -> Operation:
        ids = [_job_id(ref) for ref in refs]
        params = {"ids": ids, "channel": self.schema.channel}
        rows = yield self.schema.render(q.CANCEL_JOBS), params
        return int(rows[0][0]) + int(rows[0][1]) if rows else 0

    async def cancel_job(self, ref: Reference | str) -> bool:
        """Cancel a job.

        A pending or retrying job fails at once and never starts; a running job
        is stopped by its worker (as a time limit would stop it) and fails. Both
        get an error entry saying they were cancelled, and are not retried. A
        job that already finished is left as it is. Returns whether anything was
        cancelled.
        """
        count: int = await self.execute(self._cancel_op([ref]), transaction=True)
        return count > 0

    # --- waiting -------------------------------------------------------------------------

    async def wait_for_job(
        self, ref: Reference | str, *, timeout: float | None = None, interval: float = 1.0
    ) -> QueuedJob:
        """Wait until the job succeeds or fails, and return it.

        Woken by a notification when the job finishes, and checks every
        ``interval`` seconds in case notifications are lost. Raises
        :class:`TimeoutError` after ``timeout`` seconds, and
        :class:`~chancy_core.errors.JobNotFoundError` if the job vanishes.
        """
        job_id = str(_job_id(ref))
        deadline = None if timeout is None else time.monotonic() + timeout
        listen = sql.SQL("LISTEN {}").format(sql.Identifier(self.schema.channel))
        waiting: LiteralString = (
            "SELECT count(pg_advisory_lock_shared(%s::int4, n)) FROM generate_series(0, %s) AS n"
        )
        conn: psycopg.AsyncConnection[Any] | None = None
        try:
            while True:
                try:
                    if conn is None or conn.closed:
                        conn = await self.connect()
                        # Before the read below: workers announce "done" only to waiters.
                        await conn.execute(
                            waiting,
                            (events.waiter_lock(self.schema.channel), events.WAITER_SLOTS - 1),
                        )
                        await conn.execute(listen)
                    found: QueuedJob | None = (await self._run(conn, self._get_op([job_id])))[0]
                except (psycopg.OperationalError, DatabaseUnavailableError) as exc:
                    log.warning("wait_for_job: database unavailable (%s); retrying", exc)
                    if conn is not None:
                        await conn.close()
                    conn = None
                    found = None
                    await anyio.sleep(min(interval, 1.0))
                    if deadline is not None and time.monotonic() > deadline:
                        raise TimeoutError(
                            f"job {job_id} did not finish within {timeout}s"
                        ) from exc
                    continue
                if found is None:
                    raise JobNotFoundError(f"job {job_id} does not exist (pruned or never pushed)")
                if found.state in FINAL_STATES:
                    return found
                wait = interval
                if deadline is not None:
                    wait = min(wait, deadline - time.monotonic())
                    if wait <= 0:
                        raise TimeoutError(
                            f"job {job_id} did not finish within {timeout}s (it is"
                            f" {found.state.value})"
                        )
                try:
                    async for note in conn.notifies(timeout=wait):
                        if events.finishes(note.payload, job_id):
                            break
                except psycopg.OperationalError:
                    await conn.close()
                    conn = None
        finally:
            if conn is not None:
                await conn.close()

    def sync_wait_for_job(
        self, ref: Reference | str, *, timeout: float | None = None, interval: float = 1.0
    ) -> QueuedJob:
        """Sync twin of :meth:`wait_for_job`."""
        job_id = str(_job_id(ref))
        deadline = None if timeout is None else time.monotonic() + timeout
        listen = sql.SQL("LISTEN {}").format(sql.Identifier(self.schema.channel))
        waiting: LiteralString = (
            "SELECT count(pg_advisory_lock_shared(%s::int4, n)) FROM generate_series(0, %s) AS n"
        )
        conn: psycopg.Connection[Any] | None = None
        try:  # reconnects like wait_for_job: a database restart must not fail the caller
            while True:
                try:
                    if conn is None or conn.closed:
                        conn = self.sync_connect()
                        # Before the read below: workers announce "done" only to waiters.
                        conn.execute(
                            waiting,
                            (events.waiter_lock(self.schema.channel), events.WAITER_SLOTS - 1),
                        )
                        conn.execute(listen)
                    found: QueuedJob | None = self._run_sync(conn, self._get_op([job_id]))[0]
                except (psycopg.OperationalError, DatabaseUnavailableError) as exc:
                    log.warning("sync_wait_for_job: database unavailable (%s); retrying", exc)
                    if conn is not None:
                        conn.close()
                    conn = None
                    time.sleep(min(interval, 1.0))
                    if deadline is not None and time.monotonic() > deadline:
                        raise TimeoutError(
                            f"job {job_id} did not finish within {timeout}s"
                        ) from exc
                    continue
                if found is None:
                    raise JobNotFoundError(f"job {job_id} does not exist (pruned or never pushed)")
                if found.state in FINAL_STATES:
                    return found
                wait = interval
                if deadline is not None:
                    wait = min(wait, deadline - time.monotonic())
                    if wait <= 0:
                        raise TimeoutError(
                            f"job {job_id} did not finish within {timeout}s (it is"
                            f" {found.state.value})"
                        )
                try:
                    for note in conn.notifies(timeout=wait):
                        if events.finishes(note.payload, job_id):
                            break
                except psycopg.OperationalError:
                    conn.close()
                    conn = None
        finally:
            if conn is not None:
                conn.close()

    # --- queues --------------------------------------------------------------------------

    def _declare_op(self, queue: Queue) -> Operation:
        if not isinstance(queue, Queue):
            raise ConfigurationError(f"declare() takes a Queue, not {type(queue).__name__}")
        yield (
            self.schema.render(q.UPSERT_QUEUE),
            {
                "name": queue.name,
                "concurrency": queue.concurrency,
                "executor": queue.executor,
                "executor_options": Jsonb(queue.executor_options),
                "polling_interval": float(queue.polling_interval),
                "rate_limit": queue.rate_limit,
                "rate_limit_window": queue.rate_limit_window,
                "tags": sorted(queue.tags),
                "state": queue.state.value,
                "channel": self.schema.channel,
            },
        )
        return queue

    async def declare(self, queue: Queue) -> Queue:
        """Create the queue, or update it if it exists; running workers pick up the change."""
        declared: Queue = await self.execute(self._declare_op(queue))
        return declared

    def sync_declare(self, queue: Queue) -> Queue:
        """Sync twin of :meth:`declare`."""
        declared: Queue = self.sync_execute(self._declare_op(queue))
        return declared

    async def get_queue(self, name: str) -> Queue | None:
        """The declared queue named ``name``, or ``None``."""
        check_queue_name(name, ConfigurationError)

        def op() -> Operation:
            rows = yield self.schema.render(q.SELECT_QUEUE), {"name": name}
            return queue_from_row(rows[0]) if rows else None

        found: Queue | None = await self.execute(op())
        return found

    async def get_all_queues(self) -> list[Queue]:
        """Every declared queue, by name."""

        def op() -> Operation:
            rows = yield self.schema.render(q.SELECT_QUEUES), {}
            return [queue_from_row(row) for row in rows]

        found: list[Queue] = await self.execute(op())
        return found

    async def delete_queue(self, name: str) -> bool:
        """Delete a queue's declaration (its jobs stay); returns whether it existed."""
        return await self._queue_change(q.DELETE_QUEUE, name, None)

    async def pause_queue(self, name: str) -> bool:
        """Stop workers from starting the queue's jobs; returns whether the queue exists."""
        return await self._queue_change(q.SET_QUEUE_STATE, name, Queue.State.PAUSED)

    async def resume_queue(self, name: str) -> bool:
        """Let workers start the queue's jobs again; returns whether the queue exists."""
        return await self._queue_change(q.SET_QUEUE_STATE, name, Queue.State.ACTIVE)

    async def _queue_change(self, statement: Any, name: str, state: Queue.State | None) -> bool:
        check_queue_name(name, ConfigurationError)

        def op() -> Operation:
            rows = yield (
                self.schema.render(statement),
                {
                    "name": name,
                    "state": state.value if state else None,
                    "channel": self.schema.channel,
                },
            )
            return bool(rows)

        changed: bool = await self.execute(op())
        return changed

    async def count_jobs(
        self, states: Iterable[QueuedJob.State] = (QueuedJob.State.PENDING,)
    ) -> dict[tuple[str, QueuedJob.State], int]:
        """How many jobs each queue has in each of ``states``, keyed ``(queue, state)``.

        Pending and retrying counts read the small fetch index; counting other
        states reads their rows.
        """
        wanted = sorted({QueuedJob.State(s).value for s in states})
        waiting = set(wanted) <= {"pending", "retrying"}

        def op() -> Operation:
            statement = q.COUNT_WAITING_JOBS if waiting else q.COUNT_JOBS
            rows = yield self.schema.render(statement), {"states": wanted}
            return {(queue, QueuedJob.State(state)): int(n) for queue, state, n in rows}

        counts: dict[tuple[str, QueuedJob.State], int] = await self.execute(op())
        return counts

    async def notify(self, payload: dict[str, Any]) -> None:
        """Send an event on the app's channel (workers and waiters listen to it)."""

        def op() -> Operation:
            yield (
                self.schema.render(q.NOTIFY),
                {
                    "channel": self.schema.channel,
                    "payload": json.dumps(payload),
                },
            )

        await self.execute(op())

    def __repr__(self) -> str:
        shown = mask_dsn(self._dsn) if self._dsn else "(unresolved)"
        return f"Chancy({shown!r}, prefix={self.schema.prefix!r})"
