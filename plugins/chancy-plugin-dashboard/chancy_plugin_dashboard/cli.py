"""``chancy dashboard``: serve the dashboard with uvicorn, or make a password hash.

::

    chancy dashboard --app myproject.tasks:chancy --port 8080   # your Chancy app
    chancy dashboard --dsn postgresql://... --port 8080         # or a DSN ($CHANCY_DSN)
    chancy dashboard --dashboard myproject.admin:dashboard      # your own Dashboard (or ASGI app)
    chancy dashboard --hash-password                            # prints the hash of a password

With ``--app`` (the ``chancy`` command's own option: your configured
:class:`~chancy_core.Chancy`) or a DSN, the command builds a :class:`Dashboard` with the
built-in password login, from ``$CHANCY_DASHBOARD_PASSWORD_HASH`` (required) and
``$CHANCY_DASHBOARD_SECRET_KEY``. ``--dashboard MODULE:ATTRIBUTE`` serves a dashboard
you configured in code instead (its own auth, allowed functions, ...), or your whole
ASGI app with the dashboard mounted in it.
"""

from __future__ import annotations

import argparse
import getpass
import importlib
import os
import sys
from typing import Any

from chancy_core import Chancy
from chancy_core.cli import UsageError, load_app
from chancy_core.errors import ChancyError, ConfigurationError
from chancy_plugin_dashboard.app import Dashboard
from chancy_plugin_dashboard.security import hash_password

__all__ = ["PASSWORD_HASH_ENV", "SECRET_KEY_ENV", "load_asgi", "register"]

DSN_ENV = "CHANCY_DSN"
PASSWORD_HASH_ENV = "CHANCY_DASHBOARD_PASSWORD_HASH"
SECRET_KEY_ENV = "CHANCY_DASHBOARD_SECRET_KEY"


def register(subparsers: Any) -> None:
    """Add ``dashboard`` to the ``chancy`` command."""
    parser = subparsers.add_parser(
        "dashboard",
        help="serve the web dashboard (uvicorn)",
        description="Serve the dashboard for --app (your Chancy app) or --dsn, with the"
        f" password login from ${PASSWORD_HASH_ENV}; or serve --dashboard MODULE:ATTRIBUTE,"
        " a Dashboard (or ASGI app) you configured in code.",
    )
    parser.add_argument(
        "--dashboard",
        default=None,
        metavar="MODULE:ATTRIBUTE",
        help="your Dashboard, or your ASGI app with it mounted (instead of --app/--dsn)",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on (default 8000)")
    parser.add_argument("--root-path", default="", help="the path a proxy serves it under")
    parser.add_argument(
        "--insecure-cookies",
        action="store_true",
        help="session cookie without Secure (plain-HTTP development only)",
    )
    parser.add_argument("--read-only", action="store_true", help="a dashboard that changes nothing")
    parser.add_argument(
        "--hash-password",
        action="store_true",
        help="print the hash of a password (read from stdin, or asked for) and exit",
    )
    parser.set_defaults(local=_run)


def load_asgi(spec: str) -> Any:
    """The ASGI application ``module:attribute`` names (the current folder is importable)."""
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise UsageError(
            f"--dashboard {spec!r}: write MODULE:ATTRIBUTE, e.g. myproject.admin:dashboard"
        )
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigurationError(
            f"--dashboard {spec!r}: cannot import {module_name!r} ({exc})"
        ) from None
    found: Any = module
    for part in attribute.split("."):
        try:
            found = getattr(found, part)
        except AttributeError:
            raise ConfigurationError(
                f"--dashboard {spec!r}: {module_name} has no {attribute!r}"
            ) from None
    if isinstance(found, Chancy) or not callable(found):
        raise ConfigurationError(
            f"--dashboard {spec!r} is not an ASGI application (a Dashboard, or your app);"
            " for a Chancy app use --app"
        )
    return found


def _password() -> str:
    if not sys.stdin.isatty():
        return sys.stdin.readline().rstrip("\r\n")
    first = getpass.getpass("Password: ")
    if getpass.getpass("Again: ") != first:
        raise ChancyError("the passwords differ")
    return first


def _run(args: argparse.Namespace, pm: object = None) -> int:
    if args.hash_password:
        print(hash_password(_password()))
        return 0
    if args.dashboard:
        if args.app or args.dsn:
            raise UsageError(
                "--dashboard serves a dashboard that names its own Chancy app: leave out"
                " --app and --dsn"
            )
        asgi = load_asgi(args.dashboard)
    else:
        asgi = _dashboard_for(args)
    import uvicorn

    uvicorn.run(
        asgi,
        host=args.host,
        port=args.port,
        root_path=args.root_path,
        log_level="info",
        timeout_graceful_shutdown=5,
    )
    return 0


def _dashboard_for(args: argparse.Namespace) -> Dashboard:
    password_hash = os.environ.get(PASSWORD_HASH_ENV, "").strip()
    if not password_hash:
        raise ConfigurationError(
            f"set {PASSWORD_HASH_ENV} to the output of `chancy dashboard --hash-password`,"
            " or serve your own --dashboard MODULE:ATTRIBUTE"
        )
    if args.app:
        app = load_app(args.app)
    else:
        if not (args.dsn or os.environ.get(DSN_ENV) or args.embedded):
            raise ConfigurationError(
                "no database given: pass --app MODULE:ATTRIBUTE, --dsn, or set CHANCY_DSN"
            )
        app = Chancy(args.dsn, prefix=args.prefix or "chancy_")
    return Dashboard(
        app,
        password_hash=password_hash,
        secret_key=os.environ.get(SECRET_KEY_ENV) or None,
        secure_cookies=not args.insecure_cookies,
        read_only=args.read_only,
    )
