"""The sandbox REST API: a FastAPI router under /v1/sandboxes over a `SandboxManager`.

`router` is module-level; its routes get the manager and the caller's tenant (the
owner) through the `sandbox_manager` and `sandbox_owner` dependencies, which
`create_router(manager, owner=...)` binds for the app that mounts it.

Sandbox code raises domain errors (`tramontane.errors`); the routes answer them with
the status the platform's one table gives their kind and an `{"error": {...}}` body,
whatever app mounts the router, and request validation failures as 422 in that same
shape. Streamed endpoints answer NDJSON, or
server-sent events when the request accepts text/event-stream; an error before the
first event is a plain HTTP error, one after it is a final {"type": "error"} event.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from contextlib import aclosing
from typing import Annotated, Any
from urllib.parse import parse_qsl

from fastapi import APIRouter, Depends, Query, Request, Response
from starlette.requests import HTTPConnection
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from fastapi.routing import APIRoute

from ..errors import APIError, TramontaneError, as_api_error
from .errors import NotFound, TooLarge
from .manager import SandboxManager
from .metrics import measure
from .sandbox import SandboxState
from .schemas import (
    CodeBody,
    CommandBody,
    CommandResultModel,
    CreateSandboxBody,
    EntryList,
    EntryModel,
    KilledModel,
    MakeDirModel,
    MetricsModel,
    ProcessList,
    ProcessModel,
    RenameBody,
    SandboxList,
    SandboxModel,
    StartedModel,
    TimeoutBody,
)


def _validation_error(exc: RequestValidationError) -> JSONResponse:
    first = exc.errors()[0] if exc.errors() else {}
    location = [str(part) for part in first.get("loc", ()) if part not in ("body", "query", "path")]
    message = f"{'.'.join(location) or 'request'}: {first.get('msg', 'invalid')}"
    return APIError(422, message, code="invalid_value", param=".".join(location) or None).response()


class _SandboxRoute(APIRoute):
    """Answers domain and validation errors in the API's error shape."""

    def get_route_handler(self) -> Callable[[Request], Any]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            try:
                return await handler(request)
            except TramontaneError as exc:
                return as_api_error(exc).response()
            except RequestValidationError as exc:
                return _validation_error(exc)

        return route


def _event(event: dict[str, Any], sse: bool) -> bytes:
    data = json.dumps({k: v for k, v in event.items() if v is not None})
    if sse:
        return f"event: {event['type']}\ndata: {data}\n\n".encode()
    return data.encode() + b"\n"


def _error_event(exc: TramontaneError) -> dict[str, Any]:
    return {"type": "error", **as_api_error(exc).body()}


