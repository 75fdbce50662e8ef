"""The dashboard's ASGI application: :class:`Dashboard`."""

from __future__ import annotations

import logging
import secrets
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import jinja2
from markupsafe import Markup
from starlette.exceptions import HTTPException
from starlette.middleware.exceptions import ExceptionMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import BaseRoute, Mount, Route, Router
from starlette.staticfiles import StaticFiles
from starlette.types import Receive, Scope, Send

from chancy_core import Chancy, Job
from chancy_core.errors import ConfigurationError
from chancy_plugin_dashboard.security import (
    CSRF_FIELD,
    AuthCallback,
    Guard,
    GuardConfig,
    LoginLimits,
    LoginThrottle,
    _parse_hash,
    base_path,
)

__all__ = ["Dashboard"]

log = logging.getLogger(__name__)

HERE = Path(__file__).parent


def _format_time(value: datetime | None) -> str:
    if value is None:
        return "-"
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _format_age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = max(0.0, float(seconds))
    if seconds < 60:
        return f"{seconds:.0f}s" if seconds >= 10 else f"{seconds:.1f}s"
    if seconds < 3600:
        return f"{seconds / 60:.0f}m {seconds % 60:.0f}s"
    if seconds < 86400:
        return f"{seconds / 3600:.0f}h {seconds % 3600 / 60:.0f}m"
    return f"{seconds / 86400:.1f}d"


def _since(value: datetime | None) -> str:
    if value is None:
        return "-"
    return _format_age((datetime.now(UTC) - value).total_seconds()) + " ago"


