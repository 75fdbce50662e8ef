"""The Flask example: an order and its job commit together or roll back together, and a
worker runs the committed job."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anyio
import pytest
from flask import Flask
from flask_example import create_app, send_receipt

from chancy_core import Chancy, QueuedJob

pytestmark = [pytest.mark.db]


@pytest.fixture
def app(database: str) -> Iterator[Flask]:
    """The example app on a fresh database, with 5 apples in stock."""
    app = create_app(database)
    with app.extensions["pool"].connection() as conn:
        conn.execute("INSERT INTO stock VALUES ('apple', 5)")
    yield app
    app.extensions["chancy"].sync_close()
    app.extensions["pool"].close()


def counts(app: Flask) -> tuple[int, int, int]:
    """Orders, chancy jobs, and apples left."""
    prefix = app.extensions["chancy"].schema.prefix
    with app.extensions["pool"].connection() as conn:
        row = conn.execute(
            f"SELECT (SELECT count(*) FROM orders), (SELECT count(*) FROM {prefix}jobs),"  # noqa: S608
            " (SELECT available FROM stock WHERE item = 'apple')"
        ).fetchone()
    assert row is not None
    return row[0], row[1], row[2]


def test_an_order_and_its_job_commit_together(app: Flask) -> None:
    response = app.test_client().post("/orders", json={"item": "apple", "quantity": 2})
    assert response.status_code == 201
    assert counts(app) == (1, 1, 3)
    job = app.extensions["chancy"].sync_get_job(response.json["job"])
    assert job.func == send_receipt.job.func
    assert job.kwargs == {"order_id": response.json["order"]}


def test_an_oversold_order_rolls_back_with_its_job(app: Flask) -> None:
    response = app.test_client().post("/orders", json={"item": "apple", "quantity": 6})
    assert response.status_code == 409
    assert counts(app) == (0, 0, 5)


@pytest.mark.anyio
async def test_a_worker_runs_the_committed_job(app: Flask, database: str, run_worker: Any) -> None:
    client = app.test_client()
    ref = client.post("/orders", json={"item": "apple", "quantity": 1}).json["job"]
    assert client.get(f"/orders/{ref}").json == {"state": "pending", "attempts": 0}
    with anyio.fail_after(60):
        async with Chancy(database) as chancy, run_worker(chancy):
            done = await chancy.wait_for_job(ref, timeout=30)
    assert done.state is QueuedJob.State.SUCCEEDED
    assert client.get(f"/orders/{ref}").json == {"state": "succeeded", "attempts": 1}
    assert client.get("/orders/0190f7d2-0000-7000-8000-000000000000").status_code == 404
