"""The exceptions chancy-core raises.

Every exception derives from :class:`ChancyError`. Each class's docstring is
its default message, and each message says what to do about it.
"""

from __future__ import annotations

import psycopg
from psycopg_pool import PoolTimeout

__all__ = [
    "TRANSIENT_ERRORS",
    "ChancyError",
    "ConfigurationError",
    "DatabaseUnavailableError",
    "InvalidJobError",
    "InvalidQueueError",
    "JobCancelled",
    "JobCrashed",
    "JobNotAllowedError",
    "JobNotFoundError",
    "JobStateError",
    "MemoryLimitExceeded",
    "MigrationError",
    "PluginError",
    "QueueNotFoundError",
    "RemoteError",
    "SchemaMissingError",
    "TimeLimitExceeded",
    "WorkerError",
]


class ChancyError(Exception):
    """Something went wrong in chancy-core."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())


class ConfigurationError(ChancyError, ValueError):
    """The configuration is invalid: check the arguments given to Chancy or Worker."""


class DatabaseUnavailableError(ChancyError, ConnectionError):
    """The database could not be reached: check the DSN and that PostgreSQL is running."""


class SchemaMissingError(ChancyError):
    """The chancy tables do not exist yet: run `await chancy.migrate()` or `chancy migrate`."""


class MigrationError(ChancyError):
    """A migration could not be applied; nothing of it was kept."""


class InvalidJobError(ChancyError, ValueError):
    """The job is invalid: fix the field named in the message before pushing it."""


class InvalidQueueError(ChancyError, ValueError):
    """The queue is invalid: fix the field named in the message before declaring it."""


class JobNotFoundError(ChancyError, LookupError):
    """The job does not exist (it may have been pruned or never pushed)."""


class JobStateError(ChancyError):
    """The job is not in a state this action applies to: the message says which it is in."""


class QueueNotFoundError(ChancyError, LookupError):
    """No queue of that name is declared: declare it first (`chancy queue declare`)."""


class JobNotAllowedError(ChancyError):
    """This worker is not allowed to run that function: add its module to the allow-list."""


class PluginError(ChancyError):
    """A plugin could not be loaded or registered."""


class WorkerError(ChancyError):
    """The worker could not do what was asked."""


# --- why a job's attempt failed (the ``error`` of its outcome) ------------------------------


class JobCancelled(ChancyError):
    """The job was cancelled with ``cancel_job``; it is not retried."""


class TimeLimitExceeded(ChancyError, TimeoutError):
    """The job ran past its time limit: raise the limit or make the job faster."""


class MemoryLimitExceeded(ChancyError, MemoryError):
    """The job's process used more resident memory than its limit allowed."""


class JobCrashed(ChancyError):
    """The process running the job exited without reporting an outcome."""


class RemoteError(ChancyError):
    """An exception raised in a child process that could not be sent back as itself."""


TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    psycopg.OperationalError,
    psycopg.InterfaceError,
    psycopg.InternalError,  # "got no result from the query": a connection lost mid-query
    PoolTimeout,
    DatabaseUnavailableError,
    OSError,
)
"""Errors that mean the database is away for now: background loops (the worker's and
plugins') log them and try again later."""
