"""Your own Starlette app, with the chancy dashboard mounted at /admin/jobs.

    pip install ./plugins/chancy-plugin-dashboard
    export CHANCY_DSN=postgresql://localhost/app
    export DASHBOARD_PASSWORD_HASH="$(echo 'a long passphrase' | chancy dashboard --hash-password)"
    export DASHBOARD_SECRET_KEY="$(python -c 'import secrets; print(secrets.token_urlsafe(32))')"
    export DASHBOARD_INSECURE_COOKIES=1   # only for plain http://localhost
    uvicorn dashboard_app:app --app-dir examples --port 8000
    # then open http://localhost:8000/admin/jobs/

With FastAPI it is the same: ``app.mount("/admin/jobs", dashboard)``. To use your own
login instead of the dashboard's password, pass ``auth=`` a callable that returns who
the request is from (e.g. from your session), or ``None``; see ``staff_only`` below.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from chancy_plugin_dashboard import Dashboard
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Mount, Route

from chancy_core import Chancy, Queue, job

chancy = Chancy(os.environ.get("CHANCY_DSN"))


@job(queue="emails", max_attempts=3)
async def send_welcome(to: str) -> None:
    """A job operators may push from the dashboard (it is in allowed_functions)."""


def staff_only(request: Request) -> str | None:
    """An example ``auth`` callback: who the request is from, per your own app's login.

    Here a header set by an authenticating proxy; with Starlette's SessionMiddleware it
    would be ``request.session.get("staff_user")``.
    """
    return request.headers.get("x-staff-user") or None


dashboard = Dashboard(
    chancy,
    password_hash=os.environ["DASHBOARD_PASSWORD_HASH"],
    auth=staff_only,  # either one lets a request in
    secret_key=os.environ["DASHBOARD_SECRET_KEY"],
    secure_cookies=os.environ.get("DASHBOARD_INSECURE_COOKIES") != "1",
    allowed_functions=[send_welcome],
)


async def home(request: Request) -> PlainTextResponse:
    """The rest of your app."""
    return PlainTextResponse("Your app. The job dashboard is at /admin/jobs/\n")


@asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    """Open the chancy app with yours (the dashboard would open it on its first request)."""
    async with chancy:
        await chancy.migrate()
        await chancy.declare(Queue("emails", concurrency=5))
        yield


app = Starlette(
    routes=[Route("/", home), Mount("/admin/jobs", app=dashboard)],
    lifespan=lifespan,
)
