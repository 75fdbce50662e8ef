"""Each security property of the dashboard, tried the way an attacker would."""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import MutableMapping
from typing import Any

import anyio
import httpx
import pytest
from chancy_plugin_dashboard import Dashboard, hash_password, verify_password
from dashboard_helpers import (
    PASSWORD,
    PASSWORD_HASH,
    SECRET,
    MakeDashboard,
    client_for,
    csrf_of,
    login,
)
from itsdangerous import URLSafeTimedSerializer
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.routing import Mount

from chancy_core import Chancy, Job, QueuedJob
from chancy_core.errors import ConfigurationError

pytestmark = [pytest.mark.anyio, pytest.mark.db]

PAGES = [
    "/",
    "/jobs",
    "/queues",
    "/workers",
    "/push",
    "/cron",
    "/charts",
    "/workflows",
    "/static/dashboard.js",
]
WORKFLOW_ID = "12345678-1234-5678-1234-567812345678"


async def a_job(app: Chancy, **kwargs: Any) -> str:
    ref = await app.push(Job(func="myapp.tasks.send", kwargs=kwargs or {"to": "a@example.com"}))
    return ref.identifier


# --- authentication -------------------------------------------------------------------------------


async def test_nothing_is_served_without_signing_in(
    app: Chancy, make_dashboard: MakeDashboard
) -> None:
    job_id = await a_job(app)
    async with client_for(make_dashboard(allowed_functions=["myapp.tasks.send"])) as client:
        for path in [*PAGES, f"/jobs/{job_id}", "/events?view=overview", "/no/such/page"]:
            answer = await client.get(path)
            assert answer.status_code == 303, path
            assert answer.headers["location"].startswith("/login"), path
            assert "myapp.tasks" not in answer.text
        for path in [
            f"/jobs/{job_id}/cancel",
            "/queues/default/pause",
            "/push",
            "/logout",
            f"/workflows/{WORKFLOW_ID}/cancel",
        ]:
            answer = await client.post(path, data={"csrf": "x"})
            assert answer.status_code == 401, path
    found = await app.get_job(job_id)
    assert found is not None and found.state is QueuedJob.State.PENDING
    assert (await app.get_queue("default")).state.value == "active"  # type: ignore[union-attr]


async def test_a_dashboard_without_authentication_is_refused(app: Chancy) -> None:
    with pytest.raises(ConfigurationError, match="without authentication"):
        Dashboard(app, secret_key=SECRET)
    with pytest.raises(ConfigurationError, match="hash-password"):
        Dashboard(app, password_hash="plain text", secret_key=SECRET)


