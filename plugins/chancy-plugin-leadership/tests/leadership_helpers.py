"""Helpers of the leadership tests.

``python -m leadership_helpers DSN WORKER_ID TTL INTERVAL`` runs a worker with only the
leadership plugin until it is killed.
"""

from __future__ import annotations

import sys

import anyio
from chancy_plugin_leadership import Leadership

from chancy_core import Chancy, Worker


async def serve(dsn: str, worker_id: str, ttl: float, interval: float) -> None:
    plugin = Leadership(ttl=ttl, interval=interval)
    async with Chancy(dsn, autoload_plugins=False, plugins=[plugin]) as app:
        await Worker(app, worker_id=worker_id, heartbeat_interval=0.5).serve()


if __name__ == "__main__":
    anyio.run(serve, sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4]))
