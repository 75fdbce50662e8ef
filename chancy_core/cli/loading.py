"""Which app a command uses: ``--app MODULE:ATTRIBUTE`` (or ``$CHANCY_APP``), else
``--dsn``/``--prefix`` (or ``$CHANCY_DSN``); the embedded demo database only with
``--embedded``. ``--import`` modules are imported the same way.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from types import ModuleType

from chancy_core.app import DSN_ENV, Chancy, mask_dsn
from chancy_core.cli.output import UsageError
from chancy_core.errors import ConfigurationError

APP_ENV = "CHANCY_APP"


def load_app(spec: str) -> Chancy:
    """Import ``module:attribute`` (or upstream Chancy's dotted ``module.attribute``) and
    return that :class:`Chancy` (calling the attribute first if it is a factory). The
    current folder is importable."""
    module_name, sep, attribute = spec.partition(":")
    if not sep and "." in spec:  # upstream Chancy's form: a dotted path, myapp.chancy
        module_name, sep, attribute = spec.rpartition(".")
    if not sep or not module_name or not attribute:
        raise UsageError(f"--app {spec!r}: write MODULE:ATTRIBUTE, e.g. --app myapp.tasks:chancy")
    module = _import(module_name)
    try:
        found = getattr(module, attribute)
    except AttributeError:
        raise ConfigurationError(
            f"module {module_name} has no attribute {attribute!r}: name the Chancy app it"
            f" defines, e.g. --app {module_name}:chancy"
        ) from None
    if callable(found) and not isinstance(found, Chancy):
        found = found()
    if not isinstance(found, Chancy):
        raise ConfigurationError(
            f"{spec} is a {type(found).__name__}, not a Chancy app (chancy_core.Chancy)"
        )
    return found


def _import(name: str, flag: str = "") -> ModuleType:
    """Import module ``name`` or raise a one-line :class:`ConfigurationError` saying what to
    do (``flag``, e.g. ``"--import myapp.tasks: "``, in front)."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        missing = exc.name or name
        if name != missing and not name.startswith(missing + "."):  # one of its imports
            raise ConfigurationError(f"{flag}importing {name} failed: {exc}") from None
        package, _, module = missing.rpartition(".")
        if package:  # the package was found, without that module
            raise ConfigurationError(
                f"{flag}cannot import {name}: package {package} has no module {module!r}"
                " (check the name)"
            ) from None
        raise ConfigurationError(
            f"{flag}cannot import {name} (no module named {missing!r}): run chancy from the"
            " folder that contains it, or add that folder to PYTHONPATH"
        ) from None
    except Exception as exc:
        raise ConfigurationError(
            f"{flag}importing {name} failed: {type(exc).__name__}: {exc}"
        ) from None


def _importable_cwd() -> None:
    """Make the current folder importable, as ``python -m`` does."""
    cwd = os.getcwd()
    if "" not in sys.path and cwd not in sys.path:
        sys.path.insert(0, cwd)


def _app_from_arguments(args: argparse.Namespace, preloaded: Chancy | None) -> Chancy:
    """The app a command uses, refusing the embedded database unless ``--embedded``."""
    if preloaded is not None:
        if args.dsn is not None or args.prefix is not None:
            raise UsageError(
                "--dsn and --prefix come from the app when --app (or CHANCY_APP) is given:"
                " set them in the app (or CHANCY_DSN), or leave --app out"
            )
        app = preloaded
    else:
        app = Chancy(args.dsn, prefix=args.prefix or "chancy_")
    explicit = app._db.resolved is not None or bool(os.environ.get(DSN_ENV))
    if not explicit and not args.embedded:
        from chancy_core.embedded import home

        raise ConfigurationError(
            "no database given: pass --dsn, set CHANCY_DSN, or use --app MODULE:ATTRIBUTE;"
            f" --embedded uses (and creates) a local demo database in {home()}"
        )
    if not args.quiet:
        if explicit:
            where = f"database {mask_dsn(app.dsn)}"
        else:
            from chancy_core.embedded import home

            where = f"the EMBEDDED demo database in {home()} (--embedded; not for production)"
        source = f" from --app {args.app}" if preloaded is not None else ""
        print(
            f"chancy: using {where}, prefix {app.schema.prefix}{source}",
            file=sys.stderr,
        )
    return app


def _preload(argv: list[str]) -> Chancy | None:
    """The --app (or CHANCY_APP) app, loaded before parsing so that its plugins' commands
    and options are known."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--app", default=None)
    known, _ = pre.parse_known_args(argv)
    spec = known.app or os.environ.get(APP_ENV) or None
    return load_app(spec) if spec else None
