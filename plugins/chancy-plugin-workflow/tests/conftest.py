"""The workflow plugin's tests: the ``chancy`` fixture's app has the ``default`` queue."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from chancy_core import Chancy, Queue


@pytest.fixture
async def chancy(chancy: Chancy) -> AsyncIterator[Chancy]:
    """The core's ``chancy`` fixture, with ``default`` declared: a push to an undeclared
    queue is refused, and most workflows here put their steps there."""
    await chancy.declare(Queue("default"))
    yield chancy
