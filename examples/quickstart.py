"""Quick start: push jobs, let a worker run them, print the results.

Run it with ``python3 dev.py demo`` (or ``python examples/quickstart.py`` in an
environment with ``chancy-core[embedded]``). With no DSN and no ``CHANCY_DSN``
it uses the embedded PostgreSQL kept in ``./.chancy``.
"""

from __future__ import annotations

import re
import textwrap
import time

import anyio

from chancy_core import Chancy, Job, Limit, Queue, QueuedJob, Worker, job


@job(queue="default")
async def greet(name: str) -> str:
    """An async job: runs on the worker's event loop."""
    await anyio.sleep(0.05)
    print(f"  greet: hello, {name}")
    return f"hello, {name}"


@job(queue="cpu")
def fibonacci(n: int) -> int:
    """A CPU-bound job: runs in a child process (the queue's executor)."""
    a, b = 0, 1
    for _ in range(n):
        a, b = b, a + b
    print(f"  fibonacci({n}) = {a}", flush=True)
    return a


@job(queue="default", max_attempts=3)
def flaky(job_context: QueuedJob) -> str:
    """Fails on its first attempt, succeeds on the second (retried at once)."""
    if job_context.attempts < 2:
        raise RuntimeError("first attempt fails on purpose")
    return f"succeeded on attempt {job_context.attempts}"


@job(queue="default", limits=[Limit(Limit.Type.TIME, 1)])
async def too_slow() -> None:
    """Runs past its 1 s time limit and is stopped."""
    await anyio.sleep(30)


async def main() -> None:
    async with Chancy() as chancy:
        print(f"database: {chancy!r}")
        await chancy.migrate()
        await chancy.declare(Queue("default", concurrency=10))
        await chancy.declare(Queue("cpu", concurrency=2, executor="process"))

        started = time.perf_counter()
        refs = await chancy.push_many(
            [greet.job.with_kwargs(name=name) for name in ("Ada", "Grace", "Barbara")]
            + [fibonacci.job.with_kwargs(n=n) for n in (10, 90)]
            + [flaky, too_slow, Job(func="os.system", kwargs={"command": "echo pwned"})]
        )
        print(f"pushed {len(refs)} jobs")

        # Only this module's functions may run: the os.system job is refused.
        async with Worker(chancy, allow=[__name__], shutdown_timeout=5):
            done = [await chancy.wait_for_job(ref, timeout=60) for ref in refs]

        print(f"\n{'function':<28} {'state':<10} {'attempts':>8}")
        for found in done:
            print(f"{found.func:<28} {found.state.value:<10} {found.attempts:>8}")
            if found.errors:  # the last attempt's error in full: type (no module) and message
                last = found.errors[-1]["traceback"].strip().splitlines()[-1]
                last = re.sub(r"^[\w.]+\.(\w+: )", r"\1", last)
                print(textwrap.fill(last, 88, initial_indent="    ", subsequent_indent="      "))
        print(f"\nall {len(done)} jobs finished in {time.perf_counter() - started:.1f}s")


if __name__ == "__main__":
    anyio.run(main)
