"""A loopback TCP proxy that can break the network path in the ways real networks do.

:class:`NetProxy` forwards ``127.0.0.1:<port>`` to an upstream host and port, on a
thread of its own (so it keeps working while the test's event loop is busy). Each
connection can be:

* **black-holed** (:meth:`NetProxy.hole`): bytes stop moving both ways, but nothing is
  closed or reset: a half-open connection, as when a path dies without a FIN or RST.
  Bytes that arrive meanwhile are held; :meth:`NetProxy.release` lets them through
  again (a partition that heals).
* **reset** (:meth:`NetProxy.reset`): closed at once on both sides.

``hole()`` with no argument holes every open connection *and* new ones (a dead path;
new connections are accepted but never reach the server); ``hole(conns)`` only the
given ones (frozen connections while new ones work). Connections that sent
``LISTEN`` are marked (:attr:`Conn.listener`), so a test can freeze the listener alone.

The proxy is a live process on loopback: the kernel still acknowledges data and answers
keepalive probes, so TCP keepalives and ``tcp_user_timeout`` never fire here. It
models "TCP alive, no answer" (a stalled pooler or middlebox, a frozen server); what a
real black hole gives until the kernel gives up.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

__all__ = ["Conn", "NetProxy"]


@dataclass(eq=False)
class Conn:
    """One proxied connection."""

    number: int
    client: socket.socket
    server: socket.socket | None
    opened: float = field(default_factory=time.monotonic)
    held: bool = False
    listener: bool = False
    closed: bool = False
    up: bytearray = field(default_factory=bytearray)  # client -> server, not yet sent
    down: bytearray = field(default_factory=bytearray)  # server -> client, not yet sent


class NetProxy:
    """A TCP proxy on 127.0.0.1 to ``upstream_host:upstream_port`` (see the module)."""

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self._listen = socket.socket()
        self._listen.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listen.bind(("127.0.0.1", 0))
        self._listen.listen(256)
        self._listen.setblocking(False)
        self.port: int = self._listen.getsockname()[1]
        self._lock = threading.Lock()
        self._conns: list[Conn] = []
        self._hole_new = False
        self._count = 0
        self._stop = threading.Event()
        self._wake_r, self._wake_w = socket.socketpair()
        self._thread = threading.Thread(target=self._loop, name="netproxy", daemon=True)
        self.events: list[tuple[float, str, int]] = []
        """``(monotonic time, event, connection number)``: open, hole, release, reset, close."""

    # --- control (any thread) -----------------------------------------------------------

    def start(self) -> NetProxy:
        """Start forwarding."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Close every connection and stop."""
        self._stop.set()
        self._poke()
        self._thread.join(10)
        with self._lock:
            for conn in self._conns:
                self._close(conn)
        self._listen.close()
        self._wake_r.close()
        self._wake_w.close()

    def __enter__(self) -> NetProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def dsn(self, dsn: str) -> str:
        """``dsn`` with its host and port replaced by the proxy's."""
        from psycopg.conninfo import make_conninfo

        return make_conninfo(dsn, host="127.0.0.1", port=str(self.port))

    def connections(self) -> list[Conn]:
        """The open connections, oldest first."""
        with self._lock:
            return [c for c in self._conns if not c.closed]

    def listeners(self) -> list[Conn]:
        """The open connections that sent LISTEN."""
        return [c for c in self.connections() if c.listener]

    def hole(self, conns: Iterable[Conn] | None = None) -> list[Conn]:
        """Stop moving bytes on ``conns`` (default: every connection, and new ones);
        nothing is closed. Returns the connections held."""
        with self._lock:
            if conns is None:
                self._hole_new = True
                chosen = [c for c in self._conns if not c.closed]
            else:
                chosen = [c for c in conns if not c.closed]
            for conn in chosen:
                conn.held = True
                self.events.append((time.monotonic(), "hole", conn.number))
        self._poke()
        return chosen

    def release(self, conns: Iterable[Conn] | None = None) -> None:
        """Let bytes move again on ``conns`` (default: all; new connections too)."""
        with self._lock:
            if conns is None:
                self._hole_new = False
                conns = list(self._conns)
            for conn in conns:
                if conn.held and not conn.closed:
                    conn.held = False
                    self.events.append((time.monotonic(), "release", conn.number))
                    if conn.server is None:
                        self._connect_upstream(conn)
        self._poke()

    def reset(self, conns: Iterable[Conn] | None = None) -> None:
        """Close ``conns`` (default: all) at once on both sides."""
        with self._lock:
            for conn in list(self._conns) if conns is None else list(conns):
                if not conn.closed:
                    self.events.append((time.monotonic(), "reset", conn.number))
                    with contextlib.suppress(OSError):  # RST, not FIN
                        conn.client.setsockopt(
                            socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
                        )
                    self._close(conn)
        self._poke()

    # --- the forwarding thread -----------------------------------------------------------

    def _poke(self) -> None:
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")

    def _connect_upstream(self, conn: Conn) -> None:
        try:
            conn.server = socket.create_connection(self.upstream, timeout=5)
            conn.server.setblocking(False)
        except OSError:
            self._close(conn)

    def _close(self, conn: Conn) -> None:
        if conn.closed:
            return
        conn.closed = True
        self.events.append((time.monotonic(), "close", conn.number))
        for sock in (conn.client, conn.server):
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listen.accept()
            except (BlockingIOError, OSError):
                return
            client.setblocking(False)
            with self._lock:
                self._count += 1
                conn = Conn(self._count, client, None, held=self._hole_new)
                self._conns.append(conn)
                self.events.append((time.monotonic(), "open", conn.number))
                if not conn.held:
                    self._connect_upstream(conn)

    def _pump(self, conn: Conn, ready: set[socket.socket]) -> None:
        server = conn.server
        if conn.closed or conn.held or server is None:
            return
        for src, dst, buf, up in (
            (conn.client, server, conn.up, True),
            (server, conn.client, conn.down, False),
        ):
            if src in ready:
                try:
                    data = src.recv(65536)
                except BlockingIOError:
                    data = None
                except OSError:
                    data = b""
                if data == b"":
                    self._close(conn)
                    return
                if data:
                    if up and b"LISTEN " in data:
                        conn.listener = True
                    buf += data
            if buf:
                try:
                    sent = dst.send(buf)
                    del buf[:sent]
                except BlockingIOError:
                    pass
                except OSError:
                    self._close(conn)
                    return

    def _loop(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self._listen, selectors.EVENT_READ)
        sel.register(self._wake_r, selectors.EVENT_READ)
        while not self._stop.is_set():
            with self._lock:
                conns = [c for c in self._conns if not c.closed]
                self._conns = conns + [c for c in self._conns if c.closed][-100:]
            watched: list[socket.socket] = []
            for conn in conns:
                if conn.held or conn.server is None:
                    continue  # held bytes stay in the kernel's buffers
                for sock, buf in ((conn.client, conn.down), (conn.server, conn.up)):
                    events = selectors.EVENT_READ | (selectors.EVENT_WRITE if buf else 0)
                    with contextlib.suppress(ValueError, KeyError, OSError):
                        sel.register(sock, events)
                        watched.append(sock)
            ready: set[socket.socket] = set()
            for key, _ in sel.select(0.2):
                if key.fileobj is self._listen:
                    self._accept()
                elif key.fileobj is self._wake_r:
                    with contextlib.suppress(OSError):
                        self._wake_r.recv(4096)
                else:
                    ready.add(key.fileobj)  # type: ignore[arg-type]
            for sock in watched:
                with contextlib.suppress(ValueError, KeyError, OSError):
                    sel.unregister(sock)
            with self._lock:
                for conn in conns:
                    self._pump(conn, ready)
        sel.close()
