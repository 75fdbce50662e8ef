"""The browser tests' world: a real database, a real worker process, a real dashboard
served by uvicorn (`chancy dashboard`), and Debian's chromium driven by Playwright.

Playwright cannot download its own browser here; it drives ``/usr/bin/chromium``
(``apt-get install chromium``; ``.ci/run`` installs it). Without it the tests fail and
say so: they never skip.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from chancy_plugin_dashboard import hash_password
from playwright.sync_api import Browser, BrowserContext, Page, sync_playwright
from psycopg import sql

from chancy_core import Chancy, Queue
from chancy_core.testing import dsn_for_database
from e2e.e2e_helpers import CHROMIUM, HERE, PASSWORD, World


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _stop(process: subprocess.Popen[Any]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


def _wait_until_served(url: str, process: subprocess.Popen[Any], log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"the dashboard exited ({process.returncode}):\n{log.read_text()}")
        try:
            if httpx.get(url + "/login", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    pytest.fail(f"the dashboard did not answer within 30 s:\n{log.read_text()}")


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's chromium, which Playwright drives (its own download cannot work here)."""
    if not Path(CHROMIUM).exists():
        pytest.fail(
            f"{CHROMIUM} is missing: install Debian's chromium package"
            " (`apt-get install -y chromium`; .ci/run does it)"
        )
    return CHROMIUM


@pytest.fixture(scope="session")
def world(
    postgres_dsn: str, template_database: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[World]:
    """A fresh database, a worker process and the dashboard served by `chancy dashboard`."""
    name = f"chancy_e2e_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                sql.Identifier(name), sql.Identifier(template_database)
            )
        )
    dsn = dsn_for_database(postgres_dsn, name)
    tmp = tmp_path_factory.mktemp("e2e")
    app = Chancy(dsn)
    app.sync_open()
    for queue in (
        Queue("default", concurrency=2, polling_interval=0.2),
        Queue("slow", concurrency=1, polling_interval=0.2),
        Queue("reports", concurrency=1, polling_interval=0.2),
    ):
        app.sync_declare(queue)
    env = {
        **os.environ,
        "CHANCY_DSN": dsn,
        "E2E_PASSWORD_HASH": hash_password(PASSWORD),
        "E2E_SECRET_KEY": secrets.token_urlsafe(32),
        "PYTHONUNBUFFERED": "1",
    }
    cli = [sys.executable, "-m", "chancy_core.cli"]
    worker_log = tmp / "worker.log"
    dashboard_log = tmp / "dashboard.log"
    port = _free_port()
    with worker_log.open("w") as wlog, dashboard_log.open("w") as dlog:
        worker = subprocess.Popen(
            [*cli, "--dsn", dsn, "worker", "start", "--import", "e2e.e2e_jobs",
             "--worker-id", "e2e-worker", "--shutdown-timeout", "3"],
            cwd=HERE.parent, env=env, stdout=wlog, stderr=subprocess.STDOUT,
        )  # fmt: skip
        dashboard = subprocess.Popen(
            [*cli, "dashboard", "--dashboard", "e2e.e2e_app:dashboard", "--port", str(port)],
            cwd=HERE.parent, env=env, stdout=dlog, stderr=subprocess.STDOUT,
        )  # fmt: skip
    base_url = f"http://127.0.0.1:{port}"
    try:
        _wait_until_served(base_url, dashboard, dashboard_log)
        deadline = time.monotonic() + 30
        while not [w for w in app.sync_list_workers() if w.queues]:
            if worker.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the worker did not start:\n{worker_log.read_text()}")
            time.sleep(0.2)
        yield World(base_url=base_url, dsn=dsn, app=app, tmp=tmp)
    finally:
        _stop(dashboard)
        _stop(worker)
        app.sync_close()
        for log in (worker_log, dashboard_log):  # shown by pytest when a test failed
            print(
                f"--- {log.name} (last 40 lines) ---", *log.read_text().splitlines()[-40:], sep="\n"
            )
        with psycopg.connect(postgres_dsn, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


@pytest.fixture(scope="session")
def browser(chromium: str) -> Iterator[Browser]:
    """Headless chromium."""
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=chromium,
            headless=True,
            args=["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"],
        )
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture(scope="session")
def context(world: World, browser: Browser) -> Iterator[BrowserContext]:
    """One browser profile for the whole run (tests sign in once, in the first test).

    ``world`` comes first: Playwright's sync API runs an event loop in this thread, and
    the database fixtures need to run theirs before it starts."""
    ctx = browser.new_context(base_url=world.base_url, viewport={"width": 1360, "height": 860})
    ctx.set_default_timeout(15_000)
    try:
        yield ctx
    finally:
        ctx.close()


@pytest.fixture
def page(context: BrowserContext) -> Iterator[Page]:
    """A new tab; fails the test on any page error (a script that threw)."""
    tab = context.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda exc: errors.append(str(exc)))
    yield tab
    tab.close()
    assert not errors, f"the page's scripts failed: {errors}"
