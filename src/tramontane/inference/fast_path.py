"""The request path of the inference routes, and what it skips of FastAPI's.

FastAPI's own handler, on every request, parses the content type, decodes the JSON
into dicts, validates those, solves each dependency (with its telemetry hooks, caches
and exit stacks for `yield` dependencies), revalidates the returned model and only
then serializes it: measured in `benchmarks/http_overhead.py`, about a third of the
app's time on the path of a chat completion. This module bypasses that, in three ways:

1. `InferenceRoute` checks the caller's key (401/403/429) before the route's
   parameters are read, creates its `RequestMeter`, and finishes the meter once the
   response has been sent, streaming included: one call before the handler and one
   after the response, instead of `yield` dependencies.
2. An endpoint written `async def f(body: SomeModel, call: Call)` is called directly
   (`direct_handler`): pydantic validates the body straight from its bytes and the
   returned model is serialized straight to bytes, with the route's response
   settings. Anything this path does not take as it is (another content type, a body
   pydantic rejects) goes to FastAPI's handler, so every error keeps FastAPI's exact
   422 body, which the mistralai SDK parses.
3. Router order (set in `platform/features.inference_api`): the probes first, since
   FastAPI builds a router's routes on the first request matched against them and a
   replica's readiness probe is on the path of every wake from zero; and each
   inference router included in the app itself, not nested, since FastAPI matches a
   request again at every level of nested routers.

What stays FastAPI's: the route is an `APIRoute`, so its OpenAPI operation, its
exception handlers and the app's middleware are unchanged. `tests/server/
test_fast_path.py` proves it: the inference routes' 422 bodies and OpenAPI
operations are identical to those of plain FastAPI routes over the same endpoints,
and a valid request's response bytes equal FastAPI's serialization."""

from __future__ import annotations

import inspect
import typing
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.routing import APIRoute
from pydantic import BaseModel, ValidationError
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from ..engine import Tenant
from ..tenancy import Capability, Principal, enter_request, get_tenancy
from .generation import Share, current_share
from .metering import RequestMeter
from .metrics import Metrics
from .registry import ModelRegistry

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


class InferenceRoute(APIRoute):
    """A route of the inference API. Its key is checked (401/403/429) before the
    route's parameters are read, and the request is metered once its response has
    been sent. A wrapper around the route's handler rather than yield dependencies,
    which FastAPI runs through exit stacks and shielded context managers on every
    request: here it is one call before the handler and one after the response.
    An endpoint taking its body and a `Call` is called directly (`direct_handler`);
    any other goes through FastAPI's handler."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, _ThenFinish]]:
        fastapi_handler = super().get_route_handler()
        handle = direct_handler(self, fastapi_handler) or fastapi_handler

        async def gated(request: Request) -> _ThenFinish:
            principal = await enter_request(request, Capability.INFERENCE)
            tenancy = get_tenancy(request)
            meter = request.state.meter = RequestMeter(tenancy, principal, request)
            # The engine shares its steps between workspaces (and their keys) by weight.
            weight = tenancy.scheduling_weight(principal)
            current_share.set(Share(Tenant(principal.workspace_id, principal.key_id, weight)))
            try:
                response = await handle(request)
            except BaseException:
                await meter.finish()
                raise
            return _ThenFinish(response, meter)

        return gated


class _ThenFinish:
    """The ASGI app that sends `response`, then finishes `meter`'s request."""

    def __init__(self, response: Response, meter: RequestMeter):
        self.response = response
        self.meter = meter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self.response(scope, receive, send)
        finally:
            await self.meter.finish()


# Plain attribute reads, async so that FastAPI does not hop to a worker thread for them.
async def _meter(request: Request) -> RequestMeter:
    return request.state.meter


async def _principal(request: Request) -> Principal:
    return request.state.meter.principal


Metered = Annotated[RequestMeter, Depends(_meter)]
InferenceKey = Annotated[Principal, Depends(_principal)]
