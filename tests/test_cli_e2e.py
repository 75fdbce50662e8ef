"""The ``chancy`` console script end to end, as a user runs it: from a project folder that
holds ``myapp/`` (not installed, not on PYTHONPATH), against a real database, with a real
worker started by ``chancy worker start --app myapp:chancy``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

pytestmark = [pytest.mark.db]

CHANCY = str(Path(sys.executable).with_name("chancy"))

INIT = """
from chancy_core import Chancy
from myapp.plugins import Stamp

chancy = Chancy({dsn!r}, plugins=[Stamp(label="from-the-app")])
"""

PLUGINS = """
from pathlib import Path

from chancy_core import hookimpl


class Stamp:
    '''Writes one line per finished job: proves the worker runs the app's own plugin
    instance, with its options.'''

    name = "stamp"

    def __init__(self, *, label: str) -> None:
        self.label = label

    @hookimpl
    def chancy_job_completed(self, worker, job, outcome):
        with open(Path(__file__).parent.parent / "stamps.txt", "a") as out:
            out.write(f"{self.label} {job.id} {job.state.value}\\n")
"""

TASKS = """
from chancy_core import job


@job(queue="emails", max_attempts=3, priority=4)
async def send_welcome(to: str) -> str:
    return to


def always_fails() -> None:
    raise RuntimeError("nope")


async def nap(seconds: float) -> None:
    import asyncio

    await asyncio.sleep(seconds)
"""


@pytest.fixture
def project(tmp_path: Path, database: str) -> Path:
    """A user's project folder: myapp/__init__.py defines the app, with a plugin."""
    package = tmp_path / "myapp"
    package.mkdir()
    (package / "__init__.py").write_text(textwrap.dedent(INIT.format(dsn=database)))
    (package / "plugins.py").write_text(textwrap.dedent(PLUGINS))
    (package / "tasks.py").write_text(textwrap.dedent(TASKS))
    return tmp_path


def env(**extra: str) -> dict[str, str]:
    found = {k: v for k, v in os.environ.items() if k not in ("CHANCY_DSN", "CHANCY_APP")}
    found.pop("PYTHONPATH", None)
    return {**found, "COLUMNS": "200", **extra}


