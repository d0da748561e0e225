"""Helpers for the tenancy tests: tenants with keys, and an app wired like the server."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any

from fastapi import Depends, FastAPI

from tramontane.store import ApiKey, Organisation, Workspace
from tramontane.tenancy import (
    CLI,
    Capability,
    Limits,
    Principal,
    Tenancy,
    directory,
    get_owned,
    get_tenancy,
    keys,
    owned,
    require,
)
from tramontane.tenancy.admin_api import router as admin_router
from tramontane.tenancy.principal import NO_LIMITS

# Module level: with postponed annotations FastAPI resolves these by name here.
Inference = Annotated[Principal, Depends(require(Capability.INFERENCE))]
Deploy = Annotated[Principal, Depends(require(Capability.DEPLOY))]
TenancyDep = Annotated[Tenancy, Depends(get_tenancy)]


@dataclass(frozen=True)
class Tenant:
    organisation_id: str
    workspace_id: str
    key_id: str
    key: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}


def make_tenant(
    tenancy: Tenancy,
    name: str,
    *,
    capabilities: frozenset[Capability] = frozenset({Capability.INFERENCE}),
    key_limits: Limits = NO_LIMITS,
    workspace_limits: Limits = NO_LIMITS,
    expires_at: datetime | None = None,
    organisation_id: str | None = None,
) -> Tenant:
    """An organisation (unless given) with one workspace and one key."""
    with tenancy.store.session() as session:
        organisation = (
            session.get(Organisation, organisation_id)
            if organisation_id
            else directory.create_organisation(session, f"org-{name}", CLI)
        )
        assert organisation is not None
        workspace = directory.create_workspace(session, organisation, f"ws-{name}", CLI, workspace_limits)
        created = keys.create_key(
            session,
            tenancy.pepper,
            workspace,
            name=f"key-{name}",
            capabilities=capabilities,
            actor=CLI,
            expires_at=expires_at,
            limits=key_limits,
        )
    return Tenant(organisation.id, workspace.id, created.key.id, created.plaintext)


def add_key(tenancy: Tenancy, tenant: Tenant, **options: object) -> Tenant:
    """Another key in the tenant's workspace."""
    with tenancy.store.session() as session:
        workspace = session.get(Workspace, tenant.workspace_id)
        assert workspace is not None
        created = keys.create_key(
            session,
            tenancy.pepper,
            workspace,
            name="extra",
            capabilities=options.pop("capabilities", frozenset({Capability.INFERENCE})),  # type: ignore[arg-type]
            actor=CLI,
            **options,  # type: ignore[arg-type]
        )
    return Tenant(tenant.organisation_id, tenant.workspace_id, created.key.id, created.plaintext)


def build_app(tenancy: Tenancy) -> FastAPI:
    """A small app wired the way the server will be: tenancy installed, the admin
    router mounted, routes guarded by `require` and metered by `record_usage`."""
    app = FastAPI()
    tenancy.install(app)
    app.include_router(admin_router)

    @app.post("/v1/generate")
    def generate(body: dict[str, Any], principal: Inference, tenancy: TenancyDep) -> dict:
        tenancy.record_usage(
            principal,
            model=body["model"],
            prompt_tokens=body["prompt_tokens"],
            completion_tokens=body["completion_tokens"],
        )
        return {"workspace": principal.workspace_id}

    @app.get("/v1/own-keys/{key_id}")
    def own_key(key_id: str, principal: Inference, tenancy: TenancyDep) -> dict:
        with tenancy.store.session() as session:
            return {"id": get_owned(session, ApiKey, key_id, principal, "API key").id}

    @app.get("/v1/own-keys")
    def own_keys(principal: Inference, tenancy: TenancyDep) -> list[str]:
        with tenancy.store.session() as session:
            return sorted(key.id for key in session.scalars(owned(ApiKey, principal)))

    @app.post("/v1/deploy")
    def deploy(principal: Deploy) -> dict:
        return {"ok": True}

    return app
