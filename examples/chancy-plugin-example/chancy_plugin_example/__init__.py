"""An example chancy plugin: records, in ``Job.meta["example"]``, the host that pushed
each job and the worker that ran it, and counts the outcomes of attempts.

It shows the things most plugins do: annotate jobs as they are pushed
(``chancy_before_push``), annotate them as they start (``chancy_job_starting``:
changes to ``job.meta`` made there are saved with the outcome), react when an
attempt's outcome was written (``chancy_job_completed``), and keep their state
under their own key of ``Job.meta``.
"""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING

from chancy_core import Job, Outcome, QueuedJob, hookimpl

if TYPE_CHECKING:
    from chancy_core import WorkerHandle

__all__ = ["Example"]


class Example:
    """Records where jobs were pushed from and which worker ran them.

    :param host: the name recorded as the pushing host (default: this host's name).
    """

    name = "example"  # the entry point's name, and this plugin's key in Job.meta

    def __init__(self, *, host: str | None = None) -> None:
        self.host = host or socket.gethostname()
        self.outcomes: dict[str, int] = {}
        """How many attempts this process saw end, by outcome (``succeeded``...)."""

    @hookimpl
    def chancy_before_push(self, jobs: list[Job]) -> None:
        """Record where each job was pushed from."""
        for i, job in enumerate(jobs):
            jobs[i] = job.with_meta({**job.meta, self.name: {"pushed_from": self.host}})

    @hookimpl
    def chancy_job_starting(self, worker: WorkerHandle, job: QueuedJob) -> None:
        """Record which worker runs the job."""
        mine = job.meta.setdefault(self.name, {})  # changed in place: saved with the outcome
        mine["ran_on"] = worker.worker_id

    @hookimpl
    def chancy_job_completed(self, job: QueuedJob, outcome: Outcome) -> None:
        """Count the attempt's outcome."""
        # After the write: the outcome is final. (Changes to job.meta here are not saved.)
        state = outcome.state.value
        self.outcomes[state] = self.outcomes.get(state, 0) + 1
