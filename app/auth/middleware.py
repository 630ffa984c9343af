"""AccessControl: the policy table applied to every HTTP request and websocket of the app.

A pure ASGI middleware in front of everything (the Stripe webhook's fast path, Dash's own
middleware and routes included), so no route can be reached around it. It finds who is asking
(a bearer token, else the session cookie), puts the principal in the scope's state
(`request.state.principal`), and answers for the route when the principal may not pass:
- the JSON API and non-browser requests: 401 (no or bad credentials) or 403 (wrong role), as
  `{"error": ..., "required_role": ...}`;
- a browser opening a page: a redirect to /signin?next=<the page> when not signed in, and a
  403 page when signed in with a role that may not see it;
- a websocket: the handshake refused (403); an open one is closed as soon as its token is
  revoked (checked on each message it receives).
Paths that need nothing (the webhook, probes) never touch the database here.
"""

from __future__ import annotations

import html
import logging
from urllib.parse import quote, urlsplit

import anyio.to_thread
from sqlalchemy.exc import DBAPIError
from starlette.datastructures import Headers
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.auth.policy import Open, Requirement, requirement, rule_for
from app.auth.principal import Principal, Role
from app.auth.sessions import COOKIE_NAME, SessionSigner
from app.auth.tokens import TokenVerifier

log = logging.getLogger(__name__)

# Requests a cookie may not make from another site's page (a websocket too: hijacking).
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE", "WEBSOCKET"})
WS_POLICY_VIOLATION = 1008


def client_address(scope: Scope) -> str | None:
    client = scope.get("client")
    return str(client[0]) if client else None


def is_cross_origin(headers: Headers) -> bool:
    """Whether a browser says this request comes from another site's page.

    Browsers send Origin on every cross-origin POST (and Referer when they do not); a request
    with neither is not from a page of another site (or from a very old browser, which
    SameSite=Lax still keeps the cookie from)."""
    source = headers.get("origin") or headers.get("referer")
    if source is None:
        return False
    if source == "null":  # sandboxed or privacy-stripped: cannot be ours
        return True
    ours = {
        host.split(",")[0].strip().lower()
        for host in (headers.get("host"), headers.get("x-forwarded-host"))
        if host
    }
    return urlsplit(source).netloc.lower() not in ours


def is_https(scope: Scope, headers: Headers) -> bool:
    forwarded = headers.get("x-forwarded-proto", "").split(",")[0].strip().lower()
    return scope.get("scheme") in ("https", "wss") or forwarded == "https"


def wants_page(scope: Scope, headers: Headers) -> bool:
    """A browser opening a page (not the API, not a script): it gets redirects and HTML."""
    path: str = scope["path"]
    return (
        scope["type"] == "http"
        and scope["method"] in ("GET", "HEAD")
        and not (path == "/api" or path.startswith("/api/"))
        and "text/html" in headers.get("accept", "")
    )


def page_403(principal: Principal, path: str, needs: Requirement) -> HTMLResponse:
    body = f"""<!doctype html><html lang="en"><head><meta charset="utf-8">
<title>Not allowed - ROI analytics</title></head><body>
<h1>Not allowed</h1>
<p>You are signed in as <strong>{html.escape(principal.name)}</strong> (role
{principal.role.value}); <code>{html.escape(path)}</code> needs the role {needs.value}.</p>
<form method="post" action="/signout"><button type="submit">Sign out</button></form>
</body></html>"""
    return HTMLResponse(body, status_code=403)


def refusal(status: int, error: str, needs: Requirement) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse(
        {"error": error, "required_role": needs.value}, status_code=status, headers=headers
    )


