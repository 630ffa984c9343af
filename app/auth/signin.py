"""GET/POST /signin and POST /signout: a token in, a session cookie out.

CSRF: the forms carry no token of their own. The cookie is SameSite=Lax, so browsers do not
send it with another site's POSTs, and both POSTs refuse a request whose Origin (or Referer)
is another site's: a forged sign-in (logging a victim into the attacker's account) or sign-out
fails even from a sibling subdomain, which SameSite alone would let through.
"""

from __future__ import annotations

import html
from urllib.parse import parse_qs, urlsplit

import anyio.to_thread
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.datastructures import Headers

from app.audit import record_audit
from app.auth.middleware import client_address, is_cross_origin, is_https
from app.auth.principal import Principal, Role
from app.auth.sessions import COOKIE_NAME, SessionSigner
from app.auth.tokens import TokenVerifier

router = APIRouter(tags=["access"], include_in_schema=False)

DEFAULT_NEXT = "/dashboard/"
MAX_FORM_BYTES = 4096


def local_path(value: str | None) -> str:
    """`next` when it is a path on this site, else the dashboard: never an open redirect
    (`//evil.example`, `/\\evil.example`, `https://...` and control characters are refused)."""
    if (
        not value
        or not value.startswith("/")
        or value.startswith("//")
        or "\\" in value
        or any(ord(c) < 0x20 or ord(c) == 0x7F for c in value)
    ):
        return DEFAULT_NEXT
    parts = urlsplit(value)
    return value if not parts.scheme and not parts.netloc else DEFAULT_NEXT


def signin_page(
    next_path: str, *, error: str | None = None, status_code: int = 200
) -> HTMLResponse:
    message = f'<p class="error" role="alert">{html.escape(error)}</p>' if error else ""
    body = f"""<!doctype html><html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Sign in - ROI analytics</title>
<style>body{{font-family:system-ui,sans-serif;max-width:28rem;margin:4rem auto;padding:0 1rem}}
input{{width:100%;padding:.5rem;margin:.5rem 0;box-sizing:border-box}}
.error{{color:#b00020}}</style>
</head><body>
<h1>ROI analytics</h1>
{message}
<form method="post" action="/signin">
<label for="token">API token</label>
<input id="token" name="token" type="password" autocomplete="current-password" required autofocus>
<input type="hidden" name="next" value="{html.escape(next_path)}">
<button type="submit">Sign in</button>
</form>
<p>Ask an admin for a token (<code>roi tokens create --role viewer --name you</code>).</p>
</body></html>"""
    return HTMLResponse(body, status_code=status_code, headers={"Cache-Control": "no-store"})


@router.get("/signin")
def get_signin(request: Request) -> HTMLResponse:
    return signin_page(local_path(request.query_params.get("next")))


@router.post("/signin")
async def post_signin(request: Request) -> Response:
    headers = Headers(scope=request.scope)
    if is_cross_origin(headers):
        return signin_page(DEFAULT_NEXT, error="Sign in from this site's page.", status_code=403)
    body = await request.body()
    if len(body) > MAX_FORM_BYTES:
        return signin_page(DEFAULT_NEXT, error="Form too large.", status_code=413)
    form = parse_qs(body.decode("utf-8", errors="replace"))
    token = (form.get("token") or [""])[0].strip()
    next_path = local_path((form.get("next") or [""])[0])
    verifier: TokenVerifier = request.app.state.token_verifier
    client = client_address(request.scope)
    principal = await anyio.to_thread.run_sync(
        lambda: verifier.by_token(token, via="session", client=client)
    )
    if principal is None:
        return signin_page(next_path, error="Unknown or revoked token.", status_code=401)
    if principal.role is Role.INGEST:
        return signin_page(
            next_path, error="An ingest token may only post tasks, not open the dashboard.",
            status_code=403,
        )  # fmt: skip
    await anyio.to_thread.run_sync(lambda: _record_signin(request, principal))
    signer: SessionSigner = request.app.state.session_signer
    value, _ = await anyio.to_thread.run_sync(lambda: signer.issue(principal.token_id or 0))
    response = RedirectResponse(next_path, status_code=303)
    response.set_cookie(
        COOKIE_NAME,
        value,
        max_age=signer.lifetime_seconds,
        path="/",
        httponly=True,  # scripts (an XSS) cannot read it
        samesite="lax",
        secure=is_https(request.scope, headers),
    )
    return response


def _record_signin(request: Request, principal: Principal) -> None:
    with request.app.state.engine.begin() as conn:
        record_audit(conn, principal, "session.signin", f"token:{principal.token_id}")


@router.post("/signout")
def post_signout(request: Request) -> Response:
    headers = Headers(scope=request.scope)
    if is_cross_origin(headers):
        return signin_page(DEFAULT_NEXT, error="Sign out from this site's page.", status_code=403)
    response = RedirectResponse("/signin", status_code=303)
    response.delete_cookie(
        COOKIE_NAME,
        path="/",
        httponly=True,
        samesite="lax",
        secure=is_https(request.scope, headers),
    )
    return response
