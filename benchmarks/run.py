"""Benchmark driver: chancy-core side by side with its peers (method: benchmarks/README.md).

Standard library only, so it runs under any Python 3.11+. For each system it builds (or
reuses) ``benchmarks/.venvs/<system>``, then runs ``harness.py`` phases in that venv as
subprocesses, each against the system's own freshly created database; the raw-SQL ceiling
runs pgbench. Prints one table and writes ``benchmarks/results/latest.json``.

    python benchmarks/run.py --quick
    python benchmarks/run.py --systems chancy_core,pgqueuer --phases process --jobs 20000
"""

from __future__ import annotations

import argparse
import ast
import glob
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
import tomllib
import urllib.parse
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
SYSTEMS_DIR = BENCH_DIR / "systems"
VENVS_DIR = BENCH_DIR / ".venvs"
RESULTS_DIR = BENCH_DIR / "results"
LOGS_DIR = RESULTS_DIR / "logs"
HARNESS = BENCH_DIR / "harness.py"

OURS = "chancy_core"
#: Table order: ours first, then the peers.
SYSTEMS = ("chancy_core", "chancy_upstream", "pgqueuer", "procrastinate", "oban", "awa")
#: Run order: the long processing runs last, so a time bound cuts them rather than the rest.
PHASES = ("bulk", "latency", "ceiling", "process")
WORKER_COUNTS = (1, 2)
#: Installed into every venv next to the system: the harness counts jobs through psycopg.
HARNESS_REQUIREMENTS = ("psycopg[binary]==3.3.9",)
DEFAULT_DSN_BASE = "postgresql://postgres@/?host=/var/run/postgresql"
CEILING_DB = "bench_ceiling"
CEILING_CLIENTS = 4
CEILING_BATCHES = (1, 100)
MIN_STEP_SECONDS = 15.0  # a step is skipped when less than this is left of the time limit


@dataclass
class System:
    """One benchmarked system: its adapter's settings and, once set up, its venv."""

    name: str
    requirements: tuple[str, ...]
    python: str
    status: str = "not set up"
    versions: dict[str, str] = field(default_factory=dict)

    @property
    def venv_python(self) -> Path:
        """The venv's interpreter."""
        return VENVS_DIR / self.name / "bin" / "python"


@dataclass
class Clock:
    """The overall time bound."""

    limit: float
    started: float = field(default_factory=time.monotonic)

    def elapsed(self) -> float:
        """Seconds since the run started."""
        return time.monotonic() - self.started

    def remaining(self) -> float:
        """Seconds left before the hard bound."""
        return self.limit - self.elapsed()


def log(clock: Clock, message: str) -> None:
    """Print one progress line."""
    print(f"[{clock.elapsed():6.0f}s] {message}", flush=True)


def database_dsn(dsn_base: str, dbname: str) -> str:
    """The ``dsn_base`` URL pointed at database ``dbname``."""
    return urllib.parse.urlunsplit(urllib.parse.urlsplit(dsn_base)._replace(path=f"/{dbname}"))


def load_system(name: str) -> System:
    """Read ``REQUIREMENTS`` and ``PYTHON`` from the adapter without importing it."""
    path = next(p for p in (SYSTEMS_DIR / f"{name}.py", SYSTEMS_DIR / f"{name}_.py") if p.exists())
    settings: dict[str, Any] = {}
    for node in ast.parse(path.read_text()).body:
        if (
            isinstance(node, ast.Assign)
            and isinstance(target := node.targets[0], ast.Name)
            and target.id in ("REQUIREMENTS", "PYTHON")
        ):
            settings[target.id] = ast.literal_eval(node.value)
    repo = os.environ.get("CHANCY_CORE_SOURCE", str(REPO_DIR))
    requirements = tuple(req.replace("{repo}", repo) for req in settings["REQUIREMENTS"])
    return System(name, requirements, settings["PYTHON"])


def find_python(name: str) -> str | None:
    """A working interpreter called ``name``: on PATH, else under pyenv's versions."""
    pyenv_root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv"))
    candidates = [
        shutil.which(name),
        *sorted(glob.glob(str(pyenv_root / "versions" / "*" / "bin" / name))),
    ]
    for candidate in filter(None, candidates):
        if subprocess.run([candidate, "-c", ""], capture_output=True).returncode == 0:
            return candidate
    return None


def distribution_names(requirements: list[str]) -> list[str]:
    """Distribution names in pip arguments, options skipped.

    ``pkg[extra]==1.0`` gives ``pkg``; a directory gives its ``pyproject.toml`` project name.
    """
    names = []
    for req in requirements:
        if Path(req).is_dir():
            project = tomllib.loads((Path(req) / "pyproject.toml").read_text())["project"]
            names.append(project["name"])
        elif not req.startswith("-"):
            names.append(re.split(r"[\[=<>!~ ;]", req)[0])
    return names


