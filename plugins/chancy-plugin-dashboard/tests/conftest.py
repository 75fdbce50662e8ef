"""Fixtures of the dashboard's tests: an app on a fresh database, a dashboard, a client."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from chancy_plugin_dashboard import Dashboard, hash_password

from chancy_core import Chancy, Queue

PASSWORD = "correct horse battery staple"
PASSWORD_HASH = hash_password(PASSWORD)
SECRET = "s" * 32

MakeDashboard = Callable[..., Dashboard]


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


@asynccontextmanager
async def client_for(
    asgi: Any, base_url: str = "https://testserver"
) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client talking to ``asgi`` in this event loop (HTTPS: Secure cookies work)."""
    transport = httpx.ASGITransport(app=asgi)
    async with httpx.AsyncClient(transport=transport, base_url=base_url) as client:
        yield client


def csrf_of(html: str) -> str:
    """The CSRF token of a page's forms."""
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, "the page has no CSRF token"
    return found.group(1)


async def login(
    client: httpx.AsyncClient, prefix: str = "", password: str = PASSWORD
) -> httpx.Response:
    """Sign in with the password form; returns the answer to the form."""
    page = await client.get(f"{prefix}/login")
    assert page.status_code == 200
    return await client.post(
        f"{prefix}/login", data={"password": password, "csrf": csrf_of(page.text)}
    )


@pytest.fixture
async def signed_in(make_dashboard: MakeDashboard) -> AsyncIterator[httpx.AsyncClient]:
    """A client signed in to a default dashboard."""
    async with client_for(make_dashboard()) as client:
        answer = await login(client)
        assert answer.status_code == 303
        yield client
