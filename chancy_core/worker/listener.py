"""The listener: one LISTEN connection, events dispatched to the worker."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import anyio.abc
import psycopg
from psycopg import sql

from chancy_core import events

__all__ = ["Listener"]

log = logging.getLogger(__name__)

_MAX_BACKOFF = 5.0


class Listener:
    """Listens on the prefix's channel and hands each well-formed event to ``on_event``;
    reconnects with backoff when the connection drops, calling ``on_reconnect`` (events
    may have been missed meanwhile: polling covers the gap)."""

    def __init__(
        self,
        connect: Callable[[], Awaitable[psycopg.AsyncConnection[Any]]],
        channel: str,
        on_event: Callable[[events.Event], None],
        on_reconnect: Callable[[], None],
    ) -> None:
        self._connect = connect
        self._listen = sql.SQL("LISTEN {}").format(sql.Identifier(channel))
        self._on_event = on_event
        self._on_reconnect = on_reconnect

    def dispatch(self, payload: str) -> None:
        """Hand one notification to ``on_event`` (anyone may NOTIFY: junk is ignored)."""
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
                async with conn:
                    await conn.execute(self._listen)
                    delay = 0.1
                    if not started:
                        started = True
                        task_status.started()
                    else:  # we may have missed notifications while away
                        self._on_reconnect()
                    async for note in conn.notifies():
                        self.dispatch(note.payload)
            except Exception as exc:  # whatever broke the connection, the worker goes on
                log.warning(
                    "listener lost its connection (%s); reconnecting in %.1fs (polling meanwhile)",
                    exc,
                    delay,
                )
            if not started:
                started = True
                task_status.started()
            await anyio.sleep(delay)
            delay = min(delay * 2, _MAX_BACKOFF)
