"""Benchmark driver: chancy-core side by side with its peers (method: benchmarks/README.md).

Standard library only, so it runs under any Python 3.11+. For each system it builds (or
reuses) ``benchmarks/.venvs/<system>``, then runs ``harness.py`` phases in that venv as
subprocesses, each against the system's own freshly created database; the raw-SQL ceiling
runs pgbench. Prints the tables and writes ``benchmarks/results/latest.json``.

Every system runs at the same concurrency (``--concurrency``, 100) in the headline rows; each
system's best configuration (from the sweep recorded by ``--sweep``) adds processing rows.

    python benchmarks/run.py                      # the official table: 100k jobs, 3 repeats
    python benchmarks/run.py --sweep              # choose each system's best configuration
    python benchmarks/run.py --quick --systems chancy_core,pgqueuer --repeat 2
"""

from __future__ import annotations

import argparse
import ast
import glob
import hashlib
import json
import math
import os
import random
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
SWEEP_FILE = RESULTS_DIR / "sweep.json"

OURS = "chancy_core"
#: Table order: ours first, then the peers.
SYSTEMS = ("chancy_core", "chancy_upstream", "pgqueuer", "procrastinate", "oban", "awa")
PHASES = ("bulk", "single", "latency", "process", "ceiling")
WORKER_COUNTS = (1, 2)
#: The concurrency every system runs at in the headline rows.
COMMON_CONCURRENCY = 100
#: Installed into every venv next to the system: the harness counts jobs through psycopg.
HARNESS_REQUIREMENTS = ("psycopg[binary]==3.3.9",)
DEFAULT_DSN_BASE = "postgresql://postgres@/?host=/var/run/postgresql"
CEILING_DB = "bench_ceiling"
CEILING_CLIENTS = 4
CEILING_BATCHES = (1, 100)
MIN_STEP_SECONDS = 15.0  # a step is skipped when less than this is left of the time limit
#: Jobs of the smoke check (``--smoke``, and first in every ``--quick`` run).
SMOKE_JOBS = 200


@dataclass
class System:
    """One benchmarked system: its adapter's settings and, once set up, its venv."""

    name: str
    requirements: tuple[str, ...]
    python: str
    settings: dict[str, Any]
    sweep: tuple[dict[str, Any], ...]
    best: dict[str, Any]
    status: str = "not set up"
    versions: dict[str, str] = field(default_factory=dict)

    @property
    def venv_python(self) -> Path:
        """The venv's interpreter."""
        return VENVS_DIR / self.name / "bin" / "python"

    def config(self, overrides: dict[str, Any]) -> dict[str, Any]:
        """The adapter's ``SETTINGS`` with ``overrides`` applied."""
        return {**self.settings, **overrides}


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


@dataclass
class Step:
    """One timed measurement: a phase, with a worker count and configuration, for one system."""

    system: System
    key: str  # where the figures go: bulk, single, latency, process_1, best_process_2, ...
    phase: str  # the harness phase
    workers: int
    config: dict[str, Any]
    jobs: int


def log(clock: Clock, message: str) -> None:
    """Print one progress line."""
    print(f"[{clock.elapsed():6.0f}s] {message}", flush=True)


def database_dsn(dsn_base: str, dbname: str) -> str:
    """The ``dsn_base`` URL pointed at database ``dbname``."""
    return urllib.parse.urlunsplit(urllib.parse.urlsplit(dsn_base)._replace(path=f"/{dbname}"))


def adapter_path(name: str) -> Path:
    """The adapter module of system ``name`` (``procrastinate`` -> ``procrastinate_.py``)."""
    return next(p for p in (SYSTEMS_DIR / f"{name}.py", SYSTEMS_DIR / f"{name}_.py") if p.exists())