class Dashboard:
    """The chancy dashboard, an ASGI application.

    Mount it under any path of your own Starlette or FastAPI app::

        dashboard = Dashboard(chancy, password_hash=HASH, secret_key=KEY)
        app = Starlette(routes=[Mount("/admin/jobs", app=dashboard)])

    or serve it alone with ``chancy dashboard --dashboard myproject.admin:dashboard``.
    Nothing is served without authentication: give ``auth``, ``password_hash``, or both.

    :param chancy: the app whose jobs are shown; opened on the first request if it is
        not open yet (and closed at shutdown when served alone).
    :param auth: ``auth(request) -> identity | None`` (may be ``async``): your own
        authentication, e.g. reading your app's session. A request it returns ``None``
        for is refused (or sent to the password form, if ``password_hash`` is given).
    :param password_hash: enables the built-in login form; make it with
        :func:`~chancy_plugin_dashboard.hash_password` or ``chancy dashboard --hash-password``.
    :param login_limits: how many password attempts are accepted per client and in total
        (:class:`~chancy_plugin_dashboard.LoginLimits`; by default 5 per client and 50
        failed in total per 5 minutes); past them the form answers 429.
    :param secret_key: signs the session cookie; give the same one to every process
        serving the dashboard. By default a random key per process (sessions end with it).
    :param secure_cookies: mark the session cookie ``Secure`` (HTTPS only). Turn off
        only for plain-HTTP development on localhost.
    :param read_only: show everything, change nothing (every action is refused).
    :param allowed_functions: the functions a user may push from the dashboard (and
        schedule with cron): names, ``@job`` functions or :class:`Job` templates.
    :param title: shown in the header and the page titles.
    :param session_max_age: seconds a login lasts.
    :param live_interval: seconds between two live updates of a page (each reads what
        the page shows again: the overview and queues pages count every job by queue
        and state, so keep it a few seconds on a large table).
    :param events_max_seconds: an event stream ends after this long (the browser
        reconnects), so a server can shut down without waiting for it.
    :param extra_routes: more Starlette routes served behind the same authentication.
    :param metrics_endpoint: with chancy-plugin-metrics, serve its Prometheus endpoint at
        ``/metrics`` (behind the same authentication: let your ``auth`` callback accept
        the scraper's credential, e.g. a bearer token).
    """

    def __init__(
        self,
        chancy: Chancy,
        *,
        auth: AuthCallback | None = None,
        password_hash: str | None = None,
        login_limits: LoginLimits | None = None,
        secret_key: str | bytes | None = None,
        secure_cookies: bool = True,
        read_only: bool = False,
        allowed_functions: Iterable[object] = (),
        title: str = "Chancy",
        session_max_age: int = 12 * 3600,
        live_interval: float = 5.0,
        events_max_seconds: float = 300.0,
        extra_routes: Sequence[BaseRoute] = (),
        metrics_endpoint: bool = True,
    ) -> None:
        if not isinstance(chancy, Chancy):
            raise ConfigurationError(
                f"Dashboard(chancy) takes a Chancy app, not {type(chancy).__name__}"
            )
        if auth is None and password_hash is None:
            raise ConfigurationError(
                "the dashboard serves nothing without authentication: give"
                " auth=callback (your own) or password_hash=... (from"
                " `chancy dashboard --hash-password`), or both"
            )
        if auth is not None and not callable(auth):
            raise ConfigurationError("auth must be a callable: auth(request) -> identity | None")
        if password_hash is not None:
            _parse_hash(password_hash)
        if secret_key is None:
            log.warning(
                "dashboard: no secret_key given; using a random one (sessions end when the"
                " process does, and are not shared between processes)"
            )
            secret_key = secrets.token_bytes(32)
        key = secret_key.encode() if isinstance(secret_key, str) else secret_key
        if len(key) < 16:
            raise ConfigurationError("secret_key must be at least 16 bytes (32 random is best)")
        if session_max_age <= 0 or live_interval <= 0 or events_max_seconds <= 0:
            raise ConfigurationError(
                "session_max_age, live_interval and events_max_seconds must be positive"
            )
        self.chancy = chancy
        self.auth = auth
        self.password_hash = password_hash
        self.login_throttle = LoginThrottle(login_limits)
        """Counts the password attempts (see :class:`LoginLimits`)."""
        self.read_only = read_only
        self.title = title
        self.live_interval = live_interval
        self.events_max_seconds = events_max_seconds
        self.functions: dict[str, Job] = {}
        """The functions a user may push: name -> the job template pushed."""
        for item in allowed_functions:
            template = _as_template(item)
            self.functions[template.func] = template
        self.templates = jinja2.Environment(
            loader=jinja2.PackageLoader("chancy_plugin_dashboard", "templates"),
            autoescape=True,  # every value is escaped, whatever the template's name
            undefined=jinja2.StrictUndefined,
        )
        self.templates.filters["time"] = _format_time
        self.templates.filters["age"] = _format_age
        self.templates.filters["since"] = _since
        self._opened_here = False
        self._open_lock: anyio.Lock | None = None

        from chancy_plugin_dashboard.views import Views

        views = Views(self)
        routes: list[BaseRoute] = [
            *views.routes(),
            Mount("/static", app=StaticFiles(directory=HERE / "static"), name="static"),
            *(self._metrics_routes() if metrics_endpoint else []),
            *extra_routes,
        ]
        router = Router(routes=routes, lifespan=self._lifespan)
        handled = ExceptionMiddleware(router, handlers={HTTPException: self._http_error})

        async def opened(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] == "http":  # behind the guard: anonymous requests open nothing
                await self.ensure_open()
            await handled(scope, receive, send)

        self._app = Guard(
            opened,
            GuardConfig(
                secret_key=key,
                auth=auth,
                password_hash=password_hash,
                secure_cookies=secure_cookies,
                read_only=read_only,
                session_max_age=session_max_age,
                render_error=self._render_error,
            ),
        )

    def _metrics_routes(self) -> list[BaseRoute]:
        """``/metrics``: the metrics plugin's Prometheus endpoint, when the app has it."""
        plugin = self.chancy.plugins.get_plugin("metrics")
        if plugin is None:
            return []
        from chancy_plugin_metrics import Metrics, metrics_app

        if not isinstance(plugin, Metrics):
            return []
        return [Route("/metrics", metrics_app(plugin, self.chancy))]

    # --- ASGI ------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one ASGI connection."""
        await self._app(scope, receive, send)

    async def ensure_open(self) -> None:
        """Open the Chancy app if nobody did (the first request does it)."""
        try:
            self.chancy.pool  # noqa: B018 - raises ConfigurationError when not open
            return
        except ConfigurationError:
            pass
        if self._open_lock is None:
            self._open_lock = anyio.Lock()
        async with self._open_lock:
            try:
                self.chancy.pool  # noqa: B018
            except ConfigurationError:
                await self.chancy.open()
                self._opened_here = True

    @asynccontextmanager
    async def _lifespan(self, app: object) -> AsyncIterator[None]:
        await self.ensure_open()
        try:
            yield
        finally:
            if self._opened_here:
                await self.chancy.close()
                self._opened_here = False

    # --- rendering -------------------------------------------------------------------------

    @property
    def installed(self) -> dict[str, bool]:
        """Which optional plugins the app has (their pages are shown when it does)."""
        plugins = self.chancy.plugins
        return {
            name: plugins.has_plugin(name)
            for name in ("cron", "metrics", "leadership", "retry", "workflow")
        }

    def render(
        self, request: Request, template: str, status_code: int = 200, **context: Any
    ) -> HTMLResponse:
        """Render a page with the common context (base path, user, CSRF token, flashes)."""
        html = self.render_text(request.scope, template, **context)
        return HTMLResponse(html, status_code=status_code)

    def render_text(self, scope: Scope, template: str, **context: Any) -> str:
        """Render a template to text with the common context."""
        state = scope.get("chancy.dashboard") or {}
        session = state.get("session")
        common: dict[str, Any] = {
            "base": base_path(scope),
            "title": self.title,
            "user": state.get("user"),
            "csrf_field": CSRF_FIELD,
            "csrf": session.csrf if session is not None else "",
            "csrf_input": Markup('<input type="hidden" name="{}" value="{}">').format(
                CSRF_FIELD, session.csrf if session is not None else ""
            ),
            "read_only": self.read_only,
            "installed": self.installed,
            "can_push": bool(self.functions) and not self.read_only,
            "password_login": self.password_hash is not None,
            "now": datetime.now(UTC),
        }
        if "flashes" not in context:
            common["flashes"] = session.take_flashes() if session is not None else []
        return self.templates.get_template(template).render(**common, **context)

    async def _render_error(self, scope: Scope, status: int, message: str) -> tuple[bytes, str]:
        html = self.render_text(scope, "error.html", status=status, message=message, flashes=[])
        return html.encode(), "text/html; charset=utf-8"

    async def _http_error(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        messages = {404: "Nothing here.", 405: "That action is not done this way."}
        message = messages.get(exc.status_code, exc.detail)
        response = self.render(
            request, "error.html", exc.status_code, status=exc.status_code, message=message
        )
        if exc.headers:
            response.headers.update(exc.headers)
        return response

    def __repr__(self) -> str:
        return f"Dashboard({self.chancy!r}, read_only={self.read_only})"


def _as_template(item: object) -> Job:
    if isinstance(item, str):
        return Job(func=item)
    if isinstance(item, Job):
        return Job.unpack(item.pack())
    found = getattr(item, "job", None)
    if isinstance(found, Job):
        return Job.unpack(found.pack())
    raise ConfigurationError(
        f"allowed_functions takes function names, @job functions or Job templates, not {item!r}"
    )
