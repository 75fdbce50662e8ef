"""``python -m chancy_core.cli``: the ``chancy`` command."""

from chancy_core.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
