#!/usr/bin/env python3
"""Bootstrap the development tools and run a nox session; needs only Python 3.11+.

python3 dev.py demo      # push jobs, run them with a worker, print the results
python3 dev.py test      # the whole test suite (lint, types, core, each plugin)
python3 dev.py -s bench  # any nox arguments
"""

import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
TOOLS = ROOT / ".venv-tools"
SHORTCUTS = {"demo": ["-s", "demo"], "test": ["-t", "test"]}


def main() -> int:
    if sys.version_info < (3, 11):  # noqa: UP036 - dev.py may be run by an older python3
        sys.exit("chancy-core needs Python 3.11 or newer; run this with python3.11+")
    bindir = TOOLS / ("Scripts" if os.name == "nt" else "bin")
    if not (bindir / "nox").exists():
        print(f"dev.py: installing nox into {TOOLS} (first run only)", flush=True)
        venv.create(TOOLS, with_pip=True)
        subprocess.run(
            [bindir / "python", "-m", "pip", "install", "-q", "nox>=2024.4", "uv"], check=True
        )
    args = sys.argv[1:] or ["--list"]
    args = SHORTCUTS.get(args[0], [args[0]]) + args[1:]
    env = {**os.environ, "PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}"}
    return subprocess.call([bindir / "nox", "-f", ROOT / "noxfile.py", *args], env=env)


if __name__ == "__main__":
    raise SystemExit(main())
