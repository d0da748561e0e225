"""Sandboxes: list, create, run a command and read its output, browse, upload and
download files, kill."""

from __future__ import annotations

import posixpath
from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, File, Form, UploadFile
from starlette.responses import Response

from ..tenancy import Capability
from .web import ApiFailure, ConsoleRoute, CurrentUser, PageError, Redirect, api_failure

router = APIRouter(route_class=ConsoleRoute, include_in_schema=False)

HOME = "/home/user"
TEMPLATES = ("default", "base", "microvm")  # "default": none named, the platform's default template


def _sandbox_path(sandbox_id: str, tail: str = "") -> str:
    return f"/v1/sandboxes/{quote(sandbox_id, safe='')}{tail}"


@router.get("/sandboxes")
async def sandboxes_page(user: CurrentUser) -> Response:
    user.require(Capability.SANDBOX)
    listed = (await user.json("GET", "/v1/sandboxes"))["sandboxes"]
    return user.render("sandboxes.html", title="Sandboxes", sandboxes=listed, templates=TEMPLATES)


@router.post("/sandboxes")
async def create_sandbox(
    user: CurrentUser,
    template: Annotated[str, Form(max_length=64)] = "default",
    timeout: Annotated[str, Form(max_length=12)] = "300",
) -> Response:
    user.require(Capability.SANDBOX)
    try:
        seconds = float(timeout)
    except ValueError:
        raise PageError(400, "timeout must be a number of seconds") from None
    body: dict[str, object] = {"timeout": seconds} | ({} if template == "default" else {"template": template})
    created = await user.json("POST", "/v1/sandboxes", json=body)
    user.flash(f"Sandbox {created['sandbox_id']} started.", "ok")
    raise Redirect(f"/sandboxes/{quote(created['sandbox_id'])}")


@router.get("/sandboxes/{sandbox_id}")
async def sandbox_page(sandbox_id: str, user: CurrentUser, path: str = HOME) -> Response:
    user.require(Capability.SANDBOX)
    sandbox = await user.json("GET", _sandbox_path(sandbox_id))
    entries, listing_error = [], None
    try:
        entries = (await user.json("GET", _sandbox_path(sandbox_id, "/files/list"), params={"path": path}))["entries"]
    except ApiFailure as exc:  # the sandbox is there (read above): the folder is wrong
        listing_error = exc.message
    entries.sort(key=lambda e: (e["type"] != "dir", e["name"]))
    parent = posixpath.dirname(path.rstrip("/")) or "/"
    return user.render(
        "sandbox.html", title=sandbox_id, s=sandbox, path=path, parent=parent, entries=entries,
        listing_error=listing_error,
    )


@router.post("/sandboxes/{sandbox_id}/commands")
async def run_command(
    sandbox_id: str,
    user: CurrentUser,
    cmd: Annotated[str, Form(max_length=10_000)],
    cwd: Annotated[str, Form(max_length=4096)] = HOME,
) -> Response:
    """Runs the command to its end (60 s at most) and answers its output as a fragment."""
    user.require(Capability.SANDBOX)
    body = {"cmd": cmd, "cwd": cwd or None, "stream": False, "timeout": 60}
    result = await user.json("POST", _sandbox_path(sandbox_id, "/commands"), json=body)
    return user.render("command_result.html", cmd=cmd, r=result)


@router.post("/sandboxes/{sandbox_id}/files")
async def upload_file(
    sandbox_id: str,
    user: CurrentUser,
    file: Annotated[UploadFile, File()],
    folder: Annotated[str, Form(max_length=4096)] = HOME,
) -> Response:
    user.require(Capability.SANDBOX)
    name = posixpath.basename(file.filename or "")
    if not name or name in (".", ".."):
        raise PageError(400, "The upload has no file name")
    target = posixpath.join(folder, name)
    await user.json("PUT", _sandbox_path(sandbox_id, "/files"), params={"path": target}, content=await file.read())
    user.flash(f"Uploaded {target}.", "ok")
    raise Redirect(f"/sandboxes/{quote(sandbox_id)}?path={quote(folder)}")


@router.get("/sandboxes/{sandbox_id}/download")
async def download_file(sandbox_id: str, user: CurrentUser, path: str) -> Response:
    user.require(Capability.SANDBOX)
    response = await user.call("GET", _sandbox_path(sandbox_id, "/files"), params={"path": path})
    if response.status_code >= 400:
        raise api_failure(response)
    # An attachment of an opaque type: a file from a sandbox never renders as a page of this origin.
    filename = quote(posixpath.basename(path) or "download")
    return Response(
        response.content,
        media_type="application/octet-stream",
        headers={"Content-Disposition": f"attachment; filename*=UTF-8''{filename}"},
    )


@router.post("/sandboxes/{sandbox_id}/kill")
async def kill_sandbox(sandbox_id: str, user: CurrentUser) -> Response:
    user.require(Capability.SANDBOX)
    await user.json("DELETE", _sandbox_path(sandbox_id))
    user.flash(f"Sandbox {sandbox_id} killed.", "ok")
    raise Redirect("/sandboxes")