def last_line(text: str) -> str:
    """The last non-empty line of a command's output (its last ``ERROR`` line if it has one)."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("ERROR")]
    return (errors or lines or ["no output"])[-1]


def set_up(system: System, clock: Clock, reinstall: bool) -> None:
    """Create the venv if missing and install the pinned requirements; set ``system.status``."""
    venv = VENVS_DIR / system.name
    marker = venv / ".bench-requirements.json"
    wanted = json.dumps([*HARNESS_REQUIREMENTS, *system.requirements])
    if reinstall or not marker.exists() or marker.read_text() != wanted:
        python = find_python(system.python)
        if python is None:
            system.status = f"unavailable: no working {system.python} on this machine"
            return
        log(clock, f"{system.name}: installing {' '.join(system.requirements)} into {venv}")
        steps = (
            [python, "-m", "venv", str(venv)],
            [
                str(system.venv_python),
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                *HARNESS_REQUIREMENTS,
                *system.requirements,
            ],
        )
        for step in steps:
            try:
                done = subprocess.run(
                    step, capture_output=True, text=True, timeout=max(1.0, clock.remaining())
                )
            except subprocess.TimeoutExpired:
                system.status = "unavailable: install timed out"
                return
            if done.returncode != 0:
                system.status = f"unavailable: {last_line(done.stderr)}"
                return
        marker.write_text(wanted)
    names = distribution_names([*system.requirements, *HARNESS_REQUIREMENTS])
    versions = subprocess.run(
        [str(system.venv_python), str(HARNESS), "versions", "--system", system.name, *names],
        capture_output=True,
        text=True,
        cwd=BENCH_DIR,
    )
    if versions.returncode != 0:
        system.status = f"unavailable: adapter does not import: {last_line(versions.stderr)}"
        return
    system.versions = json.loads(versions.stdout)
    system.status = "ok"


def run_bounded(command: list[str], timeout: float, log_path: Path) -> tuple[int | None, str]:
    """Run ``command`` in its own process group, stderr appended to ``log_path``.

    Returns (exit code, stdout); the code is None when the group was killed at ``timeout``.
    """
    with log_path.open("a") as log_file:
        log_file.write(f"\n$ {' '.join(command)}\n")
        log_file.flush()
        proc = subprocess.Popen(
            command,
            cwd=BENCH_DIR,
            stdout=subprocess.PIPE,
            stderr=log_file,
            text=True,
            start_new_session=True,
        )
        try:
            stdout, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            stdout, _ = proc.communicate()
            return None, stdout
        except BaseException:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise
    return proc.returncode, stdout


def processing_deadline(jobs: int) -> float:
    """Seconds the processing of ``jobs`` jobs may take (a floor of 100 jobs/s)."""
    return max(60.0, jobs / 100)


def run_phase(
    system: System, phase: str, workers: int, args: argparse.Namespace, clock: Clock
) -> dict[str, Any]:
    """Run one harness phase for one system within the time bound; return figures or an error."""
    deadline = processing_deadline(args.jobs)
    timeout = min(clock.remaining(), 2 * deadline + 120)
    command = [
        str(system.venv_python),
        str(HARNESS),
        "phase",
        "--system",
        system.name,
        "--phase",
        phase,
        "--jobs",
        str(args.jobs),
        "--workers",
        str(workers),
        "--deadline",
        str(deadline),
        "--dsn",
        database_dsn(args.dsn_base, f"bench_{system.name}"),
        "--admin-dsn",
        database_dsn(args.dsn_base, "postgres"),
    ]
    code, stdout = run_bounded(command, timeout, LOGS_DIR / f"{system.name}.log")
    if code is None:
        return {"error": f"killed at the time bound ({timeout:.0f}s)"}
    try:
        return dict(json.loads(last_line(stdout)))
    except json.JSONDecodeError:
        return {
            "error": f"harness exited {code} without a result; see {LOGS_DIR / system.name}.log"
        }


def run_ceiling(args: argparse.Namespace, clock: Clock) -> dict[str, Any]:
    """pgbench the minimal queue cycle, 1 and 100 jobs per transaction, each on a fresh database."""
    dsn = database_dsn(args.dsn_base, CEILING_DB)
    admin = f"--maintenance-db={database_dsn(args.dsn_base, 'postgres')}"
    log_path = LOGS_DIR / "ceiling.log"
    result: dict[str, Any] = {}
    for batch in CEILING_BATCHES:
        steps = (
            ["dropdb", "--if-exists", "--force", admin, CEILING_DB],
            ["createdb", admin, CEILING_DB],
            ["psql", "--quiet", "--set=ON_ERROR_STOP=1", "--file", "ceiling/schema.sql", dsn],
            [
                "pgbench",
                "--no-vacuum",
                f"--client={CEILING_CLIENTS}",
                "--jobs=2",
                f"--time={args.ceiling_seconds}",
                f"--define=batch={batch}",
                "--file=ceiling/cycle.sql",
                dsn,
            ],
        )
        for step in steps:
            code, stdout = run_bounded(
                step, min(clock.remaining(), args.ceiling_seconds + 60), log_path
            )
            if code != 0:
                return {"error": f"{step[0]} failed (exit {code}); see {log_path}"}
        tps = re.search(r"^tps = ([\d.]+)", stdout, re.MULTILINE)
        if tps is None:
            return {"error": f"no tps in pgbench output; see {log_path}"}
        result[f"jobs_per_s_{batch}"] = float(tps.group(1)) * batch
    return result


def median_figures(runs: list[dict[str, Any]]) -> dict[str, float]:
    """Median of each numeric figure over the runs that succeeded."""
    good = [run for run in runs if "error" not in run]
    keys = {key for run in good for key, value in run.items() if isinstance(value, (int, float))}
    return {key: statistics.median(run[key] for run in good) for key in sorted(keys)}


def summarize(figures: dict[str, Any]) -> str:
    """One run's figures as a short progress text."""
    if "error" in figures:
        return f"FAILED: {figures['error']}"
    if "p50_ms" in figures:
        return ", ".join(f"{p} {figures[f'{p}_ms']:.1f} ms" for p in ("p50", "p95", "p99"))
    return ", ".join(
        f"{key} {value:,.0f}" for key, value in figures.items() if key.startswith("jobs_per_s")
    )