def chancy(cwd: Path, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
    """Run the console script in ``cwd``; never hangs."""
    return subprocess.run(
        [CHANCY, *args],
        cwd=cwd,
        env=env(**extra),
        capture_output=True,
        text=True,
        timeout=90,
        stdin=subprocess.DEVNULL,
        check=False,
    )


def ok(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, (done.args, done.returncode, done.stderr)
    return done.stdout


def one_line_error(done: subprocess.CompletedProcess[str], code: int, says: str) -> None:
    errors = [line for line in done.stderr.splitlines() if not line.startswith("chancy: using")]
    assert done.returncode == code, (done.args, done.returncode, done.stderr)
    assert len(errors) == 1 and errors[0].startswith("chancy: error: "), done.stderr
    assert says in errors[0], errors[0]
    assert "Traceback" not in done.stderr


@pytest.fixture
def worker(project: Path) -> Iterator[subprocess.Popen[str]]:
    """``chancy worker start --app myapp:chancy`` in the project folder (after migrate)."""
    ok(chancy(project, "--app", "myapp:chancy", "migrate"))
    log = (project / "worker.log").open("w")
    process = subprocess.Popen(
        [CHANCY, "worker", "start", "--app", "myapp:chancy", "--worker-id", "e2e-worker",
         "--shutdown-timeout", "5", "-v"],
        cwd=project, env=env(), stdout=log, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        log.close()


def test_no_arguments_prints_help_and_version_works(tmp_path):
    done = chancy(tmp_path)
    assert done.returncode == 0 and "usage: chancy" in done.stdout
    assert "exit codes:" in done.stdout
    assert ok(chancy(tmp_path, "--version")).startswith("chancy-core ")


def test_output_into_a_closed_pipe_is_no_error(tmp_path):
    """`chancy ... | head` stops reading early: no error, no traceback."""
    read, write = os.pipe()
    os.close(read)  # every write to the pipe fails with EPIPE
    try:
        done = subprocess.run(
            [CHANCY, "plugins", "--json"],
            cwd=tmp_path,
            env={**env(), "CHANCY_DISABLE_PLUGIN_AUTOLOAD": "1"},
            stdout=write,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
        )
    finally:
        os.close(write)
    assert (done.returncode, done.stderr) == (0, "")


def test_without_a_database_the_cli_refuses_instead_of_making_an_embedded_one(tmp_path):
    done = chancy(tmp_path, "queue", "list")
    one_line_error(done, 1, "no database given: pass --dsn, set CHANCY_DSN, or use --app")
    assert not (tmp_path / ".chancy").exists()


def test_with_embedded_the_cli_uses_the_demo_database_and_says_so(tmp_path):
    home = tmp_path / "home"
    done = chancy(tmp_path, "--embedded", "migrate", CHANCY_HOME=str(home))
    assert "applied core:0001_initial" in ok(done)
    assert f"chancy: using the EMBEDDED demo database in {home}" in done.stderr
    listed = chancy(tmp_path, "queue", "list", "--json", "--embedded", CHANCY_HOME=str(home))
    assert json.loads(ok(listed)) == []


def test_a_bad_app_gives_one_line_saying_what_to_do(project):
    says = "cannot import nosuch (no module named 'nosuch'): run chancy from the folder"
    one_line_error(chancy(project, "--app", "nosuch:chancy", "queue", "list"), 1, says)
    one_line_error(chancy(project, "--app", "myapp:nothing", "queue", "list"), 1,
                   "module myapp has no attribute 'nothing'")  # fmt: skip
    # The package is found: the module's name is wrong, not the folder.
    one_line_error(chancy(project, "--app", "myapp.nosuch:chancy", "queue", "list"), 1,
                   "cannot import myapp.nosuch: package myapp has no module 'nosuch'")  # fmt: skip
    one_line_error(chancy(project, "--app", "myapp:chancy", "worker", "start", "--import",
                          "myapp.taks"), 1,
                   "--import myapp.taks: cannot import myapp.taks: package myapp has no module"
                   " 'taks' (check the name)")  # fmt: skip
    one_line_error(chancy(project, "--app", "myapp:chancy", "worker", "start", "--import",
                          "elsewhere"), 1,
                   "--import elsewhere: cannot import elsewhere (no module named 'elsewhere'):"
                   " run chancy from the folder")  # fmt: skip
    one_line_error(chancy(project, "--app", "myapp", "queue", "list"), 2, "write MODULE:ATTRIBUTE")
    one_line_error(
        chancy(project, "--app", "myapp:chancy", "--dsn", "postgresql://x/y", "queue", "list"),
        2,
        "--dsn and --prefix come from the app",
    )
    # An app whose plugin implements a hook wrongly: pluggy's long message, on one line.
    (project / "myapp" / "broken.py").write_text(textwrap.dedent("""
        from chancy_core import Chancy, hookimpl

        class Bad:
            @hookimpl
            def chancy_job_completed(self, worker, job, nonsense): ...

        chancy = Chancy("postgresql://x/y", plugins=[Bad()])
    """))  # fmt: skip
    one_line_error(chancy(project, "--app", "myapp.broken:chancy", "queue", "list"), 1,
                   "importing myapp.broken failed: PluginError: plugin 'bad'")  # fmt: skip


def test_the_app_is_used_from_the_environment_and_says_which_database(project, database):
    done = chancy(project, "migrate", CHANCY_APP="myapp:chancy")
    ok(done)
    assert "chancy: using database" in done.stderr and "from --app myapp:chancy" in done.stderr
    checked = json.loads(ok(chancy(project, "check", "--json", CHANCY_APP="myapp:chancy")))
    assert checked["ok"] is True
    names = {c["check"]: c for c in checked["checks"]}
    assert names["migrations core"]["ok"] and names["plugin stamp"]["detail"] == (
        "label='from-the-app'"
    )
    # Upstream Chancy's dotted form works too.
    assert json.loads(ok(chancy(project, "--app", "myapp.chancy", "queue", "list", "--json"))) == []
    plugins = json.loads(ok(chancy(project, "plugins", "--json", "--app", "myapp:chancy")))
    assert [(p["name"], p["options"]) for p in plugins] == [("stamp", "label='from-the-app'")]


def test_queue_commands(project):
    app = ["--app", "myapp:chancy"]
    ok(chancy(project, *app, "migrate"))
    assert ok(chancy(project, *app, "queue", "declare", "emails", "--concurrency", "3",
                     "--rate-limit", "5", "--rate-limit-window", "60")).startswith(
        "declared queue emails (active, async, concurrency 3, rate 5/60s)")  # fmt: skip
    one_line_error(chancy(project, *app, "queue", "declare", "emails"), 1,
                   "already declared: change it with `chancy queue update")  # fmt: skip
    ok(chancy(project, *app, "queue", "update", "emails", "--executor", "thread"))
    (queue,) = json.loads(ok(chancy(project, *app, "queue", "list", "--json")))
    assert (queue["executor"], queue["concurrency"], queue["rate_limit"]) == ("thread", 3, 5)
    ok(chancy(project, *app, "queue", "pause", "emails", "--until", "1h"))
    (queue,) = json.loads(ok(chancy(project, *app, "queue", "list", "--json")))
    assert queue["state"] == "paused" and queue["resume_at"]
    table = ok(chancy(project, *app, "queue", "list"))
    assert "QUEUE" in table and "paused until" in table
    ok(chancy(project, *app, "queue", "resume", "emails"))
    one_line_error(chancy(project, *app, "queue", "pause", "nope"), 3, "no queue named 'nope'")
    ref = ok(chancy(project, *app, "job", "push", "myapp.tasks.send_welcome",
                    "--kwargs", '{"to": "a@b.c"}')).strip()  # fmt: skip
    stats = json.loads(ok(chancy(project, *app, "queue", "stats", "--json")))
    assert [(s["name"], s["counts"]["pending"]) for s in stats] == [("emails", 1)]
    one_line_error(chancy(project, *app, "queue", "delete", "emails"), 1,
                   "still has 1 pending job(s)")  # fmt: skip
    assert ok(chancy(project, *app, "queue", "purge", "emails")).startswith("deleted 1 ")
    one_line_error(chancy(project, *app, "job", "get", ref), 3, f"no job {ref}")
    assert ok(chancy(project, *app, "queue", "delete", "emails")) == "deleted queue emails\n"
    one_line_error(chancy(project, *app, "prune"), 1, "the pruner plugin is not installed")


def test_job_push_honours_job_defaults_checks_kwargs_and_reads_a_file(project):
    app = ["--app", "myapp:chancy"]
    ok(chancy(project, *app, "migrate"))
    push = [*app, "job", "push", "myapp.tasks.send_welcome"]
    one_line_error(chancy(project, *push, "--kwargs", '{"to": "x"}'), 3,
                   "queue 'emails' is not declared")  # fmt: skip
    ok(chancy(project, *app, "queue", "declare", "emails", "--paused"))
    pushed = json.loads(ok(chancy(project, *app, "job", "push", "myapp.tasks.send_welcome",
                                  "--kwargs", '{"to": "x"}', "--json")))  # fmt: skip
    job = json.loads(ok(chancy(project, *app, "job", "get", pushed["id"], "--json")))
    assert (job["queue"], job["max_attempts"], job["priority"]) == ("emails", 3, 4)
    assert job["created_at"] and job["taken_by"] is None and job["cancelled_at"] is None
    one_line_error(chancy(project, *push, "--kwargs", '{"too": "x"}'), 1,
                   "missing 'to' and unexpected 'too'")  # fmt: skip
    one_line_error(chancy(project, *app, "job", "push", "myapp.tasks.nothere"), 1,
                   "myapp.tasks has no function 'nothere'")  # fmt: skip
    lines = [json.dumps({"func": "myapp.tasks.send_welcome", "kwargs": {"to": f"u{i}"}})
             for i in range(250)]  # fmt: skip
    (project / "jobs.jsonl").write_text("\n".join(lines) + "\n")
    pushed_file = chancy(project, *app, "job", "push", "--file", "jobs.jsonl", "--progress",
                         "--batch-size", "100")  # fmt: skip
    assert ok(pushed_file) == "pushed 250 job(s) from jobs.jsonl\n"
    assert "250/250" in pushed_file.stderr  # the progress bar's last state
    (project / "bad.jsonl").write_text(lines[0] + '\n{"func": 1}\n')
    one_line_error(chancy(project, *app, "job", "push", "--file", "bad.jsonl"), 1,
                   "bad.jsonl line 2: each line must be a JSON object")  # fmt: skip
    page = json.loads(ok(chancy(project, *app, "job", "list", "--queue", "emails",
                                "--limit", "200", "--json")))  # fmt: skip
    assert len(page["jobs"]) == 200 and page["next_cursor"]
    cursor = ["--cursor", page["next_cursor"]]
    rest = json.loads(ok(chancy(project, *app, "job", "list", "--queue", "emails", *cursor,
                                "--limit", "200", "--json")))  # fmt: skip
    assert len(rest["jobs"]) == 51 and rest["next_cursor"] is None
    assert ok(chancy(project, *app, "job", "cancel", "--queue", "emails")) == (
        "cancelled 251 job(s)\n"
    )
    assert ok(chancy(project, *app, "job", "delete", "--state", "failed")) == (
        "deleted 251 job(s) (running jobs are never deleted)\n"
    )
    one_line_error(chancy(project, *app, "job", "retry"), 2, "give job references, or filter")


def test_a_worker_started_with_the_app_runs_jobs_with_its_plugins(project, worker):
    app = ["--app", "myapp:chancy"]
    ok(chancy(project, *app, "queue", "declare", "emails", "--concurrency", "2"))
    ok(chancy(project, *app, "queue", "declare", "default", "--executor", "thread"))
    ref = ok(chancy(project, *app, "job", "push", "myapp.tasks.send_welcome",
                    "--kwargs", '{"to": "a@b.c"}')).strip()  # fmt: skip
    done = json.loads(ok(chancy(project, *app, "job", "wait", ref, "--timeout", "60", "--json")))
    assert done["state"] == "succeeded" and done["result"] == "a@b.c"
    shown = ok(chancy(project, *app, "job", "get", ref)).splitlines()
    assert ["result", '"a@b.c"'] in [line.split() for line in shown]  # not only with --json
    # The worker ran the app's own plugin instance, with its option.
    assert f"from-the-app {ref} succeeded" in (project / "stamps.txt").read_text()

    (listed,) = json.loads(ok(chancy(project, *app, "worker", "list", "--json")))
    assert listed["worker_id"] == "e2e-worker" and listed["alive"] is True
    twin = chancy(project, *app, "worker", "start", "--worker-id", "e2e-worker")
    one_line_error(twin, 1, "a worker with id 'e2e-worker' is alive")
    assert "e2e-worker" in ok(chancy(project, *app, "worker", "list"))

    failing = ok(chancy(project, *app, "job", "push", "myapp.tasks.always_fails")).strip()
    waited = chancy(project, *app, "job", "wait", failing, "--timeout", "60")
    assert waited.returncode == 5 and "RuntimeError: nope" in waited.stdout
    assert "frames of chancy/anyio/asyncio hidden" in waited.stdout
    failed = json.loads(ok(chancy(project, *app, "job", "list", "--state", "failed", "--json")))
    assert [j["id"] for j in failed["jobs"]] == [failing]
    assert ok(chancy(project, *app, "job", "retry", failing)).startswith(f"retried {failing}")
    again = chancy(project, *app, "job", "wait", failing, "--timeout", "60", "--json")
    assert again.returncode == 5
    assert [e["attempt"] for e in json.loads(again.stdout)["errors"]] == [1, 2]
    one_line_error(chancy(project, *app, "job", "delete", ref, failing, "nope"), 3,
                   "'nope' is not a job reference")  # fmt: skip

    # Pause until a time: the running worker resumes the queue by itself.
    # Asserted on the clock, not on timing: the job starts no earlier than resume_at.
    ok(chancy(project, *app, "queue", "pause", "emails", "--until", "5s"))
    (paused,) = [q for q in json.loads(ok(chancy(project, *app, "queue", "list", "--json")))
                 if q["name"] == "emails"]  # fmt: skip
    resume_at = datetime.fromisoformat(paused["resume_at"])
    later = ok(chancy(project, *app, "job", "push", "myapp.tasks.send_welcome",
                      "--kwargs", '{"to": "later"}')).strip()  # fmt: skip
    ran = json.loads(ok(chancy(project, *app, "job", "wait", later, "--timeout", "60", "--json")))
    assert ran["state"] == "succeeded"
    assert datetime.fromisoformat(ran["started_at"]) >= resume_at

    # A waiting job in a paused queue: reprioritised, then moved to a queue that runs it.
    ok(chancy(project, *app, "queue", "declare", "held", "--paused"))
    waiting = ok(chancy(project, *app, "job", "push", "myapp.tasks.send_welcome",
                        "--kwargs", '{"to": "w"}', "--queue", "held")).strip()  # fmt: skip
    ok(chancy(project, *app, "job", "requeue", waiting, "--priority", "9"))
    one_line_error(chancy(project, *app, "job", "wait", waiting, "--timeout", "1"), 4,
                   "did not finish within 1.0s")  # fmt: skip
    ok(chancy(project, *app, "job", "requeue", waiting, "--queue", "emails"))
    assert ok(chancy(project, *app, "job", "wait", waiting, "--timeout", "60"))

    # `worker start --queue` never changes a declared queue unless --declare.
    start = chancy(project, *app, "worker", "start", "--queue", "emails:7:process")
    one_line_error(start, 1, "a worker never changes a queue unless --declare")
    (queue,) = [q for q in json.loads(ok(chancy(project, *app, "queue", "list", "--json")))
                if q["name"] == "emails"]  # fmt: skip
    assert (queue["executor"], queue["concurrency"]) == ("async", 2)
    one_line_error(chancy(project, *app, "worker", "start", "--queue", "nope"), 3,
                   "--queue nope: no queue of that name is declared")  # fmt: skip

    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=60) == 0
    log = (project / "worker.log").read_text()
    assert "plugin stamp: label='from-the-app'" in log


def test_logging_options_json_lines_and_quiet(project):
    app = ["--app", "myapp:chancy"]
    ok(chancy(project, *app, "migrate"))
    ok(chancy(project, *app, "queue", "declare", "default"))
    # A function the CLI cannot import: it says so (a WARNING) and pushes with its defaults.
    done = chancy(project, *app, "job", "push", "elsewhere.tasks.go", "--log-format", "json")
    ok(done)
    (line,) = [json.loads(x) for x in done.stderr.splitlines() if x.startswith("{")]
    assert line["level"] == "WARNING" and line["logger"] == "chancy_core.cli"
    assert "cannot import elsewhere.tasks" in line["message"] and line["pid"] > 0
    quiet = chancy(project, *app, "job", "push", "elsewhere.tasks.go", "-q")
    assert ok(quiet) and quiet.stderr == ""


def test_ctrl_c_on_processes_drains_the_running_jobs(project):
    """A terminal's Ctrl-C goes to the whole foreground process group: the children must
    get it once (from the parent), and drain their jobs rather than stop them."""
    app = ["--app", "myapp:chancy"]
    ok(chancy(project, *app, "migrate"))
    ok(chancy(project, *app, "queue", "declare", "naps", "--concurrency", "2"))
    log = (project / "processes.log").open("w")
    parent = subprocess.Popen(
        [CHANCY, "worker", "start", *app, "--processes", "2", "--worker-id", "px",
         "--shutdown-timeout", "30"],
        cwd=project, env=env(), stdout=log, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,  # its own process group, as a shell gives a foreground job
    )  # fmt: skip
    try:
        line = json.dumps({"func": "myapp.tasks.nap", "kwargs": {"seconds": 6}, "queue": "naps"})
        (project / "naps.jsonl").write_text((line + "\n") * 4)
        ok(chancy(project, *app, "-q", "job", "push", "--file", "naps.jsonl"))
        refs = [j["id"] for j in json.loads(ok(chancy(project, *app, "-q", "job", "list",
                                                      "--json")))["jobs"]]  # fmt: skip
        deadline = time.monotonic() + 60
        while True:
            workers = json.loads(ok(chancy(project, *app, "-q", "worker", "list", "--json")))
            running = sum(len(w["running"]) for w in workers)
            if (
                running >= 2 and len(workers) == 2
            ):  # one child may claim both before the other starts
                break
            assert time.monotonic() < deadline, workers
            time.sleep(0.2)
        assert sorted(w["worker_id"] for w in workers) == ["px-1", "px-2"]
        os.killpg(parent.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        assert parent.wait(timeout=60) == 0
    finally:
        if parent.poll() is None:  # the children have process groups of their own
            parent.send_signal(signal.SIGTERM)
            try:
                parent.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(parent.pid, signal.SIGKILL)
                parent.wait()
        log.close()
    states = [
        json.loads(ok(chancy(project, *app, "-q", "job", "get", ref, "--json")))["state"]
        for ref in refs
    ]
    # The jobs that were running finished (drained); none was cut off and put back.
    assert len(states) == 4 and states.count("succeeded") >= 2, (
        states,
        (project / "processes.log").read_text(),
    )
    assert "again; stopping running jobs" not in (project / "processes.log").read_text()
