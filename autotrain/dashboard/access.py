"""Who may see the dashboard and press its buttons.

Credentials are the deployment's own settings: `dashboard_token` (open the page once with
`?token=...`; a cookie keeps it), or the Flower credential (`flower_user`/`flower_password`,
HTTP basic auth). With neither set the dashboard serves loopback only (autotrain.dashboard
refuses to listen elsewhere). Buttons are POSTs that must carry the page's CSRF token in a
header, which a cross-site form or script cannot set, and come from the same origin.
"""

from __future__ import annotations

import base64
import hmac
import secrets
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from autotrain.settings import Settings

__all__ = ["AccessGuard", "CSRF_COOKIE", "TOKEN_COOKIE", "needs_credential"]

CSRF_COOKIE = "autotrain_csrf"
TOKEN_COOKIE = "autotrain_token"
CSRF_HEADER = "x-csrf-token"
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def needs_credential(settings: Settings, address: str) -> str | None:
    """Why the dashboard may not listen on `address` as configured; None when it may."""
    if address in LOOPBACK or settings.dashboard_token or settings.flower_password:
        return None
    return (f"The dashboard on {address} (beyond loopback) needs a credential: set "
            "AUTOTRAIN_DASHBOARD_TOKEN (or AUTOTRAIN_FLOWER_PASSWORD), or listen on 127.0.0.1.")  # fmt: skip


class AccessGuard:
    """ASGI middleware: the credential check on every request, the CSRF check on every POST."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.token = (
            settings.dashboard_token.get_secret_value() if settings.dashboard_token else None
        )
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
        if self.token and request.query_params.get("token") and request.method == "GET":
            # the token leaves the address bar for a cookie, so it is not bookmarked or logged
            response: Response = RedirectResponse(request.url.remove_query_params("token"), 303)
            response.set_cookie(TOKEN_COOKIE, self.token, httponly=True, samesite="strict")
            await response(scope, receive, send)
            return
        csrf = request.cookies.get(CSRF_COOKIE)
        fresh = csrf is None
        if fresh:
            csrf = secrets.token_urlsafe(24)
        scope.setdefault("state", {})["csrf"] = csrf  # the page rendered now embeds it

        async def send_with_cookie(message) -> None:
            if message["type"] == "http.response.start" and fresh:
                cookie = f"{CSRF_COOKIE}={csrf}; Path=/; SameSite=Strict"
                message.setdefault("headers", []).append((b"set-cookie", cookie.encode()))
            await send(message)

        await self.app(scope, receive, send_with_cookie)

    def _refused(self, request: Request) -> Response | None:
        if not self._authorized(request):
            headers = {"WWW-Authenticate": 'Basic realm="autotrain"'} if self.basic else {}
            return PlainTextResponse(
                "Credentials needed: open the dashboard with ?token=<AUTOTRAIN_DASHBOARD_TOKEN>"
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
        if not self.token and not self.basic:
            return True
        if self.token:
            offered = (request.cookies.get(TOKEN_COOKIE) or request.query_params.get("token")
                       or request.headers.get("authorization", "").removeprefix("Bearer "))  # fmt: skip
            if offered and hmac.compare_digest(offered, self.token):
                return True
        if self.basic:
            header = request.headers.get("authorization", "")
            if header.startswith("Basic "):
                try:
                    given = base64.b64decode(header[6:]).decode()
                except ValueError:
                    return False
                return hmac.compare_digest(given, self.basic)
        return False

    def _same_site(self, request: Request) -> bool:
        cookie, header = request.cookies.get(CSRF_COOKIE), request.headers.get(CSRF_HEADER)
        if not cookie or not header or not hmac.compare_digest(cookie, header):
            return False
        if request.headers.get("sec-fetch-site") not in (None, "same-origin", "none"):
            return False
        origin = request.headers.get("origin")
        return origin is None or urlsplit(origin).netloc == request.headers.get("host")
