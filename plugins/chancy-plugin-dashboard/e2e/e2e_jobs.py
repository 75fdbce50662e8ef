"""The jobs the browser tests' worker runs (it imports this module: `--import e2e.e2e_jobs`)."""

from __future__ import annotations

from pathlib import Path

import anyio


async def flaky(marker: str) -> str:
    """Fails the first time (leaving ``marker`` behind), succeeds every time after."""
    path = Path(marker)
    if not path.exists():
        path.write_text("failed once")
        raise ConnectionError("the mail server hung up (it always does the first time)")
    return "sent on the second try"


async def sleepy(seconds: float) -> None:
    """Sleeps (long enough to be cancelled while it runs)."""
    await anyio.sleep(seconds)


async def quick(n: int = 0) -> int:
    """Returns at once."""
    return n * 2


async def broken(reason: str) -> None:
    """Always fails."""
    raise RuntimeError(reason)


async def render(html: str) -> str:
    """Takes user-supplied text (the kind that ends up in a dashboard)."""
    return html[:10]
