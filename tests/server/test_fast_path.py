"""The inference routes' fast path (inference/fast_path.py) changes nothing a client
or an SDK generator can see: the whole OpenAPI document, the 422 bodies and a valid
request's response bytes are those of plain FastAPI routes over the same endpoints."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import APIRouter, FastAPI
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from pydantic import BaseModel, Field
from starlette.types import ASGIApp, Receive, Scope, Send

from tramontane.control.plane import ControlPlane
from tramontane.finetune.service import FineTuning
from tramontane.inference import ModelRegistry
from tramontane.inference.fast_path import Call, InferenceRoute, _inference_call, direct_handler
from tramontane.inference.metrics import Metrics
from tramontane.platform.app import MAX_BODY_BYTES, assemble, platform_features
from tramontane.platform.features import Route
from tramontane.store import open_store
from tramontane.tenancy import Capability, Tenancy

_COPIED = (
    "response_model", "status_code", "tags", "dependencies", "summary", "description", "response_description",
    "responses", "deprecated", "methods", "operation_id", "response_model_include", "response_model_exclude",
    "response_model_by_alias", "response_model_exclude_unset", "response_model_exclude_defaults",
    "response_model_exclude_none", "include_in_schema", "response_class", "name", "openapi_extra",
)  # fmt: skip


def plain(router: APIRouter) -> APIRouter:
    """`router` with every route a plain `APIRoute`: what FastAPI alone would serve."""
    copy = APIRouter()
    for route in router.routes:
        assert isinstance(route, APIRoute)
        settings = {name: getattr(route, name) for name in _COPIED}
        copy.add_api_route(route.path, route.endpoint, route_class_override=APIRoute, **settings)
    return copy


def uses_fast_path(router: APIRouter) -> bool:
    return any(isinstance(route, InferenceRoute) for route in router.routes)


@dataclasses.dataclass
class Apps:
    platform: TestClient
    reference: TestClient
    key: str


@pytest.fixture(scope="module")
def apps(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Apps]:
    home: Path = tmp_path_factory.mktemp("fast-path")
    tenancy = Tenancy(open_store(f"sqlite:///{home / 'db.sqlite'}"), home=home)
    _, key = tenancy.create_tenant("fast", frozenset({Capability.INFERENCE}))
    registry = ModelRegistry()  # no model: every request here fails validation or names none
    metrics = Metrics(registry, tenancy.request_logs, tenancy.usage_writer)
    plane = ControlPlane(tenancy.store, home=home)
    finetune = FineTuning(tenancy.store, home, {})
    listed = platform_features(registry, tenancy, metrics, control_plane=plane, finetune=finetune)
    reference_features = [
        dataclasses.replace(
            f, routes=tuple(Route(plain(r.router), r.responses) if uses_fast_path(r.router) else r for r in f.routes)
        )
        for f in listed
    ]
    platform = assemble(listed, tenancy, metrics, max_body_bytes=MAX_BODY_BYTES)
    reference = assemble(reference_features, tenancy, metrics, max_body_bytes=MAX_BODY_BYTES)
    # A plain route solves `Call` as a dependency; the fast path never does.
    reference.dependency_overrides[_inference_call] = lambda: None
    yield Apps(TestClient(platform), TestClient(reference), key)
    tenancy.close()


def test_the_openapi_document_is_fastapis(apps: Apps) -> None:
    assert apps.platform.get("/openapi.json").json() == apps.reference.get("/openapi.json").json()




JSON = {"content-type": "application/json"}
INVALID = [
    pytest.param("/v1/chat/completions", b'{"model": "m"}', JSON, id="chat: a required field missing"),
    pytest.param(
        "/v1/chat/completions",
        b'{"model": "m", "messages": [{"role": "wizard", "content": "hi"}]}',
        JSON,
        id="chat: a value outside an enum",
    ),
    pytest.param("/v1/chat/completions", b'{"model": "m", "messages": [], "n": "x"}', JSON, id="chat: wrong type"),
    pytest.param("/v1/chat/completions", b'{"model": ', JSON, id="chat: JSON cut short"),
    pytest.param("/v1/chat/completions", b"[1, 2]", JSON, id="chat: not an object"),
    pytest.param("/v1/chat/completions", b"", JSON, id="chat: no body"),
    pytest.param(
        "/v1/chat/completions", b'{"model": "m"}', {"content-type": "application/vnd.api+json"}, id="chat: +json type"
    ),
    pytest.param("/v1/chat/completions", b'{"model": "m"}', {"content-type": "text/plain"}, id="chat: not JSON"),
    pytest.param("/v1/completions", b'{"model": "m", "prompt": 3.5}', JSON, id="completions: wrong type"),
    pytest.param("/v1/fim/completions", b'{"model": "m"}', JSON, id="fim: prompt missing"),
    pytest.param("/v1/embeddings", b'{"input": "x"}', JSON, id="embeddings: model missing"),
    pytest.param("/v1/embeddings", b'{"model": "m", "input": {"a": 1}}', JSON, id="embeddings: wrong input"),
]


@pytest.mark.parametrize(("path", "body", "headers"), INVALID)
def test_422_bodies_are_fastapis(apps: Apps, path: str, body: bytes, headers: dict[str, str]) -> None:
    auth = {"authorization": f"Bearer {apps.key}"}
    ours = apps.platform.post(path, content=body, headers={**headers, **auth})
    theirs = apps.reference.post(path, content=body, headers=headers)
    assert (ours.status_code, ours.json()) == (theirs.status_code, theirs.json())
    assert ours.status_code == 422, ours.text


# A route of its own, to compare a valid request's response bytes: aliases,
# defaults, None fields and a status code, as the route's settings ask.
class Echo(BaseModel):
    text: str
    times: int = Field(default=1, ge=1, le=5)


class Echoed(BaseModel):
    text: str
    model_name: str = Field(serialization_alias="model")
    note: str | None = None
    count: int = 0


async def echo(body: Echo, call: Call) -> Echoed:
    return Echoed(text=body.text * body.times, model_name="m", count=body.times)


class _NoMeter:
    """What InferenceRoute sets on a request before a direct call: here, nothing."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope.setdefault("state", {})["meter"] = None
        await self.app(scope, receive, send)


