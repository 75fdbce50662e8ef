"""Authentication, sessions, CSRF and the response headers of the dashboard.

Everything here is enforced by one ASGI middleware, :class:`Guard`, that wraps every
route of the dashboard, so no page or action can forget a check:

* **Authentication.** A request is served only when the user's ``auth`` callback
  returns an identity for it, or its session cookie says it logged in with the
  built-in password. The login form (and its stylesheet) is the only exception.
* **Sessions** are a signed cookie (:mod:`itsdangerous`, with an expiry), ``HttpOnly``,
  ``SameSite=Lax``, ``Secure`` unless turned off for plain-HTTP development, and scoped
  to the dashboard's path.
* **CSRF.** Every request that is not ``GET``/``HEAD`` must be a form
  (``application/x-www-form-urlencoded``) carrying the session's CSRF token in its
  ``csrf`` field; it is compared in constant time. Routes that change state accept only
  ``POST``.
* **Read-only mode** refuses every ``POST`` but logging in and out.
* **Errors.** An exception in a page is logged with a reference and answered with a
  generic page that shows only that reference.

Passwords are stored as scrypt hashes (:func:`hash_password`) and compared with
:func:`hmac.compare_digest`. Password attempts are limited per client and in total
(:class:`LoginLimits`, :class:`LoginThrottle`): past the limit the login form answers 429
without checking the password.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import logging
import math
import secrets
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

from itsdangerous import BadSignature, URLSafeTimedSerializer
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from chancy_core.errors import ConfigurationError

__all__ = [
    "CSRF_FIELD",
    "AuthCallback",
    "Guard",
    "LoginLimits",
    "LoginThrottle",
    "Session",
    "hash_password",
    "verify_password",
]

log = logging.getLogger(__name__)

CSRF_FIELD = "csrf"
"""The form field that carries the CSRF token."""

#: ``auth(request) -> identity | None`` (may be ``async``): who the request is from, or
#: ``None`` if it is not authenticated.
AuthCallback = Callable[[Request], "str | Awaitable[str | None] | None"]

_SCRYPT_N, _SCRYPT_R, _SCRYPT_P = 2**14, 8, 1
_MAX_FORM_BYTES = 256 * 1024

SECURITY_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (
        b"content-security-policy",
        b"default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self';"
        b" connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"same-origin"),
    (b"cache-control", b"no-store"),
)
"""Sent with every response: no inline script runs, the pages cannot be framed."""


# --- passwords ------------------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def hash_password(password: str) -> str:
    """A salted scrypt hash of ``password``, to give as ``Dashboard(password_hash=...)``.

    Also printed by ``chancy dashboard --hash-password``. The format is
    ``scrypt$N$r$p$salt$hash``; the password itself is never stored.
    """
    if not isinstance(password, str) or not password:
        raise ConfigurationError("the dashboard password must be a non-empty string")
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(
        password.encode(), salt=salt, n=_SCRYPT_N, r=_SCRYPT_R, p=_SCRYPT_P, dklen=32
    )
    return f"scrypt${_SCRYPT_N}${_SCRYPT_R}${_SCRYPT_P}${_b64(salt)}${_b64(digest)}"


def _parse_hash(encoded: str) -> tuple[int, int, int, bytes, bytes]:
    try:
        scheme, n, r, p, salt, digest = encoded.split("$")
        if scheme != "scrypt":
            raise ValueError(scheme)
        return int(n), int(r), int(p), _unb64(salt), _unb64(digest)
    except (ValueError, AttributeError):
        raise ConfigurationError(
            "password_hash is not a hash made by hash_password(): run"
            " `chancy dashboard --hash-password` and give its output"
        ) from None


def verify_password(password: str, encoded: str) -> bool:
    """Whether ``password`` matches ``encoded`` (a :func:`hash_password` result).

    The derived keys are compared with :func:`hmac.compare_digest` (constant time).
    """
    n, r, p, salt, digest = _parse_hash(encoded)
    candidate = hashlib.scrypt(
        password.encode(errors="surrogatepass"),
        salt=salt,
        n=n,
        r=r,
        p=p,
        dklen=len(digest),
        maxmem=256 * 1024 * 1024,
    )
    return hmac.compare_digest(candidate, digest)


# --- login attempts -------------------------------------------------------------------------


@dataclass(frozen=True)
class LoginLimits:
    """How many password attempts the built-in login accepts (``Dashboard(login_limits=...)``).

    An attempt counts when it is made; a successful one forgets its client's attempts.
    Past a limit the form answers ``429 Too Many Requests`` with ``Retry-After`` and does
    not check the password (so the limit also caps the scrypt work an attacker can cause).
    The counts are kept in memory, per process.
    """

    per_client: int = 5
    """Attempts one client (its address) may make within ``window`` seconds."""
    total: int = 50
    """Failed attempts all clients together may make within ``window`` seconds (a
    guessing campaign spread over many addresses locks the form for everyone until its
    attempts age out of the window)."""
    window: float = 300.0
    """Seconds an attempt is remembered."""
    max_clients: int = 10_000
    """Clients remembered at once (the oldest are forgotten first)."""

    def __post_init__(self) -> None:
        if self.per_client < 1 or self.total < 1 or self.max_clients < 1 or not self.window > 0:
            raise ConfigurationError(
                "login_limits: per_client, total and max_clients must be >= 1 and window > 0"
            )


class LoginThrottle:
    """Sliding-window counts of password attempts, per client and in total.

    :param clock: seconds, monotonic (tests pass their own).
    """

    def __init__(
        self, limits: LoginLimits | None = None, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.limits = limits or LoginLimits()
        self.clock = clock
        self._clients: OrderedDict[str, deque[float]] = OrderedDict()
        self._all: deque[float] = deque()

    def _trim(self, attempts: deque[float], now: float) -> None:
        while attempts and attempts[0] <= now - self.limits.window:
            attempts.popleft()

    def attempt(self, client: str) -> int | None:
        """Count an attempt by ``client``; ``None`` if it may go on, else the whole
        seconds to wait (the attempt is then not counted)."""
        now = self.clock()
        limits = self.limits
        self._trim(self._all, now)
        attempts = self._clients.get(client)
        if attempts is not None:
            self._trim(attempts, now)
        waits = []
        if attempts is not None and len(attempts) >= limits.per_client:
            waits.append(attempts[-limits.per_client] + limits.window - now)
        if len(self._all) >= limits.total:
            waits.append(self._all[-limits.total] + limits.window - now)
        if waits:
            return max(1, math.ceil(max(waits)))
        if attempts is None:
            attempts = self._clients[client] = deque()
            while len(self._clients) > limits.max_clients:
                self._clients.popitem(last=False)
        else:
            self._clients.move_to_end(client)
        attempts.append(now)
        self._all.append(now)
        return None

    def succeeded(self, client: str) -> None:
        """``client`` gave the right password: forget its attempts (and this one's count
        in the total, which counts failures)."""
        attempts = self._clients.pop(client, None)
        if attempts and self._all:
            with contextlib.suppress(ValueError):  # already aged out of the window
                self._all.remove(attempts[-1])


# --- sessions -------------------------------------------------------------------------------


@dataclass(eq=False)
class Session:
    """What the signed session cookie holds."""

    csrf: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    """This session's CSRF token."""
    user: str | None = None
    """Who logged in with the password (``None``: nobody)."""
    flashes: list[tuple[str, str]] = field(default_factory=list)
    """Messages for the next page: ``(level, text)``."""
    dirty: bool = False
    """Whether the cookie must be sent again."""

    def flash(self, text: str, level: str = "info") -> None:
        """Show ``text`` on the next page (``level``: ``info`` or ``error``)."""
        if len(text) > 500:  # the cookie must stay small: a message may echo user input
            text = text[:500] + "…"
        self.flashes.append((level, text))
        self.dirty = True

    def take_flashes(self) -> list[tuple[str, str]]:
        """The pending messages, which are then forgotten."""
        found, self.flashes = self.flashes, []
        if found:
            self.dirty = True
        return found

    def renew(self, user: str | None) -> None:
        """Start a new session for ``user`` (a new CSRF token: no session fixation)."""
        self.csrf = secrets.token_urlsafe(32)
        self.user = user
        self.dirty = True

    def dump(self) -> dict[str, Any]:
        """The cookie's payload."""
        return {"c": self.csrf, "u": self.user, "f": self.flashes}

    @classmethod
    def load(cls, data: object) -> Session:
        """Rebuild from :meth:`dump`'s output (a fresh session if it does not fit)."""
        if isinstance(data, dict):
            csrf, user, flashes = data.get("c"), data.get("u"), data.get("f")
            if (
                isinstance(csrf, str)
                and len(csrf) >= 32
                and (user is None or isinstance(user, str))
                and isinstance(flashes, list)
            ):
                return cls(
                    csrf=csrf,
                    user=user,
                    flashes=[(str(level), str(text)) for level, text in flashes][:20],
                )
        return cls(dirty=True)


