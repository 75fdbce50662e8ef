"""examples/dashboard_app.py: the dashboard mounted at /admin/jobs of a user's Starlette app."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest
from dashboard_helpers import PASSWORD, PASSWORD_HASH, SECRET, client_for, csrf_of

from chancy_core import QueuedJob

pytestmark = [pytest.mark.anyio, pytest.mark.db]

EXAMPLE = Path(__file__).parents[3] / "examples" / "dashboard_app.py"


def load_example(monkeypatch: pytest.MonkeyPatch, database: str) -> ModuleType:
    monkeypatch.setenv("CHANCY_DSN", database)
    monkeypatch.setenv("DASHBOARD_PASSWORD_HASH", PASSWORD_HASH)
    monkeypatch.setenv("DASHBOARD_SECRET_KEY", SECRET)
    spec = importlib.util.spec_from_file_location("dashboard_app_example", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)
    spec.loader.exec_module(module)
    return module


async def test_the_example_serves_the_dashboard_under_admin_jobs(
    monkeypatch: pytest.MonkeyPatch, database: str
) -> None:
    example = load_example(monkeypatch, database)
    async with example.app.router.lifespan_context(example.app):  # opens the app, declares
        async with client_for(example.app) as client:
            assert (await client.get("/")).text.startswith("Your app.")
            for path in ("/admin/jobs", "/admin/jobs/", "/admin/jobs/queues"):
                answer = await client.get(path)
                assert answer.status_code in (303, 307), path
                location = answer.headers["location"].removeprefix("https://testserver")
                assert location.startswith("/admin/jobs/"), path
            page = await client.get("/admin/jobs/login")
            signed = await client.post(
                "/admin/jobs/login", data={"password": PASSWORD, "csrf": csrf_of(page.text)}
            )
            assert signed.headers["location"] == "/admin/jobs/"
            overview = await client.get("/admin/jobs/")
            assert overview.status_code == 200 and 'href="/admin/jobs/jobs"' in overview.text
            form = await client.get("/admin/jobs/push")
            assert "send_welcome" in form.text
            pushed = await client.post(
                "/admin/jobs/push",
                data={
                    "csrf": csrf_of(form.text),
                    "func": example.send_welcome.job.func,
                    "kwargs": '{"to": "new@example.com"}',
                },
            )
            assert pushed.status_code == 303
            job_id = pushed.headers["location"].rsplit("/", 1)[1]
            assert pushed.headers["location"] == f"/admin/jobs/jobs/{job_id}"
            job = await example.chancy.get_job(job_id)
            assert job is not None and job.state is QueuedJob.State.PENDING
            assert (job.queue, job.max_attempts, job.kwargs) == (
                "emails",
                3,
                {"to": "new@example.com"},
            )
        async with client_for(example.app) as staff:  # the app's own login, via auth=
            answer = await staff.get("/admin/jobs/workers", headers={"x-staff-user": "kim"})
            assert answer.status_code == 200 and "kim" in answer.text
