"""Who may see the dashboard and press its buttons.

There is always a credential: `dashboard_token` when the deployment sets one, else a token the
dashboard makes on its first start and keeps in the workspace's `.autotrain/dashboard.token`
(readable by its owner only), so another user of the host gets nothing from the port.
`autotrain dashboard` prints a link that carries it (`?token=...`); opening it once trades the
token for a session cookie, which holds a value derived from the token (never the token) and
is named after the port (a browser sends a host's cookies to all its ports). The Flower
credential (`flower_user`/`flower_password`, HTTP basic auth) and `Authorization: Bearer <token>`
work too. Without an explicit credential setting the dashboard still serves loopback only
(autotrain.dashboard refuses to listen elsewhere).

Buttons are POSTs that must carry the page's CSRF token in a header, which a cross-site form or
script cannot set, and come from the same origin. Every answer carries a strict
Content-Security-Policy and no-framing headers (`SecurityHeaders`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import secrets
from urllib.parse import urlencode, urlsplit

from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from autotrain.settings import Settings
from autotrain.workspace import Workspace

__all__ = [
    "AccessGuard",
    "SecurityHeaders",
    "CSRF_COOKIE",
    "access_token",
    "open_url",
    "needs_credential",
    "session_cookie",
    "session_value",
]

CSRF_COOKIE = "autotrain_csrf"
CSRF_HEADER = "x-csrf-token"
LOOPBACK = ("127.0.0.1", "localhost", "::1")
TOKEN_FILE = "dashboard.token"

# The page's one script is /static/dashboard.js; its data is a JSON block (not run), images are
# same-origin or data: URLs. Nothing inline runs, nothing frames the page, forms post home only.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)
SECURITY_HEADERS = [
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
]


def needs_credential(settings: Settings, address: str) -> str | None:
    """Why the dashboard may not listen on `address` as configured; None when it may.

    The generated token is not enough beyond loopback: serving a network is a choice the
    deployment states by setting its own credential."""
    if address in LOOPBACK or settings.dashboard_token or settings.flower_password:
        return None
    return (f"The dashboard on {address} (beyond loopback) needs a credential: set "
            "AUTOTRAIN_DASHBOARD_TOKEN (or AUTOTRAIN_FLOWER_PASSWORD), or listen on 127.0.0.1.")  # fmt: skip


def access_token(settings: Settings) -> str:
    """The dashboard's token: `dashboard_token`, else the one kept in `.autotrain/`, made on the
    first call (mode 0600 in a 0700 folder; concurrent first calls agree on one)."""
    if settings.dashboard_token:
        return settings.dashboard_token.get_secret_value()
    state = Workspace(settings.workspace).state_dir
    state.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = state / TOKEN_FILE
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        with os.fdopen(fd, encoding="utf-8") as handle:
            if token := handle.read().strip():
                return token
        os.unlink(path)  # an empty file: a first start that died half-way
        return access_token(settings)
    token = secrets.token_urlsafe(32)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(token + "\n")
    return token


def open_url(settings: Settings, address: str, port: int) -> str:
    """The link that signs a browser in: the dashboard's address (loopback for a wildcard one)
    with `?token=`."""
    host = "127.0.0.1" if address in ("0.0.0.0", "::", "") else address
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{port}/?{urlencode({'token': access_token(settings)})}"


def session_cookie(port: int) -> str:
    """The session cookie's name: one per port, since browsers share cookies across ports."""
    return f"autotrain_session_{port}"


def session_value(token: str) -> str:
    """What the session cookie holds: an HMAC of the token, which does not give the token back
    (a cookie leaked from a browser profile or a proxy log is not the credential for Bearer or
    `?token=`, nor for another deployment that shares the token)."""
    return hmac.new(token.encode(), b"autotrain dashboard session", hashlib.sha256).hexdigest()


