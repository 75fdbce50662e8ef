"""The core's tests run without plugins, whatever is installed in the environment."""

import os

os.environ["CHANCY_DISABLE_PLUGIN_AUTOLOAD"] = "1"

pytest_plugins = ["chancy_core.testing"]
