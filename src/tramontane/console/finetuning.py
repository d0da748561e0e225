"""Fine-tuning: upload a JSONL training file (checked line by line first), start a
job (a chat model's LoRA adapter, or a classifier head over an embedding model),
follow its status and loss curve live, then try the model in the playground."""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, File, Form, UploadFile
from starlette.responses import Response

from ..finetune.classifier import parse_classifier_jsonl
from ..finetune.dataset import DatasetError, parse_chat_jsonl
from ..finetune.jobs import TERMINAL, VALIDATED
from ..tenancy import Capability
from .web import ApiFailure, ConsoleRoute, CurrentUser, PageError, Redirect, User

router = APIRouter(route_class=ConsoleRoute, include_in_schema=False)

MAX_ERRORS_SHOWN = 50
# What each kind of training file holds, and the job type it trains.
PARSERS = {"completion": parse_chat_jsonl, "classifier": parse_classifier_jsonl}


async def _page(
    user: User, *, errors: list[str] | None = None, status: int = 200, message: str | None = None
) -> Response:
    files = (await user.json("GET", "/v1/files", params={"purpose": "fine-tune"}))["data"]
    jobs = (await user.json("GET", "/v1/fine_tuning/jobs"))["data"]
    models: list[str] = []
    embedding_models: list[str] = []
    if user.principal.can(Capability.INFERENCE):  # which models there are is the inference API's to say
        served = [m for m in (await user.json("GET", "/v1/models"))["data"] if m.get("type") == "base"]
        models = [m["id"] for m in served if m["capabilities"].get("completion_chat")]
        # An embedding model's card claims no capability: neither chat nor classification.
        embedding_models = [m["id"] for m in served if not any(m["capabilities"].values())]
    return user.render(
        "finetuning.html", status=status, title="Fine-tuning", files=files, jobs=jobs, models=models,
        embedding_models=embedding_models, errors=errors, message=message, max_errors=MAX_ERRORS_SHOWN,
    )


@router.get("/fine-tuning")
async def finetuning_page(user: CurrentUser) -> Response:
    user.require(Capability.FINE_TUNE)
    return await _page(user)


@router.post("/fine-tuning/files")
async def upload_training_file(
    user: CurrentUser, file: Annotated[UploadFile, File()], kind: Annotated[str, Form(max_length=16)] = "completion"
) -> Response:
    """Checks every line before uploading (as chat examples, or as labelled texts for
    a classifier): a file with errors is refused whole, each bad line named, so
    nothing half-valid lands in the workspace."""
    user.require(Capability.FINE_TUNE)
    parse = PARSERS.get(kind)
    if parse is None:
        raise PageError(400, f"Unknown kind of training data '{kind}'")
    data = await file.read()
    name = file.filename or "training.jsonl"
    try:
        examples = parse(data, name)
    except DatasetError as exc:
        return await _page(user, errors=exc.errors, status=400)
    if not examples:
        return await _page(user, errors=[f"{name}: the file has no examples"], status=400)
    uploaded = await user.json(
        "POST", "/v1/files", files={"file": (name, data, "application/jsonl")}, data={"purpose": "fine-tune"}
    )
    user.flash(f"Uploaded {uploaded['filename']} ({len(examples)} examples) as {uploaded['id']}.", "ok")
    raise Redirect("/fine-tuning")


def _optional_number(value: str, name: str, kind: type) -> Any:
    if not value.strip():
        return None
    try:
        return kind(value)
    except ValueError:
        raise PageError(400, f"{name} must be a number") from None


@router.post("/fine-tuning/jobs")
async def create_job(
    user: CurrentUser,
    model: Annotated[str, Form(max_length=256)],
    training_file: Annotated[str, Form(max_length=256)],
    suffix: Annotated[str, Form(max_length=64)] = "",
    training_steps: Annotated[str, Form(max_length=12)] = "",
    learning_rate: Annotated[str, Form(max_length=32)] = "",
    job_type: Annotated[str, Form(max_length=16)] = "completion",
) -> Response:
    user.require(Capability.FINE_TUNE)
    if job_type not in PARSERS:
        raise PageError(400, f"Unknown job type '{job_type}'")
    hyperparameters = {
        k: v
        for k, v in {
            "training_steps": _optional_number(training_steps, "training steps", int),
            "learning_rate": _optional_number(learning_rate, "learning rate", float),
        }.items()
        if v is not None
    }
    body = {
        "model": model,
        "job_type": job_type,
        "training_files": [{"file_id": training_file}],
        "hyperparameters": hyperparameters,
    }
    if suffix.strip():
        body["suffix"] = suffix.strip()
    try:
        job = await user.json("POST", "/v1/fine_tuning/jobs", json=body)
    except ApiFailure as exc:
        return await _page(user, status=exc.status, message=exc.message)
    raise Redirect(f"/fine-tuning/jobs/{quote(job['id'])}")


def _job_context(job: dict[str, Any]) -> dict[str, Any]:
    checkpoints = sorted(job.get("checkpoints") or [], key=lambda c: c["step_number"])
    steps = [c["step_number"] for c in checkpoints]
    datasets = [{"label": "train loss", "data": [c["metrics"].get("train_loss") for c in checkpoints]}]
    if any(c["metrics"].get("valid_loss") is not None for c in checkpoints):
        datasets.append({"label": "validation loss", "data": [c["metrics"].get("valid_loss") for c in checkpoints]})
    errors = [e for event in job.get("events", []) for e in (event.get("data") or {}).get("errors", [])]
    return {
        "job": job,
        "loss": {"type": "line", "labels": steps, "datasets": datasets, "x_title": "step", "y_title": "loss"},
        "errors": errors,
        "finished": job["status"] in TERMINAL,
        "startable": job["status"] == VALIDATED,
    }


@router.get("/fine-tuning/jobs/{job_id}")
async def job_page(job_id: str, user: CurrentUser) -> Response:
    user.require(Capability.FINE_TUNE)
    job = await user.json("GET", f"/v1/fine_tuning/jobs/{quote(job_id, safe='')}")
    return user.render("finetuning_job.html", title=job_id, **_job_context(job))


@router.get("/fine-tuning/jobs/{job_id}/live")
async def job_live(job_id: str, user: CurrentUser) -> Response:
    """The job's status and loss curve, polled by its page until the job ends."""
    user.require(Capability.FINE_TUNE)
    job = await user.json("GET", f"/v1/fine_tuning/jobs/{quote(job_id, safe='')}")
    context = _job_context(job)
    # 286: htmx stops polling once the job has ended.
    return user.render("finetuning_live.html", status=286 if context["finished"] else 200, **context)


@router.post("/fine-tuning/jobs/{job_id}/cancel")
async def cancel_job(job_id: str, user: CurrentUser) -> Response:
    user.require(Capability.FINE_TUNE)
    await user.json("POST", f"/v1/fine_tuning/jobs/{quote(job_id, safe='')}/cancel")
    raise Redirect(f"/fine-tuning/jobs/{quote(job_id)}")


@router.post("/fine-tuning/jobs/{job_id}/start")
async def start_job(job_id: str, user: CurrentUser) -> Response:
    user.require(Capability.FINE_TUNE)
    await user.json("POST", f"/v1/fine_tuning/jobs/{quote(job_id, safe='')}/start")
    raise Redirect(f"/fine-tuning/jobs/{quote(job_id)}")
