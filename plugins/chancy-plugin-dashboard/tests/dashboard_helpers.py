"""Helpers of the dashboard's tests (the fixtures are in conftest.py)."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
from chancy_plugin_dashboard import Dashboard, hash_password

PASSWORD = "correct horse battery staple"
PASSWORD_HASH = hash_password(PASSWORD)
SECRET = "s" * 32

MakeDashboard = Callable[..., Dashboard]


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
