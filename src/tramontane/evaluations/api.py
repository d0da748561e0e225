"""`/v1/evaluations`: create, list, read, cancel evaluation and red-team jobs,
download their per-item results (JSONL or CSV), compare two targets, and see the
comparison as a chart. Everything belongs to the key's workspace and is missing
(404) to any other; creating one needs the inference capability (its calls are
inference, metered as that key's)."""

from __future__ import annotations

from typing import Annotated, Any

import anyio.to_thread
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import PlainTextResponse, Response

from ..tenancy import Capability, Principal, require
from . import chart, redteam, report
from .schemas import CreateEvaluation, Metric
from .service import Evaluations
from .views import job_view

InferenceKey = Annotated[Principal, Depends(require(Capability.INFERENCE))]
Page = Annotated[int, Query(ge=0, le=1_000_000)]
PageSize = Annotated[int, Query(ge=1, le=1000)]


async def _service(request: Request) -> Evaluations:
    return request.app.state.evaluations


Service = Annotated[Evaluations, Depends(_service)]

router = APIRouter(prefix="/v1/evaluations", tags=["evaluations"])


@router.post("")
async def create_evaluation(body: CreateEvaluation, principal: InferenceKey, service: Service) -> dict[str, Any]:
    return job_view(await anyio.to_thread.run_sync(service.create, principal, body))


@router.get("")
def list_evaluations(
    principal: InferenceKey,
    service: Service,
    page: Page = 0,
    page_size: PageSize = 100,
    kind: str | None = None,
    status: str | None = None,
) -> dict[str, Any]:
    rows, total = service.list(principal.workspace_id, page=page, page_size=page_size, kind=kind, status=status)
    return {"object": "list", "total": total, "data": [job_view(r, detailed=False) for r in rows],
            "has_more": (page + 1) * page_size < total}


@router.get("/attack_families")
def attack_families(principal: InferenceKey) -> dict[str, Any]:
    """The red-team attack families this server runs, and how many attacks each holds."""
    return {"object": "list", "data": [
        {"name": name, "description": redteam.DESCRIPTIONS[name], "attacks": len(attacks)}
        for name, attacks in redteam.families().items()
    ]}


@router.get("/{evaluation_id}")
def get_evaluation(evaluation_id: str, principal: InferenceKey, service: Service) -> dict[str, Any]:
    return job_view(service.get(principal.workspace_id, evaluation_id))


@router.post("/{evaluation_id}/cancel")
async def cancel_evaluation(evaluation_id: str, principal: InferenceKey, service: Service) -> dict[str, Any]:
    return job_view(await service.cancel(principal.workspace_id, evaluation_id))


@router.get("/{evaluation_id}/results")
def evaluation_results(
    evaluation_id: str,
    principal: InferenceKey,
    service: Service,
    format: Annotated[str, Query(pattern="^(jsonl|csv)$")] = "jsonl",
) -> Response:
    """Every finished item (so far), one line each, in item order."""
    job, results = service.results(principal.workspace_id, evaluation_id)
    filename = f"{job.id}-results.{format}"
    headers = {"Content-Disposition": f'attachment; filename="{filename}"'}
    if format == "jsonl":
        return PlainTextResponse(report.as_jsonl(results), media_type="application/jsonl", headers=headers)
    if job.kind == "evaluation":
        names = report.metric_names([Metric.model_validate(m) for m in job.spec["metrics"]])
        body = report.as_csv(results, names)
    else:
        body = report.red_team_csv(results)
    return PlainTextResponse(body, media_type="text/csv", headers=headers)


@router.get("/{evaluation_id}/comparison")
def evaluation_comparison(
    evaluation_id: str,
    principal: InferenceKey,
    service: Service,
    baseline: str,
    candidate: str,
    metric: str,
) -> dict[str, Any]:
    """The paired comparison of two targets on one metric, over the items both answered."""
    return service.comparison(principal.workspace_id, evaluation_id, baseline, candidate, metric)


@router.get("/{evaluation_id}/chart")
def evaluation_chart(evaluation_id: str, principal: InferenceKey, service: Service) -> Response:
    """The targets' means and 95% intervals per metric (or attack success rate per family), as SVG."""
    job = service.get(principal.workspace_id, evaluation_id)
    return Response(chart.svg(job), media_type="image/svg+xml",
                    headers={"Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'"})