class AccessControl:
    def __init__(
        self,
        app: ASGIApp,
        *,
        verifier: TokenVerifier,
        signer: SessionSigner,
        metrics_public: bool,
    ) -> None:
        self.app = app
        self.verifier = verifier
        self.signer = signer
        self.metrics_public = metrics_public

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        method = scope["method"] if scope["type"] == "http" else "WEBSOCKET"
        needs = requirement(rule_for(scope["path"], method), metrics_public=self.metrics_public)
        if needs is Open.PUBLIC:
            await self.app(scope, receive, send)
            return
        assert isinstance(needs, Role)
        headers = Headers(scope=scope)
        try:
            principal, problem = await anyio.to_thread.run_sync(
                self.authenticate, headers, client_address(scope)
            )
        except DBAPIError as exc:
            log.warning("access control: database unavailable: %s", exc.orig)
            unavailable = JSONResponse({"error": "database unavailable"}, status_code=503)
            await self._refuse(scope, receive, send, unavailable)
            return
        if principal is None:
            await self._refuse(
                scope, receive, send, self._unauthenticated(scope, headers, problem, needs)
            )
            return
        if not principal.may(needs):
            error = f"role {principal.role.value} may not {method} {scope['path']}"
            answer = (
                page_403(principal, scope["path"], needs)
                if wants_page(scope, headers)
                else refusal(403, error, needs)
            )
            await self._refuse(scope, receive, send, answer)
            return
        if principal.via == "session" and method in UNSAFE_METHODS and is_cross_origin(headers):
            # The cookie rides along with requests from any page a browser shows; a change
            # made with it must come from one of ours.
            error = "cross-origin request refused: send it from this site's pages"
            await self._refuse(scope, receive, send, refusal(403, error, needs))
            return
        scope.setdefault("state", {})["principal"] = principal
        if scope["type"] == "websocket" and principal.token_id is not None:
            receive = self._revocation_aware(principal, receive, send)
        await self.app(scope, receive, send)

    def authenticate(
        self, headers: Headers, client: str | None
    ) -> tuple[Principal | None, str | None]:
        """The principal, or None and what was wrong with the credentials (None: none sent).

        A bearer header wins over the cookie and, if bad, is refused rather than ignored: a
        script must learn that its token no longer works."""
        authorization = headers.get("authorization")
        if authorization is not None:
            scheme, _, token = authorization.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                return None, "malformed Authorization header: expected `Bearer <token>`"
            principal = self.verifier.by_token(token.strip(), via="bearer", client=client)
            return (principal, None) if principal else (None, "invalid or revoked token")
        cookie = _cookie(headers, COOKIE_NAME)
        if cookie is not None:
            session = self.signer.check(cookie)
            if session is None:
                return None, "session expired or invalid: sign in again"
            principal = self.verifier.by_id(session.token_id, via="session", client=client)
            return (principal, None) if principal else (None, "session's token was revoked")
        return None, None

    def _unauthenticated(
        self, scope: Scope, headers: Headers, problem: str | None, needs: Role
    ) -> Response:
        if wants_page(scope, headers):
            target = scope["path"] + (f"?{scope['query_string'].decode('latin-1')}"
                                      if scope.get("query_string") else "")  # fmt: skip
            return RedirectResponse(f"/signin?next={quote(target, safe='')}", status_code=303)
        error = problem or "authentication required: send `Authorization: Bearer <token>`"
        return refusal(401, error, needs)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, answer: Response) -> None:
        if scope["type"] == "websocket":
            # Closing before accepting makes the server answer the handshake with 403.
            await send({"type": "websocket.close", "code": WS_POLICY_VIOLATION})
            return
        await answer(scope, receive, send)

    def _revocation_aware(self, principal: Principal, receive: Receive, send: Send) -> Receive:
        """Each message from the browser re-reads the token: a revoked one closes the socket."""
        assert principal.token_id is not None
        token_id = principal.token_id

        async def checked_receive() -> Message:
            message = await receive()
            if message["type"] != "websocket.receive":
                return message
            try:
                still = await anyio.to_thread.run_sync(
                    lambda: self.verifier.by_id(token_id, via=principal.via, client=None)
                )
            except DBAPIError:
                still = principal  # a database blip should not drop every dashboard
            if still is None:
                await send({"type": "websocket.close", "code": WS_POLICY_VIOLATION})
                return {"type": "websocket.disconnect", "code": WS_POLICY_VIOLATION}
            return message

        return checked_receive


def _cookie(headers: Headers, name: str) -> str | None:
    for header in headers.getlist("cookie"):
        for part in header.split(";"):
            key, _, value = part.strip().partition("=")
            if key == name and value:
                return value
    return None
