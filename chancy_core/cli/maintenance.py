"""``chancy migrate``, ``check``, ``prune`` and ``plugins``: the database and the plugins."""

from __future__ import annotations

import argparse
from importlib.metadata import entry_points
from typing import Any

import pluggy
import psycopg

from chancy_core.app import Chancy
from chancy_core.cli.arguments import _reading, _sub
from chancy_core.cli.output import EXIT_ERROR, EXIT_OK, _print_json, show
from chancy_core.errors import ChancyError, ConfigurationError
from chancy_core.plugins import ENTRY_POINT_GROUP, plugin_options, recovers_dead_workers, registered


async def _migrate(app: Chancy, args: argparse.Namespace) -> int:
    applied = await app.migrate()
    for label in applied:
        print(f"applied {label}")
    print(f"{len(applied)} migration(s) applied; the database is up to date")
    return EXIT_OK


async def _check(app: Chancy, args: argparse.Namespace) -> int:
    checks: list[dict[str, Any]] = []
    try:
        conn = await app.connect()
    except ChancyError as exc:
        checks.append({"check": "connect", "ok": False, "detail": str(exc)})
        return _report_checks(checks, args)
    async with conn:
        cur = await conn.execute("SELECT current_setting('server_version')")
        row = await cur.fetchone()
        checks.append(
            {"check": "connect", "ok": True, "detail": f"PostgreSQL {row[0] if row else '?'}"}
        )
        ledger = app.schema.compose("SELECT component, version FROM {migrations}")
        try:
            cur = await conn.execute(ledger)
            applied = {(c, v) for c, v in await cur.fetchall()}
        except psycopg.errors.UndefinedTable:  # never migrated
            applied = set()
    for mset in app.migration_sets():
        missing = [m for m in mset.migrations if (mset.component, m.version) not in applied]
        checks.append(
            {
                "check": f"migrations {mset.component}",
                "ok": not missing,
                "detail": (
                    f"{len(mset.migrations)} applied"
                    if not missing
                    else f"{len(missing)} not applied"
                    f" ({', '.join(f'{m.version:04d}_{m.name}' for m in missing)}): run"
                    " `chancy migrate`"
                ),
            }
        )
    for name, plugin in registered(app.plugins):
        checks.append({"check": f"plugin {name}", "ok": True, "detail": plugin_options(plugin)})
    if not any(recovers_dead_workers(p) for _, p in registered(app.plugins)):
        checks.append(
            {
                "check": "recovery plugin",
                "ok": True,
                "detail": "not installed: the jobs of a worker that crashes stay running"
                " (install chancy-plugin-recovery)",
            }
        )
    return _report_checks(checks, args)


def _report_checks(checks: list[dict[str, Any]], args: argparse.Namespace) -> int:
    ok = all(c["ok"] for c in checks)
    rows = [
        (c["check"], "[green]ok[/]" if c["ok"] else "[bold red]FAIL[/]", c["detail"])
        for c in checks
    ]
    show(args, {"ok": ok, "checks": checks}, ("CHECK", "", "DETAIL"), rows, empty="no checks")
    return EXIT_OK if ok else EXIT_ERROR


async def _prune(app: Chancy, args: argparse.Namespace) -> int:
    pruner = app.plugins.get_plugin("pruner")
    if pruner is None or not hasattr(pruner, "prune"):
        raise ConfigurationError(
            "the pruner plugin is not installed: pip install ./plugins/chancy-plugin-pruner"
            " (from the repository), or add Pruner(...) to your app's plugins"
        )
    deleted: dict[str, int] = await pruner.prune(app)
    if args.json:
        _print_json({"deleted": deleted})
    else:
        total = sum(deleted.values())
        detail = ", ".join(f"{n} {state}" for state, n in deleted.items()) or "nothing"
        print(f"pruned {total} job(s): {detail}")
    return EXIT_OK


def _plugins(args: argparse.Namespace, pm: pluggy.PluginManager) -> int:
    dists = {ep.name: ep.dist for ep in entry_points(group=ENTRY_POINT_GROUP)}
    rows: list[dict[str, Any]] = []
    for name, plugin in registered(pm):
        dist = dists.get(name)
        source = f"{dist.name} {dist.version}" if dist else "(not installed: given in code)"
        hooks = sorted(h.name for h in pm.get_hookcallers(plugin) or [])
        rows.append(
            {"name": name, "source": source, "options": plugin_options(plugin), "hooks": hooks}
        )
    return show(
        args,
        rows,
        ("PLUGIN", "DISTRIBUTION", "OPTIONS", "HOOKS"),
        [(r["name"], r["source"], r["options"] or "-", ", ".join(r["hooks"])) for r in rows],
        empty="no plugins installed (pip install ./plugins/chancy-plugin-NAME from the"
        f" repository; entry-point group {ENTRY_POINT_GROUP!r})",
    )


def add_commands(sub: Any) -> None:
    """Add ``chancy migrate``, ``check``, ``prune`` and ``plugins`` to the subparsers
    ``sub``."""
    _sub(sub, "migrate", "create or update the tables (core and plugins)").set_defaults(
        handler=_migrate
    )
    check = _sub(
        sub, "check", "check the database: it connects, migrations are applied, plugins load"
    )
    _reading(check)
    check.set_defaults(handler=_check, unopened=True)  # reports a failed connection itself
    prune = _sub(sub, "prune", "delete old finished jobs now, with the pruner plugin's retention")
    _reading(prune)
    prune.set_defaults(handler=_prune)
    plugins = _sub(sub, "plugins", "list the app's plugins, their options and hooks")
    _reading(plugins)
    plugins.set_defaults(local=_plugins)
