"""Jobs given on the command line (:func:`add_job_arguments`,
:func:`job_from_arguments`, also for plugins' commands) or as JSON lines, on top of the
function's ``@job`` defaults when it can be imported.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import json
from typing import Any

from chancy_core.cli.arguments import _parse_time
from chancy_core.cli.loading import _importable_cwd
from chancy_core.cli.output import log
from chancy_core.errors import ChancyError, ConfigurationError
from chancy_core.job import Job


def add_job_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the arguments that describe a job (``func``, ``--kwargs``, ``--queue``,
    ``--priority``, ``--max-attempts``); read them back with :func:`job_from_arguments`.
    What is not given comes from the function's ``@job`` defaults when it can be imported.
    Plugins' commands that take a job use the pair too."""
    parser.add_argument("func", help="the job's function, e.g. myapp.tasks.send")
    parser.add_argument(
        "--kwargs",
        default="{}",
        metavar="JSON",
        help='keyword arguments as a JSON object, e.g. \'{"to": "a@example.com"}\'',
    )
    parser.add_argument(
        "--queue", default=None, help="queue (default: the function's @job queue, else default)"
    )
    parser.add_argument(
        "--priority",
        type=int,
        default=None,
        help="higher runs first (default: the function's @job priority, else 0)",
    )
    parser.add_argument(
        "--max-attempts",
        type=int,
        default=None,
        metavar="N",
        help="attempts before the job fails for good (default: the function's @job"
        " max_attempts, else 1)",
    )


@functools.cache  # once per function: a file of many jobs warns once, imports once
def job_template(func: str) -> Job | None:
    """The ``@job`` template of ``func`` if it can be imported and is decorated, else None
    (a warning says why when it cannot be imported)."""
    module_name, _, attribute = func.rpartition(".")
    if not module_name:
        return None
    _importable_cwd()
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        log.warning(
            "cannot import %s to read the @job defaults of %s (%s: %s); using the command's"
            " defaults",
            module_name,
            func,
            type(exc).__name__,
            exc,
        )
        return None
    if not hasattr(module, attribute):
        raise ConfigurationError(
            f"{module_name} has no function {attribute!r}: check the name (no worker could"
            " run this job)"
        )
    template = getattr(getattr(module, attribute), "job", None)
    return template if isinstance(template, Job) else None


def job_from_arguments(args: argparse.Namespace, **fields: Any) -> Job:
    """The job described by :func:`add_job_arguments`'s arguments (plus ``fields``), on top
    of the function's ``@job`` defaults when it can be imported."""
    try:
        kwargs = json.loads(args.kwargs)
    except ValueError as exc:
        raise ConfigurationError(
            f"--kwargs is not valid JSON ({exc}): e.g. --kwargs '{{\"x\": 1}}'"
        ) from None
    if not isinstance(kwargs, dict):
        raise ConfigurationError(
            f"--kwargs must be a JSON object, not {type(kwargs).__name__}: e.g. --kwargs"
            " '{\"x\": 1}'"
        )
    given = {
        "queue": args.queue,
        "priority": args.priority,
        "max_attempts": args.max_attempts,
        **fields,
    }
    return _job(args.func, kwargs, {k: v for k, v in given.items() if v is not None})


def _job(func: str, kwargs: dict[str, Any], fields: dict[str, Any]) -> Job:
    """The job of ``func`` with ``kwargs`` and ``fields``: its ``@job`` template with them
    set when it can be imported, else a new :class:`Job`."""
    template = job_template(func)
    if template is None:
        return Job(func=func, kwargs=kwargs, **fields)
    job = template.with_kwargs(**kwargs)
    for name, value in fields.items():
        method = getattr(job, f"with_{name}", None)
        if method is None:
            raise ConfigurationError(f"a job has no field {name!r}")
        job = method(value)
    return job


def _job_from_line(data: Any, where: str) -> Job:
    if not isinstance(data, dict) or not isinstance(data.get("func"), str):
        raise ConfigurationError(
            f'{where}: each line must be a JSON object with at least "func", e.g.'
            ' {"func": "myapp.tasks.send", "kwargs": {"to": "a@example.com"}}'
        )
    known = {"func", "kwargs", "queue", "priority", "max_attempts", "unique_key", "scheduled_at"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigurationError(
            f"{where}: unknown field(s) {', '.join(unknown)}; use {', '.join(sorted(known))}"
        )
    kwargs = data.get("kwargs", {})
    if not isinstance(kwargs, dict):
        raise ConfigurationError(f"{where}: kwargs must be a JSON object")
    fields = {k: v for k, v in data.items() if k not in ("func", "kwargs") and v is not None}
    if "scheduled_at" in fields:
        try:
            fields["scheduled_at"] = _parse_time(str(fields["scheduled_at"]), future=True)
        except argparse.ArgumentTypeError as exc:
            raise ConfigurationError(f"{where}: scheduled_at {exc}") from None
    try:
        return _job(data["func"], kwargs, fields)
    except ChancyError as exc:
        raise ConfigurationError(f"{where}: {exc}") from None
