"""The application: DSN, connection pools, plugins, and every call that
reads or writes jobs and queues.

Each database operation is written once, as a generator that yields
``(statement, params)`` and receives the rows; the async API and the sync
twins (``sync_*``) differ only in the connection that runs it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Generator, Iterable, Iterator, Sequence
from datetime import datetime
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

from chancy_core import admin, events, hooks
from chancy_core import sql as q
from chancy_core.admin import JobPage, QueueStats, StateFilter, WorkerInfo
from chancy_core.connection import (
    PGBOUNCER_POLL_INTERVAL,
    ConnectionSettings,
    detect_pgbouncer,
    refused_startup_options,
    split_dsn,
)
from chancy_core.errors import (
    ChancyError,
    ConfigurationError,
    DatabaseUnavailableError,
    InvalidJobError,
    JobNotFoundError,
    QueueNotFoundError,
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
from chancy_core.ops import Operation, Rows, Step
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


def _lost_connection(exc: psycopg.Error) -> bool:
    """Whether ``exc`` means the connection failed (not, say, a deadlock, which is also an
    ``OperationalError``): no SQLSTATE, connection exceptions (08) or a shutdown (57P)."""
    state = exc.sqlstate
    return state is None or state.startswith(("08", "57P"))


_decode = json.JSONDecoder().decode


def _drop_notify(note: psycopg.Notify) -> None:
    """A notification on a connection that does not listen for it."""


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

    Connections (see :mod:`chancy_core.connection`): ``connection_options`` are
    libpq parameters (and psycopg's ``prepare_threshold``) for every connection,
    over TCP keepalive defaults; ``statement_timeout`` (seconds, ``None``: the
    server's) bounds each statement on the server and ``call_timeout`` (default
    ``statement_timeout + 5``) each call on the client, which then raises
    :class:`~chancy_core.errors.DatabaseUnavailableError`. ``pgbouncer`` turns
    PgBouncer (transaction mode) support on or off, ``None`` detects it (also
    ``?pgbouncer=true`` in the DSN); ``listen_dsn`` is a direct DSN for the
    connections that LISTEN (and migrations) behind PgBouncer.
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
        connection_options: dict[str, Any] | None = None,
        statement_timeout: float | None = ConnectionSettings.statement_timeout,
        call_timeout: float | None = None,
        pgbouncer: bool | None = None,
        listen_dsn: str | None = None,
    ) -> None:
        self.schema = q.Schema(prefix)
        self.settings = ConnectionSettings(
            dict(connection_options or {}), statement_timeout, pgbouncer, listen_dsn
        )
        """The connections' options, deadlines and PgBouncer mode."""
        if call_timeout is not None and not call_timeout > 0:
            raise ConfigurationError(f"call_timeout must be > 0 seconds, not {call_timeout!r}")
        self.call_timeout = call_timeout or (statement_timeout or 55.0) + 5.0
        """Seconds one call (push, get, cancel, ...) may take before it gives up."""
        if listen_dsn is not None:
            self._check_dsn(listen_dsn)
        if dsn is not None:
            dsn = self._check_dsn(dsn)
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

    def _check_dsn(self, dsn: str) -> str:
        """``dsn`` without chancy's own parameters (kept in :attr:`settings`), checked."""
        if not isinstance(dsn, str):
            raise ConfigurationError(f"the DSN must be a string, not {type(dsn).__name__}")
        dsn, extras = split_dsn(dsn)
        self.settings.merge_dsn_extras(extras)
        try:
            psycopg.conninfo.conninfo_to_dict(dsn)
        except psycopg.ProgrammingError as exc:
            raise ConfigurationError(
                f"malformed DSN {mask_dsn(dsn)!r} ({_mask_secrets_of(dsn, str(exc).strip())}): use"
                " 'postgresql://user:password@host:5432/dbname' or 'host=... dbname=...'"
            ) from None
        return dsn

    @property
    def dsn(self) -> str:
        """The resolved DSN (starting the embedded server if that is the default)."""
        if self._dsn is None:
            env = os.environ.get(DSN_ENV)
            if env:
                self._dsn = self._check_dsn(env)
            else:
                from chancy_core.embedded import embedded_dsn

                self._dsn = embedded_dsn()
        return self._dsn

    def _connect_kwargs(self, dsn: str | None = None, **settings: bool) -> dict[str, Any]:
        return {
            **self.settings.kwargs(dsn or self.dsn, **settings),
            "autocommit": True,
            "connect_timeout": max(1, int(self.connect_timeout)),
            "context": ADAPTERS,
        }

    @property
    def notifications(self) -> bool:
        """Whether LISTEN/NOTIFY works on :meth:`connect`'s connections: not behind
        PgBouncer without a ``listen_dsn`` (then waiters and workers must poll)."""
        return self.settings.notifications

    def _dedicated_dsn(self) -> tuple[str, bool]:
        """The DSN of dedicated connections, and whether it bypasses PgBouncer."""
        if self.settings.pgbouncer and self.settings.listen_dsn is not None:
            return self.settings.listen_dsn, True
        return self.dsn, False

    def _resolve_pgbouncer(self) -> None:
        """Settle ``pgbouncer=None`` by asking the server (blocking; once per app)."""
        if self.settings.pgbouncer is not None:
            return
        dsn = self.dsn
        kwargs = self._connect_kwargs(dsn)
        try:
            conn = psycopg.Connection.connect(dsn, **kwargs)
        except psycopg.OperationalError as exc:
            if not refused_startup_options(exc):
                raise self._unavailable(exc) from exc
            self.settings.pgbouncer = True  # only PgBouncer refuses `options`
        else:
            with conn:
                self.settings.pgbouncer = detect_pgbouncer(conn, dsn, kwargs)
        if self.settings.pgbouncer:
            log.info(
                "PgBouncer detected at %s: prepared statements off, %s",
                mask_dsn(dsn),
                "LISTEN on listen_dsn" if self.notifications else "polling instead of LISTEN",
            )

    def _configure(self, conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]) -> None:
        """Pooled connections never LISTEN: drop any notification they get instead of
        keeping it in psycopg's backlog (behind PgBouncer they get other clients')."""
        conn.add_notify_handler(_drop_notify)

    def _unavailable(self, exc: Exception) -> ChancyError:
        if refused_startup_options(exc):
            return ConfigurationError(
                f"{mask_dsn(self.dsn)!r} refused the `options` startup parameter that carries"
                " statement_timeout (PgBouncer does): use Chancy(pgbouncer=True), or"
                " statement_timeout=None and set it on the role"
            )
        return DatabaseUnavailableError(
            f"cannot connect to {mask_dsn(self.dsn)!r}:"  # one line: libpq's has several
            f" {_mask_secrets_of(self.dsn, ' '.join(str(exc).split()))}. Check that"
            " PostgreSQL is running and that the DSN (or CHANCY_DSN) is right"
        )

    async def connect(self, *, statement_timeout: bool = True) -> psycopg.AsyncConnection[Any]:
        """Open a dedicated connection (autocommit), outside the pool: on ``listen_dsn``
        behind PgBouncer when given."""
        if self.settings.pgbouncer is None:
            await anyio.to_thread.run_sync(self._resolve_pgbouncer)
        dsn, direct = self._dedicated_dsn()
        kwargs = self._connect_kwargs(dsn, statement_timeout=statement_timeout, dedicated=direct)
        try:
            return await psycopg.AsyncConnection.connect(dsn, **kwargs)
        except psycopg.OperationalError as exc:
            raise self._unavailable(exc) from exc

    def sync_connect(self) -> psycopg.Connection[Any]:
        """Open a dedicated sync connection (autocommit), outside the pool."""
        self._resolve_pgbouncer()
        dsn, direct = self._dedicated_dsn()
        try:
            return psycopg.Connection.connect(dsn, **self._connect_kwargs(dsn, dedicated=direct))
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
            configure=self._aconfigure,
            open=False,
            timeout=self.connect_timeout,
            name=f"chancy:{self.schema.prefix}",
        )
        await pool.open(wait=True, timeout=self.connect_timeout)
        self._pool = pool

    async def _aconfigure(self, conn: psycopg.AsyncConnection[Any]) -> None:
        self._configure(conn)

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
                configure=self._configure,
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

    def _too_slow(self, what: str) -> DatabaseUnavailableError:
        return DatabaseUnavailableError(
            f"{what} got no answer from {mask_dsn(self.dsn)!r} within {self.call_timeout:g}s"
            " (call_timeout): the network path or the server is stuck; the connection was"
            " closed. Check the database, then try again (a push with a unique_key is safe"
            " to retry)"
        )

    async def execute(self, op: Operation, *, transaction: bool = False) -> Any:
        """Run an operation on a pooled connection (in one transaction if asked), within
        ``call_timeout``."""
        with anyio.move_on_after(self.call_timeout):
            try:
                async with self.pool.connection() as conn:
                    if not transaction:
                        return await self._run(conn, op)
                    async with conn.transaction():
                        return await self._run(conn, op)
            except psycopg.OperationalError as exc:
                raise self._translate(exc) from exc
        raise self._too_slow("a call")

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """A pooled connection for statements of one's own (plugins' background tasks),
        the whole block within ``call_timeout``: at the deadline the block is cancelled,
        the connection closed, and :class:`DatabaseUnavailableError` raised (a transient
        error: retry later). A lost connection raises it too."""
        with anyio.move_on_after(self.call_timeout) as scope:
            try:
                async with self.pool.connection() as conn:
                    yield conn
            except psycopg.OperationalError as exc:
                raise self._translate(exc) from exc
        if scope.cancelled_caught:
            raise self._too_slow("a call")

    @contextlib.contextmanager
    def _sync_deadline(self, conn: psycopg.Connection[Any], what: str) -> Iterator[None]:
        """Cut ``conn``'s socket if the block outlasts ``call_timeout`` (a blocking call
        cannot be cancelled): the call then fails, and raises DatabaseUnavailableError."""
        fired = threading.Event()

        def cut() -> None:
            fired.set()
            with contextlib.suppress(OSError, ValueError):
                sock = socket.socket(fileno=os.dup(conn.fileno()))
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                finally:
                    sock.close()

        timer = threading.Timer(self.call_timeout, cut)
        timer.daemon = True
        timer.start()
        try:
            yield
        except Exception as exc:
            if fired.is_set():
                raise self._too_slow(what) from exc
            raise
        finally:
            timer.cancel()

    def sync_execute(self, op: Operation, *, transaction: bool = False) -> Any:
        """Run an operation on a pooled sync connection (in one transaction if asked),
        within ``call_timeout``."""
        try:
            with (
                self._sync_pool_opened().connection() as conn,
                self._sync_deadline(conn, "a call"),
            ):
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
        conn = await self.connect(statement_timeout=False)  # an index may take long
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
        yield from self._guard_push(jobs)
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
        with anyio.move_on_after(self.call_timeout):  # a frozen connection is given up
            try:  # connecting and committing fail outside _run: say so as clearly
                if _copyable(found):
                    copied, rows, queues = _copy_rows(found)
                    async with self.pool.connection() as conn, conn.transaction():
                        await self._run(conn, self._guard_push(found))
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
        raise self._too_slow("push")

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
                with (
                    self._sync_pool_opened().connection() as conn,
                    self._sync_deadline(conn, "push"),
                    conn.transaction(),
                ):
                    self._run_sync(conn, self._guard_push(found))
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
                with (
                    self._sync_pool_opened().connection() as conn,
                    self._sync_deadline(conn, "push"),
                ):
                    one: list[Reference] = self._run_sync(conn, self._push_op(batches[0]))
                    return one
            with (
                self._sync_pool_opened().connection() as conn,
                self._sync_deadline(conn, "push"),
                conn.transaction(),
            ):
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
        ids = [admin.job_id(ref) for ref in refs]
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
        ids = [admin.job_id(ref) for ref in refs]
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
        ``interval`` seconds in case notifications are lost (every 0.2 s at most
        when notifications cannot work: behind PgBouncer without ``listen_dsn``).
        Raises :class:`TimeoutError` after ``timeout`` seconds,
        :class:`~chancy_core.errors.DatabaseUnavailableError` if the database did not
        answer by then (each read is bounded by ``call_timeout``, and a connection that
        stops answering is replaced), and :class:`~chancy_core.errors.JobNotFoundError`
        if the job vanishes.
        """
        job_id = str(admin.job_id(ref))
        deadline = None if timeout is None else time.monotonic() + timeout
        listen = sql.SQL("LISTEN {}").format(sql.Identifier(self.schema.channel))
        waiting: LiteralString = (
            "SELECT count(pg_advisory_lock_shared(%s::int4, n)) FROM generate_series(0, %s) AS n"
        )
        conn: psycopg.AsyncConnection[Any] | None = None
        if self.settings.pgbouncer is None:
            with contextlib.suppress(DatabaseUnavailableError):  # retried below
                await anyio.to_thread.run_sync(self._resolve_pgbouncer)
        if not self.notifications:
            interval = min(interval, PGBOUNCER_POLL_INTERVAL)
        try:
            while True:
                limit = self.call_timeout
                if deadline is not None:
                    limit = max(0.05, min(limit, deadline - time.monotonic()))
                try:
                    with anyio.move_on_after(limit) as scope:
                        if conn is None or conn.closed:
                            conn = await self.connect()
                            if self.notifications:
                                # Before the read below: workers announce "done" only to
                                # waiters (the slot locks, see events.waiter_lock).
                                await conn.execute(
                                    waiting,
                                    (
                                        events.waiter_lock(self.schema.channel),
                                        events.WAITER_SLOTS - 1,
                                    ),
                                )
                                await conn.execute(listen)
                        found: QueuedJob | None = (await self._run(conn, self._get_op([job_id])))[0]
                    if scope.cancelled_caught:
                        raise self._too_slow("wait_for_job")
                except (psycopg.OperationalError, DatabaseUnavailableError) as exc:
                    log.warning("wait_for_job: database unavailable (%s); retrying", exc)
                    if conn is not None:
                        await conn.close()
                    conn = None
                    found = None
                    pause = min(interval, 1.0)
                    if deadline is not None:
                        pause = min(pause, deadline - time.monotonic())
                        if pause <= 0:
                            raise DatabaseUnavailableError(
                                f"job {job_id} did not finish within {timeout}s: the database"
                                f" did not answer ({exc})"
                            ) from exc
                    await anyio.sleep(pause)
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
                if conn is None or not self.notifications:
                    await anyio.sleep(wait)
                    continue
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
        job_id = str(admin.job_id(ref))
        deadline = None if timeout is None else time.monotonic() + timeout
        listen = sql.SQL("LISTEN {}").format(sql.Identifier(self.schema.channel))
        waiting: LiteralString = (
            "SELECT count(pg_advisory_lock_shared(%s::int4, n)) FROM generate_series(0, %s) AS n"
        )
        conn: psycopg.Connection[Any] | None = None
        with contextlib.suppress(DatabaseUnavailableError):  # retried below
            self._resolve_pgbouncer()
        if not self.notifications:
            interval = min(interval, PGBOUNCER_POLL_INTERVAL)
        try:  # reconnects like wait_for_job: a database restart must not fail the caller
            while True:
                try:
                    if conn is None or conn.closed:
                        conn = self.sync_connect()
                        if self.notifications:
                            # Before the read below: workers announce "done" only to waiters.
                            conn.execute(
                                waiting,
                                (events.waiter_lock(self.schema.channel), events.WAITER_SLOTS - 1),
                            )
                            conn.execute(listen)
                    with self._sync_deadline(conn, "sync_wait_for_job"):
                        found: QueuedJob | None = self._run_sync(conn, self._get_op([job_id]))[0]
                except (psycopg.OperationalError, DatabaseUnavailableError) as exc:
                    log.warning("sync_wait_for_job: database unavailable (%s); retrying", exc)
                    if conn is not None:
                        conn.close()
                    conn = None
                    pause = min(interval, 1.0)
                    if deadline is not None:
                        pause = min(pause, deadline - time.monotonic())
                        if pause <= 0:
                            raise DatabaseUnavailableError(
                                f"job {job_id} did not finish within {timeout}s: the database"
                                f" did not answer ({exc})"
                            ) from exc
                    time.sleep(pause)
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
                if not self.notifications:
                    time.sleep(wait)
                    continue
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

    # --- operating: browse jobs, queues and workers, and act on them (chancy_core.admin) ---
    # Each method runs one operation of chancy_core.admin; the sync twins run the same one.

    async def list_jobs(
        self,
        *,
        queue: str | None = None,
        state: StateFilter = None,
        func: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> JobPage:
        """One page of jobs, newest first, filtered by queue, state(s), function and
        creation time (``since <= created_at < until``); pass the page's ``next_cursor``
        as ``cursor`` for the next one. Index-driven at any table size when a queue or a
        state is given (see :mod:`chancy_core.admin`)."""
        flt = admin.JobFilter.of(queue=queue, state=state, func=func, since=since, until=until)
        page: JobPage = await self.execute(
            admin.list_jobs_op(self.schema, flt, limit=limit, cursor=cursor)
        )
        return page

    def sync_list_jobs(
        self,
        *,
        queue: str | None = None,
        state: StateFilter = None,
        func: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> JobPage:
        """Sync twin of :meth:`list_jobs`."""
        flt = admin.JobFilter.of(queue=queue, state=state, func=func, since=since, until=until)
        page: JobPage = self.sync_execute(
            admin.list_jobs_op(self.schema, flt, limit=limit, cursor=cursor)
        )
        return page

    async def queue_stats(self) -> list[QueueStats]:
        """Every declared queue and every queue that has jobs (``queue`` None when it is
        not declared): jobs per state and the oldest waiting job. Counts every row."""
        stats: list[QueueStats] = await self.execute(admin.queue_stats_op(self.schema))
        return stats

    def sync_queue_stats(self) -> list[QueueStats]:
        """Sync twin of :meth:`queue_stats`."""
        stats: list[QueueStats] = self.sync_execute(admin.queue_stats_op(self.schema))
        return stats

    async def list_workers(self, *, timeout: float = 60.0) -> list[WorkerInfo]:
        """Every registered worker with its heartbeat age and running jobs; ``alive`` when
        it beat within ``timeout`` seconds (the recovery plugin's default)."""
        workers: list[WorkerInfo] = await self.execute(
            admin.list_workers_op(self.schema, timeout=timeout)
        )
        return workers

    def sync_list_workers(self, *, timeout: float = 60.0) -> list[WorkerInfo]:
        """Sync twin of :meth:`list_workers`."""
        workers: list[WorkerInfo] = self.sync_execute(
            admin.list_workers_op(self.schema, timeout=timeout)
        )
        return workers

    async def retry_job(self, ref: Reference | str) -> QueuedJob:
        """Run a failed (or succeeded) job again: state pending, due now, ``max_attempts``
        raised by one if exhausted, its errors kept. Raises
        :class:`~chancy_core.errors.JobStateError` for a job that has not finished."""
        job: QueuedJob = await self.execute(admin.retry_job_op(self.schema, ref), transaction=True)
        return job

    def sync_retry_job(self, ref: Reference | str) -> QueuedJob:
        """Sync twin of :meth:`retry_job`."""
        job: QueuedJob = self.sync_execute(admin.retry_job_op(self.schema, ref), transaction=True)
        return job

    async def requeue_job(self, ref: Reference | str, *, queue: str | None = None) -> QueuedJob:
        """Make a waiting (pending or retrying) job due now, optionally on another queue."""
        job: QueuedJob = await self.execute(
            admin.requeue_job_op(self.schema, ref, queue=queue), transaction=True
        )
        return job

    def sync_requeue_job(self, ref: Reference | str, *, queue: str | None = None) -> QueuedJob:
        """Sync twin of :meth:`requeue_job`."""
        job: QueuedJob = self.sync_execute(
            admin.requeue_job_op(self.schema, ref, queue=queue), transaction=True
        )
        return job

    async def set_job_priority(self, ref: Reference | str, priority: int) -> QueuedJob:
        """Change a waiting job's priority (higher runs first)."""
        job: QueuedJob = await self.execute(
            admin.set_job_priority_op(self.schema, ref, priority), transaction=True
        )
        return job

    def sync_set_job_priority(self, ref: Reference | str, priority: int) -> QueuedJob:
        """Sync twin of :meth:`set_job_priority`."""
        job: QueuedJob = self.sync_execute(
            admin.set_job_priority_op(self.schema, ref, priority), transaction=True
        )
        return job

    async def reschedule_job(self, ref: Reference | str, at: datetime) -> QueuedJob:
        """Change when a waiting job may start (a timezone-aware datetime)."""
        job: QueuedJob = await self.execute(
            admin.reschedule_job_op(self.schema, ref, at), transaction=True
        )
        return job

    def sync_reschedule_job(self, ref: Reference | str, at: datetime) -> QueuedJob:
        """Sync twin of :meth:`reschedule_job`."""
        job: QueuedJob = self.sync_execute(
            admin.reschedule_job_op(self.schema, ref, at), transaction=True
        )
        return job

    async def delete_job(self, ref: Reference | str) -> bool:
        """Delete a job that is not running (a running one raises
        :class:`~chancy_core.errors.JobStateError`: cancel it first)."""
        done: bool = await self.execute(admin.delete_job_op(self.schema, ref), transaction=True)
        return done

    def sync_delete_job(self, ref: Reference | str) -> bool:
        """Sync twin of :meth:`delete_job`."""
        done: bool = self.sync_execute(admin.delete_job_op(self.schema, ref), transaction=True)
        return done

    def sync_cancel_job(self, ref: Reference | str) -> bool:
        """Sync twin of :meth:`cancel_job`."""
        count: int = self.sync_execute(self._cancel_op([ref]), transaction=True)
        return count > 0

    async def retry_jobs(self, **filter: Any) -> int:
        """Retry every failed job matching the filter (``queue``, ``state``, ``func``,
        ``since``, ``until``; succeeded ones too if ``state`` names them); returns how many.
        Jobs whose unique key an unfinished job holds are skipped."""
        count: int = await self.execute(
            admin.retry_jobs_op(self.schema, admin.JobFilter.of(**filter)), transaction=True
        )
        return count

    def sync_retry_jobs(self, **filter: Any) -> int:
        """Sync twin of :meth:`retry_jobs`."""
        count: int = self.sync_execute(
            admin.retry_jobs_op(self.schema, admin.JobFilter.of(**filter)), transaction=True
        )
        return count

    async def cancel_jobs(self, **filter: Any) -> int:
        """Cancel every unfinished job matching the filter; returns how many."""
        count: int = await self.execute(
            admin.cancel_jobs_op(self.schema, admin.JobFilter.of(**filter)), transaction=True
        )
        return count

    def sync_cancel_jobs(self, **filter: Any) -> int:
        """Sync twin of :meth:`cancel_jobs`."""
        count: int = self.sync_execute(
            admin.cancel_jobs_op(self.schema, admin.JobFilter.of(**filter)), transaction=True
        )
        return count

    async def delete_jobs(self, **filter: Any) -> int:
        """Delete every job matching the filter that is not running (a filter is required);
        returns how many."""
        count: int = await self.execute(
            admin.delete_jobs_op(self.schema, admin.JobFilter.of(**filter)), transaction=True
        )
        return count

    def sync_delete_jobs(self, **filter: Any) -> int:
        """Sync twin of :meth:`delete_jobs`."""
        count: int = self.sync_execute(
            admin.delete_jobs_op(self.schema, admin.JobFilter.of(**filter)), transaction=True
        )
        return count

    async def wait_for_jobs(
        self,
        refs: Sequence[Reference | str],
        *,
        timeout: float | None = None,
        interval: float = 1.0,
    ) -> list[QueuedJob]:
        """Wait until every job finishes; returns them in the order of ``refs``. Raises
        :class:`TimeoutError` when ``timeout`` seconds pass first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        done: list[QueuedJob] = []
        for ref in refs:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            done.append(await self.wait_for_job(ref, timeout=left, interval=interval))
        return done

    def sync_wait_for_jobs(
        self,
        refs: Sequence[Reference | str],
        *,
        timeout: float | None = None,
        interval: float = 1.0,
    ) -> list[QueuedJob]:
        """Sync twin of :meth:`wait_for_jobs`."""
        deadline = None if timeout is None else time.monotonic() + timeout
        done: list[QueuedJob] = []
        for ref in refs:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            done.append(self.sync_wait_for_job(ref, timeout=left, interval=interval))
        return done

    async def pause_queue(self, name: str, *, resume_at: datetime | None = None) -> bool:
        """Stop workers from starting the queue's jobs, until ``resume_at`` if given (it
        then resumes by itself); returns whether the queue exists."""
        op = admin.set_queue_state_op(self.schema, name, Queue.State.PAUSED, resume_at)
        changed: bool = await self.execute(op)
        return changed

    def sync_pause_queue(self, name: str, *, resume_at: datetime | None = None) -> bool:
        """Sync twin of :meth:`pause_queue`."""
        op = admin.set_queue_state_op(self.schema, name, Queue.State.PAUSED, resume_at)
        changed: bool = self.sync_execute(op)
        return changed

    async def resume_queue(self, name: str) -> bool:
        """Let workers start the queue's jobs again; returns whether the queue exists."""
        changed: bool = await self.execute(
            admin.set_queue_state_op(self.schema, name, Queue.State.ACTIVE)
        )
        return changed

    def sync_resume_queue(self, name: str) -> bool:
        """Sync twin of :meth:`resume_queue`."""
        changed: bool = self.sync_execute(
            admin.set_queue_state_op(self.schema, name, Queue.State.ACTIVE)
        )
        return changed

    async def delete_queue(
        self, name: str, *, purge_jobs: bool = False, keep_jobs: bool = False
    ) -> bool:
        """Delete a queue's declaration; returns whether it existed. While the queue holds
        unfinished jobs it refuses (:class:`~chancy_core.errors.JobStateError`), unless
        ``purge_jobs`` (deletes its waiting jobs, cancels its running ones) or ``keep_jobs``
        (they wait until the queue is declared again)."""
        op = admin.delete_queue_op(self.schema, name, purge_jobs=purge_jobs, keep_jobs=keep_jobs)
        deleted: bool = await self.execute(op, transaction=True)
        self.__dict__.get("_declared_queues", set()).discard(name)
        return deleted

    def sync_delete_queue(
        self, name: str, *, purge_jobs: bool = False, keep_jobs: bool = False
    ) -> bool:
        """Sync twin of :meth:`delete_queue`."""
        op = admin.delete_queue_op(self.schema, name, purge_jobs=purge_jobs, keep_jobs=keep_jobs)
        deleted: bool = self.sync_execute(op, transaction=True)
        self.__dict__.get("_declared_queues", set()).discard(name)
        return deleted

    async def update_queue(self, name: str, **changes: Any) -> Queue:
        """Change only the given settings of a declared queue (``concurrency``,
        ``executor``, ``executor_options``, ``rate_limit``, ``rate_limit_window``,
        ``polling_interval``, ``tags``); returns the queue as it now is."""
        queue: Queue = await self.execute(
            admin.update_queue_op(self.schema, name, changes), transaction=True
        )
        return queue

    def sync_update_queue(self, name: str, **changes: Any) -> Queue:
        """Sync twin of :meth:`update_queue`."""
        queue: Queue = self.sync_execute(
            admin.update_queue_op(self.schema, name, changes), transaction=True
        )
        return queue

    require_declared_queues: bool = True
    """Whether pushing to a queue that is not declared fails (QueueNotFoundError). Set it
    to ``False`` on an app to let such jobs wait until the queue is declared."""

    check_kwargs_on_push: bool = True
    """Whether push checks each job's kwargs against its function's signature when the
    function is known (registered with ``@job`` or in a module already imported)."""

    def _guard_push(self, jobs: list[Job]) -> Generator[Step, Rows, None]:
        """Refuse jobs whose kwargs their (known) function cannot take, and jobs for
        queues nobody declared (one query per batch for names not seen declared yet)."""
        if self.check_kwargs_on_push:
            admin.check_signatures(jobs)
        if not self.require_declared_queues:
            return
        known: set[str] = self.__dict__.setdefault("_declared_queues", set())
        wanted = {job.queue for job in jobs} - known
        if not wanted:
            return
        found: set[str] = yield from admin.queue_exists_op(self.schema, sorted(wanted))
        known |= found
        missing = sorted(wanted - found)
        if missing:
            raise QueueNotFoundError(
                f"queue {', '.join(map(repr, missing))} is not declared, so no worker would"
                " run the job: declare it first (`await chancy.declare(Queue(name))` or"
                f" `chancy queue declare {missing[0]}`)"
            )

    # --- end of operating ------------------------------------------------------------------

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
