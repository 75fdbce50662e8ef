"""The core's tests run without plugins, whatever is installed in the environment."""

import os

os.environ["CHANCY_DISABLE_PLUGIN_AUTOLOAD"] = "1"

from chancy_core import Chancy

# Most tests push to queues they never declare (no worker is meant to run those jobs). The
# rule that push refuses an undeclared queue is tested in test_admin.py, on apps that
# turn it back on.
Chancy.require_declared_queues = False

pytest_plugins = ["chancy_core.testing"]