# Columns of the table: (heading, phase key, figure).
COLUMNS = (
    ("bulk jobs/s", "bulk", "jobs_per_s"),
    ("1 worker jobs/s", "process_1", "jobs_per_s"),
    ("2 workers jobs/s", "process_2", "jobs_per_s"),
    ("p50 ms", "latency", "p50_ms"),
    ("p95 ms", "latency", "p95_ms"),
    ("p99 ms", "latency", "p99_ms"),
)


def render_table(report: dict[str, Any]) -> str:
    """The systems x phases table (medians), ours÷peer ratios, the ceiling and the footnotes."""
    systems: dict[str, Any] = report["systems"]
    ours = (
        {
            (phase, fig): systems[OURS]["phases"].get(phase, {}).get("median", {}).get(fig)
            for _, phase, fig in COLUMNS
        }
        if OURS in systems
        else {}
    )
    headings = ["system", *(heading for heading, _, _ in COLUMNS)]
    show_ratio = any(value is not None for value in ours.values())
    if show_ratio:
        headings.append("ours÷peer: bulk / 1w / 2w / p50")
    rows, notes = [], []
    for name, entry in systems.items():
        row = [name]
        for _, phase, fig in COLUMNS:
            value = entry["phases"].get(phase, {}).get("median", {}).get(fig)
            row.append(
                "-"
                if value is None
                else f"{value:,.0f}"
                if fig == "jobs_per_s"
                else f"{value:,.1f}"
            )
        if show_ratio and name != OURS:
            ratios = []
            for _, phase, fig in COLUMNS[:4]:
                peer = entry["phases"].get(phase, {}).get("median", {}).get(fig)
                mine = ours[(phase, fig)]
                ratios.append(f"{mine / peer:.2f}" if mine is not None and peer else "-")
            row.append(" / ".join(ratios))
        elif show_ratio:
            row.append("")
        rows.append(row)
        if entry["status"] != "ok":
            notes.append(f"{name}: {entry['status']}")
        for phase, data in entry["phases"].items():
            notes.extend(
                f"{name} {phase}: {run['error']}" for run in data["runs"] if "error" in run
            )
    widths = [
        max(len(str(cell)) for cell in column) for column in zip(headings, *rows, strict=True)
    ]
    lines = [
        "  ".join(
            cell.ljust(width) if i == 0 else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(line, widths, strict=True))
        )
        for line in (headings, *rows)
    ]
    lines.insert(1, "  ".join("-" * width for width in widths))
    ceiling = report.get("ceiling")
    if ceiling:
        median = ceiling["median"]
        if median:
            lines.append(
                f"raw-SQL ceiling (pgbench, {CEILING_CLIENTS} clients, insert/claim/complete): "
                + " · ".join(
                    f"{batch}/txn {median[f'jobs_per_s_{batch}']:,.0f} jobs/s"
                    for batch in CEILING_BATCHES
                )
            )
        notes.extend(f"ceiling: {run['error']}" for run in ceiling["runs"] if "error" in run)
    lines.append(
        f"medians of {report['args']['repeat']} run(s), {report['args']['jobs']:,} jobs each"
    )
    lines.extend(f"note: {note}" for note in notes)
    return "\n".join(lines)