def load_system(name: str) -> System:
    """Read the adapter's literal settings without importing it (its library is not here)."""
    wanted = ("REQUIREMENTS", "PYTHON", "SETTINGS", "SWEEP", "BEST")
    settings: dict[str, Any] = {}
    for node in ast.parse(adapter_path(name).read_text()).body:
        if (
            isinstance(node, ast.Assign)
            and isinstance(target := node.targets[0], ast.Name)
            and target.id in wanted
        ):
            settings[target.id] = ast.literal_eval(node.value)
    missing = [key for key in wanted if key not in settings]
    if missing:
        raise SystemExit(f"{adapter_path(name)}: no literal {', '.join(missing)}")
    repo = os.environ.get("CHANCY_CORE_SOURCE", str(REPO_DIR))
    requirements = tuple(req.replace("{repo}", repo) for req in settings["REQUIREMENTS"])
    return System(
        name,
        requirements,
        settings["PYTHON"],
        settings["SETTINGS"],
        settings["SWEEP"],
        settings["BEST"],
    )


def config_label(config: dict[str, Any]) -> str:
    """``concurrency=100 batch_size=50``: a configuration as text, concurrency first."""
    keys = sorted(config, key=lambda key: (key != "concurrency", key))
    return " ".join(f"{key}={config[key]}" for key in keys)


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


