"""`chancy dashboard`: found through the entry point, hashes passwords, serves with uvicorn."""

from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest
from chancy_plugin_dashboard import verify_password
from dashboard_helpers import PASSWORD_HASH

from chancy_core.cli import main


def test_the_command_comes_from_the_entry_point(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["dashboard", "--help"])
    assert exited.value.code == 0
    assert "--app MODULE:ATTR" in capsys.readouterr().out


def test_hash_password_prints_a_hash_of_stdin(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO("a long passphrase\n"))
    assert main(["dashboard", "--hash-password"]) == 0
    printed = capsys.readouterr().out.strip()
    assert printed.startswith("scrypt$") and "passphrase" not in printed
    assert verify_password("a long passphrase", printed)


def test_bad_arguments_say_what_to_do(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("CHANCY_DASHBOARD_PASSWORD_HASH", raising=False)
    assert main(["dashboard"]) == 1
    assert "CHANCY_DASHBOARD_PASSWORD_HASH" in capsys.readouterr().err
    assert main(["dashboard", "--app", "no_such_module_here:app"]) == 1
    assert "cannot import 'no_such_module_here'" in capsys.readouterr().err
    assert main(["dashboard", "--app", "chancy_core"]) == 1
    assert "MODULE:ATTRIBUTE" in capsys.readouterr().err
    monkeypatch.setenv("CHANCY_DASHBOARD_PASSWORD_HASH", "plain")
    assert main(["dashboard"]) == 1
    assert "--hash-password" in capsys.readouterr().err


@pytest.mark.db
def test_serves_a_dashboard_for_the_dsn(database: str) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "CHANCY_DASHBOARD_PASSWORD_HASH": PASSWORD_HASH}
    server = subprocess.Popen(
        [sys.executable, "-m", "chancy_core.cli", "--dsn", database, "dashboard",
         "--port", str(port), "--insecure-cookies", "--read-only"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while True:
            assert server.poll() is None, server.stdout.read() if server.stdout else ""
            try:
                answer = httpx.get(f"http://127.0.0.1:{port}/jobs", timeout=2)
                break
            except httpx.HTTPError:
                assert time.monotonic() < deadline, "the dashboard did not start"
                time.sleep(0.2)
        assert answer.status_code == 303 and answer.headers["location"] == "/login?next=%2Fjobs"
        login = httpx.get(f"http://127.0.0.1:{port}/login", timeout=5)
        assert login.status_code == 200 and "Secure" not in login.headers["set-cookie"]
    finally:
        server.send_signal(signal.SIGTERM)
        output, _ = server.communicate(timeout=20)
    # uvicorn shuts down cleanly, then re-raises the signal so the process ends by it.
    assert server.returncode in (0, -signal.SIGTERM) and "Finished server process" in output
