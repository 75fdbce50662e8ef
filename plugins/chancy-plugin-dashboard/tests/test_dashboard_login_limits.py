"""The built-in login's attempt limits: per client, in total, 429 with the time to wait."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import pytest
from chancy_plugin_dashboard import Dashboard, LoginLimits
from chancy_plugin_dashboard.security import LoginThrottle
from dashboard_helpers import PASSWORD, MakeDashboard, csrf_of

from chancy_core.errors import ConfigurationError

pytestmark = [pytest.mark.anyio, pytest.mark.db]


class Clock:
    """A clock the test moves by hand (no sleeping, nothing timing-dependent)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def throttled(make_dashboard: MakeDashboard, limits: LoginLimits) -> tuple[Dashboard, Clock]:
    clock = Clock()
    dashboard = make_dashboard()
    dashboard.login_throttle = LoginThrottle(limits, clock=clock)
    return dashboard, clock


@asynccontextmanager
async def client_from(dashboard: Dashboard, address: str) -> AsyncIterator[httpx.AsyncClient]:
    """A client whose requests come from ``address`` (what the limits count by)."""
    transport = httpx.ASGITransport(app=dashboard, client=(address, 40000))
    async with httpx.AsyncClient(transport=transport, base_url="https://testserver") as client:
        yield client


async def attempt(client: httpx.AsyncClient, password: str) -> httpx.Response:
    page = await client.get("/login")
    assert page.status_code == 200
    return await client.post("/login", data={"password": password, "csrf": csrf_of(page.text)})


async def test_a_client_past_its_limit_gets_429_and_the_time_to_wait(
    make_dashboard: MakeDashboard, monkeypatch: pytest.MonkeyPatch
) -> None:
    dashboard, clock = throttled(make_dashboard, LoginLimits(per_client=3, window=60))
    import chancy_plugin_dashboard.views as views
    from chancy_plugin_dashboard import verify_password

    checked: list[str] = []

    def spy(password: str, encoded: str) -> bool:
        checked.append(password)
        return verify_password(password, encoded)

    monkeypatch.setattr(views, "verify_password", spy)
    async with client_from(dashboard, "203.0.113.7") as guesser:
        for guess in ("123456", "password", "letmein"):
            wrong = await attempt(guesser, guess)
            assert wrong.status_code == 401 and "Wrong password." in wrong.text
            clock.now += 1
        # The fourth attempt is refused before the password is looked at, right or not.
        refused = await attempt(guesser, PASSWORD)
        assert refused.status_code == 429
        assert "Too many sign-in attempts: try again in 57 s." in refused.text
        assert refused.headers["retry-after"] == "57"
        assert (await guesser.get("/")).status_code == 303  # not signed in
        assert checked == ["123456", "password", "letmein"]
        # Another client is not held back by this one.
        async with client_from(dashboard, "198.51.100.2") as other:
            assert (await attempt(other, PASSWORD)).status_code == 303
            assert (await other.get("/")).status_code == 200
        clock.now += 30
        later = await attempt(guesser, PASSWORD)
        assert later.status_code == 429 and "try again in 27 s" in later.text
        clock.now += 27  # the first guess ages out of the window: one attempt is free
        signed_in = await attempt(guesser, PASSWORD)
        assert signed_in.status_code == 303
        assert (await guesser.get("/")).status_code == 200


async def test_signing_in_forgets_the_clients_attempts(make_dashboard: MakeDashboard) -> None:
    dashboard, _ = throttled(make_dashboard, LoginLimits(per_client=3, window=60))
    async with client_from(dashboard, "203.0.113.8") as client:
        for _ in range(3):  # 2 typos and a success, three times: 9 attempts, never refused
            assert (await attempt(client, "typo")).status_code == 401
            assert (await attempt(client, "typo")).status_code == 401
            assert (await attempt(client, PASSWORD)).status_code == 303
            page = await client.get("/workers")
            assert (
                await client.post("/logout", data={"csrf": csrf_of(page.text)})
            ).status_code == 303


async def test_the_total_limit_holds_back_every_client(make_dashboard: MakeDashboard) -> None:
    dashboard, clock = throttled(make_dashboard, LoginLimits(per_client=5, total=4, window=100))
    for n in range(4):  # a guessing campaign from four addresses, one guess each
        async with client_from(dashboard, f"192.0.2.{n}") as guesser:
            assert (await attempt(guesser, f"guess {n}")).status_code == 401
    async with client_from(dashboard, "198.51.100.9") as user:
        refused = await attempt(user, PASSWORD)
        assert refused.status_code == 429
        assert "try again in 100 s" in refused.text
        clock.now += 100
        assert (await attempt(user, PASSWORD)).status_code == 303


def test_the_throttle_forgets_the_oldest_clients_and_checks_its_limits() -> None:
    clock = Clock()
    throttle = LoginThrottle(
        LoginLimits(per_client=1, total=1000, window=60, max_clients=2), clock=clock
    )
    assert throttle.attempt("a") is None
    assert throttle.attempt("a") == 60
    assert throttle.attempt("b") is None
    assert throttle.attempt("c") is None  # "a" is forgotten: two clients are kept
    assert throttle.attempt("a") is None
    assert throttle.attempt("c") == 60
    for bad in (
        {"per_client": 0},
        {"total": 0},
        {"window": 0},
        {"max_clients": 0},
    ):
        with pytest.raises(ConfigurationError, match="login_limits"):
            LoginLimits(**bad)


async def test_the_default_limits_apply_without_configuration(
    make_dashboard: MakeDashboard,
) -> None:
    dashboard = make_dashboard()
    assert dashboard.login_throttle.limits == LoginLimits(per_client=5, total=50, window=300)
    async with client_from(dashboard, "203.0.113.9") as guesser:
        for _ in range(5):
            assert (await attempt(guesser, "nope")).status_code == 401
        refused = await attempt(guesser, PASSWORD)
        assert refused.status_code == 429
        assert 200 <= int(refused.headers["retry-after"]) <= 300
