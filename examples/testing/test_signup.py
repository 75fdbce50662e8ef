"""Testing code that pushes jobs, two ways: inline (no worker) and with a real worker."""

from __future__ import annotations

import pytest
from signup import OUTBOX, setup, sign_up

from chancy_core import Chancy, QueuedJob
from chancy_core.testing import InlineChancy

pytestmark = pytest.mark.anyio


@pytest.fixture(autouse=True)
def _empty_outbox() -> None:
    OUTBOX.clear()


async def test_sign_up_sends_both_emails_in_order(inline_chancy: InlineChancy) -> None:
    """Inline: the jobs run in the test's process as soon as sign_up pushes them."""
    await setup(inline_chancy)
    refs = await sign_up(inline_chancy, "ada@example.com")
    assert OUTBOX == ["ada@example.com: Welcome!", "ada@example.com: Three tips to start"]
    for job in await inline_chancy.get_jobs(refs):
        assert job is not None and job.state is QueuedJob.State.SUCCEEDED


async def test_nothing_is_sent_until_drained(database: str) -> None:
    """Inline, on drain(): check what was pushed, then run it."""
    async with InlineChancy(database, run_on_push=False) as chancy:
        await setup(chancy)
        await sign_up(chancy, "bob@example.com")
        assert OUTBOX == []
        assert await chancy.count_jobs() == {("emails", QueuedJob.State.PENDING): 2}
        await chancy.drain()
        assert len(OUTBOX) == 2


async def test_with_a_real_worker(chancy: Chancy, run_worker) -> None:  # type: ignore[no-untyped-def]
    """The same code against a worker running beside the test."""
    await setup(chancy)
    async with run_worker(chancy):
        refs = await sign_up(chancy, "cy@example.com")
        for ref in refs:
            job = await chancy.wait_for_job(ref, timeout=30)
            assert job.state is QueuedJob.State.SUCCEEDED
    assert OUTBOX[0] == "cy@example.com: Welcome!"