async def test_the_password_is_checked_and_stored_hashed(
    app: Chancy, make_dashboard: MakeDashboard, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert PASSWORD not in PASSWORD_HASH and PASSWORD_HASH.startswith("scrypt$")
    assert hash_password(PASSWORD) != PASSWORD_HASH  # salted
    compared: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    assert verify_password(PASSWORD, PASSWORD_HASH)
    assert not verify_password(PASSWORD + " ", PASSWORD_HASH)
    assert len(compared) == 2  # derived keys compared in constant time, never with ==

    async with client_for(make_dashboard()) as client:
        wrong = await login(client, password="guess")
        assert wrong.status_code == 401 and "Wrong password" in wrong.text
        assert (await client.get("/")).status_code == 303
        right = await login(client)
        assert right.status_code == 303 and right.headers["location"] == "/"
        assert (await client.get("/workers")).status_code == 200


async def test_an_auth_callback_decides_who_gets_in(app: Chancy) -> None:
    def sync_auth(request: Request) -> str | None:
        return "ops" if request.headers.get("x-token") == "let-me-in" else None

    async def async_auth(request: Request) -> str | None:
        await anyio.sleep(0)
        return sync_auth(request)

    job_id = await a_job(app)
    for auth in (sync_auth, async_auth):
        async with client_for(Dashboard(app, auth=auth, secret_key=SECRET)) as client:
            refused = await client.get(f"/jobs/{job_id}")
            assert refused.status_code == 401 and "myapp.tasks" not in refused.text
            assert (await client.get("/login")).status_code == 404  # no password form
            served = await client.get(f"/jobs/{job_id}", headers={"x-token": "let-me-in"})
            assert served.status_code == 200 and "myapp.tasks.send" in served.text
            assert "ops" in served.text


async def test_a_redirect_after_login_never_leaves_the_dashboard(
    make_dashboard: MakeDashboard,
) -> None:
    async with client_for(make_dashboard()) as client:
        for target in ("//evil.example/x", "https://evil.example/", "javascript:alert(1)"):
            page = await client.get("/login", params={"next": target})
            answer = await client.post(
                "/login",
                params={"next": target},
                data={"password": PASSWORD, "csrf": csrf_of(page.text)},
            )
            assert answer.status_code == 303 and answer.headers["location"] == "/"
            await client.post("/logout", data={"csrf": csrf_of((await client.get("/")).text)})


# --- the session cookie ---------------------------------------------------------------------------


def cookie_header(answer: httpx.Response) -> str:
    (header,) = [v for k, v in answer.headers.multi_items() if k == "set-cookie"]
    return header


async def test_the_session_cookie_is_signed_httponly_samesite_and_secure(
    make_dashboard: MakeDashboard,
) -> None:
    async with client_for(make_dashboard()) as client:
        header = cookie_header(await login(client))
        assert header.startswith("chancy_dashboard=")
        attributes = {part.strip().split("=")[0] for part in header.split(";")[1:]}
        assert {"HttpOnly", "Secure", "Path", "Max-Age", "SameSite"} <= attributes
        assert "SameSite=Lax" in header and "Path=/;" in header
    async with client_for(make_dashboard(secure_cookies=False), "http://localhost") as client:
        header = cookie_header(await login(client))
        assert "Secure" not in header and "HttpOnly" in header


async def test_a_forged_or_expired_session_is_not_signed_in(
    app: Chancy, make_dashboard: MakeDashboard
) -> None:
    forged = URLSafeTimedSerializer("not the key" * 4, salt="chancy-dashboard").dumps(
        {"c": "x" * 43, "u": "admin", "f": []}
    )
    async with client_for(make_dashboard()) as client:
        client.cookies.set("chancy_dashboard", forged)
        assert (await client.get("/workers")).status_code == 303
        client.cookies.set("chancy_dashboard", "garbage")
        assert (await client.get("/workers")).status_code == 303
    async with client_for(make_dashboard(session_max_age=1)) as client:
        assert (await login(client)).status_code == 303
        assert (await client.get("/workers")).status_code == 200
        time.sleep(2.1)  # itsdangerous counts whole seconds
        assert (await client.get("/workers")).status_code == 303


async def test_signing_in_and_out_renews_the_session(make_dashboard: MakeDashboard) -> None:
    async with client_for(make_dashboard()) as client:
        before = csrf_of((await client.get("/login")).text)
        await client.post("/login", data={"password": PASSWORD, "csrf": before})
        after = csrf_of((await client.get("/workers")).text)
        assert after != before  # a token planted before login is worthless after it
        refused = await client.post("/logout", data={"csrf": before})
        assert refused.status_code == 403
        out = await client.post("/logout", data={"csrf": after})
        assert out.status_code == 303 and out.headers["location"] == "/login"
        assert (await client.get("/workers")).status_code == 303


# --- CSRF and methods -----------------------------------------------------------------------------


async def test_a_post_without_the_csrf_token_is_refused(
    app: Chancy, signed_in: httpx.AsyncClient
) -> None:
    job_id = await a_job(app)
    page = await signed_in.get(f"/jobs/{job_id}")
    token = csrf_of(page.text)
    path = f"/jobs/{job_id}/cancel"
    for data in ({"queue": "x"}, {"csrf": ""}, {"csrf": token[:-1]}, {"csrf": token + "x"}):
        answer = await signed_in.post(path, data=data)
        assert answer.status_code == 403 and "security token" in answer.text
    as_json = await signed_in.post(path, json={"csrf": token})
    assert as_json.status_code == 415
    found = await app.get_job(job_id)
    assert found is not None and found.state is QueuedJob.State.PENDING

    other = URLSafeTimedSerializer(SECRET, salt="chancy-dashboard")
    signed_in.cookies.set("chancy_dashboard", other.dumps({"c": "y" * 43, "u": "admin", "f": []}))
    assert (
        await signed_in.post(path, data={"csrf": token})
    ).status_code == 403  # another session's

    signed_in.cookies.clear()
    assert (await login(signed_in)).status_code == 303
    token = csrf_of((await signed_in.get(f"/jobs/{job_id}")).text)
    done = await signed_in.post(path, data={"csrf": token})
    assert done.status_code == 303
    found = await app.get_job(job_id)
    assert found is not None and found.state is QueuedJob.State.FAILED


async def test_no_state_changes_on_get(app: Chancy, signed_in: httpx.AsyncClient) -> None:
    job_id = await a_job(app)
    for path in (
        f"/jobs/{job_id}/cancel",
        f"/jobs/{job_id}/delete",
        "/queues/default/pause",
        "/jobs/retry",
        "/logout",
        "/cron/x/remove",
        f"/workflows/{WORKFLOW_ID}/cancel",
    ):
        answer = await signed_in.get(path)
        assert answer.status_code in (404, 405), path
    found = await app.get_job(job_id)
    assert found is not None and found.state is QueuedJob.State.PENDING
    assert (await app.get_queue("default")).state.value == "active"  # type: ignore[union-attr]
    assert (await signed_in.get("/workers")).status_code == 200  # still signed in


async def test_websockets_are_refused_before_anything_runs(make_dashboard: MakeDashboard) -> None:
    sent: list[MutableMapping[str, Any]] = []

    async def receive() -> MutableMapping[str, Any]:
        return {"type": "websocket.connect"}

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "websocket", "path": "/events", "root_path": "", "headers": []}
    await make_dashboard()(scope, receive, send)
    assert sent == [{"type": "websocket.close", "code": 1008}]


