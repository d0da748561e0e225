"""Administration (admin keys): organisations, workspaces, their keys and limits,
and the audit log. Everything goes through /v1/admin, whose rules decide what
an admin key reaches: its organisation, or every one for a platform admin key."""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Form, Request
from starlette.responses import Response

from ..tenancy import Capability
from ..tenancy.principal import LIMIT_FIELDS
from .web import ApiFailure, ConsoleRoute, CurrentUser, PageError, Redirect, User

router = APIRouter(route_class=ConsoleRoute, include_in_schema=False)

AUDIT_PAGE = 100
EXPIRY_CHOICES = (("", "never"), ("86400", "1 day"), ("2592000", "30 days"), ("7776000", "90 days"),
                  ("31536000", "1 year"))


def _admin(user: User) -> None:
    user.require(Capability.ADMIN)


@router.get("/admin")
async def admin_page(user: CurrentUser) -> Response:
    _admin(user)
    organisations = (await user.json("GET", "/v1/admin/organisations"))["data"]
    workspaces = (await user.json("GET", "/v1/admin/workspaces"))["data"]
    return user.render("admin.html", title="Admin", organisations=organisations, workspaces=workspaces)


@router.post("/admin/organisations")
async def create_organisation(user: CurrentUser, name: Annotated[str, Form(max_length=200)]) -> Response:
    _admin(user)
    organisation = await user.json("POST", "/v1/admin/organisations", json={"name": name})
    user.flash(f"Organisation {organisation['name']} created.", "ok")
    raise Redirect("/admin")


@router.post("/admin/workspaces")
async def create_workspace(
    user: CurrentUser,
    name: Annotated[str, Form(max_length=200)],
    organisation_id: Annotated[str, Form(max_length=64)] = "",
) -> Response:
    _admin(user)
    body = {"name": name, "organisation_id": organisation_id or None}
    workspace = await user.json("POST", "/v1/admin/workspaces", json=body)
    raise Redirect(f"/admin/workspaces/{quote(workspace['id'])}")


async def _workspace_page(user: User, workspace_id: str, **extra: Any) -> Response:
    path = f"/v1/admin/workspaces/{quote(workspace_id, safe='')}"
    workspace = await user.json("GET", path)
    keys = (await user.json("GET", f"{path}/keys"))["data"]
    return user.render(
        "admin_workspace.html", title=workspace["name"], w=workspace, keys=keys, limit_fields=LIMIT_FIELDS,
        capabilities=[c.value for c in Capability if user.principal.can(c)], expiry_choices=EXPIRY_CHOICES, **extra,
    )


@router.get("/admin/workspaces/{workspace_id}")
async def workspace_page(workspace_id: str, user: CurrentUser) -> Response:
    _admin(user)
    created, user.session.reveal = user.session.reveal, None
    if created is not None:
        user.save_session()
    if created is not None and created["workspace_id"] != workspace_id:
        created = None  # taken by another page: dropped rather than shown out of place
    return await _workspace_page(user, workspace_id, created_key=created)


@router.post("/admin/workspaces/{workspace_id}/keys")
async def create_key(workspace_id: str, user: CurrentUser, request: Request) -> Response:
    """Creates a key; the page it redirects to shows its secret, once."""
    _admin(user)
    form = await request.form()
    body: dict[str, Any] = {
        "name": str(form.get("name", ""))[:200],
        "capabilities": [str(c) for c in form.getlist("capabilities")],
    }
    if expires := str(form.get("expires_in_s", "")):
        body["expires_in_s"] = _whole(expires, "expiry")
    try:
        created = await user.json("POST", f"/v1/admin/workspaces/{quote(workspace_id, safe='')}/keys", json=body)
    except ApiFailure as exc:
        if exc.status == 404:
            raise
        return await _workspace_page(user, workspace_id, key_error=exc.message)
    user.session.reveal = created
    user.save_session()
    raise Redirect(f"/admin/workspaces/{quote(workspace_id)}")


@router.post("/admin/keys/{key_id}/revoke")
async def revoke_key(key_id: str, user: CurrentUser, workspace_id: Annotated[str, Form(max_length=64)]) -> Response:
    _admin(user)
    key = await user.json("DELETE", f"/v1/admin/keys/{quote(key_id, safe='')}")
    user.flash(f"Key {key['prefix']} revoked: its sessions and requests are refused from now on.", "ok")
    if key_id == user.principal.key_id:
        raise Redirect("/signin?ended=revoked")
    raise Redirect(f"/admin/workspaces/{quote(workspace_id)}")


def _whole(value: str, name: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise PageError(400, f"{name} must be a whole number") from None


@router.post("/admin/workspaces/{workspace_id}/limits")
async def set_limits(workspace_id: str, user: CurrentUser, request: Request) -> Response:
    _admin(user)
    form = await request.form()
    limits = {f: (_whole(str(form[f]), f) if str(form.get(f, "")).strip() else None) for f in LIMIT_FIELDS}
    retention = str(form.get("request_log_retention_days", "")).strip()
    body = {"limits": limits, "request_log_retention_days": _whole(retention, "retention") if retention else None}
    await user.json("PATCH", f"/v1/admin/workspaces/{quote(workspace_id, safe='')}", json=body)
    user.flash("Limits saved.", "ok")
    raise Redirect(f"/admin/workspaces/{quote(workspace_id)}")


@router.get("/admin/audit")
async def audit_page(
    user: CurrentUser,
    action: str = "",
    workspace_id: str = "",
    organisation_id: str = "",
    before_id: str = "",
) -> Response:
    _admin(user)
    params = {"limit": AUDIT_PAGE}
    for name, value in (("action", action), ("workspace_id", workspace_id), ("organisation_id", organisation_id),
                        ("before_id", before_id)):
        if value.strip():
            params[name] = value.strip()
    events = (await user.json("GET", "/v1/admin/audit", params=params))["data"]
    workspaces = (await user.json("GET", "/v1/admin/workspaces"))["data"]
    filters = {"action": action, "workspace_id": workspace_id, "organisation_id": organisation_id}
    older = events[-1]["id"] if len(events) == AUDIT_PAGE else None
    return user.render(
        "admin_audit.html", title="Audit log", events=events, workspaces=workspaces, filters=filters, older=older
    )
