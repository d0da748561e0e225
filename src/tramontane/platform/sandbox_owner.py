"""Who owns a sandbox: the caller's workspace, from a key with the sandbox
capability, or, on an exposed port's routes, from a link signed under such a key
(`sandbox.port_links`), which a browser can follow without the key."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import anyio
from starlette.requests import HTTPConnection

from ..errors import NotFound, Unauthorized
from ..sandbox import SandboxManager
from ..sandbox.hosts import HostDirectory, PlacementState
from ..sandbox.port_links import PORT_LINK, LinkSigner, PortLink
from ..tenancy import Capability, Principal
from ..tenancy.auth import Rejection
from ..tenancy.dependencies import enter_request, get_tenancy


async def sandbox_owner(request: HTTPConnection) -> AsyncIterator[str]:
    """Sandboxes belong to the caller's workspace; others' answer 404. A request
    with an Authorization header is judged by it alone; one without, to a port,
    by its link. Either way it counts against the workspace's limits until the
    response (or socket) ends."""
    link: PortLink | None = request.scope.get(PORT_LINK)
    if link is not None and "authorization" not in request.headers:
        principal = await _enter_by_link(request, link)
    else:
        principal = await enter_request(request, Capability.SANDBOX)
    try:
        yield principal.workspace_id
    finally:
        with anyio.CancelScope(shield=True):  # a client gone mid-stream still frees its slot
            await get_tenancy(request).leave(principal)


@dataclass(frozen=True)
class PortLinks:
    """What judges a port link: the signer of its token, and the sandboxes (the
    linked one must still exist and be the key's workspace's)."""

    signer: LinkSigner
    sandboxes: SandboxManager
    # Where sandboxes on other hosts are found (gateways sharing a database).
    directory: HostDirectory | None = None

    async def check(self, sandbox_id: str, workspace_id: str) -> None:
        """Raises NotFound unless the sandbox runs, on any host, for the workspace."""
        try:
            self.sandboxes.get(sandbox_id, workspace_id)
            return
        except NotFound:
            if self.directory is None:
                raise
            placement = await anyio.to_thread.run_sync(self.directory.lookup, sandbox_id)
            if placement is None or placement.workspace_id != workspace_id:
                raise
            if placement.state is not PlacementState.RUNNING:
                raise


def port_links(request: HTTPConnection) -> PortLinks:
    return request.app.state.port_links  # type: ignore[no-any-return]


async def _enter_by_link(request: HTTPConnection, link: PortLink) -> Principal:
    """The key a link was signed under, admitted as if the request carried it: the
    token must be this sandbox port's, unexpired, and the key still valid."""
    tenancy = get_tenancy(request)
    where = f"{request.scope.get('method', 'WEBSOCKET')} {request.scope['path']}"
    params = request.path_params
    if params.get("sandbox_id") != link.sandbox_id or str(params.get("port")) != str(link.port):
        raise Unauthorized("This link does not open this URL", code="invalid_link_token")
    links = port_links(request)
    failure: Unauthorized | None = None
    for token in link.tokens:
        try:
            claim = links.signer.verify(token, link.sandbox_id, link.port)
        except Unauthorized as exc:
            failure = failure or exc
            continue
        principal = await tenancy.enter_key(claim.key_id, Capability.SANDBOX, where=where)
        try:
            await links.check(link.sandbox_id, principal.workspace_id)  # gone, or not the key's: 404
        except BaseException:
            with anyio.CancelScope(shield=True):
                await tenancy.leave(principal)
            raise
        link.accept(token, claim, links.signer.now())
        return principal
    assert failure is not None
    # Audited like any failed authentication, under no key: the token's key id is
    # unproven until its signature is.
    rejection = Rejection(f"link:{failure.code}", None, failure.message, failure.code or "invalid_link_token")
    await anyio.to_thread.run_sync(tenancy.authenticator.reject, rejection, where)
    raise AssertionError("reject always raises")
