"""Deployments: list, create (form or pasted YAML), scale, delete, follow logs and load."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import AsyncIterator
from typing import Annotated, Any
from urllib.parse import quote

import anyio
import yaml
from fastapi import APIRouter, Form
from starlette.responses import Response, StreamingResponse

from ..control.states import ReplicaState
from ..tenancy import Capability
from .web import ApiFailure, ConsoleRoute, CurrentUser, PageError, Redirect, User, api_failure

router = APIRouter(route_class=ConsoleRoute, include_in_schema=False)

LOG_TAIL = 300
# How long one log stream lasts before the browser reconnects (and is checked again).
FOLLOW_FOR_S = 60.0
MAX_YAML_BYTES = 64 * 1024


def _summary(view: dict[str, Any]) -> dict[str, Any]:
    states = Counter(r["state"].lower() for r in view["replicas"])
    return {**view, "states": sorted(states.items()), "ready": states.get(ReplicaState.RUNNING.value.lower(), 0)}


async def _list(user: User) -> list[dict[str, Any]]:
    return [_summary(d) for d in (await user.json("GET", "/v1/deployments"))["data"]]


def _spec_from_form(form: dict[str, str]) -> dict[str, Any]:
    if form.get("yaml", "").strip():
        text = form["yaml"]
        if len(text.encode()) > MAX_YAML_BYTES:
            raise PageError(413, f"The YAML is over {MAX_YAML_BYTES // 1024} KiB")
        try:
            spec = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ApiFailure(400, f"The YAML does not parse: {exc}") from None
        if not isinstance(spec, dict):
            raise ApiFailure(400, "The YAML must be a mapping of the deployment's fields")
        return spec
    spec: dict[str, Any] = {"name": form.get("name", "").strip(), "command": form.get("command", "").strip()}
    if form.get("path_prefix", "").strip():
        spec["routes"] = {"path_prefix": form["path_prefix"].strip()}
    scaling = {}
    for field in ("min_replicas", "max_replicas"):
        if form.get(field, "").strip():
            try:
                scaling[field] = int(form[field])
            except ValueError:
                raise ApiFailure(400, f"{field} must be a whole number") from None
    if scaling:
        spec["scaling"] = scaling
    return spec


@router.get("/deployments")
async def deployments_page(user: CurrentUser) -> Response:
    user.require(Capability.DEPLOY)
    return user.render("deployments.html", title="Deployments", deployments=await _list(user), form={}, error=None)


@router.post("/deployments")
async def create_deployment(
    user: CurrentUser,
    name: Annotated[str, Form(max_length=200)] = "",
    command: Annotated[str, Form(max_length=10_000)] = "",
    min_replicas: Annotated[str, Form(max_length=10)] = "",
    max_replicas: Annotated[str, Form(max_length=10)] = "",
    path_prefix: Annotated[str, Form(max_length=1000)] = "",
    yaml_text: Annotated[str, Form(alias="yaml", max_length=MAX_YAML_BYTES)] = "",
) -> Response:
    user.require(Capability.DEPLOY)
    form = {"name": name, "command": command, "min_replicas": min_replicas, "max_replicas": max_replicas,
            "path_prefix": path_prefix, "yaml": yaml_text}
    try:
        created = await user.json("POST", "/v1/deployments", json=_spec_from_form(form))
    except ApiFailure as exc:
        # The form comes back filled in, with the API's reason.
        return user.render(
            "deployments.html", status=exc.status, title="Deployments", deployments=await _list(user), form=form,
            error=exc.message,
        )
    user.flash(f"Deployment {created['name']} created.", "ok")
    raise Redirect(f"/deployments/{quote(created['name'])}")


@router.get("/deployments/{name}")
async def deployment_page(name: str, user: CurrentUser) -> Response:
    user.require(Capability.DEPLOY)
    view = _summary(await user.json("GET", f"/v1/deployments/{quote(name, safe='')}"))
    spec_yaml = yaml.safe_dump(view["spec"], sort_keys=False)
    return user.render("deployment.html", title=name, d=view, spec_yaml=spec_yaml)


@router.get("/deployments/{name}/status")
async def deployment_status(name: str, user: CurrentUser) -> Response:
    """The replicas table and a load sample, polled by the page."""
    user.require(Capability.DEPLOY)
    view = _summary(await user.json("GET", f"/v1/deployments/{quote(name, safe='')}"))
    return user.render("deployment_status.html", d=view)


@router.get("/deployments/{name}/metrics")
async def deployment_metrics(name: str, user: CurrentUser) -> Response:
    """Request rate, latency and replicas over the last hour, as charts; polled by the page."""
    user.require(Capability.DEPLOY)
    history = await user.json("GET", f"/v1/deployments/{quote(name, safe='')}/metrics")
    return user.render("deployment_metrics.html", charts=load_charts(history))


def load_charts(history: dict[str, Any]) -> dict[str, Any]:
    points = history["data"]
    labels = [time.strftime("%H:%M:%S", time.gmtime(p["t"])) for p in points]

    def line(*series: tuple[str, str]) -> dict[str, Any]:
        return {"type": "line", "labels": labels,
                "datasets": [{"label": label, "data": [p[key] for p in points]} for key, label in series]}

    return {
        "traffic": line(("requests_per_s", "requests/s"), ("replicas", "replicas")) | {"x_title": "UTC"},
        "latency": line(("mean_latency_ms", "mean"), ("max_latency_ms", "max")) | {"y_title": "ms", "x_title": "UTC"},
    }


@router.get("/deployments/{name}/logs/stream")
async def deployment_logs(name: str, user: CurrentUser) -> Response:
    """The API's log stream (`?follow=true`), passed through as the signed-in key:
    the last lines as a `tail` event, then new lines as replicas write them. It ends
    after FOLLOW_FOR_S; the browser's EventSource then reconnects, which checks the
    session and its key again (a revoked key stops the logs within that time)."""
    user.require(Capability.DEPLOY)
    upstream = await user.api.send(
        user.api.build_request(
            "GET",
            f"/v1/deployments/{quote(name, safe='')}/logs",
            params={"tail": LOG_TAIL, "follow": "true"},
            headers={"Authorization": f"Bearer {user.session.key}", "Accept": "text/event-stream"},
        ),
        stream=True,
    )
    if upstream.status_code >= 400:
        await upstream.aread()
        await upstream.aclose()
        raise api_failure(upstream)

    async def events() -> AsyncIterator[bytes]:
        yield b"retry: 1000\n\n"  # reconnect after a second, not the browser's default three
        try:
            with anyio.move_on_after(FOLLOW_FOR_S):
                async for chunk in upstream.aiter_raw():
                    yield chunk
        finally:
            await upstream.aclose()

    return StreamingResponse(
        events(), media_type="text/event-stream", headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
    )


@router.post("/deployments/{name}/scale")
async def scale_deployment(name: str, user: CurrentUser, replicas: Annotated[str, Form(max_length=10)]) -> Response:
    user.require(Capability.DEPLOY)
    try:
        count = int(replicas)
    except ValueError:
        raise PageError(400, "replicas must be a whole number") from None
    await user.json("POST", f"/v1/deployments/{quote(name, safe='')}/scale", json={"replicas": count})
    user.flash(f"Scaling {name} to {count} replica{'s' if count != 1 else ''}.", "ok")
    raise Redirect(f"/deployments/{quote(name)}")


@router.post("/deployments/{name}/delete")
async def delete_deployment(name: str, user: CurrentUser) -> Response:
    user.require(Capability.DEPLOY)
    await user.json("DELETE", f"/v1/deployments/{quote(name, safe='')}")
    user.flash(f"Deployment {name} deleted.", "ok")
    raise Redirect("/deployments")
