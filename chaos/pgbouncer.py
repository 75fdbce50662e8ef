"""A throw-away PgBouncer in transaction mode, in front of a PostgreSQL server.

Its config, auth file, log and pid file live in a temporary folder and it listens
on a port of its own: the server it fronts is never reconfigured. Needs Debian's
``pgbouncer`` package (``apt-get install pgbouncer``).

As a command, runs another command with ``CHANCY_TEST_DSN`` pointing at PgBouncer,
``CHANCY_TEST_ADMIN_DSN`` at the server itself (databases are created and dropped
there) and ``CHANCY_PGBOUNCER=1``::

    python -m chaos.pgbouncer -- pytest -m db tests
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg.conninfo

from chaos.harness import free_port

__all__ = ["PgBouncer", "find_pgbouncer", "running_pgbouncer"]

MISSING = (
    "pgbouncer is not installed: install Debian's `pgbouncer` package"
    " (apt-get install -y pgbouncer); .ci/run does"
)


def find_pgbouncer() -> str:
    """The ``pgbouncer`` program, or a RuntimeError naming the package to install."""
    found = shutil.which("pgbouncer") or (
        "/usr/sbin/pgbouncer" if Path("/usr/sbin/pgbouncer").exists() else None
    )
    if not found:
        raise RuntimeError(MISSING)
    return found


class PgBouncer:
    """One PgBouncer process (``pool_mode = transaction``) in front of ``upstream``."""

    def __init__(self, upstream: str, *, pool_size: int = 20, max_client_conn: int = 500) -> None:
        info = psycopg.conninfo.conninfo_to_dict(upstream)
        self.upstream_host = str(info.get("host") or "127.0.0.1")
        self.upstream_port = str(info.get("port") or "5432")
        self.user = str(info.get("user") or "postgres")
        self.port = free_port()
        self.base = Path(tempfile.mkdtemp(prefix="chancy-pgbouncer-", dir="/tmp"))
        self.pool_size = pool_size
        self.max_client_conn = max_client_conn
        self.proc: subprocess.Popen[bytes] | None = None

    def dsn(self, dbname: str = "postgres") -> str:
        """A DSN through PgBouncer."""
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{dbname}"

    def start(self) -> None:
        program = find_pgbouncer()
        (self.base / "users.txt").write_text(f'"{self.user}" ""\n')
        (self.base / "pgbouncer.ini").write_text(
            "[databases]\n"
            f"* = host={self.upstream_host} port={self.upstream_port}\n"
            "[pgbouncer]\n"
            "listen_addr = 127.0.0.1\n"
            f"listen_port = {self.port}\n"
            "unix_socket_dir =\n"
            "auth_type = trust\n"
            f"auth_file = {self.base / 'users.txt'}\n"
            f"admin_users = {self.user}\n"
            "pool_mode = transaction\n"
            f"max_client_conn = {self.max_client_conn}\n"
            f"default_pool_size = {self.pool_size}\n"
            "ignore_startup_parameters = extra_float_digits\n"
            f"logfile = {self.base / 'pgbouncer.log'}\n"
            f"pidfile = {self.base / 'pgbouncer.pid'}\n"
        )
        as_user: list[str] = []
        if os.geteuid() == 0:  # pgbouncer refuses to run as root
            shutil.chown(self.base, "postgres", "postgres")
            for name in ("users.txt", "pgbouncer.ini"):
                shutil.chown(self.base / name, "postgres", "postgres")
            as_user = ["runuser", "-u", "postgres", "--"]
        self.proc = subprocess.Popen(
            [*as_user, program, "-q", str(self.base / "pgbouncer.ini")],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,  # it logs to its logfile
        )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"pgbouncer exited ({self.proc.returncode}): {self.log()}")
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5),
            ):
                return
            time.sleep(0.1)
        raise RuntimeError(f"pgbouncer did not listen on {self.port} within 15 s: {self.log()}")

    def log(self) -> str:
        path = self.base / "pgbouncer.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()  # the runuser wrapper forwards it
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        shutil.rmtree(self.base, ignore_errors=True)


@contextlib.contextmanager
def running_pgbouncer(upstream: str, **options: int) -> Iterator[PgBouncer]:
    """A started PgBouncer in front of ``upstream``, stopped on exit."""
    bouncer = PgBouncer(upstream, **options)
    try:
        bouncer.start()
        yield bouncer
    finally:
        bouncer.stop()


def main(argv: list[str]) -> int:
    """Run ``argv`` (after ``--``) with the test DSNs pointing through a PgBouncer."""
    if "--" in argv:
        argv = argv[argv.index("--") + 1 :]
    if not argv:
        print("usage: python -m chaos.pgbouncer -- COMMAND...", file=sys.stderr)
        return 2
    upstream = os.environ.get("CHANCY_TEST_DSN") or "postgresql://postgres@127.0.0.1:5432/postgres"
    try:
        bouncer_cm = running_pgbouncer(upstream)
        bouncer = bouncer_cm.__enter__()
    except RuntimeError as exc:
        print(f"chaos.pgbouncer: {exc}", file=sys.stderr)
        return 1
    try:
        env = {
            **os.environ,
            "CHANCY_TEST_DSN": bouncer.dsn(),
            "CHANCY_TEST_ADMIN_DSN": upstream,
            "CHANCY_PGBOUNCER": "1",
        }
        print(f"chaos.pgbouncer: PgBouncer on port {bouncer.port} in front of {upstream}")
        return subprocess.call(argv, env=env)
    finally:
        bouncer_cm.__exit__(None, None, None)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
