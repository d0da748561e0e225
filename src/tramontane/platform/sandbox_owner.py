"""Who owns a sandbox: the caller's workspace, from a key with the sandbox capability."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends

from ..tenancy import Capability, Principal, require

_sandbox_key = require(Capability.SANDBOX)


async def sandbox_owner(principal: Annotated[Principal, Depends(_sandbox_key)]) -> str:
    """Sandboxes belong to the caller's workspace; others' answer 404."""
    return principal.workspace_id
