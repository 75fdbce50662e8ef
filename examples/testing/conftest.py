"""The fixtures a project gets from chancy-core: a real database per test (CHANCY_TEST_DSN
or an embedded PostgreSQL), an app, an inline app and a worker."""

pytest_plugins = ["chancy_core.testing"]
