"""`/v1/templates`: a workspace builds, lists and deletes its own templates.

A build answers when the tree is built (minutes for a first build, at once for
a spec already built); a spec apt or pip refuses answers 422 with their message
and leaves nothing behind. Templates the operator built (`tramontane sandbox
template build`) are listed too and usable by every workspace, but only their
builder can delete them. The list also says what sandboxes naming no template
get (`default`), and shows the platform's default template while it is being
built (`status`).
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Response
from pydantic import BaseModel, ConfigDict, Field

from ..api import Manager, Owner, _SandboxRoute
from ..default_template import DefaultStatus, DefaultTemplate
from ..errors import Conflict, InvalidArgument, NotFound
from .spec import from_containerfile, from_dict
from .store import Template

MAX_CONTAINERFILE_BYTES = 256 * 1024


class BuildBody(BaseModel):
    """A spec (the TOML spec's fields, as JSON) or a Containerfile and a name."""

    model_config = ConfigDict(extra="forbid")
    spec: dict[str, Any] | None = None
    containerfile: str | None = Field(None, max_length=MAX_CONTAINERFILE_BYTES)
    name: str | None = None


class TemplateModel(BaseModel):
    object: Literal["template"] = "template"
    id: str
    name: str
    size_bytes: int
    created_at: float
    apt: list[str]
    pip: list[str]
    start: str | None
    env: list[str]  # names only: values may be secrets
    cached: bool | None = None
    status: Literal["ready", "building", "failed"] = "ready"
    error: str | None = None
    default: bool = Field(False, description="Whether sandboxes that name no template get this one.")

    @classmethod
    def of(cls, template: Template, cached: bool | None = None, default: bool = False) -> TemplateModel:
        return cls(**template.describe(), cached=cached, default=default)  # type: ignore[arg-type]

    @classmethod
    def unbuilt(cls, default: DefaultTemplate) -> TemplateModel | None:
        """The platform's default while it is being built, or after its build failed."""
        if default.spec is None or default.status not in (DefaultStatus.BUILDING, DefaultStatus.FAILED):
            return None
        spec = default.spec
        return cls(
            id=spec.content_hash(None), name=spec.name, size_bytes=0, created_at=default.build_started_at or 0.0,
            apt=list(spec.apt), pip=list(spec.pip), start=spec.start, env=sorted(spec.env),
            status=default.status.value, error=default.error,
        )  # fmt: skip


class DefaultModel(BaseModel):
    name: str = Field(description="The operator's default template.")
    status: Literal["ready", "building", "failed", "missing", "builtin"]
    serving: str = Field(description="What a sandbox naming no template gets now (base until the default is ready).")
    error: str | None = None
    build_started_at: float | None = Field(None, description="While building: when the build started (Unix time).")


class TemplateList(BaseModel):
    object: Literal["list"] = "list"
    data: list[TemplateModel]
    default: DefaultModel


router = APIRouter(prefix="/v1/templates", tags=["sandboxes"], route_class=_SandboxRoute)


@router.post("", status_code=201, response_model=TemplateModel)
async def build_template(body: BuildBody, who: Owner, manager: Manager) -> TemplateModel:
    if (body.spec is None) == (body.containerfile is None):
        raise InvalidArgument("send either spec or containerfile", param="spec")
    if body.spec is not None:
        spec = from_dict({**body.spec, **({"name": body.name} if body.name else {})})
    else:
        assert body.containerfile is not None
        spec = from_containerfile(body.containerfile, body.name or "")
    template, cached = await manager.templates.build(spec, owner=who)
    return TemplateModel.of(template, cached)


@router.get("", response_model=TemplateList)
async def list_templates(who: Owner, manager: Manager) -> TemplateList:
    default = manager.default_template
    view = default.view()
    ready = default.current()
    data = [TemplateModel.of(t, default=ready is not None and t.id == ready.id) for t in manager.templates.list(who)]
    if (unbuilt := TemplateModel.unbuilt(default)) is not None:
        data.append(unbuilt)
    summary = DefaultModel(
        name=view.name, status=view.status.value, serving=view.serving, error=view.error,
        build_started_at=view.build_started_at if view.status is DefaultStatus.BUILDING else None,
    )  # fmt: skip
    return TemplateList(data=data, default=summary)


@router.get("/{template}", response_model=TemplateModel)
async def get_template(template: str, who: Owner, manager: Manager) -> TemplateModel:
    default = manager.default_template
    try:
        found = manager.templates.resolve(template, who)
    except NotFound:
        unbuilt = TemplateModel.unbuilt(default)
        if unbuilt is None or template not in (unbuilt.name, unbuilt.id):
            raise
        return unbuilt
    ready = default.current()
    return TemplateModel.of(found, default=ready is not None and found.id == ready.id)


@router.delete("/{template}", status_code=204)
async def delete_template(template: str, who: Owner, manager: Manager) -> Response:
    found = manager.templates.resolve(template, who)
    if manager.template_in_use(found):
        raise Conflict(f"sandboxes are running from template {template!r}; stop them first", code="template_in_use")
    manager.templates.delete(found.id, who)
    return Response(status_code=204)

