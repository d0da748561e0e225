"""Sign-in and sign-out: an API key in, a server-side session out."""

from __future__ import annotations

import contextlib
import secrets
from typing import Annotated

import anyio.to_thread
from fastapi import APIRouter, Form, Request
from starlette.responses import HTMLResponse, Response

from ..errors import TramontaneError
from ..tenancy import Principal, Tenancy, audit, get_tenancy
from ..tenancy.audit import Actor
from ..tenancy.auth import Rejection
from .sessions import tokens_match
from .web import (
    CSRF_FIELD,
    SESSION_COOKIE,
    SIGNIN_COOKIE,
    ConsoleRoute,
    CurrentUser,
    Redirect,
    console_state,
    redirect,
    render_string,
)

router = APIRouter(route_class=ConsoleRoute, include_in_schema=False)

# Why a session ended, as /signin?ended=... tells it (Rejection reasons and ours).
_ENDED = {
    "revoked": "Your API key was revoked: you have been signed out.",
    "expired": "Your API key has expired: you have been signed out.",
    "signed_out": "You are signed out.",
}


def _secure(request: Request) -> bool:
    # Behind TLS (directly, or a proxy whose X-Forwarded-Proto uvicorn trusts).
    return request.url.scheme == "https"


def _signin_page(request: Request, *, error: str | None = None, status: int = 200) -> HTMLResponse:
    # Login CSRF: the form's token must match a cookie only this origin could set.
    token = secrets.token_urlsafe(32)
    ended = request.query_params.get("ended")
    notice = None if ended is None else _ENDED.get(ended, "Your session has ended.")
    body = render_string("signin.html", request=request, user=None, signin_token=token, error=error, notice=notice)
    response = HTMLResponse(body, status_code=status)
    response.set_cookie(
        SIGNIN_COOKIE, token, max_age=3600, httponly=True, samesite="strict", secure=_secure(request), path="/signin"
    )
    return response


@router.get("/signin")
async def signin_form(request: Request) -> Response:
    return _signin_page(request)


@router.post("/signin")
async def signin(
    request: Request, api_key: Annotated[str, Form(max_length=200)], csrf_token: Annotated[str, Form(alias=CSRF_FIELD)]
) -> Response:
    if not tokens_match(request.cookies.get(SIGNIN_COOKIE, ""), csrf_token) or not csrf_token:
        return _signin_page(request, error="The sign-in form expired: try again.", status=403)
    tenancy = get_tenancy(request)
    verdict = tenancy.authenticator.verify(f"Bearer {api_key.strip()}")
    if isinstance(verdict, Rejection):
        # Audited as the API audits a refused key; the write runs off the event loop.
        with contextlib.suppress(TramontaneError):  # reject always raises its 401
            await anyio.to_thread.run_sync(tenancy.authenticator.reject, verdict, "POST /signin")
        return _signin_page(request, error=verdict.message, status=401)
    sessions = console_state(request).sessions
    session_id, _ = sessions.create(api_key.strip(), verdict.key_id)
    await anyio.to_thread.run_sync(_audit_signin, tenancy, verdict)
    response = redirect(request, "/")
    response.set_cookie(
        SESSION_COOKIE,
        session_id,
        max_age=int(sessions.lifetime_s),
        httponly=True,
        samesite="strict",
        secure=_secure(request),
        path="/",
    )
    response.delete_cookie(SIGNIN_COOKIE, path="/signin")
    return response


def _audit_signin(tenancy: Tenancy, principal: Principal) -> None:
    with tenancy.store.write_session() as db:
        audit.record(
            db,
            "console.signin",
            Actor(principal.key_prefix),
            organisation_id=principal.organisation_id,
            workspace_id=principal.workspace_id,
        )


@router.post("/signout")
async def signout(request: Request, user: CurrentUser) -> Response:
    console_state(request).sessions.end(request.cookies.get(SESSION_COOKIE))
    response = redirect(request, "/signin?ended=signed_out")
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


@router.get("/")
async def home(user: CurrentUser) -> Response:
    first = user.navigation[0][0] if user.navigation else "/usage"
    raise Redirect(first)
