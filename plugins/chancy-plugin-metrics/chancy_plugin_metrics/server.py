"""A tiny HTTP/1.1 server on anyio that answers ``GET /metrics`` (and ``GET /``).

It runs as a task in the worker's task group, so it starts and stops with the
worker and needs no thread. One request per connection; request heads over
16 KiB or slower than five seconds are dropped.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import anyio
import anyio.abc
from anyio.abc import SocketAttribute

from chancy_plugin_metrics.exposition import CONTENT_TYPE

__all__ = ["serve"]

log = logging.getLogger(__name__)

_MAX_HEAD = 16 * 1024
_READ_TIMEOUT = 5.0
_PATHS = ("/metrics", "/")


def _response(status: str, body: bytes, content_type: str, extra: str = "") -> bytes:
    head = (
        f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n{extra}Connection: close\r\n\r\n"
    )
    return head.encode("latin-1") + body


async def _read_head(stream: anyio.abc.SocketStream) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data and b"\n\n" not in data:
        if len(data) > _MAX_HEAD:
            raise ValueError("request head too large")
        data += await stream.receive(65536)
    return data


def answer(head: bytes, render: Callable[[], str]) -> bytes:
    """The response to one request head."""
    try:
        method, target, _ = head.split(b"\r\n", 1)[0].split(b"\n", 1)[0].decode("latin-1").split()
    except ValueError:
        return _response("400 Bad Request", b"bad request\n", "text/plain; charset=utf-8")
    path = target.split("?", 1)[0]
    if path not in _PATHS:
        return _response("404 Not Found", b"not found: try /metrics\n", "text/plain; charset=utf-8")
    if method not in ("GET", "HEAD"):
        return _response(
            "405 Method Not Allowed",
            b"use GET\n",
            "text/plain; charset=utf-8",
            "Allow: GET, HEAD\r\n",
        )
    body = render().encode("utf-8")
    response = _response("200 OK", body, CONTENT_TYPE)
    return response[: len(response) - len(body)] if method == "HEAD" else response


async def serve(
    host: str,
    port: int,
    render: Callable[[], str],
    *,
    on_bound: Callable[[str, int], None] | None = None,
) -> None:
    """Serve ``render()`` on ``host:port`` until cancelled (``port=0``: any free port)."""

    async def handle(stream: anyio.abc.SocketStream) -> None:
        try:
            async with stream:
                with anyio.fail_after(_READ_TIMEOUT):
                    head = await _read_head(stream)
                await stream.send(answer(head, render))
        except (anyio.EndOfStream, anyio.BrokenResourceError, TimeoutError, OSError, ValueError):
            pass  # the client went away or misbehaved: nothing to answer
        except Exception:
            log.exception("metrics endpoint failed to answer a request")

    listener = await anyio.create_tcp_listener(local_host=host, local_port=port)
    async with listener:
        bound = int(listener.extra(SocketAttribute.local_port))
        log.info("serving metrics on http://%s:%d/metrics", host, bound)
        if on_bound is not None:
            on_bound(host, bound)
        await listener.serve(handle)
