"""What an inference endpoint gets besides its body, and calling such endpoints
without FastAPI's per-request machinery.

An endpoint written `async def f(body: SomeModel, call: Call)` is called directly
by its `InferenceRoute`: pydantic validates the body straight from its bytes and
the returned model is serialized straight to bytes. FastAPI's own handler would
parse the content type, decode the JSON into dicts, validate those, solve each
dependency (with its telemetry hooks and caches), revalidate the returned model
and only then serialize it: measured in `benchmarks/http_overhead.py`, about a
third of the app's time on the path of a chat completion. The route stays a
FastAPI route: its OpenAPI operation, error handlers and middleware are the same.

A request that this path does not take as it is (another content type, a body
that pydantic rejects) goes to FastAPI's handler, so that every error keeps
FastAPI's exact 422 body, which the mistralai SDK parses."""

from __future__ import annotations

import inspect
import typing
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import Depends, Request
from fastapi.routing import APIRoute
from pydantic import BaseModel, ValidationError
from starlette.responses import Response

from ..tenancy import Principal
from .metrics import Metrics
from .registry import ModelRegistry

if TYPE_CHECKING:
    from .metering import RequestMeter

Handler = Callable[[Request], Awaitable[Response]]


@dataclass(frozen=True, slots=True)
class InferenceCall:
    """One inference request as its endpoint sees it: the app's models and
    metrics, the request, and its meter (with the caller's key)."""

    request: Request
    models: ModelRegistry
    metrics: Metrics
    meter: RequestMeter

    @classmethod
    def of(cls, request: Request) -> InferenceCall:
        # The meter is set by InferenceRoute once the key has been checked.
        state = request.app.state
        return cls(request, state.models, state.metrics, request.state.meter)

    @property
    def principal(self) -> Principal:
        return self.meter.principal


# Async, so that FastAPI does not hop to a worker thread for it (its handler
# solves it only for the requests that go there: see the module's docstring).
async def _inference_call(request: Request) -> InferenceCall:
    return InferenceCall.of(request)


Call = Annotated[InferenceCall, Depends(_inference_call)]


def direct_handler(route: APIRoute, fastapi_handler: Handler) -> Handler | None:
    """The handler calling `route`'s endpoint directly when it is shaped
    `async def f(body: SomeModel, call: Call)`, else None; `fastapi_handler`
    serves the requests it does not take."""
    endpoint = route.endpoint
    names = list(inspect.signature(endpoint).parameters)
    hints = typing.get_type_hints(endpoint, include_extras=True)
    if not inspect.iscoroutinefunction(endpoint) or len(names) != 2 or hints.get(names[1]) != Call:
        return None
    body_model = hints.get(names[0])
    if not (isinstance(body_model, type) and issubclass(body_model, BaseModel)):
        return None
    # The route's response settings, as FastAPI applies them.
    dump_options: dict[str, Any] = {
        "include": route.response_model_include,
        "exclude": route.response_model_exclude,
        "by_alias": route.response_model_by_alias,
        "exclude_unset": route.response_model_exclude_unset,
        "exclude_defaults": route.response_model_exclude_defaults,
        "exclude_none": route.response_model_exclude_none,
    }
    status_code = route.status_code or 200

    async def handle(request: Request) -> Response:
        body = await request.body()  # kept by the request: FastAPI's handler reads it again
        if not _is_json(request.headers.get("content-type")):
            return await fastapi_handler(request)
        try:
            parsed = body_model.model_validate_json(body)
        except ValidationError:
            return await fastapi_handler(request)  # raises its 422 for the same body
        result = await endpoint(parsed, InferenceCall.of(request))
        if isinstance(result, Response):
            return result
        assert isinstance(result, BaseModel), f"{route.path} returned a {type(result).__name__}"
        return Response(result.model_dump_json(**dump_options), status_code, media_type="application/json")

    return handle


def _is_json(content_type: str | None) -> bool:
    """Whether the body is plain `application/json` (what both SDKs send); FastAPI's
    handler reads the other JSON types (`+json`, parameters in other cases)."""
    if content_type is None:
        return False
    media_type, _, _ = content_type.partition(";")
    return media_type.strip().lower() == "application/json"
