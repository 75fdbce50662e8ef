"""Versioned, forward-only migrations, tracked per component.

Each component (``core`` and every plugin that has tables) owns a numbered
sequence of SQL files ``NNNN_description.sql`` in a package. The SQL uses
``{name}`` placeholders for every table, index and channel (see
:mod:`chancy_core.sql`), so two prefixes never collide. Each migration is
applied in its own transaction under an advisory lock, and recorded in the
``{prefix}migrations`` table; running :func:`apply` again, or from several
processes at once, applies each step exactly once.
"""

from __future__ import annotations

import logging
import re
import zlib
from dataclasses import dataclass
from importlib import resources
from typing import LiteralString

import psycopg

from chancy_core.errors import MigrationError
from chancy_core.sql import Schema

__all__ = ["Migration", "MigrationSet", "apply", "load_migrations"]

log = logging.getLogger(__name__)

_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")

CREATE_LEDGER: LiteralString = """
CREATE TABLE IF NOT EXISTS {migrations} (
    component   text NOT NULL,
    version     integer NOT NULL,
    name        text NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (component, version)
)
"""


@dataclass(frozen=True, slots=True)
class Migration:
    """One forward-only step of a component's schema."""

    version: int
    name: str
    sql: str


@dataclass(frozen=True, slots=True)
class MigrationSet:
    """The ordered migrations of one component (``core`` or a plugin's name)."""

    component: str
    migrations: tuple[Migration, ...]


def load_migrations(component: str, package: str) -> MigrationSet:
    """Read ``NNNN_name.sql`` files from ``package`` into a :class:`MigrationSet`."""
    found: list[Migration] = []
    for entry in resources.files(package).iterdir():
        match = _FILE.match(entry.name)
        if match:
            found.append(Migration(int(match[1]), match[2], entry.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if versions != list(range(1, len(found) + 1)):
        raise MigrationError(
            f"migrations of {component!r} in {package} must be numbered 0001, 0002, ... without"
            f" gaps; found {versions}"
        )
    return MigrationSet(component, tuple(found))


def _lock_key(schema: Schema) -> int:
    return zlib.crc32(f"chancy-migrations:{schema.prefix}".encode())


async def apply(
    conn: psycopg.AsyncConnection[object], schema: Schema, sets: list[MigrationSet]
) -> list[str]:
    """Apply every pending migration of ``sets``; return the names of those applied."""
    applied: list[str] = []
    for mset in sets:
        for migration in mset.migrations:
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_lock_key(schema),))
                await conn.execute(schema.compose(CREATE_LEDGER))
                cur = await conn.execute(
                    schema.compose(
                        "SELECT 1 FROM {migrations} WHERE component = %s AND version = %s"
                    ),
                    (mset.component, migration.version),
                )
                if await cur.fetchone():
                    continue
                label = f"{mset.component}:{migration.version:04d}_{migration.name}"
                try:
                    # the file's text is trusted code shipped with its component
                    await conn.execute(schema.compose(migration.sql))
                except psycopg.Error as exc:
                    raise MigrationError(
                        f"migration {label} failed and was rolled back: {exc}"
                    ) from exc
                await conn.execute(
                    schema.compose(
                        "INSERT INTO {migrations} (component, version, name) VALUES (%s, %s, %s)"
                    ),
                    (mset.component, migration.version, migration.name),
                )
                log.info("applied migration %s", label, extra={"migration": label})
                applied.append(label)
    return applied