def _same(given: str | None, expected: str) -> bool:
    """Constant-time equality on bytes: any text (non-ASCII included) compares, never raises."""
    return given is not None and hmac.compare_digest(
        given.encode("utf-8", "surrogatepass"), expected.encode("utf-8", "surrogatepass")
    )


class SecurityHeaders:
    """ASGI middleware: the headers of SECURITY_HEADERS on every response, refusals included."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], *SECURITY_HEADERS]
            await send(message)

        await self.app(scope, receive, send_with_headers)


class AccessGuard:
    """ASGI middleware: the credential check on every request, the CSRF check on every POST."""

    def __init__(self, app: ASGIApp, settings: Settings, port: int) -> None:
        self.app = app
        self.token = access_token(settings)
        self.session = session_value(self.token)
        self.cookie = session_cookie(port)
        password = settings.flower_password.get_secret_value() if settings.flower_password else None
        self.basic = f"{settings.flower_user}:{password}" if password else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        refused = self._refused(request)
        if refused is not None:
            await refused(scope, receive, send)
            return
        if "token" in request.query_params and request.method == "GET":
            await self._sign_in(request)(scope, receive, send)
            return
        csrf = request.cookies.get(CSRF_COOKIE)
        fresh = csrf is None
        if fresh:
            csrf = secrets.token_urlsafe(24)
        scope.setdefault("state", {})["csrf"] = csrf  # the page rendered now embeds it

        async def send_with_cookie(message: Message) -> None:
            if message["type"] == "http.response.start" and fresh:
                cookie = f"{CSRF_COOKIE}={csrf}; Path=/; SameSite=Strict"
                message.setdefault("headers", []).append((b"set-cookie", cookie.encode()))
            await send(message)

        await self.app(scope, receive, send_with_cookie)

    def _sign_in(self, request: Request) -> Response:
        """The right `?token=` trades for the session cookie; the token leaves the address bar
        (not bookmarked, not logged). The Location is relative: never built from the Host header."""
        if not _same(request.query_params.get("token"), self.token):
            return PlainTextResponse("Refused: the token in this link is not the dashboard's.",
                                     status_code=401)  # fmt: skip
        rest = request.url.remove_query_params("token")
        location = "/" + rest.path.lstrip("/") + (f"?{rest.query}" if rest.query else "")
        response = RedirectResponse(location, 303)
        response.set_cookie(self.cookie, self.session, httponly=True, samesite="strict",
                            secure=request.url.scheme == "https")  # fmt: skip
        return response

    def _refused(self, request: Request) -> Response | None:
        if not self._authorized(request):
            headers = {"WWW-Authenticate": 'Basic realm="autotrain"'} if self.basic else {}
            return PlainTextResponse(
                "Credentials needed: open the link `autotrain dashboard` printed (?token=...)"
                + (", or sign in with the Flower user and password" if self.basic else "") + ".",
                status_code=401, headers=headers,
            )  # fmt: skip
        if request.method == "POST" and not self._same_site(request):
            return PlainTextResponse(
                "Refused: a button press must come from the dashboard's own page (CSRF).",
                status_code=403,
            )
        return None

    def _authorized(self, request: Request) -> bool:
        if _same(request.cookies.get(self.cookie), self.session):
            return True
        if _same(request.query_params.get("token"), self.token):
            return True
        header = request.headers.get("authorization", "")
        if header.startswith("Bearer "):
            return _same(header.removeprefix("Bearer "), self.token)
        if self.basic and header.startswith("Basic "):
            try:
                given = base64.b64decode(header[6:], validate=True).decode()
            except (binascii.Error, ValueError):
                return False
            return _same(given, self.basic)
        return False

    def _same_site(self, request: Request) -> bool:
        cookie, header = request.cookies.get(CSRF_COOKIE), request.headers.get(CSRF_HEADER)
        if not cookie or not header or not _same(header, cookie):
            return False
        if request.headers.get("sec-fetch-site") not in (None, "same-origin", "none"):
            return False
        origin = request.headers.get("origin")
        return origin is None or urlsplit(origin).netloc == request.headers.get("host")
