"""The network-fault proxy on its own, against an echo server (no database)."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from chaos.netproxy import NetProxy


@pytest.fixture
def echo() -> Iterator[int]:
    """A threaded echo server on loopback; yields its port."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    stop = threading.Event()

    def serve(conn: socket.socket) -> None:
        with conn:
            while not stop.is_set():
                try:
                    data = conn.recv(4096)
                except OSError:
                    return
                if not data:
                    return
                conn.sendall(data)

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                return
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    yield server.getsockname()[1]
    stop.set()
    server.close()


@pytest.fixture
def proxy(echo: int) -> Iterator[NetProxy]:
    with NetProxy("127.0.0.1", echo) as found:
        yield found


def client(proxy: NetProxy) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=2)
    sock.settimeout(2)
    return sock


def roundtrip(sock: socket.socket, data: bytes) -> bytes:
    sock.sendall(data)
    got = b""
    while len(got) < len(data):
        chunk = sock.recv(4096)
        if not chunk:
            break
        got += chunk
    return got


def wait_for(predicate: object, timeout: float = 2.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def test_forwards_bytes_both_ways(proxy: NetProxy) -> None:
    with client(proxy) as sock:
        assert roundtrip(sock, b"hello") == b"hello"
        assert roundtrip(sock, b"x" * 200_000) == b"x" * 200_000


def test_hole_all_freezes_open_and_new_connections_without_closing_then_release_delivers(
    proxy: NetProxy,
) -> None:
    with client(proxy) as old:
        assert roundtrip(old, b"a") == b"a"
        proxy.hole()
        old.settimeout(0.5)
        old.sendall(b"held")
        with pytest.raises(TimeoutError):
            old.recv(10)  # no bytes, and no EOF or reset either
        with client(proxy) as new:  # accepted, but it never reaches the server
            new.settimeout(0.5)
            new.sendall(b"new")
            with pytest.raises(TimeoutError):
                new.recv(10)
            proxy.release()
            new.settimeout(2)
            assert new.recv(10) == b"new"
        old.settimeout(2)
        assert old.recv(10) == b"held"


def test_hole_chosen_connections_only(proxy: NetProxy) -> None:
    with client(proxy) as frozen, client(proxy) as fine:
        wait_for(lambda: len(proxy.connections()) == 2)
        first = proxy.connections()[0]
        assert proxy.hole([first]) == [first]
        frozen.settimeout(0.5)
        frozen.sendall(b"x")
        with pytest.raises(TimeoutError):
            frozen.recv(1)
        assert roundtrip(fine, b"still") == b"still"
        with client(proxy) as later:
            assert roundtrip(later, b"new ones work") == b"new ones work"


def test_reset_closes_both_sides(proxy: NetProxy) -> None:
    with client(proxy) as sock:
        assert roundtrip(sock, b"a") == b"a"
        proxy.reset()
        with contextlib.suppress(ConnectionResetError):
            assert sock.recv(10) == b""
    assert proxy.connections() == []


def test_marks_listener_connections(proxy: NetProxy) -> None:
    with client(proxy) as plain, client(proxy) as listener:
        roundtrip(plain, b"SELECT 1")
        roundtrip(listener, b'LISTEN "chancy_events"')
        wait_for(lambda: len(proxy.listeners()) == 1)
        assert proxy.listeners()[0].number == 2