def run_phase(step: Step, args: argparse.Namespace, clock: Clock) -> dict[str, Any]:
    """Run one harness phase for one system within the time bound; return figures or an error."""
    system = step.system
    deadline = processing_deadline(step.jobs)
    timeout = min(clock.remaining(), 2 * deadline + 120 + args.settle)
    command = [
        *(str(system.venv_python), str(HARNESS), "phase"),
        *("--system", system.name, "--phase", step.phase),
        *("--jobs", str(step.jobs), "--workers", str(step.workers)),
        *("--deadline", str(deadline), "--settle", str(args.settle)),
        *("--samples", str(args.latency_samples), "--config", json.dumps(step.config)),
        *("--dsn", database_dsn(args.dsn_base, f"{args.db_prefix}{system.name}")),
        *("--admin-dsn", database_dsn(args.dsn_base, "postgres")),
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


def pgbench_figures(stdout: str) -> tuple[int, float] | None:
    """(transactions processed, tps) from pgbench's report, or None."""
    done = re.search(r"^number of transactions actually processed: (\d+)", stdout, re.MULTILINE)
    tps = re.search(r"^tps = ([\d.]+)", stdout, re.MULTILINE)
    if done is None or tps is None:
        return None
    return int(done.group(1)), float(tps.group(1))


def run_ceiling(args: argparse.Namespace, clock: Clock) -> dict[str, Any]:
    """pgbench on a minimal queue table, each variant on a fresh database after a CHECKPOINT.

    ``process_<n>``: claim and complete ``--jobs`` pre-queued jobs, ``n`` per claim, with
    ``CEILING_CLIENTS`` connections: comparable with the processing columns (no insert timed).
    ``cycle_<n>``: insert, claim and complete ``n`` jobs per script run, for
    ``--ceiling-seconds``: the whole queue cycle, comparable with neither column alone.
    """
    dsn = database_dsn(args.dsn_base, CEILING_DB)
    admin_dsn = database_dsn(args.dsn_base, "postgres")
    admin = f"--maintenance-db={admin_dsn}"
    log_path = LOGS_DIR / "ceiling.log"
    psql = ["psql", "--quiet", "--set=ON_ERROR_STOP=1"]
    result: dict[str, Any] = {}
    for variant in ("process", "cycle"):
        for batch in CEILING_BATCHES:
            if variant == "process":
                per_client = math.ceil(args.jobs / (CEILING_CLIENTS * batch))
                fill = [[*psql, f"--set=n={args.jobs}", "--file", "ceiling/fill.sql", dsn]]
                run = [f"--transactions={per_client}", "--file=ceiling/process.sql"]
            else:
                fill, run = [], [f"--time={args.ceiling_seconds}", "--file=ceiling/cycle.sql"]
            steps = [
                ["dropdb", "--if-exists", "--force", admin, CEILING_DB],
                ["createdb", admin, CEILING_DB],
                [*psql, "--file", "ceiling/schema.sql", dsn],
                *fill,
                [*psql, "--command", "CHECKPOINT", admin_dsn],
                ["sleep", str(args.settle)],
                [
                    *("pgbench", "--no-vacuum", f"--client={CEILING_CLIENTS}", "--jobs=2"),
                    *(f"--define=batch={batch}", *run, dsn),
                ],
            ]
            bound = processing_deadline(args.jobs) + args.ceiling_seconds + args.settle + 60
            for command in steps:
                code, stdout = run_bounded(command, min(clock.remaining(), bound), log_path)
                if code != 0:
                    return {"error": f"{command[0]} failed (exit {code}); see {log_path}"}
            figures = pgbench_figures(stdout)
            if figures is None:
                return {"error": f"no tps in pgbench output; see {log_path}"}
            transactions, tps = figures
            if variant == "process":
                code, count = run_bounded(
                    [*psql, "--tuples-only", "--no-align", "--command", DONE_SQL, dsn],
                    60,
                    log_path,
                )
                if code != 0 or count.strip() != str(args.jobs):
                    return {"error": f"ceiling: {count.strip()} of {args.jobs} jobs done"}
                # pgbench's tps excludes connecting; time = transactions / tps.
                result[f"process_{batch}"] = args.jobs * tps / transactions
            else:
                result[f"cycle_{batch}"] = tps * batch
    return result


DONE_SQL = "SELECT count(*) FROM jobs WHERE state = 'succeeded'"


def spread(runs: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Median, min and max of each numeric figure over the runs that succeeded."""
    good = [run for run in runs if "error" not in run]
    keys = {key for run in good for key, value in run.items() if isinstance(value, (int, float))}
    values = {key: [run[key] for run in good if key in run] for key in sorted(keys)}
    return {
        "median": {key: statistics.median(v) for key, v in values.items()},
        "min": {key: min(v) for key, v in values.items()},
        "max": {key: max(v) for key, v in values.items()},
    }


def summarize(figures: dict[str, Any]) -> str:
    """One run's figures as a short progress text."""
    if "error" in figures:
        return f"FAILED: {figures['error']}"
    if "snapshots" in figures:
        return f"counts ok ({figures['snapshots']} snapshots, {figures['midway']} midway)"
    if "p50_ms" in figures:
        return ", ".join(f"{p} {figures[f'{p}_ms']:.1f} ms" for p in ("p50", "p95", "p99"))
    if "jobs_per_s" in figures:
        return f"{figures['jobs_per_s']:,.0f} jobs/s"
    return ", ".join(f"{key} {value:,.0f} jobs/s" for key, value in figures.items())


def fmt(value: float, fig: str) -> str:
    """A figure as table text: jobs/s in thousands (``12.7k``), milliseconds to 0.1."""
    if fig.endswith("_ms"):
        return f"{value:.1f}"
    return f"{value / 1000:.1f}k" if value >= 1000 else f"{value:.0f}"


def cell(data: dict[str, Any] | None, fig: str) -> str:
    """Median ``(min-max)`` of one figure, or ``-`` when it was not measured."""
    if not data or fig not in data.get("median", {}):
        return "-"
    median, low, high = (fmt(data[stat][fig], fig) for stat in ("median", "min", "max"))
    return median if low == high else f"{median} ({low}-{high})"


def grid(headings: list[str], rows: list[list[str]], left: int = 1) -> list[str]:
    """Rows aligned under headings: the first ``left`` columns to the left, the others right."""
    widths = [max(len(cell) for cell in column) for column in zip(headings, *rows, strict=True)]
    lines = [
        "  ".join(
            text.ljust(width) if i < left else text.rjust(width)
            for i, (text, width) in enumerate(zip(line, widths, strict=True))
        )
        for line in (headings, *rows)
    ]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return lines


# Headline columns: (heading, phase key, figure).
COLUMNS = (
    ("bulk jobs/s", "bulk", "jobs_per_s"),
    ("single push/s", "single", "jobs_per_s"),
    ("1 worker jobs/s", "process_1", "jobs_per_s"),
    ("2 workers jobs/s", "process_2", "jobs_per_s"),
    ("p50 ms", "latency", "p50_ms"),
    ("p95 ms", "latency", "p95_ms"),
    ("p99 ms", "latency", "p99_ms"),
)
BEST_COLUMNS = (
    ("1 worker jobs/s", "best_process_1", "jobs_per_s"),
    ("2 workers jobs/s", "best_process_2", "jobs_per_s"),
)
RATIO_COLUMNS = (
    ("bulk", "bulk", "jobs_per_s"),
    ("push", "single", "jobs_per_s"),
    ("1w", "process_1", "jobs_per_s"),
    ("2w", "process_2", "jobs_per_s"),
    ("p50", "latency", "p50_ms"),
    ("p95", "latency", "p95_ms"),
    ("p99", "latency", "p99_ms"),
    ("best 1w", "best_process_1", "jobs_per_s"),
    ("best 2w", "best_process_2", "jobs_per_s"),
)


def median_of(entry: dict[str, Any], key: str, fig: str) -> float | None:
    """The median of one figure of one system, if measured."""
    value = entry["phases"].get(key, {}).get("median", {}).get(fig)
    return None if value is None else float(value)


def render_table(report: dict[str, Any]) -> str:
    """Headline rows, best-configuration rows, ours÷peer ratios, the ceiling and the notes."""
    systems: dict[str, Any] = report["systems"]
    args = report["args"]
    lines = [
        f"Headline: every system at concurrency {args['concurrency']}; {args['jobs']:,} jobs"
        f" (single push: {args['single_jobs']:,}); medians of {args['repeat']} run(s),"
        " (min-max) when they differ",
        "",
    ]
    rows = [
        [name, *(cell(entry["phases"].get(key), fig) for _, key, fig in COLUMNS)]
        for name, entry in systems.items()
    ]
    lines += grid(["system", *(heading for heading, _, _ in COLUMNS)], rows)
    best_rows = [
        [
            name,
            config_label(entry["configs"]["best"])
            + (" (headline)" if entry["configs"]["best"] == entry["configs"]["common"] else ""),
            *(cell(entry["phases"].get(key), fig) for _, key, fig in BEST_COLUMNS),
        ]
        for name, entry in systems.items()
        if any(key in entry["phases"] for _, key, _ in BEST_COLUMNS)
    ]
    if best_rows:
        headings = ["system", "configuration", *(heading for heading, _, _ in BEST_COLUMNS)]
        lines += [
            "",
            f"Each system's best configuration (processing only; {report['best_source']})",
            "",
            *grid(headings, best_rows, left=2),
        ]
    ours = systems.get(OURS)
    if ours is not None and len(systems) > 1:
        ratio_rows = []
        for name, entry in systems.items():
            if name == OURS:
                continue
            row = [name]
            for _, key, fig in RATIO_COLUMNS:
                mine, peer = median_of(ours, key, fig), median_of(entry, key, fig)
                row.append(f"{mine / peer:.2f}" if mine is not None and peer else "-")
            ratio_rows.append(row)
        lines += [
            "",
            "ours÷peer, medians (above 1 ours is faster, except latency p50/p95/p99: below 1"
            " ours is faster; best = each at its best configuration)",
            "",
            *grid(["peer", *(heading for heading, _, _ in RATIO_COLUMNS)], ratio_rows),
        ]
    notes = []
    for name, entry in systems.items():
        if entry["status"] != "ok":
            notes.append(f"{name}: {entry['status']}")
        for key, data in entry["phases"].items():
            notes.extend(f"{name} {key}: {run['error']}" for run in data["runs"] if "error" in run)
    ceiling = report.get("ceiling")
    if ceiling:
        lines.append("")
        figures = [("process", "claim"), ("cycle", "txn")]
        texts = {
            variant: " · ".join(
                f"{batch}/{unit} {cell(ceiling, f'{variant}_{batch}')} jobs/s"
                for batch in CEILING_BATCHES
                if f"{variant}_{batch}" in ceiling.get("median", {})
            )
            for variant, unit in figures
        }
        if texts["process"]:
            lines.append(
                f"raw-SQL processing ceiling (pgbench, {CEILING_CLIENTS} connections, claim +"
                f" complete of {args['jobs']:,} pre-queued jobs; comparable with the worker"
                f" columns): {texts['process']}"
            )
        if texts["cycle"]:
            lines.append(
                f"raw-SQL queue cycle (pgbench, {CEILING_CLIENTS} connections, insert + claim +"
                f" complete; includes the insert, so comparable with neither the bulk nor the"
                f" worker columns): {texts['cycle']}"
            )
        notes.extend(f"ceiling: {run['error']}" for run in ceiling["runs"] if "error" in run)
    lines.extend(f"note: {note}" for note in notes)
    return "\n".join(lines)


def sweep_score(entry: dict[str, Any]) -> float | None:
    """Geometric mean of the 1- and 2-worker medians; None unless both were measured."""
    figures = [entry.get(f"process_{n}", {}).get("median", {}).get("jobs_per_s") for n in (1, 2)]
    if any(not value for value in figures):
        return None
    return math.sqrt(figures[0] * figures[1])


def render_sweep(report: dict[str, Any]) -> str:
    """The sweep: each configuration's processing figures; ``*`` marks the best one."""
    args = report["args"]
    lines = [
        f"Sweep: processing, {args['jobs']:,} jobs, medians of {args['repeat']} run(s)"
        " (min-max); * = best (geometric mean of 1 and 2 workers)",
        "",
    ]
    rows, notes = [], []
    for name, entry in report["systems"].items():
        if entry["status"] != "ok":
            notes.append(f"{name}: {entry['status']}")
        for tried in entry.get("sweep", []):
            best = tried["config"] == entry.get("best")
            score = tried.get("score")
            rows.append(
                [
                    name,
                    ("* " if best else "  ") + config_label(tried["config"]),
                    *(cell(tried.get(f"process_{n}"), "jobs_per_s") for n in WORKER_COUNTS),
                    "-" if score is None else fmt(score, "jobs_per_s"),
                ]
            )
            for n in WORKER_COUNTS:
                notes.extend(
                    f"{name} {config_label(tried['config'])} {n}w: {run['error']}"
                    for run in tried.get(f"process_{n}", {}).get("runs", [])
                    if "error" in run
                )
    lines += grid(["system", "configuration", "1 worker", "2 workers", "score"], rows, left=2)
    lines.extend(f"note: {note}" for note in notes)
    return "\n".join(lines)


def parse_args() -> argparse.Namespace:
    """Command-line options; defaults depend on ``--quick`` and ``--sweep`` (see README.md)."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--jobs", type=int, help="jobs per bulk/process run (100000; --sweep 20000; --quick 10000)"
    )
    parser.add_argument(
        "--single-jobs", type=int, help="single pushes per run (10000; --quick 1000)"
    )
    parser.add_argument(
        "--systems", default=",".join(SYSTEMS), help=f"comma-separated, from: {', '.join(SYSTEMS)}"
    )
    parser.add_argument(
        "--phases", default=",".join(PHASES), help=f"comma-separated, from: {', '.join(PHASES)}"
    )
    parser.add_argument(
        "--repeat", type=int, help="runs of each measurement (3; --sweep 2; --quick 1)"
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        default=COMMON_CONCURRENCY,
        help=f"the concurrency of every system in the headline rows (default {COMMON_CONCURRENCY})",
    )
    parser.add_argument(
        "--sweep",
        action="store_true",
        help="measure processing for each configuration in the adapters' SWEEP; pick the best",
    )
    parser.add_argument(
        "--best-from",
        type=Path,
        default=SWEEP_FILE,
        help="sweep report the best configurations come from (default results/sweep.json;"
        " the adapters' BEST when it does not exist)",
    )
    parser.add_argument("--seed", type=int, help="seed of the shuffled order (default: random)")
    parser.add_argument(
        "--settle", type=float, help="seconds idle after the CHECKPOINT before each timed part (3)"
    )
    parser.add_argument(
        "--latency-samples", type=int, help="latency probes per run (200; --quick 50)"
    )
    parser.add_argument(
        "--dsn-base", default=DEFAULT_DSN_BASE, help="server URL without a database name"
    )
    parser.add_argument(
        "--db-prefix",
        default="bench_",
        help="each system's database is <prefix><system>, dropped and re-created for every"
        " phase (default bench_): give runs sharing a server different prefixes",
    )
    parser.add_argument(
        "--time-limit", type=float, default=14400.0, help="hard bound on the whole run, seconds"
    )
    parser.add_argument(
        "--ceiling-seconds", type=int, help="pgbench duration of each queue-cycle variant (20)"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: 10000 jobs, 1000 single pushes, 1 repeat, 50 latency samples, 1 s"
        " settle, 5 s of pgbench; writes results/quick*.json",
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help=f"only check that each adapter's PROGRESS_SQL and SUCCEEDED_SQL count what they"
        f" claim, on {SMOKE_JOBS} jobs (harness.py phase --phase smoke; every --quick run does"
        " it first); exits 1 if one does not; writes no report",
    )
    parser.add_argument(
        "--reinstall", action="store_true", help="pip install into every venv again"
    )
    parser.add_argument(
        "--output",
        type=Path,
        help="the JSON report (default results/latest.json, --sweep results/sweep.json;"
        " with --quick results/quick-latest.json or quick-sweep.json)",
    )
    args = parser.parse_args()
    defaults = {
        "jobs": 10_000 if args.quick else 20_000 if args.sweep else 100_000,
        "single_jobs": 1_000 if args.quick else 10_000,
        "repeat": 1 if args.quick else 2 if args.sweep else 3,
        "settle": 1.0 if args.quick else 3.0,
        "latency_samples": 50 if args.quick else 200,
        "ceiling_seconds": 5 if args.quick else 20,
        "seed": random.SystemRandom().randrange(1 << 32),
    }
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.output is None:
        name = "sweep.json" if args.sweep else "latest.json"
        args.output = RESULTS_DIR / (f"quick-{name}" if args.quick else name)
    args.systems = [name.strip() for name in args.systems.split(",") if name.strip()]
    args.phases = [name.strip() for name in args.phases.split(",") if name.strip()]
    for name in args.systems:
        if name not in SYSTEMS:
            parser.error(f"unknown system {name!r}; choose from {', '.join(SYSTEMS)}")
    for name in args.phases:
        if name not in PHASES:
            parser.error(f"unknown phase {name!r}; choose from {', '.join(PHASES)}")
    if args.repeat < 1 or args.jobs < 1 or args.single_jobs < 1 or args.latency_samples < 2:
        parser.error("--repeat, --jobs and --single-jobs must be >= 1, --latency-samples >= 2")
    return args


def provenance() -> dict[str, Any]:
    """The commit measured, whether the tree differs from it, and hashes of the harness files."""

    def git(*command: str) -> str:
        done = subprocess.run(
            ["git", "-C", str(REPO_DIR), *command], capture_output=True, text=True
        )
        return done.stdout.strip() if done.returncode == 0 else "unknown"

    files = sorted(
        [HARNESS, Path(__file__), *SYSTEMS_DIR.glob("*.py"), *(BENCH_DIR / "ceiling").glob("*")]
    )
    return {
        "commit": git("rev-parse", "HEAD"),
        "dirty": git("status", "--porcelain") != "",
        "files": {
            str(path.relative_to(BENCH_DIR)): hashlib.sha256(path.read_bytes()).hexdigest()[:16]
            for path in files
        },
    }


def best_configs(systems: list[System], args: argparse.Namespace) -> tuple[dict[str, Any], str]:
    """Each system's best configuration (from the sweep report, else its adapter's ``BEST``)."""
    recorded: dict[str, Any] = {}
    source = "the adapters' BEST: no sweep recorded (run.py --sweep)"
    if args.best_from.exists():
        sweep = json.loads(args.best_from.read_text())
        recorded = {
            name: entry["best"] for name, entry in sweep["systems"].items() if entry.get("best")
        }
        source = (
            f"chosen by the sweep in {args.best_from.name} (started {sweep['started_at']},"
            f" {sweep['args']['jobs']:,} jobs, {sweep['args']['repeat']} repeats)"
        )
    best = {s.name: recorded.get(s.name) or s.config(s.best) for s in systems}
    missing = [s.name for s in systems if s.name not in recorded]
    if recorded and missing:
        source += f"; the adapters' BEST for {', '.join(missing)} (not in that sweep)"
    return best, source


def table_blocks(
    ready: list[System], args: argparse.Namespace, common: dict[str, Any], best: dict[str, Any]
) -> list[list[Step] | None]:
    """The measurements of one repeat, one block per measurement (None: the ceiling)."""
    blocks: list[list[Step] | None] = []
    if "bulk" in args.phases:
        blocks.append([Step(s, "bulk", "bulk", 1, common[s.name], args.jobs) for s in ready])
    if "single" in args.phases:
        blocks.append(
            [Step(s, "single", "single", 1, common[s.name], args.single_jobs) for s in ready]
        )
    if "latency" in args.phases:
        blocks.append([Step(s, "latency", "latency", 1, common[s.name], 1) for s in ready])
    if "process" in args.phases:
        # One block per worker count: the headline runs and the best configurations' runs
        # (where they differ) are shuffled together, so they share the same time window.
        for n in WORKER_COUNTS:
            blocks.append(
                [Step(s, f"process_{n}", "process", n, common[s.name], args.jobs) for s in ready]
                + [
                    Step(s, f"best_process_{n}", "process", n, best[s.name], args.jobs)
                    for s in ready
                    if best[s.name] != common[s.name]
                ]
            )
    if "ceiling" in args.phases:
        blocks.append(None)
    return blocks


def sweep_blocks(ready: list[System], args: argparse.Namespace) -> list[list[Step] | None]:
    """One block per (worker count, n-th configuration of each adapter's ``SWEEP``)."""
    blocks: list[list[Step] | None] = []
    for n in WORKER_COUNTS:
        for index in range(max((len(s.sweep) for s in ready), default=0)):
            blocks.append(
                [
                    Step(s, f"sweep{index}_{n}", "process", n, s.config(s.sweep[index]), args.jobs)
                    for s in ready
                    if index < len(s.sweep)
                ]
            )
    return blocks


def run_blocks(
    blocks: list[list[Step] | None],
    args: argparse.Namespace,
    clock: Clock,
    rng: random.Random,
) -> tuple[dict[tuple[str, str], list[dict[str, Any]]], list[dict[str, Any]], list[str]]:
    """Run every block ``--repeat`` times, blocks and the systems in each in shuffled order.

    Returns the runs by (system, key), the ceiling runs and the order actually run.
    """
    runs: dict[tuple[str, str], list[dict[str, Any]]] = {}
    ceiling_runs: list[dict[str, Any]] = []
    schedule: list[str] = []
    skipped = {"error": "skipped: time limit reached"}
    for rep in range(1, args.repeat + 1):
        order = blocks[:]
        rng.shuffle(order)
        for block in order:
            if block is None:
                figures = (
                    run_ceiling(args, clock) if clock.remaining() >= MIN_STEP_SECONDS else skipped
                )
                ceiling_runs.append(figures)
                schedule.append(f"{rep} ceiling")
                log(clock, f"{'ceiling':16} {'pgbench':16} run {rep}: {summarize(figures)}")
                continue
            steps = block[:]
            rng.shuffle(steps)
            schedule.append(f"{rep}: " + ", ".join(f"{s.system.name} {s.key}" for s in steps))
            for step in steps:
                figures = (
                    run_phase(step, args, clock)
                    if clock.remaining() >= MIN_STEP_SECONDS
                    else skipped
                )
                runs.setdefault((step.system.name, step.key), []).append(figures)
                log(
                    clock,
                    f"{step.system.name:16} {step.key:16} run {rep}: {summarize(figures)}"
                    + ("" if step.key in ("bulk", "single") else f" [{config_label(step.config)}]"),
                )
    return runs, ceiling_runs, schedule


def main() -> None:
    """Set up the venvs, run the shuffled measurements, print the tables, write the JSON."""
    args = parse_args()
    clock = Clock(args.time_limit)
    rng = random.Random(args.seed)
    started_at = datetime.now(UTC)
    LOGS_DIR.mkdir(parents=True, exist_ok=True)
    systems = [load_system(name) for name in args.systems]
    for system in systems:
        set_up(system, clock, args.reinstall)
        log(clock, f"{system.name}: {system.status} {system.versions or ''}".rstrip())
    ready = [system for system in systems if system.status == "ok"]
    common = {s.name: s.config({"concurrency": args.concurrency}) for s in systems}
    smoke: dict[str, dict[str, Any]] = {}
    if args.smoke or args.quick:
        for system in ready:
            step = Step(system, "smoke", "smoke", 1, common[system.name], SMOKE_JOBS)
            smoke[system.name] = figures = run_phase(step, args, clock)
            log(clock, f"{system.name:16} {'smoke':16}: {summarize(figures)}")
            if "error" in figures:
                system.status = f"smoke check failed: {figures['error']}"
        ready = [system for system in ready if system.status == "ok"]
    if args.smoke:
        failed = [s for s in systems if s.status != "ok"]
        for system in failed:
            print(f"{system.name}: {system.status}")
        raise SystemExit(1 if failed else 0)
    best, best_source = best_configs(systems, args)
    blocks = sweep_blocks(ready, args) if args.sweep else table_blocks(ready, args, common, best)
    runs, ceiling_runs, schedule = run_blocks(blocks, args, clock, rng)

    report: dict[str, Any] = {
        "kind": "sweep" if args.sweep else "table",
        "started_at": started_at.isoformat(timespec="seconds"),
        "duration_s": round(clock.elapsed(), 1),
        "args": {
            key: str(value) if isinstance(value, Path) else value
            for key, value in vars(args).items()
        },
        "machine": {"cpus": os.cpu_count(), "driver_python": sys.version.split()[0]},
        "provenance": provenance(),
        "schedule": schedule,
        "systems": {},
    }
    for system in systems:
        phases = {
            key: {"runs": system_runs, **spread(system_runs)}
            for (name, key), system_runs in runs.items()
            if name == system.name
        }
        entry: dict[str, Any] = {"status": system.status, "versions": system.versions}
        if system.name in smoke:
            entry["smoke"] = smoke[system.name]
        if args.sweep:
            tried = []
            for index, overrides in enumerate(system.sweep):
                result: dict[str, Any] = {"config": system.config(overrides)}
                for n in WORKER_COUNTS:
                    if f"sweep{index}_{n}" in phases:
                        result[f"process_{n}"] = phases[f"sweep{index}_{n}"]
                result["score"] = sweep_score(result)
                tried.append(result)
            entry["sweep"] = tried
            scored = [t for t in tried if t["score"] is not None]
            entry["best"] = max(scored, key=lambda t: t["score"])["config"] if scored else None
        else:
            entry["configs"] = {"common": common[system.name], "best": best[system.name]}
            if best[system.name] == common[system.name]:
                # The best configuration is the headline one: its rows are the headline runs.
                for n in WORKER_COUNTS:
                    if f"process_{n}" in phases:
                        phases[f"best_process_{n}"] = {
                            **phases[f"process_{n}"],
                            "same_as": f"process_{n}",
                        }
            entry["phases"] = phases
        report["systems"][system.name] = entry
    if not args.sweep:
        report["best_source"] = best_source
        if ceiling_runs:
            report["ceiling"] = {"runs": ceiling_runs, **spread(ceiling_runs)}
    table = render_sweep(report) if args.sweep else render_table(report)
    report["table"] = table
    print("\n" + table)
    RESULTS_DIR.mkdir(exist_ok=True)
    text = json.dumps(report, indent=2)
    args.output.write_text(text)
    kind = "sweep" if args.sweep else "run"
    (RESULTS_DIR / f"{kind}-{started_at:%Y%m%dT%H%M%SZ}.json").write_text(text)
    print(f"\nwrote {args.output}")


if __name__ == "__main__":
    main()