async def test_a_form_too_large_is_refused(app: Chancy, signed_in: httpx.AsyncClient) -> None:
    job_id = await a_job(app)
    token = csrf_of((await signed_in.get(f"/jobs/{job_id}")).text)
    answer = await signed_in.post(
        f"/jobs/{job_id}/cancel", data={"csrf": token, "pad": "x" * 300_000}
    )
    assert answer.status_code == 413


# --- read-only ------------------------------------------------------------------------------------


async def test_read_only_shows_everything_and_changes_nothing(
    app: Chancy, make_dashboard: MakeDashboard
) -> None:
    job_id = await a_job(app)
    dashboard = make_dashboard(read_only=True, allowed_functions=["myapp.tasks.send"])
    async with client_for(dashboard) as client:
        assert (await login(client)).status_code == 303  # signing in still works
        page = await client.get(f"/jobs/{job_id}")
        assert page.status_code == 200 and "read-only" in page.text
        assert "/cancel" not in page.text  # no action is offered
        token = csrf_of(page.text)
        for path in (f"/jobs/{job_id}/cancel", "/queues/default/pause", "/push"):
            answer = await client.post(path, data={"csrf": token, "func": "myapp.tasks.send"})
            assert answer.status_code == 403 and "read-only" in answer.text, path
    found = await app.get_job(job_id)
    assert found is not None and found.state is QueuedJob.State.PENDING
    assert (await app.get_queue("default")).state.value == "active"  # type: ignore[union-attr]


# --- escaping and errors --------------------------------------------------------------------------

PAYLOAD = "<script>alert('x')</script><img src=x onerror=alert(1)>"


async def test_user_controlled_text_is_escaped(app: Chancy, signed_in: httpx.AsyncClient) -> None:
    job_id = await a_job(app, html=PAYLOAD)
    page = await signed_in.get(f"/jobs/{job_id}")
    assert page.status_code == 200
    assert "<script>alert" not in page.text and "<img src=x" not in page.text
    assert "&lt;script&gt;alert(" in page.text
    # A message echoing form input is escaped too.
    token = csrf_of(page.text)
    answer = await signed_in.post(f"/jobs/{job_id}/requeue", data={"csrf": token, "queue": PAYLOAD})
    assert answer.status_code == 303
    shown = await signed_in.get(answer.headers["location"])
    assert "<script>alert" not in shown.text and "&lt;script&gt;" in shown.text


async def test_workflow_text_is_escaped_and_cancel_needs_the_token(
    app: Chancy, signed_in: httpx.AsyncClient
) -> None:
    from chancy_plugin_workflow import Workflow, get_workflow, submit_workflow

    flow = Workflow(PAYLOAD)
    flow.add("only", Job(func="myapp.tasks.send", kwargs={"html": PAYLOAD}, queue="emails"))
    wid = await submit_workflow(app, flow)
    info = await get_workflow(app, wid)
    assert info.steps["only"].job is not None
    pages = [
        await signed_in.get("/workflows"),
        await signed_in.get(f"/workflows/{wid}"),
        await signed_in.get(f"/jobs/{info.steps['only'].job.identifier}"),
        await signed_in.get("/workflows", params={"state": PAYLOAD}),
        await signed_in.get(f"/workflows/{wid}", params={"step_state": PAYLOAD}),
    ]
    token = csrf_of(pages[1].text)
    for data in ({}, {"csrf": ""}, {"csrf": token[:-1]}):
        refused = await signed_in.post(f"/workflows/{wid}/cancel", data={**data, "confirm": "yes"})
        assert refused.status_code == 403 and "security token" in refused.text
    assert (await get_workflow(app, wid)).state.value == "running"
    pages.append(await signed_in.post(f"/workflows/{wid}/cancel", data={"csrf": token}))
    for page in pages:
        assert page.status_code == 200, page.url
        assert "<script>alert" not in page.text and "<img src=x" not in page.text, page.url
    assert "&lt;script&gt;alert(" in pages[0].text and "&lt;script&gt;alert(" in pages[1].text
    assert "&lt;script&gt;alert(" in pages[-1].text  # the confirmation names it, escaped


