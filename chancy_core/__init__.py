"""chancy-core: a distributed job queue for Python built on PostgreSQL."""

from chancy_core.admin import JobPage, QueueStats, WorkerInfo
from chancy_core.app import Chancy
from chancy_core.errors import ChancyError
from chancy_core.hookspecs import WorkerHandle, hookimpl
from chancy_core.job import ErrorT, IsAJob, Job, Limit, QueuedJob, Reference, job
from chancy_core.outcome import Outcome, RetryDecision
from chancy_core.queue import Queue
from chancy_core.worker import Worker

__all__ = [
    "Chancy",
    "ChancyError",
    "ErrorT",
    "IsAJob",
    "Job",
    "JobPage",
    "Limit",
    "Outcome",
    "Queue",
    "QueueStats",
    "QueuedJob",
    "Reference",
    "RetryDecision",
    "Worker",
    "WorkerHandle",
    "WorkerInfo",
    "hookimpl",
    "job",
]