@dataclass(frozen=True, kw_only=True)
class GuardConfig:
    """How :class:`Guard` protects the dashboard (built by the dashboard)."""

    secret_key: bytes
    auth: AuthCallback | None
    password_hash: str | None
    secure_cookies: bool
    read_only: bool
    session_max_age: int
    cookie_name: str = "chancy_dashboard"
    public: frozenset[str] = frozenset({"/login", "/static/style.css"})
    render_error: Callable[[Scope, int, str], Awaitable[tuple[bytes, str]]] | None = None


def route_path(scope: Scope) -> str:
    """The request's path below the dashboard's mount point."""
    path: str = scope.get("path", "")
    root: str = scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root) :]
    return path or "/"


def base_path(scope: Scope) -> str:
    """The dashboard's mount point (``""`` at the root), for links."""
    root: str = scope.get("root_path", "")
    return root.rstrip("/")


class Guard:
    """The ASGI middleware that authenticates, checks CSRF and read-only mode, sets the
    session cookie and security headers, and turns errors into a generic page.

    It leaves in ``scope["chancy.dashboard"]`` a dict with ``session``
    (:class:`Session`), ``user`` (the identity, or ``None`` on public pages) and, for a
    ``POST``, ``form`` (the parsed fields).
    """

    def __init__(self, app: ASGIApp, config: GuardConfig) -> None:
        self.app = app
        self.config = config
        self.serializer = URLSafeTimedSerializer(config.secret_key, salt="chancy-dashboard")

    # --- the session cookie ------------------------------------------------------------

    def _session(self, scope: Scope) -> Session:
        cookies = Request(scope).cookies
        raw = cookies.get(self.config.cookie_name)
        if raw:
            try:
                data = self.serializer.loads(raw, max_age=self.config.session_max_age)
            except BadSignature:  # tampered with, or expired (SignatureExpired)
                return Session(dirty=True)
            return Session.load(data)
        return Session(dirty=True)

    def _cookie(self, scope: Scope, session: Session) -> bytes:
        value = self.serializer.dumps(session.dump())
        path = base_path(scope) or "/"
        parts = [
            f"{self.config.cookie_name}={value}",
            f"Path={path}",
            f"Max-Age={self.config.session_max_age}",
            "HttpOnly",
            "SameSite=Lax",
        ]
        if self.config.secure_cookies:
            parts.append("Secure")
        return "; ".join(parts).encode("latin-1")

    # --- the checks ----------------------------------------------------------------------

    async def _identity(self, request: Request, session: Session) -> str | None:
        if self.config.auth is not None:
            found = self.config.auth(request)
            if not isinstance(found, str | None):
                found = await found
            if found:
                return str(found)
        if self.config.password_hash is not None and session.user:
            return session.user
        return None

    @staticmethod
    async def _read_body(receive: Receive) -> bytes | None:
        body = b""
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk: bytes = message.get("body", b"")
            body += chunk
            if len(body) > _MAX_FORM_BYTES:
                return None
            if not message.get("more_body", False):
                return body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one request behind the checks."""
        if scope["type"] == "websocket":  # none is served: refuse before anything runs
            await send({"type": "websocket.close", "code": 1008})
            return
        if scope["type"] != "http":  # lifespan
            await self.app(scope, receive, send)
            return
        session = self._session(scope)
        state: dict[str, Any] = {"session": session, "user": None}
        scope["chancy.dashboard"] = state
        path = route_path(scope)
        method = scope["method"]
        started = False

        async def send_with_headers(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                headers = list(message.get("headers", []))
                headers += SECURITY_HEADERS
                if session.dirty:
                    headers.append((b"set-cookie", self._cookie(scope, session)))
                message = {**message, "headers": headers}
            await send(message)

        try:
            request = Request(scope)
            user = await self._identity(request, session)
            state["user"] = user
            if user is None and path not in self.config.public:
                await self._refuse_anonymous(scope, send_with_headers, path, method)
                return
            if method in ("GET", "HEAD"):
                await self.app(scope, receive, send_with_headers)
                return
            content_type = request.headers.get("content-type", "").split(";")[0].strip()
            if content_type != "application/x-www-form-urlencoded":
                await self._error(scope, send_with_headers, 415, "Send the dashboard's forms.")
                return
            body = await self._read_body(receive)
            if body is None:
                await self._error(scope, send_with_headers, 413, "The form is too large.")
                return
            try:
                pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True, max_num_fields=1000)
            except (UnicodeDecodeError, ValueError):
                await self._error(scope, send_with_headers, 400, "The form could not be read.")
                return
            form = dict(pairs)
            token = form.get(CSRF_FIELD, "")
            if not token or not hmac.compare_digest(token.encode(), session.csrf.encode()):
                log.warning(
                    "dashboard: refused a %s to %s without a valid CSRF token",
                    method,
                    path,
                    extra={"path": path, "user": user},
                )
                await self._error(
                    scope,
                    send_with_headers,
                    403,
                    "The form's security token is missing or out of date: reload the page and"
                    " try again.",
                )
                return
            if self.config.read_only and path not in ("/login", "/logout"):
                await self._error(
                    scope, send_with_headers, 403, "The dashboard is read-only: nothing changes."
                )
                return
            state["form"] = form
            await self.app(scope, _replay(body), send_with_headers)
        except Exception:
            reference = uuid.uuid4().hex[:12]
            log.exception(
                "dashboard: %s %s failed (reference %s)",
                method,
                path,
                reference,
                extra={"reference": reference, "path": path},
            )
            if not started:
                await self._error(
                    scope,
                    send_with_headers,
                    500,
                    f"Something went wrong. The error was logged with reference {reference}.",
                )

    async def _refuse_anonymous(self, scope: Scope, send: Send, path: str, method: str) -> None:
        if self.config.password_hash is not None and method in ("GET", "HEAD"):
            target = base_path(scope) + "/login"
            if path not in ("/", "/login") and not path.startswith("/events"):
                query = scope.get("query_string", b"").decode("latin-1")
                target += "?next=" + _quote(path + ("?" + query if query else ""))
            await send(
                {
                    "type": "http.response.start",
                    "status": 303,
                    "headers": [(b"location", target.encode("latin-1"))],
                }
            )
            await send({"type": "http.response.body", "body": b""})
            return
        await self._error(scope, send, 401, "Sign in to see the dashboard.")

    async def _error(self, scope: Scope, send: Send, status: int, message: str) -> None:
        if self.config.render_error is not None:
            body, content_type = await self.config.render_error(scope, status, message)
        else:
            body, content_type = message.encode(), "text/plain; charset=utf-8"
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", content_type.encode()),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


def _quote(text: str) -> str:
    from urllib.parse import quote

    return quote(text, safe="")


def _replay(body: bytes) -> Receive:
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return {"type": "http.disconnect"}

    return receive


def dashboard_state(request: Request) -> Mapping[str, Any]:
    """What :class:`Guard` left for the endpoints."""
    state: Mapping[str, Any] = request.scope["chancy.dashboard"]
    return state
