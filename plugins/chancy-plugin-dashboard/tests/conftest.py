"""Fixtures of the dashboard's tests: an app on a fresh database, a dashboard, a client."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from chancy_plugin_dashboard import Dashboard
from dashboard_helpers import PASSWORD_HASH, SECRET, MakeDashboard, client_for, login

from chancy_core import Chancy, Queue


@pytest.fixture
async def app(database: str) -> AsyncIterator[Chancy]:
    """An open app (with whatever plugins are installed) and two declared queues."""
    async with Chancy(database) as chancy:
        await chancy.declare(Queue("default", polling_interval=0.05))
        await chancy.declare(Queue("emails", concurrency=2, polling_interval=0.05))
        yield chancy


@pytest.fixture
def make_dashboard(app: Chancy) -> MakeDashboard:
    """``make_dashboard(**options)``: a dashboard on ``app`` with the password login."""

    def make(**options: Any) -> Dashboard:
        options.setdefault("password_hash", PASSWORD_HASH)
        options.setdefault("secret_key", SECRET)
        return Dashboard(app, **options)

    return make


@pytest.fixture
async def signed_in(make_dashboard: MakeDashboard) -> AsyncIterator[httpx.AsyncClient]:
    """A client signed in to a default dashboard."""
    async with client_for(make_dashboard()) as client:
        answer = await login(client)
        assert answer.status_code == 303
        yield client