async def _stream(request: Request, events: AsyncGenerator[dict[str, Any], None]) -> StreamingResponse:
    first = await anext(events)  # errors before any event become the HTTP status
    sse = "text/event-stream" in request.headers.get("accept", "")

    async def body() -> AsyncIterator[bytes]:
        try:
            yield _event(first, sse)
            async for event in events:
                yield _event(event, sse)
        except TramontaneError as exc:
            yield _event(_error_event(exc), sse)
        finally:
            await events.aclose()

    media = "text/event-stream" if sse else "application/x-ndjson"
    return StreamingResponse(body(), media_type=media, headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def _as_dicts(events: AsyncGenerator[Any, None]) -> AsyncGenerator[dict[str, Any], None]:
    async with aclosing(events):
        async for event in events:
            yield dataclasses.asdict(event)


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise TooLarge(f"file is larger than {limit} bytes", param="body")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise TooLarge(f"file is larger than {limit} bytes", param="body")
        chunks.append(chunk)
    return b"".join(chunks)


# -- dependencies

_MANAGER = "tramontane.sandbox.manager"
_OWNER = "tramontane.sandbox.owner"


def sandbox_manager(request: HTTPConnection) -> SandboxManager:
    """The manager the mounting app bound with `create_router`."""
    return request.scope[_MANAGER]  # type: ignore[no-any-return]


def sandbox_owner(request: HTTPConnection) -> str | None:
    """The caller's tenant: sandboxes are created under it, and any other tenant's
    sandbox answers 404, as if absent. None: the API is unscoped."""
    return request.scope.get(_OWNER)


Manager = Annotated[SandboxManager, Depends(sandbox_manager)]
Owner = Annotated[str | None, Depends(sandbox_owner)]

router = APIRouter(prefix="/v1/sandboxes", tags=["sandboxes"], route_class=_SandboxRoute)


def _unowned() -> None:
    return None


def create_router(
    manager: SandboxManager,
    *,
    dependencies: Sequence[Any] = (),
    owner: Callable[..., Any] = _unowned,
) -> APIRouter:
    """`router` bound to `manager`; the app must run `manager.start()` and `shutdown()`
    in its lifespan. `owner` is a dependency naming the caller's tenant (e.g. its
    workspace id)."""

    # A default, not an annotation: `owner` is local, and annotations are strings here.
    async def bind(request: HTTPConnection, who: str | None = Depends(owner)) -> None:
        request.scope[_MANAGER] = manager
        request.scope[_OWNER] = who

    # Their routes use this module's dependencies.
    from .api_io import io_router
    from .templates.api import router as templates_router

    # Dependencies given at inclusion run before each route's own.
    bound = APIRouter()
    for routes in (router, io_router, templates_router):
        bound.include_router(routes, dependencies=[Depends(bind), *dependencies])
    return bound


@router.post("", status_code=201, response_model=SandboxModel)
async def create_sandbox(body: CreateSandboxBody, who: Owner, manager: Manager) -> SandboxModel:
    spec = dataclasses.replace(body.spec(manager.config.default_limits), owner=who)
    sandbox = await manager.create(spec)
    return SandboxModel.of(sandbox.info())


@router.get("", response_model=SandboxList)
async def list_sandboxes(
    who: Owner,
    manager: Manager,
    state: SandboxState | None = None,
    metadata: str | None = Query(None, description='URL-encoded pairs, e.g. "user=alice&app=x".'),
) -> SandboxList:
    wanted = dict(parse_qsl(metadata)) if metadata else None
    found = manager.list(metadata=wanted, state=state, owner=who)
    return SandboxList(sandboxes=[SandboxModel.of(s.info()) for s in found])


@router.get("/{sandbox_id}", response_model=SandboxModel)
async def get_sandbox(sandbox_id: str, who: Owner, manager: Manager) -> SandboxModel:
    return SandboxModel.of(manager.get(sandbox_id, who).info())


@router.delete("/{sandbox_id}", status_code=204)
async def kill_sandbox(sandbox_id: str, who: Owner, manager: Manager) -> Response:
    await manager.kill(sandbox_id, who)
    return Response(status_code=204)


@router.post("/{sandbox_id}/timeout", response_model=SandboxModel)
async def set_timeout(sandbox_id: str, body: TimeoutBody, who: Owner, manager: Manager) -> SandboxModel:
    return SandboxModel.of(manager.set_timeout(sandbox_id, body.timeout, who).info())


@router.post("/{sandbox_id}/pause", response_model=SandboxModel)
async def pause(sandbox_id: str, who: Owner, manager: Manager) -> SandboxModel:
    return SandboxModel.of((await manager.pause(sandbox_id, who)).info())


@router.post("/{sandbox_id}/resume", response_model=SandboxModel)
async def resume(sandbox_id: str, who: Owner, manager: Manager) -> SandboxModel:
    return SandboxModel.of((await manager.resume(sandbox_id, who)).info())


@router.get("/{sandbox_id}/metrics", response_model=MetricsModel)
async def metrics(sandbox_id: str, who: Owner, manager: Manager) -> MetricsModel:
    return MetricsModel.of(await measure(manager.get(sandbox_id, who)))


# -- commands


@router.post("/{sandbox_id}/commands", response_model=None)
async def run_command(
    sandbox_id: str, body: CommandBody, request: Request, who: Owner, manager: Manager
) -> Response | StartedModel:
    commands = manager.get(sandbox_id, who).commands
    cwd, envs, timeout = body.cwd, body.envs, body.timeout
    if body.stream:
        events = commands.stream(body.cmd, cwd=cwd, envs=envs, timeout=timeout, background=body.background)
        return await _stream(request, _as_dicts(events))
    if body.background:
        return StartedModel(pid=await commands.start(body.cmd, cwd=cwd, envs=envs, timeout=timeout))
    result = await commands.run(body.cmd, cwd=cwd, envs=envs, timeout=timeout)
    return JSONResponse(CommandResultModel(**dataclasses.asdict(result)).model_dump())


@router.delete("/{sandbox_id}/processes", response_model=KilledModel)
async def kill_all_processes(sandbox_id: str, who: Owner, manager: Manager) -> KilledModel:
    """Kills every process of the sandbox, the code interpreter included (its state
    is lost): the way out of a fork bomb that holds every pid."""
    return KilledModel(killed=await manager.get(sandbox_id, who).commands.kill_all())


@router.get("/{sandbox_id}/processes", response_model=ProcessList)
async def list_processes(sandbox_id: str, who: Owner, manager: Manager) -> ProcessList:
    processes = await manager.get(sandbox_id, who).commands.list()
    return ProcessList(processes=[ProcessModel.of(p) for p in processes])


@router.delete("/{sandbox_id}/processes/{pid}", status_code=204)
async def kill_process(
    sandbox_id: str, pid: int, who: Owner, manager: Manager, signal: int = Query(9, ge=1, le=64)
) -> Response:
    if not await manager.get(sandbox_id, who).commands.kill(pid, signal):
        raise NotFound(f"no process {pid} in the sandbox", code="process_not_found", param="pid")
    return Response(status_code=204)


# -- files


@router.get("/{sandbox_id}/files", response_class=Response)
async def download(sandbox_id: str, path: str, who: Owner, manager: Manager) -> Response:
    data = await manager.get(sandbox_id, who).files.read(path)
    return Response(data, media_type="application/octet-stream")


@router.put("/{sandbox_id}/files", response_model=EntryModel)
async def upload(sandbox_id: str, path: str, request: Request, who: Owner, manager: Manager) -> EntryModel:
    files = manager.get(sandbox_id, who).files
    return EntryModel.of(await files.write(path, await _read_body(request, files.max_file_bytes)))


@router.delete("/{sandbox_id}/files", status_code=204)
async def remove(sandbox_id: str, path: str, who: Owner, manager: Manager) -> Response:
    await manager.get(sandbox_id, who).files.remove(path)
    return Response(status_code=204)


@router.get("/{sandbox_id}/files/list", response_model=EntryList)
async def list_files(
    sandbox_id: str, who: Owner, manager: Manager, path: str = ".", depth: int = 1
) -> EntryList:
    entries = await manager.get(sandbox_id, who).files.list(path, depth)
    return EntryList(entries=[EntryModel.of(e) for e in entries])


@router.get("/{sandbox_id}/files/info", response_model=EntryModel)
async def file_info(sandbox_id: str, path: str, who: Owner, manager: Manager) -> EntryModel:
    return EntryModel.of(await manager.get(sandbox_id, who).files.get_info(path))


@router.post("/{sandbox_id}/files/mkdir", response_model=MakeDirModel)
async def make_dir(sandbox_id: str, path: str, who: Owner, manager: Manager) -> MakeDirModel:
    return MakeDirModel(created=await manager.get(sandbox_id, who).files.make_dir(path))


@router.post("/{sandbox_id}/files/rename", response_model=EntryModel)
async def rename(sandbox_id: str, body: RenameBody, who: Owner, manager: Manager) -> EntryModel:
    return EntryModel.of(await manager.get(sandbox_id, who).files.rename(body.old_path, body.new_path))


# -- code interpreter


@router.post("/{sandbox_id}/code", response_model=None)
async def run_code(sandbox_id: str, body: CodeBody, request: Request, who: Owner, manager: Manager) -> Response:
    interpreter = manager.get(sandbox_id, who).interpreter
    if not body.stream:
        execution = await interpreter.run(body.code, timeout=body.timeout)
        return JSONResponse(dataclasses.asdict(execution))

    async def events() -> AsyncGenerator[dict[str, Any], None]:
        async with aclosing(interpreter.stream(body.code, timeout=body.timeout)) as stream:
            async for event in stream:
                if event.execution is not None:
                    yield {"type": "result", **dataclasses.asdict(event.execution)}
                else:
                    yield {"type": event.type, "data": event.data}

    return await _stream(request, events())
