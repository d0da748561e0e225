"""Usage: tokens, requests and measured energy per day, per model and per key, as
charts with their table beneath, and as CSV.

An admin key reads its organisation's usage through the admin API (optionally one
workspace's); any other key sees its own usage only, which is about itself and no
one else."""

from __future__ import annotations

import csv
import io
from collections import defaultdict
from datetime import date, timedelta
from typing import Any

import anyio.to_thread
from fastapi import APIRouter, Request
from starlette.responses import Response

from ..store.types import utcnow
from ..tenancy import Capability, get_tenancy, usage
from .web import ConsoleRoute, CurrentUser, PageError, User

router = APIRouter(route_class=ConsoleRoute, include_in_schema=False)

DEFAULT_DAYS = 30
MAX_DAYS = 366
GROUP_BY = ("day", "model", "key")
CSV_COLUMNS = (
    "day", "model", "key", "requests", "prompt_tokens", "completion_tokens", "total_tokens", "energy_wh",
    "mean_latency_ms",
)


def _day(value: str | None, default: date) -> date:
    if not value:
        return default
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise PageError(400, f"'{value}' is not a date (YYYY-MM-DD)") from None


async def _rows(user: User, request: Request, since: date, until: date, workspace_id: str | None) -> list[dict]:
    """Usage rows grouped by day, model and key, each key a 'tmt_<id>'."""
    if user.principal.can(Capability.ADMIN):
        params: list[tuple[str, str]] = [("group_by", g) for g in GROUP_BY]
        params += [("since", since.isoformat()), ("until", until.isoformat())]
        if workspace_id:
            params.append(("workspace_id", workspace_id))
        rows = (await user.json("GET", "/v1/admin/usage", params=params))["data"]
    else:
        store = get_tenancy(request).store
        rows = await anyio.to_thread.run_sync(
            lambda: usage.report(store, group_by=GROUP_BY, key_id=user.principal.key_id, since=since, until=until)
        )
    for row in rows:
        row["day"] = str(row["day"])
        row["key"] = f"tmt_{row['key']}"
    return rows


def _window(request: Request) -> tuple[date, date]:
    today = utcnow().date()
    until = _day(request.query_params.get("until"), today)
    since = _day(request.query_params.get("since"), until - timedelta(days=DEFAULT_DAYS - 1))
    if since > until:
        raise PageError(400, "'since' is after 'until'")
    if (until - since).days >= MAX_DAYS:
        raise PageError(400, f"choose at most {MAX_DAYS} days")
    return since, until


def summarise(rows: list[dict], since: date, until: date) -> dict[str, Any]:
    """Charts (per day, stacked by model) and tables (per model, per key) from the rows."""
    days = [(since + timedelta(days=i)).isoformat() for i in range((until - since).days + 1)]
    models = sorted({r["model"] for r in rows})
    by_day_model: dict[tuple[str, str], dict[str, float]] = defaultdict(lambda: defaultdict(float))
    totals: dict[str, dict[str, dict[str, float]]] = {"model": defaultdict(lambda: defaultdict(float)),
                                                      "key": defaultdict(lambda: defaultdict(float))}
    energy_by_day: dict[str, float] = defaultdict(float)
    for r in rows:
        cell = by_day_model[(r["day"], r["model"])]
        for measure in ("requests", "total_tokens", "energy_wh"):
            cell[measure] += r[measure]
        energy_by_day[r["day"]] += r["energy_wh"]
        for dimension in ("model", "key"):
            total = totals[dimension][r[dimension]]
            for measure in ("requests", "prompt_tokens", "completion_tokens", "total_tokens", "energy_wh"):
                total[measure] += r[measure]

    def stacked(measure: str, title: str) -> dict[str, Any]:
        return {
            "type": "bar", "stacked": True, "labels": days, "y_title": title,
            "datasets": [
                {"label": m, "data": [by_day_model.get((d, m), {}).get(measure, 0) for d in days]} for m in models
            ],
        }

    return {
        "charts": {
            "tokens": stacked("total_tokens", "tokens"),
            "requests": stacked("requests", "requests"),
            "energy": {"type": "line", "labels": days, "y_title": "Wh",
                       "datasets": [{"label": "energy (Wh)", "data": [round(energy_by_day[d], 6) for d in days]}]},
        },
        "per_model": sorted(totals["model"].items()),
        "per_key": sorted(totals["key"].items()),
        "total": {m: sum(r[m] for r in rows) for m in ("requests", "total_tokens", "energy_wh")},
    }


async def _workspaces(user: User) -> list[dict]:
    if not user.principal.can(Capability.ADMIN):
        return []
    return (await user.json("GET", "/v1/admin/workspaces"))["data"]


@router.get("/usage")
async def usage_page(user: CurrentUser, request: Request) -> Response:
    since, until = _window(request)
    workspace_id = request.query_params.get("workspace_id") or None
    rows = await _rows(user, request, since, until, workspace_id)
    return user.render(
        "usage.html",
        title="Usage",
        rows=rows,
        since=since,
        until=until,
        workspace_id=workspace_id,
        workspaces=await _workspaces(user),
        summary=summarise(rows, since, until),
        query=request.url.query,
    )


def _cell(value: Any) -> Any:
    # A spreadsheet runs a cell that starts with one of these as a formula.
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


@router.get("/usage.csv")
async def usage_csv(user: CurrentUser, request: Request) -> Response:
    since, until = _window(request)
    rows = await _rows(user, request, since, until, request.query_params.get("workspace_id") or None)
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(CSV_COLUMNS)
    for row in rows:
        writer.writerow([_cell(row[c]) for c in CSV_COLUMNS])
    filename = f"tramontane-usage-{since.isoformat()}-{until.isoformat()}.csv"
    return Response(
        out.getvalue(),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )
