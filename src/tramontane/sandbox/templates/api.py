"""`/v1/templates`: a workspace builds, lists and deletes its own templates.

A build answers when the tree is built (minutes for a first build, at once for
a spec already built); a spec apt or pip refuses answers 422 with their message
and leaves nothing behind. Templates the operator built (`tramontane sandbox
template build`) are listed too and usable by every workspace, but only their
builder can delete them.
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Response
from pydantic import BaseModel, ConfigDict, Field

from ..api import Manager, Owner, _SandboxRoute
from ..errors import Conflict, InvalidArgument
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

    @classmethod
    def of(cls, template: Template, cached: bool | None = None) -> TemplateModel:
        return cls(**template.describe(), cached=cached)  # type: ignore[arg-type]


class TemplateList(BaseModel):
    object: Literal["list"] = "list"
    data: list[TemplateModel]


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
    return TemplateList(data=[TemplateModel.of(t) for t in manager.templates.list(who)])


@router.get("/{template}", response_model=TemplateModel)
async def get_template(template: str, who: Owner, manager: Manager) -> TemplateModel:
    return TemplateModel.of(manager.templates.resolve(template, who))


@router.delete("/{template}", status_code=204)
async def delete_template(template: str, who: Owner, manager: Manager) -> Response:
    found = manager.templates.resolve(template, who)
    if manager.template_in_use(found):
        raise Conflict(f"sandboxes are running from template {template!r}; stop them first", code="template_in_use")
    manager.templates.delete(found.id, who)
    return Response(status_code=204)

