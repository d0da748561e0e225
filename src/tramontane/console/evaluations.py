"""Evaluations: upload a JSONL dataset and score served models (fine-tunes
included) on it, or red-team them; follow a job, read its summary, comparisons
and chart, download its per-item results. Everything goes through
/v1/evaluations as the signed-in key."""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, File, Form, UploadFile
from starlette.responses import Response

from ..tenancy import Capability
from .web import ApiFailure, ConsoleRoute, CurrentUser, PageError, Redirect, User, api_failure

router = APIRouter(route_class=ConsoleRoute, include_in_schema=False)

TERMINAL = ("SUCCESS", "FAILED", "CANCELLED")
# The metrics a form can ask for without settings (a regex, a schema or a judge's
# rubric are the API's and the CLI's to give).
SIMPLE_METRICS = ("exact_match", "normalized_match", "chrf", "bleu")
DOWNLOADS = {"csv": "text/csv", "jsonl": "application/jsonl"}


def _path(evaluation_id: str, tail: str = "") -> str:
    return f"/v1/evaluations/{quote(evaluation_id, safe='')}{tail}"


async def _page(user: User, *, status: int = 200, message: str | None = None) -> Response:
    jobs = (await user.json("GET", "/v1/evaluations"))["data"]
    served = (await user.json("GET", "/v1/models"))["data"]
    models = [m["id"] for m in served if m["capabilities"].get("completion_chat")]
    families = (await user.json("GET", "/v1/evaluations/attack_families"))["data"]
    return user.render(
        "evaluations.html", status=status, title="Evaluations", jobs=jobs, models=models, families=families,
        metrics=SIMPLE_METRICS, message=message, can_upload=user.can(Capability.FINE_TUNE),
    )


@router.get("/evaluations")
async def evaluations_page(user: CurrentUser) -> Response:
    user.require(Capability.INFERENCE)
    return await _page(user)


async def _create(user: User, body: dict[str, Any]) -> Response:
    try:
        job = await user.json("POST", "/v1/evaluations", json=body)
    except ApiFailure as exc:  # the dataset's bad lines, a target or model not served
        return await _page(user, status=exc.status, message=exc.message)
    raise Redirect(f"/evaluations/{quote(job['id'])}")


@router.post("/evaluations")
async def create_evaluation(
    user: CurrentUser,
    file: Annotated[UploadFile, File()],
    targets: Annotated[list[str], Form(max_length=256)],
    metrics: Annotated[list[str], Form(max_length=32)],
    name: Annotated[str, Form(max_length=200)] = "",
    max_tokens: Annotated[int, Form(ge=1, le=8192)] = 256,
) -> Response:
    """Uploads the dataset (purpose `evals`), then starts the evaluation; the API
    checks every line before the job exists, and its message is shown as is.
    Uploading is the Files API's, which needs the fine-tune capability."""
    user.require(Capability.INFERENCE)
    user.require(Capability.FINE_TUNE)
    data = await file.read()
    filename = file.filename or "dataset.jsonl"
    try:
        uploaded = await user.json(
            "POST", "/v1/files", files={"file": (filename, data, "application/jsonl")}, data={"purpose": "evals"}
        )
    except ApiFailure as exc:
        return await _page(user, status=exc.status, message=exc.message)
    body = {
        "name": name.strip() or None,
        "dataset": uploaded["id"],
        "targets": [{"model": t} for t in targets],
        "metrics": [{"type": m} for m in metrics],
        "completion_args": {"max_tokens": max_tokens},
    }
    return await _create(user, body)


@router.post("/evaluations/red-team")
async def create_red_team(
    user: CurrentUser,
    targets: Annotated[list[str], Form(max_length=256)],
    families: Annotated[list[str] | None, Form(max_length=64)] = None,
    judge_model: Annotated[str, Form(max_length=256)] = "",
) -> Response:
    user.require(Capability.INFERENCE)
    red_team = {"families": families or None, "judge_model": judge_model or None}
    return await _create(user, {"targets": [{"model": t} for t in targets], "red_team": red_team})


def _job_context(job: dict[str, Any]) -> dict[str, Any]:
    summary = job.get("summary") or {}
    errors = [e["data"]["error"] for e in job.get("events", []) if (e.get("data") or {}).get("error")]
    return {"job": job, "summary": summary, "errors": errors, "finished": job["status"] in TERMINAL}


@router.get("/evaluations/{evaluation_id}")
async def evaluation_page(evaluation_id: str, user: CurrentUser) -> Response:
    user.require(Capability.INFERENCE)
    job = await user.json("GET", _path(evaluation_id))
    return user.render("evaluation.html", title=job["name"] or job["id"], **_job_context(job))


@router.post("/evaluations/{evaluation_id}/cancel")
async def cancel_evaluation(evaluation_id: str, user: CurrentUser) -> Response:
    user.require(Capability.INFERENCE)
    try:
        await user.json("POST", _path(evaluation_id, "/cancel"))
    except ApiFailure as exc:
        if exc.status == 404:
            raise
        user.flash(exc.message, "error")  # already finished: say so on its page
    raise Redirect(f"/evaluations/{quote(evaluation_id)}")


@router.get("/evaluations/{evaluation_id}/chart.svg")
async def evaluation_chart(evaluation_id: str, user: CurrentUser) -> Response:
    user.require(Capability.INFERENCE)
    response = await user.call("GET", _path(evaluation_id, "/chart"))
    if response.status_code >= 400:
        raise api_failure(response)
    return Response(response.content, media_type="image/svg+xml")


@router.get("/evaluations/{evaluation_id}/results.{format}")
async def evaluation_results(evaluation_id: str, format: str, user: CurrentUser) -> Response:
    user.require(Capability.INFERENCE)
    if format not in DOWNLOADS:
        raise PageError(404, "Results are downloadable as .csv or .jsonl")
    response = await user.call("GET", _path(evaluation_id, "/results"), params={"format": format})
    if response.status_code >= 400:
        raise api_failure(response)
    # An attachment: model output never renders as a page of this origin.
    filename = quote(f"{evaluation_id}-results.{format}")
    return Response(response.content, media_type=DOWNLOADS[format],
                    headers={"Content-Disposition": f"attachment; filename*=UTF-8''{filename}"})
