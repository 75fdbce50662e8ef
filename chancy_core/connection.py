"""How chancy connects: connection options, deadlines and PgBouncer mode.

Every connection chancy opens (the pools, the listener, ``wait_for_job``,
migrations) gets:

* **TCP keepalives and ``tcp_user_timeout``** (libpq options), so that a dead
  network path is noticed by the kernel in about a minute instead of hours:
  :data:`DEFAULT_OPTIONS`. Anything given in the DSN or in
  ``connection_options`` wins.
* **A server-side ``statement_timeout``** (default :data:`DEFAULT_STATEMENT_TIMEOUT`
  seconds), sent as the libpq ``options`` startup parameter, so that no statement
  of chancy's runs for ever on the server. ``Chancy(statement_timeout=None)``
  leaves the server's setting alone.
* **A client-side deadline** per call (``Chancy(call_timeout=...)``): a call on a
  connection that stops answering (a half-open path: no reset, no bytes) gives up,
  closes that connection and raises :class:`~chancy_core.errors.DatabaseUnavailableError`.

PgBouncer in transaction mode
-----------------------------

Behind a pooler that hands each transaction to any server connection, psycopg's
automatic server-side prepared statements break: psycopg names them ``_pg3_0``,
``_pg3_1``... per *client* connection, so a ``Bind _pg3_0`` can reach a server
connection where another client prepared a different ``_pg3_0``. That raises
"prepared statement does not exist / already exists", and, when the other client
is a chancy app with another table prefix running a statement with the same
parameter types, it silently runs *that app's* statement: a push lands in the
other app's table. (The rendered-statement cache of :mod:`chancy_core.sql` is keyed
by prefix and is not involved.) PgBouncer mode turns prepared statements off
(``prepare_threshold=None``), which makes every statement self-contained.

LISTEN does not work through transaction pooling (the server connection that
listens goes back to the pool). In PgBouncer mode chancy therefore opens its
*dedicated* connections (the worker's listener, ``wait_for_job``, migrations)
on ``listen_dsn`` when one is given (a direct connection to PostgreSQL, bypassing
PgBouncer), and otherwise does not LISTEN at all and polls at
:data:`PGBOUNCER_POLL_INTERVAL` (``Chancy.notifications`` is then ``False``).

``pgbouncer=None`` (the default) detects PgBouncer when the app opens: if the
server's port (``inet_server_port()``) differs from the port the DSN names,
something sits in between, and chancy asks that host and port for PgBouncer's
admin console (database ``pgbouncer``): PgBouncer answers ``SHOW VERSION`` or
refuses with its own "not allowed" message, PostgreSQL says that the database
does not exist. Detection cannot see PgBouncer listening on the same port
number as the server (on another host), other poolers (pgcat, Odyssey, RDS
Proxy, Supavisor), or PgBouncer's pool mode (session mode is treated like
transaction mode, which only costs the prepared statements and LISTEN): set
``pgbouncer=True`` or ``False`` in production, or ``?pgbouncer=true`` in the DSN
(or ``$CHANCY_PGBOUNCER=1``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import socket
import threading
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import psycopg
import psycopg.conninfo

from chancy_core.errors import ConfigurationError

__all__ = [
    "DEFAULT_OPTIONS",
    "DEFAULT_STATEMENT_TIMEOUT",
    "PGBOUNCER_ENV",
    "PGBOUNCER_POLL_INTERVAL",
    "ConnectionSettings",
    "cannot_connect_message",
    "cut_after",
    "detect_pgbouncer",
    "refused_startup_options",
    "split_dsn",
]

log = logging.getLogger(__name__)

#: libpq options every connection gets unless the DSN or ``connection_options`` set them:
#: an idle connection is probed after 30 s and given up after 3 unanswered probes 10 s
#: apart; unacknowledged data is given up after 30 s (Linux).
DEFAULT_OPTIONS: dict[str, str] = {
    "keepalives": "1",
    "keepalives_idle": "30",
    "keepalives_interval": "10",
    "keepalives_count": "3",
    "tcp_user_timeout": "30000",
}

#: Seconds any one statement of chancy's may run on the server.
DEFAULT_STATEMENT_TIMEOUT = 30.0

#: ``$CHANCY_PGBOUNCER``: ``1``/``true`` or ``0``/``false`` sets PgBouncer mode when
#: ``Chancy(pgbouncer=None)`` and the DSN does not say.
PGBOUNCER_ENV = "CHANCY_PGBOUNCER"

#: How often waiters re-read a job when notifications cannot work (PgBouncer, no
#: ``listen_dsn``).
PGBOUNCER_POLL_INTERVAL = 0.2

# Options psycopg (not libpq) understands, accepted in the DSN and in connection_options.
_PSYCOPG_OPTIONS = {"prepare_threshold"}
# Options chancy owns: refused in connection_options, with what to use instead.
_OWNED = {
    "autocommit": "chancy's connections are always autocommit",
    "context": "chancy sets its own adapters",
    "connect_timeout": "use Chancy(connect_timeout=...)",
    "dbname": "put the database in the DSN",
}
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}
_KEYWORD_EXTRA = re.compile(r"(?:^|\s)(pgbouncer|prepare_threshold)\s*=\s*(\S*)")


def _flag(value: str, what: str) -> bool:
    lowered = value.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ConfigurationError(f"{what}={value!r}: use true or false")


def _threshold(value: str) -> int | None:
    lowered = value.strip().lower()
    if lowered in ("", "none", "null"):
        return None
    try:
        return int(lowered)
    except ValueError:
        raise ConfigurationError(
            f"prepare_threshold={value!r}: use an integer, or none to turn prepared statements off"
        ) from None


def split_dsn(dsn: str) -> tuple[str, dict[str, Any]]:
    """Split chancy's own DSN parameters off ``dsn``.

    Returns the DSN libpq accepts and the extras found: ``pgbouncer`` (bool) and
    ``prepare_threshold`` (int or None), from a URI's query (``?pgbouncer=true``)
    or a keyword DSN (``pgbouncer=true``).
    """
    extras: dict[str, Any] = {}
    if "pgbouncer" not in dsn and "prepare_threshold" not in dsn:
        return dsn, extras
    if dsn.startswith(("postgresql://", "postgres://")):
        try:
            parts = urllib.parse.urlsplit(dsn)
        except ValueError:  # malformed: libpq says how
            return dsn, extras
        if not parts.query:
            return dsn, extras
        kept = []
        for key, value in urllib.parse.parse_qsl(parts.query, keep_blank_values=True):
            if key == "pgbouncer":
                extras["pgbouncer"] = _flag(value, key)
            elif key == "prepare_threshold":
                extras["prepare_threshold"] = _threshold(value)
            else:
                kept.append((key, value))
        if not extras:
            return dsn, extras
        query = urllib.parse.urlencode(kept, quote_via=urllib.parse.quote)
        return urllib.parse.urlunsplit(parts._replace(query=query)), extras
    for key, value in _KEYWORD_EXTRA.findall(dsn):
        extras[key] = _flag(value, key) if key == "pgbouncer" else _threshold(value)
    return _KEYWORD_EXTRA.sub("", dsn).strip(), extras


@dataclass
class ConnectionSettings:
    """The resolved options of one app's connections (see the module's docs)."""

    options: dict[str, Any] = field(default_factory=dict)
    """``connection_options`` as given (libpq options and ``prepare_threshold``)."""
    statement_timeout: float | None = DEFAULT_STATEMENT_TIMEOUT
    pgbouncer: bool | None = None
    """``True``/``False`` once known; ``None`` until detected."""
    listen_dsn: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.options, dict):
            raise ConfigurationError(
                f"connection_options must be a dict, not {type(self.options).__name__}"
            )
        for key in self.options:
            if key in _OWNED:
                raise ConfigurationError(f"connection option {key!r} is not allowed: {_OWNED[key]}")
        libpq = {k: v for k, v in self.options.items() if k not in _PSYCOPG_OPTIONS}
        try:
            psycopg.conninfo.make_conninfo("", **libpq)
        except psycopg.ProgrammingError as exc:
            raise ConfigurationError(
                f"invalid connection_options ({str(exc).strip()}): use libpq parameters"
                " (keepalives_idle, sslmode, application_name, ...) or prepare_threshold"
            ) from None
        if self.statement_timeout is not None and not self.statement_timeout >= 0:
            raise ConfigurationError(
                f"statement_timeout must be >= 0 seconds or None, not {self.statement_timeout!r}"
            )

    def merge_dsn_extras(self, extras: dict[str, Any]) -> None:
        """Take ``pgbouncer`` and ``prepare_threshold`` from the DSN where not set already."""
        if "pgbouncer" in extras and self.pgbouncer is None:
            self.pgbouncer = extras["pgbouncer"]
        if "prepare_threshold" in extras:
            self.options.setdefault("prepare_threshold", extras["prepare_threshold"])
        if self.pgbouncer is None:
            env = os.environ.get(PGBOUNCER_ENV, "").strip()
            if env:
                self.pgbouncer = _flag(env, PGBOUNCER_ENV)

    def kwargs(
        self, dsn: str, *, statement_timeout: bool = True, dedicated: bool = False
    ) -> dict[str, Any]:
        """The keyword arguments of ``psycopg.connect(dsn, ...)`` for these settings
        (without chancy's own ``autocommit``, ``context`` and ``connect_timeout``).

        ``statement_timeout=False`` leaves the timeout out (migrations may be long);
        ``dedicated`` is for a connection on ``listen_dsn`` (direct to PostgreSQL).
        """
        given = psycopg.conninfo.conninfo_to_dict(dsn)
        result: dict[str, Any] = {
            k: v for k, v in DEFAULT_OPTIONS.items() if k not in given and k not in self.options
        }
        result.update(self.options)
        if self.pgbouncer:
            result["prepare_threshold"] = None
        # PgBouncer refuses the `options` startup parameter that carries the timeout: behind
        # it, set statement_timeout on the role (ALTER ROLE ... SET statement_timeout).
        if (
            statement_timeout is not False
            and self.statement_timeout is not None
            and not (self.pgbouncer and not dedicated)
        ):
            millis = int(self.statement_timeout * 1000)
            opts = str(result.get("options", given.get("options", "")) or "")
            if "statement_timeout" not in opts:
                result["options"] = f"{opts} -c statement_timeout={millis}".strip()
        return result

    @property
    def notifications(self) -> bool:
        """Whether LISTEN/NOTIFY reaches dedicated connections (not through PgBouncer
        without a ``listen_dsn``)."""
        return not self.pgbouncer or self.listen_dsn is not None


# (what libpq says, what to do): the first that matches gives the advice.
_ADVICE: list[tuple[re.Pattern[str], str]] = [
    (
        re.compile(r'database "(?P<name>[^"]+)" does not exist'),
        "Create the database ({createdb} {name}, or CREATE DATABASE {name}), then run"
        " `chancy migrate`",
    ),
    (
        re.compile(r'role "(?P<name>[^"]+)" does not exist'),
        "Create the role ({createuser} {name}), or fix the user name in the DSN",
    ),
    (
        re.compile(r"password authentication failed|no password supplied|password is required"),
        "Check the password (in the DSN, PGPASSWORD or ~/.pgpass)",
    ),
    (
        re.compile(r"no pg_hba\.conf entry"),
        "The server refuses this client: add a pg_hba.conf entry for it, or connect as"
        " another user or with SSL",
    ),
    (
        re.compile(r"too many clients|remaining connection slots"),
        "The server is at its max_connections: lower the pools' max_connections, or raise"
        " the server's",
    ),
    (
        re.compile(r"failed to resolve host|could not translate host name"),
        "Check the host name in the DSN (or CHANCY_DSN)",
    ),
]


def cannot_connect_message(dsn: str, masked_dsn: str, detail: str) -> str:
    """One line saying that ``masked_dsn`` cannot be reached, with libpq's ``detail``
    (already masked) and what to do about it: create the database, the role, check the
    password... or, when nothing more specific applies, check that PostgreSQL is running.
    ``dsn`` (the real one) only gives the host, port and user of the commands suggested."""
    detail = " ".join(detail.split())
    advice = "Check that PostgreSQL is running and that the DSN (or CHANCY_DSN) is right"
    for pattern, text in _ADVICE:
        match = pattern.search(detail)
        if match:
            advice = text.format(
                name=match.groupdict().get("name", ""),
                createdb=_client_command("createdb", dsn),
                createuser=_client_command("createuser", dsn, user=False),
            )
            break
    stop = "" if detail.endswith((".", "?", "!")) else "."
    return f"cannot connect to {masked_dsn!r}: {detail}{stop} {advice}"


def _client_command(name: str, dsn: str, *, user: bool = True) -> str:
    """``createdb -h HOST -p PORT -U USER``: a PostgreSQL client command for ``dsn``'s
    server (never its password; without ``user``, as the default user)."""
    try:
        info = psycopg.conninfo.conninfo_to_dict(dsn)
    except psycopg.Error:
        info = {}
    parts = [name]
    for flag, key in (("-h", "host"), ("-p", "port"), ("-U", "user")):
        value = info.get(key) if key != "user" or user else None
        if value:
            parts += [flag, str(value)]
    return " ".join(parts)


def refused_startup_options(exc: BaseException) -> bool:
    """Whether ``exc`` is PgBouncer (before 1.22 or without ``ignore_startup_parameters``)
    refusing the ``options`` startup parameter that carries ``statement_timeout``."""
    return "unsupported startup parameter" in str(exc)


def detect_pgbouncer(conn: psycopg.Connection[Any], dsn: str, kwargs: dict[str, Any]) -> bool:
    """Whether ``conn`` (opened on ``dsn``) goes through PgBouncer (see the module's
    docs for what this can and cannot tell). Blocking: run it in a thread from async code."""
    info = psycopg.conninfo.conninfo_to_dict(dsn)
    host, port = str(info.get("host") or ""), str(info.get("port") or "5432")
    if not host or host.startswith("/") or "," in host or "," in port:
        return False  # a Unix socket or several hosts: not guessed
    row = conn.execute("SELECT inet_server_port()").fetchone()
    server_port = str(row[0]) if row and row[0] is not None else None
    if server_port == port:
        return False
    admin = psycopg.conninfo.make_conninfo(dsn, dbname="pgbouncer")
    skip = ("options", "prepare_threshold", "autocommit", "connect_timeout", "context")
    probe_kwargs = {k: v for k, v in kwargs.items() if k not in skip}
    try:
        # the admin console speaks only the simple query protocol: a client-side cursor
        with psycopg.Connection.connect(
            admin,
            autocommit=True,
            connect_timeout=5,
            cursor_factory=psycopg.ClientCursor,
            **probe_kwargs,
        ) as admin_conn:
            row = admin_conn.execute("SHOW VERSION").fetchone()
            found = bool(row and "pgbouncer" in str(row[0]).lower())
    except psycopg.Error as exc:
        text = str(exc).lower()
        found = "not allowed" in text or ("pgbouncer" in text and "does not exist" not in text)
        if not found:
            log.info(
                "something sits between chancy and PostgreSQL (the server's port is %s, the"
                " DSN's %s); if it is PgBouncer in transaction mode, set pgbouncer=True",
                server_port,
                port,
            )
    return found


@contextlib.contextmanager
def cut_after(conn: psycopg.Connection[Any], seconds: float) -> Iterator[threading.Event]:
    """Shut ``conn``'s socket down if the block outlasts ``seconds``: a blocking call of the
    sync API cannot be cancelled otherwise, and fails at once when its socket is cut. The
    event yielded says whether it was (then the call's error means "too slow")."""
    fired = threading.Event()

    def cut() -> None:
        fired.set()
        with contextlib.suppress(OSError, ValueError):
            sock = socket.socket(fileno=os.dup(conn.fileno()))
            try:
                sock.shutdown(socket.SHUT_RDWR)
            finally:
                sock.close()

    timer = threading.Timer(seconds, cut)
    timer.daemon = True
    timer.start()
    try:
        yield fired
    finally:
        timer.cancel()
