"""The listener: one LISTEN connection, events dispatched to the worker, proven alive."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import anyio.abc
import psycopg
from psycopg import sql

from chancy_core import events
from chancy_core.events import ListenerStalled, parse_ping, ping_payload

__all__ = ["Listener"]

log = logging.getLogger(__name__)

_MAX_BACKOFF = 5.0


class Listener:
    """Listens on the prefix's channel and hands each well-formed event to ``on_event``;
    reconnects with backoff when the connection drops, calling ``on_reconnect`` (events
    may have been missed meanwhile: polling covers the gap).

    With ``ping``, the listener proves its connection alive: every ``interval`` seconds
    it sends ``ping(payload)`` (a NOTIFY on its own channel, through another connection)
    and expects the echo on its own connection within ``echo_timeout`` seconds; when
    none comes (a half-open connection that never reports an error) it logs a WARNING,
    drops the connection and reconnects. A ping that cannot be sent (the database is
    away) proves nothing and is not held against the listener."""

    def __init__(
        self,
        connect: Callable[[], Awaitable[psycopg.AsyncConnection[Any]]],
        channel: str,
        on_event: Callable[[events.Event], None],
        on_reconnect: Callable[[], None],
        *,
        ping: Callable[[str], Awaitable[Any]] | None = None,
        sender: str = "",
        interval: float = 5.0,
        echo_timeout: float = 45.0,
        call_timeout: float = 35.0,
    ) -> None:
        self._connect = connect
        self._listen = sql.SQL("LISTEN {}").format(sql.Identifier(channel))
        self._on_event = on_event
        self._on_reconnect = on_reconnect
        self._ping = ping
        self._sender = sender
        self.interval = interval
        self.echo_timeout = echo_timeout
        self._call_timeout = call_timeout
        self._sent = 0
        self._echoed = 0
        self._echo = anyio.Event()
        #: How many times the listener was found stalled and replaced.
        self.stalls = 0

    def dispatch(self, payload: str) -> None:
        """Hand one notification to ``on_event`` (anyone may NOTIFY: junk is ignored)."""
        ping = parse_ping(payload)
        if ping is not None:  # anyone's: ignored; our own echo is recorded
            sender, n = ping
            if sender == self._sender and n > self._echoed:
                self._echoed = n
                self._echo.set()
            return
        event = events.parse(payload)
        if event is None:
            log.debug("ignoring a malformed notification: %r", payload)
            return
        self._on_event(event)

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Listen until cancelled; ready once the first LISTEN is in place (or failed)."""
        delay = 0.1
        started = False
        while True:
            try:
                conn = await self._connect()
                try:
                    with anyio.fail_after(self._call_timeout):
                        await conn.execute(self._listen)
                    delay = 0.1
                    if not started:
                        started = True
                        task_status.started()
                    else:  # we may have missed notifications while away
                        self._on_reconnect()
                    await self._serve(conn)
                finally:
                    with anyio.CancelScope(shield=True), anyio.move_on_after(2):
                        await conn.close()
            except Exception as exc:  # whatever broke the connection, the worker goes on
                while isinstance(exc, ExceptionGroup) and len(exc.exceptions) == 1:
                    exc = exc.exceptions[0]
                log.warning(
                    "listener lost its connection (%s: %s); reconnecting in %.1fs"
                    " (polling meanwhile)",
                    type(exc).__name__,
                    exc,
                    delay,
                )
            if not started:
                started = True
                task_status.started()
            await anyio.sleep(delay)
            delay = min(delay * 2, _MAX_BACKOFF)

    async def _serve(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """Read notifications (and, with ``ping``, prove the connection alive) until the
        connection fails or stalls."""

        async def read() -> None:
            async for note in conn.notifies():
                self.dispatch(note.payload)
            raise psycopg.OperationalError("the notification stream ended")

        if self._ping is None:
            await read()
            return
        async with anyio.create_task_group() as tg:
            tg.start_soon(read)
            while True:
                await anyio.sleep(self.interval)
                await self._prove_alive()

    async def _prove_alive(self) -> None:
        """Send one ping and wait for its echo; raise :class:`ListenerStalled` if none."""
        assert self._ping is not None
        self._sent += 1
        n = self._sent
        began = anyio.current_time()
        payload = ping_payload(self._sender, n)
        try:
            await self._ping(payload)
        except Exception as exc:
            log.debug("could not send the listener's ping (%s); not held against it", exc)
            return
        with anyio.move_on_after(max(began + self.echo_timeout - anyio.current_time(), 0.0)):
            while self._echoed < n:
                self._echo = anyio.Event()
                await self._echo.wait()
            return
        self.stalls += 1
        raise ListenerStalled(
            f"its own ping did not come back within {self.echo_timeout:.1f}s (a half-open"
            " connection?)"
        )
