"""The example project's ASGI application (examples/django_project/project/asgi.py):
chancy's dashboard mounted at /admin/jobs/ next to Django, its staff users let in by
their Django session, everyone else sent to the dashboard's password form."""

from __future__ import annotations

import anyio
import httpx
import pytest

pytestmark = [pytest.mark.db, pytest.mark.usefixtures("project_database")]

PASSWORD = "notes and jobs"


def session_cookie(username: str, *, staff: bool) -> str:
    """The Django session cookie of a signed-in user (made with Django's test client)."""
    from django.conf import settings
    from django.contrib.auth.models import User
    from django.test import Client

    user, _ = User.objects.get_or_create(username=username, defaults={"is_staff": staff})
    client = Client()
    client.force_login(user)
    return str(client.cookies[settings.SESSION_COOKIE_NAME].value)


def test_the_dashboard_is_served_under_admin_jobs_next_to_django() -> None:
    from chancy_plugin_dashboard import hash_password
    from django.conf import settings
    from notes.tasks import process_note
    from project.asgi import DASHBOARD_PREFIX, django_application, mount_dashboard
    from project.dashboard import build_dashboard

    result = process_note.enqueue(0)  # a job to find on the dashboard
    staff = session_cookie("ops", staff=True)
    visitor = session_cookie("visitor", staff=False)
    dashboard = build_dashboard(hash_password(PASSWORD))
    application = mount_dashboard(dashboard, django_application, DASHBOARD_PREFIX)

    def client(**cookies: str) -> httpx.AsyncClient:
        transport = httpx.ASGITransport(app=application)
        return httpx.AsyncClient(
            transport=transport, base_url="https://testserver", cookies=cookies
        )

    async def main() -> None:
        try:
            async with client() as anonymous:
                # Django still serves everything else (its admin asks Django's login).
                admin = await anonymous.get("/admin/")
                assert admin.status_code == 302
                assert admin.headers["location"] == "/admin/login/?next=/admin/"
                assert (await anonymous.get("/notes/")).status_code == 405  # POST only
                # The dashboard: its login page, under the prefix.
                for path in ("/admin/jobs", "/admin/jobs/"):
                    first = await anonymous.get(path)
                    assert first.status_code == 303, path
                    assert first.headers["location"] == "/admin/jobs/login"
                    if path == "/admin/jobs":  # a new session: its cookie, under the prefix
                        assert "Path=/admin/jobs;" in first.headers["set-cookie"]
                jobs = await anonymous.get("/admin/jobs/jobs")
                assert jobs.headers["location"] == "/admin/jobs/login?next=%2Fjobs"
                login = await anonymous.get("/admin/jobs/login")
                assert login.status_code == 200 and "Sign in" in login.text
                assert 'href="/admin/jobs/static/style.css"' in login.text
                # ... and signed in with its password, an authenticated page.
                token = login.text.split('name="csrf" value="')[1].split('"')[0]
                signed = await anonymous.post(
                    "/admin/jobs/login?next=%2Fjobs", data={"password": PASSWORD, "csrf": token}
                )
                assert signed.status_code == 303
                assert signed.headers["location"] == "/admin/jobs/jobs"
                page = await anonymous.get("/admin/jobs/jobs")
                assert page.status_code == 200 and result.id in page.text
                assert f'href="/admin/jobs/jobs/{result.id}"' in page.text
            # A Django staff user's session lets them in without the password.
            async with client(**{settings.SESSION_COOKIE_NAME: staff}) as ops:
                overview = await ops.get("/admin/jobs/")
                assert overview.status_code == 200 and "Notes jobs" in overview.text
                assert "<span>ops</span>" in overview.text
                job = await ops.get(f"/admin/jobs/jobs/{result.id}")
                assert job.status_code == 200 and "notes.tasks.process_note" in job.text
            # A Django user who is not staff is not.
            async with client(**{settings.SESSION_COOKIE_NAME: visitor}) as other:
                refused = await other.get("/admin/jobs/")
                assert refused.status_code == 303
                assert refused.headers["location"] == "/admin/jobs/login"
        finally:
            await dashboard.chancy.close()  # its async pool belongs to this event loop

    anyio.run(main)


def test_without_a_password_only_django_staff_get_in() -> None:
    from django.conf import settings
    from project.asgi import DASHBOARD_PREFIX, django_application, mount_dashboard
    from project.dashboard import build_dashboard

    staff = session_cookie("ops", staff=True)
    dashboard = build_dashboard()
    application = mount_dashboard(dashboard, django_application, DASHBOARD_PREFIX)

    async def main() -> None:
        transport = httpx.ASGITransport(app=application)
        try:
            async with httpx.AsyncClient(transport=transport, base_url="https://t") as anonymous:
                refused = await anonymous.get("/admin/jobs/")
                assert refused.status_code == 401 and "Sign in" in refused.text
                assert (await anonymous.get("/admin/jobs/login")).status_code == 404
            async with httpx.AsyncClient(
                transport=transport,
                base_url="https://t",
                cookies={settings.SESSION_COOKIE_NAME: staff},
            ) as ops:
                assert (await ops.get("/admin/jobs/queues")).status_code == 200
        finally:
            await dashboard.chancy.close()

    anyio.run(main)