class DirectRoute(APIRoute):
    """The fast path without the key check: only the direct call is under test."""

    def get_route_handler(self) -> Any:
        fastapi_handler = super().get_route_handler()
        handler = direct_handler(self, fastapi_handler)
        assert handler is not None
        return handler


def _echo_app(route_class: type[APIRoute], **settings: Any) -> TestClient:
    app = FastAPI()
    app.state.models = app.state.metrics = None
    router = APIRouter(route_class=route_class)
    router.add_api_route("/echo", echo, methods=["POST"], response_model=Echoed, **settings)
    app.include_router(router)
    app.dependency_overrides[_inference_call] = lambda: None
    app.add_middleware(_NoMeter)
    return TestClient(app)


@pytest.mark.parametrize(
    "settings", [{}, {"response_model_exclude_none": True}, {"status_code": 201}, {"response_model_by_alias": False}]
)
@pytest.mark.parametrize(
    "body",
    [b'{"text": "ab"}', b'{"text": "ab", "times": 3}', b'{"text": "ab", "times": 9}', b'{"times": 2}', b"{"],
)
def test_direct_call_answers_byte_for_byte_as_fastapi(settings: dict[str, Any], body: bytes) -> None:
    ours = _echo_app(DirectRoute, **settings).post("/echo", content=body, headers=JSON)
    theirs = _echo_app(APIRoute, **settings).post("/echo", content=body, headers=JSON)
    assert ours.status_code == theirs.status_code
    assert ours.content == theirs.content
