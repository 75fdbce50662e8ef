"""The core's tests run without plugins, whatever is installed in the environment."""

import logging
import os
from collections.abc import Iterator

import pytest

os.environ["CHANCY_DISABLE_PLUGIN_AUTOLOAD"] = "1"

from chancy_core import Chancy

# Most tests push to queues they never declare (no worker is meant to run those jobs). The
# rule that push refuses an undeclared queue is tested in test_admin.py, on apps that
# turn it back on.
Chancy.require_declared_queues = False

pytest_plugins = ["chancy_core.testing"]


@pytest.fixture(autouse=True)
def _root_logger_restored() -> Iterator[None]:
    """The CLI's tests run ``main()`` in this process, and it configures the root logger
    (its handlers and level): put both back so that later tests' ``caplog`` sees records."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
