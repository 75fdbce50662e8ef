"""Flask and chancy's sync API: an order and its receipt job commit together, or not at all.

Run it with ``CHANCY_DSN=postgresql://... flask --app flask_example run`` and a worker
(``chancy worker start --import flask_example --queue receipts``).

* The app keeps its own psycopg pool for its tables; chancy pushes on the request's
  connection with ``sync_push_many_ex``, inside the request's transaction.
* ``GET /orders/<job>`` reads the job back with the sync API.
"""

from __future__ import annotations

import os
from typing import Any

import psycopg
from flask import Flask, abort, request
from psycopg_pool import ConnectionPool

from chancy_core import Chancy, Queue, job


@job(queue="receipts", max_attempts=3)
def send_receipt(order_id: int) -> None:
    """The background job: e-mail the receipt (here: only pretend)."""


def create_app(dsn: str | None = None) -> Flask:
    """The web app; ``dsn=None`` takes ``CHANCY_DSN``."""
    dsn = dsn or os.environ["CHANCY_DSN"]
    chancy = Chancy(dsn)
    pool = ConnectionPool(dsn, min_size=1, max_size=4, open=True)
    with pool.connection() as conn:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS stock (item text PRIMARY KEY,"
            " available integer NOT NULL CHECK (available >= 0));"
            "CREATE TABLE IF NOT EXISTS orders (id bigserial PRIMARY KEY,"
            " item text NOT NULL, quantity integer NOT NULL)"
        )
    chancy.sync_declare(Queue("receipts", executor="thread", concurrency=4))

    app = Flask(__name__)
    app.extensions["chancy"] = chancy
    app.extensions["pool"] = pool

    @app.post("/orders")
    def create_order() -> tuple[dict[str, Any], int]:
        item, quantity = request.json["item"], int(request.json["quantity"])
        try:
            # One transaction: commits when the block ends, rolls back if anything raises.
            with pool.connection() as conn, conn.transaction():
                cur = conn.execute(
                    "INSERT INTO orders (item, quantity) VALUES (%s, %s) RETURNING id",
                    (item, quantity),
                )
                (order_id,) = cur.fetchone() or (None,)
                job = send_receipt.job.with_kwargs(order_id=order_id)
                (ref,) = chancy.sync_push_many_ex(conn, [job])
                # Oversold: the CHECK fails, and the order and its job roll back together.
                conn.execute(
                    "UPDATE stock SET available = available - %s WHERE item = %s",
                    (quantity, item),
                )
        except psycopg.errors.CheckViolation:
            abort(409, f"not enough {item} in stock")
        return {"order": order_id, "job": str(ref)}, 201

    @app.get("/orders/<ref>")
    def order_job(ref: str) -> dict[str, Any]:
        found = chancy.sync_get_job(ref)
        if found is None:
            abort(404)
        return {"state": found.state.value, "attempts": found.attempts}

    return app
