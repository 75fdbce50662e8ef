"""The FastAPI example: the user and the job commit together or roll back together, and
a worker runs the committed job."""

from __future__ import annotations

from typing import Any

import anyio
import httpx2
import pytest
from fastapi.testclient import TestClient
from fastapi_example import create_app, send_welcome

from chancy_core import Chancy, QueuedJob
from chancy_core.errors import ConfigurationError

pytestmark = [pytest.mark.db]


async def count(chancy: Chancy, table: str) -> int:
    """Rows in the app's ``users`` or chancy's jobs table."""
    name = "users" if table == "users" else f"{chancy.schema.prefix}jobs"
    async with chancy.pool.connection() as conn:
        cur = await conn.execute(f"SELECT count(*) FROM {name}")  # noqa: S608 - fixed names
        row = await cur.fetchone()
        assert row is not None
        return int(row[0])


def test_the_lifespan_opens_and_closes_the_chancy_app(database: str) -> None:
    app = create_app(database)
    with TestClient(app) as client:
        chancy: Chancy = app.state.chancy
        assert chancy.pool is not None  # opened by the lifespan
        response = client.post("/signup", json={"email": "ann@example.com"})
        assert response.status_code == 201
        job = chancy.sync_get_job(response.json()["job"])
        assert job is not None and job.func == send_welcome.job.func
        assert job.kwargs == {"email": "ann@example.com"}
    with pytest.raises(ConfigurationError, match="not open"):
        chancy.pool  # noqa: B018 - closed on shutdown


@pytest.mark.anyio
async def test_a_failed_request_rolls_back_its_job_and_a_committed_one_runs(
    database: str, run_worker: Any
) -> None:
    app = create_app(database)
    with anyio.fail_after(60):
        async with app.router.lifespan_context(app):
            chancy: Chancy = app.state.chancy
            transport = httpx2.ASGITransport(app=app)
            async with httpx2.AsyncClient(transport=transport, base_url="http://test") as client:
                first = await client.post("/signup", json={"email": "bob@example.com"})
                assert first.status_code == 201
                jobs, users = await count(chancy, "jobs"), await count(chancy, "users")
                # The same e-mail again: the insert fails after the job was pushed.
                again = await client.post("/signup", json={"email": "bob@example.com"})
                assert again.status_code == 409
                assert (await count(chancy, "jobs"), await count(chancy, "users")) == (
                    jobs,
                    users,
                )
            async with run_worker(chancy):
                done: QueuedJob = await chancy.wait_for_job(first.json()["job"], timeout=30)
    assert done.state is QueuedJob.State.SUCCEEDED
