"""A worker process of the chaos suite: ``python -m chaos.worker CONFIG_JSON``.

The configuration (a JSON object) names the DSN, the worker's id, its options, the
app's (``"app": {...}``, keyword arguments of ``Chancy``) and the recovery and pruner
plugins' (``"recovery": {...}``, ``"pruner": {...}``; absent or ``null`` for none).
The worker serves until SIGTERM (graceful) or SIGKILL (the suite's kill test). Plugins
are not discovered: the suite passes exactly the ones it tests.
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

import anyio

from chancy_core import Chancy, Worker
from chancy_core.cli import leave_abandoned_threads


def _dump_tasks() -> None:
    """SIGUSR2: print every asyncio task's stack (SIGUSR1 prints every thread's)."""
    import asyncio

    for task in asyncio.all_tasks():
        print(f"--- {task.get_name()}: {task.get_coro()}", file=sys.stderr)
        task.print_stack(limit=12, file=sys.stderr)
    sys.stderr.flush()


async def serve(config: dict[str, Any]) -> None:
    import asyncio
    import faulthandler
    import signal

    faulthandler.register(signal.SIGUSR1, all_threads=True)
    asyncio.get_running_loop().add_signal_handler(signal.SIGUSR2, _dump_tasks)
    plugins: list[object] = []
    if config.get("recovery") is not None:
        from chancy_plugin_recovery import Recovery

        plugins.append(Recovery(**config["recovery"]))
    if config.get("pruner") is not None:
        from chancy_plugin_pruner import Pruner

        plugins.append(Pruner(**config["pruner"]))
    async with Chancy(
        config["dsn"],
        autoload_plugins=False,
        plugins=plugins,
        max_connections=config.get("max_connections", 10),
        connect_timeout=config.get("connect_timeout", 5.0),
        **config.get("app", {}),  # e.g. call_timeout, statement_timeout, pgbouncer
    ) as app:
        worker = Worker(
            app,
            worker_id=config["worker_id"],
            allow=config.get("allow"),
            heartbeat_interval=config.get("heartbeat_interval", 5.0),
            shutdown_timeout=config.get("shutdown_timeout", 30.0),
        )
        await worker.serve()


def main() -> None:
    config = json.loads(sys.argv[1])
    logging.basicConfig(
        level=config.get("log_level", "WARNING"),
        format=f"%(asctime)s {config['worker_id']} %(levelname)s %(name)s: %(message)s",
    )
    anyio.run(serve, config)
    # What `chancy worker start` does: threads of jobs abandoned at the shutdown timeout
    # (Python cannot stop a thread) must not keep the process, and themselves, running.
    leave_abandoned_threads(0)


if __name__ == "__main__":  # the process executor's children import this module too
    main()
