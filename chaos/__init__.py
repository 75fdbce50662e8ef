"""The chaos suite: chancy-core's promises under kills, restarts, network faults, load and
hostile input. Run it with ``nox -s chaos`` (``nox -s chaos -- --short`` for CI); see
``chaos/README.md``."""
