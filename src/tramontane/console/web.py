"""What every console page shares: the signed-in user, CSRF checks, the calls to
the platform's API made as that user, rendering, and the security headers."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Any

import httpx
from fastapi import Depends, Request
from fastapi.routing import APIRoute
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.responses import HTMLResponse, RedirectResponse, Response

from ..tenancy import Capability, Principal, get_tenancy
from ..tenancy.auth import Rejection
from .inprocess import api_client
from .sessions import Session, SessionStore, tokens_match

log = logging.getLogger(__name__)

SESSION_COOKIE = "tmt_console"
SIGNIN_COOKIE = "tmt_console_signin"
CSRF_HEADER = "x-csrf-token"
CSRF_FIELD = "csrf_token"

# No inline script or style anywhere: scripts and styles come from this origin's
# files only, so markup that slipped through escaping still could not run.
CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data: blob:",
        "font-src 'self'",
        "connect-src 'self'",
        "form-action 'self'",
        "frame-ancestors 'none'",
        "base-uri 'none'",
    )
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cache-Control": "no-store",
}

templates = Environment(
    loader=FileSystemLoader(Path(__file__).parent / "templates"),
    autoescape=select_autoescape(default=True, default_for_string=True),
    auto_reload=False,
)


def when(value: int | float | str | None) -> str:
    """A time as people read it, in UTC: the API gives Unix seconds for some objects
    (Mistral's shapes) and ISO 8601 for others."""
    if value is None or value == "":
        return "–"
    if isinstance(value, int | float):
        moment = datetime.fromtimestamp(value, timezone.utc)
    else:
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            return value
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


templates.filters["when"] = when

# (path, label, capability needed to see it; None: every key)
NAVIGATION: tuple[tuple[str, str, Capability | None], ...] = (
    ("/playground", "Playground", Capability.INFERENCE),
    ("/models", "Models", Capability.INFERENCE),
    ("/usage", "Usage", None),
    ("/deployments", "Deployments", Capability.DEPLOY),
    ("/sandboxes", "Sandboxes", Capability.SANDBOX),
    ("/fine-tuning", "Fine-tuning", Capability.FINE_TUNE),
    ("/evaluations", "Evaluations", Capability.INFERENCE),
    ("/agents", "Agents", Capability.INFERENCE),
    ("/admin", "Admin", Capability.ADMIN),
)


class Redirect(Exception):
    """Ends a request with a redirect: a 303 for a page, HX-Redirect for htmx."""

    def __init__(self, location: str):
        self.location = location


class PageError(Exception):
    """Ends a request with an error page (or fragment, for htmx)."""

    def __init__(self, status: int, message: str):
        self.status = status
        self.message = message


class ApiFailure(Exception):
    """The platform's API refused a call the console made for the user."""

    def __init__(self, status: int, message: str, code: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code


def is_htmx(request: Request) -> bool:
    return request.headers.get("hx-request") == "true"


def redirect(request: Request, location: str) -> Response:
    # htmx and the playground's fetch would follow a 303 silently: they are told instead.
    if is_htmx(request) or "text/event-stream" in request.headers.get("accept", ""):
        return Response(status_code=204, headers={"HX-Redirect": location})
    return RedirectResponse(location, status_code=303)


class ConsoleRoute(APIRoute):
    """Console routes answer HTML: redirects and errors become pages, and every
    response carries the security headers."""

    def get_route_handler(self) -> Callable[[Request], Any]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            try:
                response = await handler(request)
            except Redirect as exc:
                response = redirect(request, exc.location)
            except PageError as exc:
                response = error_page(request, exc.status, exc.message)
            except ApiFailure as exc:
                response = error_page(request, exc.status, exc.message)
            for name, value in SECURITY_HEADERS.items():
                response.headers.setdefault(name, value)
            return response

        return route


def error_page(request: Request, status: int, message: str) -> HTMLResponse:
    user = request.scope.get("state", {}).get("console_user")
    template = "error_fragment.html" if is_htmx(request) else "error.html"
    body = render_string(template, user=user, status=status, message=message, request=request)
    # htmx leaves 4xx/5xx answers unswapped unless told: the fragment says what went wrong.
    headers = {"HX-Retarget": "#flash", "HX-Reswap": "innerHTML"} if is_htmx(request) else {}
    return HTMLResponse(body, status_code=status, headers=headers)


def render_string(template: str, **context: Any) -> str:
    return templates.get_template(template).render(**context)


def console_state(request: Request) -> ConsoleState:
    state = getattr(request.app.state, "console", None)
    if state is None:
        state = request.app.state.console = ConsoleState(
            SessionStore(get_tenancy(request).store), api_client(request.app)
        )
    return state


@dataclass
class ConsoleState:
    """The console's objects, one per app."""

    sessions: SessionStore
    api: httpx.AsyncClient


@dataclass
class User:
    """The signed-in caller of one request: their session, their key's principal,
    and the platform's API as that key."""

    session: Session
    principal: Principal
    api: httpx.AsyncClient
    request: Request

    @property
    def csrf_token(self) -> str:
        return self.session.csrf_token

    def can(self, capability: Capability | None) -> bool:
        return capability is None or self.principal.can(capability)

    @property
    def navigation(self) -> list[tuple[str, str]]:
        return [(path, label) for path, label, capability in NAVIGATION if self.can(capability)]

    def require(self, capability: Capability) -> None:
        """A page for a capability the key lacks is a 403, as its API would answer."""
        if not self.principal.can(capability):
            raise PageError(403, f"This API key lacks the '{capability.value}' capability")

    def flash(self, message: str, level: str = "info") -> None:
        self.session.flash.append((level, message))
        self.save_session()

    def take_flash(self) -> list[tuple[str, str]]:
        messages, self.session.flash = self.session.flash, []
        if messages:
            self.save_session()
        return messages

    def save_session(self) -> None:
        """Stores the session's flash messages and reveal (sessions live in the database)."""
        console_state(self.request).sessions.save(self.session)

    async def call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """One call to the platform's API as the session's key; the caller reads the status."""
        headers = {"Authorization": f"Bearer {self.session.key}", **kwargs.pop("headers", {})}
        return await self.api.request(method, path, headers=headers, **kwargs)

    async def json(self, method: str, path: str, **kwargs: Any) -> Any:
        """The JSON answer of a successful call; ApiFailure with the API's own message otherwise."""
        response = await self.call(method, path, **kwargs)
        if response.status_code >= 400:
            raise api_failure(response)
        if response.status_code == 204 or not response.content:
            return None
        return response.json()

    def render(self, template: str, *, status: int = 200, **context: Any) -> HTMLResponse:
        body = render_string(template, user=self, request=self.request, flash=self.take_flash(), **context)
        return HTMLResponse(body, status_code=status)


def api_failure(response: httpx.Response) -> ApiFailure:
    """The API's error body in one sentence: OpenAI's {"error": {...}} or FastAPI's 422 {"detail": [...]}."""
    try:
        body = response.json()
    except ValueError:
        return ApiFailure(response.status_code, response.text[:500] or response.reason_phrase)
    if isinstance(body, Mapping) and isinstance(body.get("error"), Mapping):
        error = body["error"]
        return ApiFailure(response.status_code, str(error.get("message")), error.get("code"))
    if isinstance(body, Mapping) and isinstance(body.get("detail"), list):
        parts = []
        for item in body["detail"]:
            where = ".".join(str(p) for p in item.get("loc", ()) if p != "body")
            parts.append(f"{where}: {item.get('msg')}" if where else str(item.get("msg")))
        return ApiFailure(response.status_code, "; ".join(parts))
    if isinstance(body, Mapping) and "detail" in body:
        return ApiFailure(response.status_code, str(body["detail"]))
    return ApiFailure(response.status_code, json.dumps(body)[:500])


async def current_user(request: Request) -> User:
    """The signed-in user, their key checked again on this very request: a session
    whose key was revoked or expired ends here, and the browser goes to sign-in."""
    state = console_state(request)
    session_id = request.cookies.get(SESSION_COOKIE)
    session = state.sessions.get(session_id)
    if session is None:
        raise Redirect("/signin")
    verdict = get_tenancy(request).authenticator.verify(f"Bearer {session.key}")
    if isinstance(verdict, Rejection):
        state.sessions.end(session_id)
        raise Redirect(f"/signin?ended={verdict.reason}")
    if request.method not in ("GET", "HEAD"):
        given = request.headers.get(CSRF_HEADER)
        if given is None and request.headers.get("content-type", "").startswith(
            ("application/x-www-form-urlencoded", "multipart/form-data")
        ):
            given = (await request.form()).get(CSRF_FIELD)
        if not tokens_match(session.csrf_token, given if isinstance(given, str) else None):
            raise PageError(403, "The form's security token is missing or stale: reload the page and try again.")
    user = User(session, verdict, state.api, request)
    request.scope.setdefault("state", {})["console_user"] = user
    return user


CurrentUser = Annotated[User, Depends(current_user)]