def parse_args() -> argparse.Namespace:
    """Command-line options; ``--quick`` is a smoke run (10k jobs, 1 repeat, short pgbench)."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--jobs", type=int, default=100_000, help="jobs per bulk/process phase (default 100000)"
    )
    parser.add_argument(
        "--systems", default=",".join(SYSTEMS), help=f"comma-separated, from: {', '.join(SYSTEMS)}"
    )
    parser.add_argument(
        "--phases", default=",".join(PHASES), help=f"comma-separated, from: {', '.join(PHASES)}"
    )
    parser.add_argument(
        "--repeat", type=int, default=1, help="runs of each configuration; the table shows medians"
    )
    parser.add_argument(
        "--dsn-base", default=DEFAULT_DSN_BASE, help="server URL without a database name"
    )
    parser.add_argument(
        "--time-limit", type=float, default=1800.0, help="hard bound on the whole run, seconds"
    )
    parser.add_argument(
        "--ceiling-seconds", type=int, default=20, help="pgbench duration per ceiling variant"
    )
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: 10000 jobs, 1 repeat, 5 s of pgbench"
    )
    parser.add_argument(
        "--reinstall", action="store_true", help="pip install into every venv again"
    )
    parser.add_argument("--output", type=Path, default=RESULTS_DIR / "latest.json")
    args = parser.parse_args()
    if args.quick:
        args.jobs, args.repeat, args.ceiling_seconds = 10_000, 1, 5
    args.systems = [name.strip() for name in args.systems.split(",") if name.strip()]
    args.phases = [name.strip() for name in args.phases.split(",") if name.strip()]
    for name in args.systems:
        if name not in SYSTEMS:
            parser.error(f"unknown system {name!r}; choose from {', '.join(SYSTEMS)}")
    for name in args.phases:
        if name not in PHASES:
            parser.error(f"unknown phase {name!r}; choose from {', '.join(PHASES)}")
    return args


def main() -> None:
    """Set up the venvs, run every phase (alternating systems), print the table, write the JSON."""
    args = parse_args()
    clock = Clock(args.time_limit)
    started_at = datetime.now(UTC)
    LOGS_DIR.mkdir(parents=True, exist_ok=True)
    systems = [load_system(name) for name in args.systems]
    for system in systems:
        set_up(system, clock, args.reinstall)
        log(clock, f"{system.name}: {system.status} {system.versions or ''}".rstrip())
    ready = [system for system in systems if system.status == "ok"]
    steps = [
        (phase, workers)
        for phase in PHASES
        if phase in args.phases
        for workers in (WORKER_COUNTS if phase == "process" else (1,))
    ]
    runs: dict[tuple[str, str], list[dict[str, Any]]] = {}
    ceiling_runs: list[dict[str, Any]] = []
    skipped = {"error": "skipped: time limit reached"}
    for rep in range(args.repeat):
        order = ready[rep % len(ready) :] + ready[: rep % len(ready)] if ready else []
        for phase, workers in steps:
            if phase == "ceiling":
                figures = (
                    run_ceiling(args, clock) if clock.remaining() >= MIN_STEP_SECONDS else skipped
                )
                ceiling_runs.append(figures)
                log(clock, f"{'ceiling':16} {'pgbench':10} run {rep + 1}: {summarize(figures)}")
                continue
            key = f"process_{workers}" if phase == "process" else phase
            for system in order:
                if clock.remaining() < MIN_STEP_SECONDS:
                    figures = skipped
                else:
                    figures = run_phase(system, phase, workers, args, clock)
                runs.setdefault((system.name, key), []).append(figures)
                log(clock, f"{system.name:16} {key:10} run {rep + 1}: {summarize(figures)}")

    report: dict[str, Any] = {
        "started_at": started_at.isoformat(timespec="seconds"),
        "duration_s": round(clock.elapsed(), 1),
        "args": {
            key: str(value) if isinstance(value, Path) else value
            for key, value in vars(args).items()
        },
        "machine": {"cpus": os.cpu_count(), "driver_python": sys.version.split()[0]},
        "systems": {
            system.name: {
                "status": system.status,
                "versions": system.versions,
                "phases": {
                    key: {"runs": phase_runs, "median": median_figures(phase_runs)}
                    for (name, key), phase_runs in runs.items()
                    if name == system.name
                },
            }
            for system in systems
        },
    }
    if ceiling_runs:
        report["ceiling"] = {"runs": ceiling_runs, "median": median_figures(ceiling_runs)}
    table = render_table(report)
    report["table"] = table
    print("\n" + table)
    RESULTS_DIR.mkdir(exist_ok=True)
    text = json.dumps(report, indent=2)
    args.output.write_text(text)
    (RESULTS_DIR / f"run-{started_at:%Y%m%dT%H%M%SZ}.json").write_text(text)
    print(f"\nwrote {args.output}")


if __name__ == "__main__":
    main()
