"""`POST /v1/sandboxes/{id}/port-links/{port}`: a signed URL to an exposed port
that a browser can open without the API key (see `sandbox.port_links`).

Outside `/ports/{port}/...`, whose every path is the sandboxed server's own."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

import anyio
from fastapi import APIRouter, Depends, Path, Request
from pydantic import BaseModel, ConfigDict, Field

from ..sandbox.port_links import DEFAULT_EXPIRES_S, MAX_EXPIRES_S, TOKEN_PARAM
from ..tenancy import Capability, Principal, require
from ..tenancy.dependencies import get_tenancy
from .sandbox_owner import PortLinks


class PortLinkBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    expires_in: int = Field(DEFAULT_EXPIRES_S, ge=1, le=MAX_EXPIRES_S, description="Seconds the link works.")


class PortLinkModel(BaseModel):
    url: str = Field(description="The port's own host name where the platform has one, else `path_url`.")
    path_url: str = Field(description="The link on the platform's host name, under /v1/sandboxes/{id}/ports/{port}.")
    expires_at: datetime


def links_router(links: PortLinks) -> APIRouter:
    signer, manager = links.signer, links.sandboxes
    router = APIRouter(prefix="/v1/sandboxes", tags=["sandboxes"])

    @router.post("/{sandbox_id}/port-links/{port}", status_code=201, response_model=PortLinkModel)
    async def create_port_link(
        sandbox_id: str,
        port: Annotated[int, Path(ge=1, le=65535)],
        request: Request,
        principal: Annotated[Principal, Depends(require(Capability.SANDBOX))],
        body: PortLinkBody | None = None,
    ) -> PortLinkModel:
        """A URL opening `port` of the sandbox in a browser, until `expires_in`
        seconds from now (default 1 h, at most 24 h) or until this key is revoked.
        Whoever holds the URL reaches the port as this key would: share it as such."""
        await links.check(sandbox_id, principal.workspace_id)  # another workspace's, on any host: 404
        expires_in = (body or PortLinkBody()).expires_in
        expires_at = signer.now() + expires_in
        token = signer.sign(sandbox_id, port, principal.key_id, expires_at)
        await anyio.to_thread.run_sync(
            lambda: get_tenancy(request).record_action(
                principal, "sandbox.port_link.create", target=f"sandbox {sandbox_id} port {port}",
                details={"expires_in": expires_in},
            )  # fmt: skip
        )
        path_url = f"{str(request.base_url).rstrip('/')}/v1/sandboxes/{sandbox_id}/ports/{port}/?{TOKEN_PARAM}={token}"
        domain = manager.config.ports_domain
        url = path_url
        if domain:
            # The platform's scheme and port, on the port's own name.
            netloc = f"{port}-{sandbox_id}.{domain.strip('.')}"
            if request.url.port is not None:
                netloc += f":{request.url.port}"
            url = f"{request.url.scheme}://{netloc}/?{TOKEN_PARAM}={token}"
        return PortLinkModel(url=url, path_url=path_url, expires_at=datetime.fromtimestamp(expires_at, UTC))

    return router
