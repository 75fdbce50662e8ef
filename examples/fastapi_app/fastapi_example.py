"""FastAPI and chancy: a signup and its welcome job commit together, or not at all.

Run it with ``CHANCY_DSN=postgresql://... uvicorn fastapi_example:app`` and a worker
(``chancy worker start --import fastapi_example --queue emails``).

* The chancy app is opened in the FastAPI lifespan and closed when the server stops.
* The request's own transaction (a connection from chancy's pool, which the app
  shares for its own tables) inserts the user and pushes the job with
  ``push_many_ex``: if the insert fails, the job is rolled back with it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import psycopg
from fastapi import FastAPI, HTTPException, Request
from pydantic import BaseModel

from chancy_core import Chancy, Queue, job


@job(queue="emails", max_attempts=3)
async def send_welcome(email: str) -> None:
    """The background job: send the welcome e-mail (here: only pretend)."""


class Signup(BaseModel):
    """The request body of ``POST /signup``."""

    email: str


def create_app(dsn: str | None = None) -> FastAPI:
    """The web app; ``dsn=None`` takes ``CHANCY_DSN``."""
    chancy = Chancy(dsn)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with chancy:  # opens the pool; closed on shutdown
            await chancy.migrate()  # in production: `chancy migrate` at deploy time
            await chancy.declare(Queue("emails", concurrency=5))
            async with chancy.pool.connection() as conn:
                await conn.execute(
                    "CREATE TABLE IF NOT EXISTS users (email text PRIMARY KEY, created_at"
                    " timestamptz NOT NULL DEFAULT now())"
                )
            app.state.chancy = chancy
            yield

    app = FastAPI(lifespan=lifespan)

    @app.post("/signup", status_code=201)
    async def signup(body: Signup, request: Request) -> dict[str, str]:
        chancy: Chancy = request.app.state.chancy
        async with chancy.pool.connection() as conn:
            try:
                async with conn.transaction():  # commits on success, rolls back on error
                    # The job first, to show that a later failure takes it back too.
                    (ref,) = await chancy.push_many_ex(
                        conn, [send_welcome.job.with_kwargs(email=body.email)]
                    )
                    await conn.execute("INSERT INTO users (email) VALUES (%s)", (body.email,))
            except psycopg.errors.UniqueViolation:
                raise HTTPException(409, f"{body.email} has already signed up") from None
        return {"job": str(ref)}

    return app


app = create_app()
