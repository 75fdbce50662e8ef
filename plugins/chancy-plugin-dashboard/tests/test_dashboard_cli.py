"""`chancy dashboard`: found through the entry point, hashes passwords, serves with uvicorn."""

from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from chancy_plugin_dashboard import verify_password
from dashboard_helpers import PASSWORD_HASH

from chancy_core.cli import main


def test_the_command_comes_from_the_entry_point(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["dashboard", "--help"])
    assert exited.value.code == 0
    assert "--dashboard MODULE:ATTRIBUTE" in capsys.readouterr().out


def test_hash_password_prints_a_hash_of_stdin(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO("a long passphrase\n"))
    assert main(["dashboard", "--hash-password"]) == 0
    printed = capsys.readouterr().out.strip()
    assert printed.startswith("scrypt$") and "passphrase" not in printed
    assert verify_password("a long passphrase", printed)


def test_bad_arguments_say_what_to_do(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.delenv("CHANCY_DASHBOARD_PASSWORD_HASH", raising=False)
    monkeypatch.delenv("CHANCY_DSN", raising=False)
    monkeypatch.delenv("CHANCY_APP", raising=False)
    assert main(["dashboard"]) != 0
    assert "CHANCY_DASHBOARD_PASSWORD_HASH" in capsys.readouterr().err
    monkeypatch.setenv("CHANCY_DASHBOARD_PASSWORD_HASH", PASSWORD_HASH)
    assert main(["dashboard"]) != 0
    assert "no database given" in capsys.readouterr().err
    assert main(["dashboard", "--dashboard", "no_such_module_here:app"]) != 0
    assert "cannot import 'no_such_module_here'" in capsys.readouterr().err
    assert main(["dashboard", "--dashboard", "chancy_core"]) != 0
    assert "MODULE:ATTRIBUTE" in capsys.readouterr().err
    (tmp_path / "dash_cli_misuse.py").write_text(
        "from chancy_core import Chancy\nchancy = Chancy('postgresql://localhost/x')\n"
    )
    monkeypatch.chdir(tmp_path)
    assert main(["dashboard", "--dashboard", "dash_cli_misuse:chancy"]) != 0
    assert "for a Chancy app use --app" in capsys.readouterr().err
    monkeypatch.setenv("CHANCY_DASHBOARD_PASSWORD_HASH", "plain")
    assert main(["dashboard", "--dsn", "postgresql://localhost/x"]) != 0
    assert "--hash-password" in capsys.readouterr().err


APP_MODULE = """
import os
from chancy_core import Chancy
chancy = Chancy(os.environ["DASH_CLI_TEST_DSN"])
"""


@pytest.mark.db
@pytest.mark.parametrize("given", ["--app", "--dsn"])
def test_serves_a_dashboard_for_the_app_or_dsn(database: str, tmp_path: Path, given: str) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (tmp_path / "dash_cli_app.py").write_text(APP_MODULE)
    env = {
        **os.environ,
        "CHANCY_DASHBOARD_PASSWORD_HASH": PASSWORD_HASH,
        "DASH_CLI_TEST_DSN": database,
    }
    target = "dash_cli_app:chancy" if given == "--app" else database
    server = subprocess.Popen(
        [sys.executable, "-m", "chancy_core.cli", "dashboard", given, target,
         "--port", str(port), "--insecure-cookies", "--read-only"],
        env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
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
