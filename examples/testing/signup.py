"""A small app that pushes jobs: signing a user up sends a welcome email in the background,
one email job at a time per user, in the order they were pushed."""

from __future__ import annotations

from chancy_core import Chancy, Job, Queue, Reference
from chancy_core.concurrency import KeyRule, set_rule, with_key

#: What the "email service" sent, in order (a real app would call one).
OUTBOX: list[str] = []

QUEUE = Queue("emails", concurrency=10)


async def send_email(to: str, subject: str) -> None:
    """The job: send one email."""
    OUTBOX.append(f"{to}: {subject}")


async def setup(chancy: Chancy) -> None:
    """Declare the queue, and run each user's emails one at a time in push order."""
    await chancy.declare(QUEUE)
    await set_rule(chancy, KeyRule(QUEUE.name, "user:*", ordered=True))


async def sign_up(chancy: Chancy, email: str) -> list[Reference]:
    """Sign a user up: a welcome email, then a tips email (never before the welcome)."""
    emails = [
        with_key(
            Job.from_func(send_email, queue=QUEUE.name, kwargs={"to": email, "subject": s}),
            f"user:{email}",
        )
        for s in ("Welcome!", "Three tips to start")
    ]
    return await chancy.push_many(emails)
