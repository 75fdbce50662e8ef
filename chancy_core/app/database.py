"""The app's database: connections, pools, the two drivers of operations, and errors.

Every operation (:data:`chancy_core.ops.Operation`) runs through one of two drivers:
:meth:`Database.run` (async) and :meth:`Database.run_sync`, on a connection or cursor;
:meth:`Database.execute` and :meth:`Database.sync_execute` take a pooled connection
for it, within ``call_timeout``. Whatever fails is translated by one function,
:meth:`Database.translate`: a missing table becomes
:class:`~chancy_core.errors.SchemaMissingError`, a lost connection or a call past its
deadline :class:`~chancy_core.errors.DatabaseUnavailableError`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any, TypeVar

import anyio
import psycopg
import psycopg.errors
from psycopg.adapt import AdaptersMap
from psycopg.types.json import set_json_loads
from psycopg_pool import AsyncConnectionPool, ConnectionPool

from chancy_core.app.dsn import mask_dsn, mask_secrets_of, resolve_dsn
from chancy_core.connection import (
    ConnectionSettings,
    cannot_connect_message,
    cut_after,
    detect_pgbouncer,
    refused_startup_options,
)
from chancy_core.errors import (
    ChancyError,
    ConfigurationError,
    DatabaseUnavailableError,
    SchemaMissingError,
)
from chancy_core.ops import CopyRows, Operation, Rows
from chancy_core.sql import Schema

__all__ = ["ADAPTERS", "AsyncExecutor", "Database", "SyncExecutor"]

log = logging.getLogger("chancy_core.app")

T = TypeVar("T")

AsyncExecutor = psycopg.AsyncConnection[Any] | psycopg.AsyncCursor[Any]
SyncExecutor = psycopg.Connection[Any] | psycopg.Cursor[Any]

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


def _drop_notify(note: psycopg.Notify) -> None:
    """A notification on a connection that does not listen for it."""


def _configure(conn: psycopg.Connection[Any]) -> None:
    """Pooled connections never LISTEN: drop any notification they get instead of
    keeping it in psycopg's backlog (behind PgBouncer they get other clients')."""
    conn.add_notify_handler(_drop_notify)


async def _aconfigure(conn: psycopg.AsyncConnection[Any]) -> None:
    conn.add_notify_handler(_drop_notify)


def _lost_connection(exc: psycopg.Error) -> bool:
    """Whether ``exc`` means the connection failed (not, say, a deadlock, which is also an
    ``OperationalError``): no SQLSTATE, connection exceptions (08) or a shutdown (57P)."""
    state = exc.sqlstate
    return state is None or state.startswith(("08", "57P"))


class Database:
    """One app's connections: its DSN and settings, a dedicated-connection factory, an
    async and a sync pool (each opened on demand), and the drivers that run operations.

    Owned state: the resolved DSN and the two pools. ``call_timeout`` and the pool sizes
    may be changed before the pools open."""

    def __init__(
        self,
        dsn: str | None,
        settings: ConnectionSettings,
        schema: Schema,
        *,
        min_connections: int,
        max_connections: int,
        connect_timeout: float,
        call_timeout: float,
    ) -> None:
        self._dsn = dsn
        self.settings = settings
        self.schema = schema
        self.min_connections = min_connections
        self.max_connections = max_connections
        self.connect_timeout = connect_timeout
        self.call_timeout = call_timeout
        self._pool: AsyncConnectionPool[psycopg.AsyncConnection[Any]] | None = None
        self._sync_pool: ConnectionPool[psycopg.Connection[Any]] | None = None
        self._sync_lock = threading.Lock()

    # --- connecting ------------------------------------------------------------------------

    @property
    def dsn(self) -> str:
        """The resolved DSN (starting the embedded server if that is the default)."""
        if self._dsn is None:
            self._dsn = resolve_dsn(self.settings)
        return self._dsn

    @property
    def resolved(self) -> str | None:
        """The DSN if it was given or is resolved already, else ``None`` (this does not
        start the embedded server)."""
        return self._dsn

    @property
    def notifications(self) -> bool:
        """Whether LISTEN/NOTIFY works on dedicated connections."""
        return self.settings.notifications

    def connect_kwargs(self, dsn: str | None = None, **settings: bool) -> dict[str, Any]:
        """psycopg's ``connect()`` arguments for a connection to ``dsn`` (default: the app's)."""
        return {
            **self.settings.kwargs(dsn or self.dsn, **settings),
            "autocommit": True,
            "connect_timeout": max(1, int(self.connect_timeout)),
            "context": ADAPTERS,
        }

    def dedicated_dsn(self) -> tuple[str, bool]:
        """The DSN of dedicated connections, and whether it bypasses PgBouncer."""
        if self.settings.pgbouncer and self.settings.listen_dsn is not None:
            return self.settings.listen_dsn, True
        return self.dsn, False

    def resolve_pgbouncer(self) -> None:
        """Settle ``pgbouncer=None`` by asking the server (blocking; once per app)."""
        if self.settings.pgbouncer is not None:
            return
        dsn = self.dsn
        kwargs = self.connect_kwargs(dsn)
        try:
            conn = psycopg.Connection.connect(dsn, **kwargs)
        except psycopg.OperationalError as exc:
            if not refused_startup_options(exc):
                raise self.unavailable(exc) from exc
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

    async def connect(self, *, statement_timeout: bool = True) -> psycopg.AsyncConnection[Any]:
        """A dedicated connection (autocommit), outside the pool."""
        if self.settings.pgbouncer is None:
            await anyio.to_thread.run_sync(self.resolve_pgbouncer)
        dsn, direct = self.dedicated_dsn()
        kwargs = self.connect_kwargs(dsn, statement_timeout=statement_timeout, dedicated=direct)
        try:
            return await psycopg.AsyncConnection.connect(dsn, **kwargs)
        except psycopg.OperationalError as exc:
            raise self.unavailable(exc) from exc

    def sync_connect(self) -> psycopg.Connection[Any]:
        """A dedicated sync connection (autocommit), outside the pool."""
        self.resolve_pgbouncer()
        dsn, direct = self.dedicated_dsn()
        try:
            return psycopg.Connection.connect(dsn, **self.connect_kwargs(dsn, dedicated=direct))
        except psycopg.OperationalError as exc:
            raise self.unavailable(exc) from exc

    # --- the pools -------------------------------------------------------------------------

    def _pool_options(self) -> dict[str, Any]:
        """What both pools are made with (opened by the caller, waiting for connections)."""
        return {
            "conninfo": self.dsn,
            "min_size": self.min_connections,
            "max_size": self.max_connections,
            "kwargs": self.connect_kwargs(),
            "open": False,
            "timeout": self.connect_timeout,
        }

    async def open(self) -> None:
        """Open the async pool (at once, so a bad DSN fails here, not at a pool timeout)."""
        if self._pool is not None:
            return
        probe = await self.connect()  # a clear error now rather than a pool timeout later
        await probe.close()
        pool: AsyncConnectionPool[psycopg.AsyncConnection[Any]] = AsyncConnectionPool(
            configure=_aconfigure, name=f"chancy:{self.schema.prefix}", **self._pool_options()
        )
        await pool.open(wait=True, timeout=self.connect_timeout)
        self._pool = pool

    async def close(self) -> None:
        """Close both pools."""
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close()
        if self._sync_pool is not None:
            await anyio.to_thread.run_sync(self.sync_close)

    def sync_open(self) -> None:
        """Open the sync pool."""
        with self._sync_lock:
            if self._sync_pool is not None:
                return
            self.sync_connect().close()
            pool: ConnectionPool[psycopg.Connection[Any]] = ConnectionPool(
                configure=_configure,
                name=f"chancy-sync:{self.schema.prefix}",
                **self._pool_options(),
            )
            pool.open(wait=True, timeout=self.connect_timeout)
            self._sync_pool = pool

    def sync_close(self) -> None:
        """Close the sync pool."""
        with self._sync_lock:
            if self._sync_pool is not None:
                pool, self._sync_pool = self._sync_pool, None
                pool.close()

    @property
    def pool(self) -> AsyncConnectionPool[psycopg.AsyncConnection[Any]]:
        """The async pool; raises if it was not opened."""
        if self._pool is None:
            raise ConfigurationError(
                "the app is not open: use `async with Chancy(...) as chancy:` or"
                " `await chancy.open()` first"
            )
        return self._pool

    @property
    def sync_pool(self) -> ConnectionPool[psycopg.Connection[Any]]:
        """The sync pool, opened by the first call that needs it."""
        if self._sync_pool is None:
            self.sync_open()
        assert self._sync_pool is not None
        return self._sync_pool

    # --- errors ----------------------------------------------------------------------------

    def unavailable(self, exc: Exception) -> ChancyError:
        """The error for a connection that could not be made."""
        if refused_startup_options(exc):
            return ConfigurationError(
                f"{mask_dsn(self.dsn)!r} refused the `options` startup parameter that carries"
                " statement_timeout (PgBouncer does): use Chancy(pgbouncer=True), or"
                " statement_timeout=None and set it on the role"
            )
        # One line (libpq's has several), with advice that fits libpq's reason.
        detail = mask_secrets_of(self.dsn, " ".join(str(exc).split()))
        message = cannot_connect_message(self.dsn, mask_dsn(self.dsn), detail)
        return DatabaseUnavailableError(message)

    def translate(self, exc: psycopg.Error) -> Exception:
        """The error a call raises for ``exc``: the one translation of database errors."""
        if isinstance(exc, psycopg.errors.UndefinedTable):
            return SchemaMissingError(
                f"the tables of prefix {self.schema.prefix!r} do not exist: run"
                " `await chancy.migrate()` or `chancy migrate` first"
            )
        if isinstance(exc, psycopg.OperationalError) and _lost_connection(exc):
            return self.unavailable(exc)
        return exc

    def too_slow(self, what: str) -> DatabaseUnavailableError:
        """The error of a call that outlasted ``call_timeout``."""
        return DatabaseUnavailableError(
            f"{what} got no answer from {mask_dsn(self.dsn)!r} within {self.call_timeout:g}s"
            " (call_timeout): the network path or the server is stuck; the connection was"
            " closed. Check the database, then try again (a push with a unique_key is safe"
            " to retry)"
        )

    # --- the drivers -----------------------------------------------------------------------

    async def run(self, target: AsyncExecutor, op: Operation[T]) -> T:
        """Run ``op`` on ``target`` (a connection or a cursor, in whatever transaction the
        caller holds): the async driver."""
        try:
            step = next(op)
            while True:
                if isinstance(step, CopyRows):
                    cursor = (
                        target.cursor() if isinstance(target, psycopg.AsyncConnection) else target
                    )
                    async with cursor.copy(step.statement) as copy:
                        copy.set_types(step.types)
                        for row in step.rows:
                            await copy.write_row(row)
                    rows: Rows = []
                else:
                    cur = await target.execute(*step)
                    rows = await cur.fetchall() if cur.description else []
                step = op.send(rows)
        except StopIteration as done:
            result: T = done.value
            return result
        except psycopg.Error as exc:
            raise self.translate(exc) from exc

    def run_sync(self, target: SyncExecutor, op: Operation[T]) -> T:
        """Run ``op`` on ``target``: the sync driver (as :meth:`run`)."""
        try:
            step = next(op)
            while True:
                if isinstance(step, CopyRows):
                    cursor = target if isinstance(target, psycopg.Cursor) else target.cursor()
                    with cursor.copy(step.statement) as copy:
                        copy.set_types(step.types)
                        for row in step.rows:
                            copy.write_row(row)
                    rows: Rows = []
                else:
                    cur = target.execute(*step)
                    rows = cur.fetchall() if cur.description else []
                step = op.send(rows)
        except StopIteration as done:
            result: T = done.value
            return result
        except psycopg.Error as exc:
            raise self.translate(exc) from exc

    async def execute(
        self, op: Operation[T], *, transaction: bool = False, what: str = "a call"
    ) -> T:
        """Run ``op`` on a pooled connection (in one transaction if asked), within
        ``call_timeout``; ``what`` names the call in the timeout's error."""
        with anyio.move_on_after(self.call_timeout):  # a frozen connection is given up
            try:  # connecting and committing fail outside run(): say so as clearly
                async with self.pool.connection() as conn:
                    if not transaction:
                        return await self.run(conn, op)
                    async with conn.transaction():
                        return await self.run(conn, op)
            except psycopg.OperationalError as exc:
                raise self.translate(exc) from exc
        raise self.too_slow(what)

    def sync_execute(
        self, op: Operation[T], *, transaction: bool = False, what: str = "a call"
    ) -> T:
        """Run ``op`` on a pooled sync connection (in one transaction if asked), within
        ``call_timeout``."""
        try:
            with self.sync_pool.connection() as conn, self.sync_deadline(conn, what):
                if not transaction:
                    return self.run_sync(conn, op)
                with conn.transaction():
                    return self.run_sync(conn, op)
        except psycopg.OperationalError as exc:
            raise self.translate(exc) from exc

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """A pooled connection, the whole block within ``call_timeout``; database errors
        raised in the block are translated as :meth:`run` translates them."""
        with anyio.move_on_after(self.call_timeout) as scope:
            try:
                async with self.pool.connection() as conn:
                    yield conn
            except psycopg.Error as exc:
                translated = self.translate(exc)
                if translated is exc:
                    raise
                raise translated from exc
        if scope.cancelled_caught:
            raise self.too_slow("a call")

    @contextlib.contextmanager
    def sync_deadline(self, conn: psycopg.Connection[Any], what: str) -> Iterator[None]:
        """Cut ``conn``'s socket if the block outlasts ``call_timeout`` (a blocking call
        cannot be cancelled): the call then fails, and raises DatabaseUnavailableError."""
        with cut_after(conn, self.call_timeout) as fired:
            try:
                yield
            except Exception as exc:
                if fired.is_set():
                    raise self.too_slow(what) from exc
                raise