async def test_every_answer_forbids_inline_scripts_and_framing(
    app: Chancy, signed_in: httpx.AsyncClient
) -> None:
    job_id = await a_job(app)
    for path in (f"/jobs/{job_id}", "/login", "/no/such/page", "/static/style.css"):
        answer = await signed_in.get(path)
        policy = answer.headers["content-security-policy"]
        assert "script-src 'self'" in policy and "frame-ancestors 'none'" in policy
        assert "unsafe-inline" not in policy
        assert answer.headers["x-frame-options"] == "DENY"
        assert answer.headers["x-content-type-options"] == "nosniff"


async def test_an_error_shows_a_reference_and_no_internals(
    app: Chancy,
    signed_in: httpx.AsyncClient,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def broken(ref: object) -> None:
        raise RuntimeError("password=hunter2 at postgresql://db.internal/app")

    job_id = await a_job(app)
    monkeypatch.setattr(app, "get_job", broken)
    with caplog.at_level(logging.ERROR, logger="chancy_plugin_dashboard"):
        answer = await signed_in.get(f"/jobs/{job_id}")
    assert answer.status_code == 500
    assert "hunter2" not in answer.text and "Traceback" not in answer.text
    assert "RuntimeError" not in answer.text and "db.internal" not in answer.text
    assert "reference" in answer.text
    (record,) = [r for r in caplog.records if r.exc_info]
    assert record.getMessage().split("reference ")[1].rstrip(")") in answer.text
    monkeypatch.undo()
    missing = await signed_in.get("/jobs/00000000-0000-0000-0000-000000000000")
    assert missing.status_code == 404 and "Nothing here" in missing.text
    not_an_id = await signed_in.get("/jobs/1%20OR%201=1")
    assert not_an_id.status_code == 404


# --- mounting -------------------------------------------------------------------------------------


async def test_mounted_under_a_path_the_cookie_and_links_stay_under_it(
    app: Chancy, make_dashboard: MakeDashboard
) -> None:
    job_id = await a_job(app)
    outer = Starlette(routes=[Mount("/admin/jobs", app=make_dashboard())])
    async with client_for(outer) as client:
        first = await client.get("/admin/jobs/workers")
        assert first.status_code == 303
        assert first.headers["location"] == "/admin/jobs/login?next=%2Fworkers"
        answer = await login(client, "/admin/jobs")
        assert answer.status_code == 303 and answer.headers["location"] == "/admin/jobs/"
        assert "Path=/admin/jobs;" in cookie_header(answer)
        page = await client.get(f"/admin/jobs/jobs/{job_id}")
        assert page.status_code == 200
        assert 'href="/admin/jobs/static/style.css"' in page.text
        assert f'action="/admin/jobs/jobs/{job_id}/cancel"' in page.text
        done = await client.post(
            f"/admin/jobs/jobs/{job_id}/cancel", data={"csrf": csrf_of(page.text)}
        )
        assert done.status_code == 303 and done.headers["location"] == f"/admin/jobs/jobs/{job_id}"
    found = await app.get_job(job_id)
    assert found is not None and found.state is QueuedJob.State.FAILED


async def test_an_unreachable_database_gets_the_generic_error_page(
    caplog: pytest.LogCaptureFixture,
) -> None:
    down = Chancy("postgresql://nobody:secret-pw@127.0.0.1:1/nowhere", connect_timeout=2)
    dashboard = Dashboard(down, password_hash=PASSWORD_HASH, secret_key=SECRET)
    async with client_for(dashboard) as client:
        anonymous = await client.get("/jobs")
        assert anonymous.status_code == 303  # refused before the database is touched
        with caplog.at_level(logging.ERROR, logger="chancy_plugin_dashboard"):
            page = await client.get("/login")
        assert page.status_code == 500 and "reference" in page.text
        assert "secret-pw" not in page.text and "nowhere" not in page.text
    assert any(r.exc_info for r in caplog.records)
