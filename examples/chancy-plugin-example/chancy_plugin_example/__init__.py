"""An example chancy plugin: records, in ``Job.meta["example"]``, the host that pushed
each job and the worker that ran it.

It shows the three things most plugins do: annotate jobs as they are pushed
(``chancy_before_push``), react when an attempt ends (``chancy_job_completed``),
and keep their state under their own key of ``Job.meta``.
"""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING

from chancy_core import Job, QueuedJob, hookimpl

if TYPE_CHECKING:
    from chancy_core.worker import Worker

__all__ = ["Example"]


class Example:
    """Records where jobs were pushed from and which worker ran them.

    :param host: the name recorded as the pushing host (default: this host's name).
    """

    name = "example"  # the entry point's name, and this plugin's key in Job.meta

    def __init__(self, *, host: str | None = None) -> None:
        self.host = host or socket.gethostname()

    @hookimpl
    def chancy_before_push(self, jobs: list[Job]) -> None:
        for i, job in enumerate(jobs):
            jobs[i] = job.with_meta({**job.meta, self.name: {"pushed_from": self.host}})

    @hookimpl
    def chancy_job_completed(self, worker: Worker, job: QueuedJob) -> None:
        mine = job.meta.setdefault(self.name, {})  # changed in place: written with the outcome
        mine["ran_on"] = worker.worker_id
        mine["outcome"] = job.state.value
