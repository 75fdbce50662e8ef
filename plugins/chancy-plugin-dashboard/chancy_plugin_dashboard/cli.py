"""``chancy dashboard``: serve the dashboard with uvicorn, or make a password hash.

::

    chancy dashboard --app myproject.admin:dashboard --port 8080
    chancy --dsn postgresql://... dashboard --port 8080   # password hash from the environment
    chancy dashboard --hash-password                      # prints the hash of a password

``--app`` names an ASGI application (a :class:`Dashboard`, or your own app with the
dashboard mounted in it) as ``module:attribute``. Without ``--app``, the command builds
a dashboard for ``--dsn``/``--prefix`` with the built-in password login, from
``$CHANCY_DASHBOARD_PASSWORD_HASH`` (required) and ``$CHANCY_DASHBOARD_SECRET_KEY``.
"""

from __future__ import annotations

import argparse
import getpass
import importlib
import os
import sys
from typing import Any

from chancy_core import Chancy
from chancy_core.errors import ChancyError
from chancy_plugin_dashboard.app import Dashboard
from chancy_plugin_dashboard.security import hash_password

__all__ = ["PASSWORD_HASH_ENV", "SECRET_KEY_ENV", "load_app", "register"]

PASSWORD_HASH_ENV = "CHANCY_DASHBOARD_PASSWORD_HASH"
SECRET_KEY_ENV = "CHANCY_DASHBOARD_SECRET_KEY"


def register(subparsers: Any) -> None:
    """Add ``dashboard`` to the ``chancy`` command."""
    parser = subparsers.add_parser(
        "dashboard",
        help="serve the web dashboard (uvicorn)",
        description="Serve the dashboard. --app names your ASGI app or Dashboard"
        " (module:attribute); without it, a dashboard for --dsn with the password hash from"
        f" ${PASSWORD_HASH_ENV}.",
    )
    parser.add_argument("--app", default=None, metavar="MODULE:ATTR", help="the ASGI app to serve")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on (default 8000)")
    parser.add_argument("--root-path", default="", help="the path a proxy serves it under")
    parser.add_argument(
        "--insecure-cookies",
        action="store_true",
        help="without --app: session cookie without Secure (plain-HTTP development only)",
    )
    parser.add_argument(
        "--read-only", action="store_true", help="without --app: a dashboard that changes nothing"
    )
    parser.add_argument(
        "--hash-password",
        action="store_true",
        help="print the hash of a password (read from stdin, or asked for) and exit",
    )
    parser.set_defaults(local=_run)


def load_app(target: str) -> Any:
    """The object ``module:attribute`` names (the current directory is importable)."""
    module_name, _, attribute = target.partition(":")
    if not module_name or not attribute:
        raise ChancyError(
            f"--app {target!r}: write MODULE:ATTRIBUTE, e.g. myproject.admin:dashboard"
        )
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ChancyError(f"--app {target!r}: cannot import {module_name!r} ({exc})") from None
    found = module
    for part in attribute.split("."):
        try:
            found = getattr(found, part)
        except AttributeError:
            raise ChancyError(f"--app {target!r}: {module_name} has no {attribute!r}") from None
    if not callable(found):
        raise ChancyError(f"--app {target!r} is not an ASGI application")
    return found


def _password() -> str:
    if not sys.stdin.isatty():
        return sys.stdin.readline().rstrip("\r\n")
    first = getpass.getpass("Password: ")
    if getpass.getpass("Again: ") != first:
        raise ChancyError("the passwords differ")
    return first


def _run(args: argparse.Namespace) -> int:
    try:
        if args.hash_password:
            print(hash_password(_password()))
            return 0
        app = load_app(args.app) if args.app else _from_environment(args)
    except ChancyError as exc:
        print(f"chancy: error: {exc}", file=sys.stderr)
        return 1
    import uvicorn

    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        root_path=args.root_path,
        log_level="info",
        timeout_graceful_shutdown=5,
    )
    return 0


def _from_environment(args: argparse.Namespace) -> Dashboard:
    password_hash = os.environ.get(PASSWORD_HASH_ENV, "").strip()
    if not password_hash:
        raise ChancyError(
            f"give --app MODULE:ATTR, or set {PASSWORD_HASH_ENV} to the output of"
            " `chancy dashboard --hash-password`"
        )
    return Dashboard(
        Chancy(args.dsn, prefix=args.prefix),
        password_hash=password_hash,
        secret_key=os.environ.get(SECRET_KEY_ENV) or None,
        secure_cookies=not args.insecure_cookies,
        read_only=args.read_only,
    )
