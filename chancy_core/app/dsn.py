"""The DSN: where it comes from, its checks, and how it is shown (passwords masked)."""

from __future__ import annotations

import os
import re

import psycopg
import psycopg.conninfo

from chancy_core.connection import ConnectionSettings, split_dsn
from chancy_core.errors import ConfigurationError

__all__ = ["DSN_ENV", "check_dsn", "mask_dsn", "mask_secrets_of", "resolve_dsn"]

DSN_ENV = "CHANCY_DSN"

# A URI's password runs to the last '@' (a password with a raw '@', '/' or space is a common
# mistake, and then masking must still hide all of it); a keyword's to the end of its value.
_SECRET = re.compile(
    r"(://[^:/@?#\s]*:)(.*)(@)|((?:password|passwd)\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)",
    re.IGNORECASE,
)


def mask_dsn(dsn: str) -> str:
    """Return ``dsn`` with any password replaced by ``***``."""

    def hide(match: re.Match[str]) -> str:
        if match[1] is not None:  # user:password@ (an empty password stays empty)
            return f"{match[1]}{'***' if match[2] else ''}{match[3]}"
        return f"{match[4]}***"

    return _SECRET.sub(hide, dsn)


def mask_secrets_of(dsn: str, text: str) -> str:
    """``text`` (an error about ``dsn``) with ``dsn``'s passwords masked wherever they
    appear: libpq's messages about a malformed DSN may quote the password on its own."""
    for match in _SECRET.finditer(dsn):
        secret = (match[2] if match[1] is not None else match[5]).strip("'")
        if secret:
            text = text.replace(secret, "***")
    return mask_dsn(text)


def check_dsn(dsn: str, settings: ConnectionSettings) -> str:
    """``dsn`` without chancy's own parameters (merged into ``settings``), checked."""
    if not isinstance(dsn, str):
        raise ConfigurationError(f"the DSN must be a string, not {type(dsn).__name__}")
    dsn, extras = split_dsn(dsn)
    settings.merge_dsn_extras(extras)
    try:
        psycopg.conninfo.conninfo_to_dict(dsn)
    except psycopg.ProgrammingError as exc:
        raise ConfigurationError(
            f"malformed DSN {mask_dsn(dsn)!r} ({mask_secrets_of(dsn, str(exc).strip())}): use"
            " 'postgresql://user:password@host:5432/dbname' or 'host=... dbname=...'"
        ) from None
    return dsn


def resolve_dsn(settings: ConnectionSettings) -> str:
    """The DSN when none was given: ``$CHANCY_DSN``, else the embedded server's (started)."""
    env = os.environ.get(DSN_ENV)
    if env:
        return check_dsn(env, settings)
    from chancy_core.embedded import embedded_dsn

    return embedded_dsn()
