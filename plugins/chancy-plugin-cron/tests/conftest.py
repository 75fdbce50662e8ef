"""These tests push to queues they never declare (no worker is meant to run most of those
jobs): let them, as the core's tests do (chancy-core's tests/test_admin.py tests the rule)."""

from chancy_core import Chancy

Chancy.require_declared_queues = False
