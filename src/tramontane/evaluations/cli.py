"""`tramontane eval run|red-team|status|list|results|compare|cancel|families`: the
evaluations API from a terminal, following a job with a progress bar."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

app = typer.Typer(help="Evaluate models, fine-tunes and agents on your data; red-team them.", no_args_is_help=True)
console = Console()
errors = Console(stderr=True)

Url = Annotated[str, typer.Option("--url", envvar="TRAMONTANE_URL", help="The Tramontane server.")]
Key = Annotated[str | None, typer.Option("--api-key", envvar="TRAMONTANE_API_KEY", help="A key of the workspace.")]
Wait = Annotated[bool, typer.Option("--wait/--no-wait", help="Follow the job until it ends.")]
Targets = Annotated[list[str], typer.Option("--target", "-t", help="A model name or agent:<id>; repeatable.")]
DEFAULT_URL = "http://127.0.0.1:8000"
TERMINAL = ("SUCCESS", "FAILED", "CANCELLED")
POLL_S = 1.0


def _call(method: str, url: str, key: str | None, path: str, **kwargs: Any) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    try:
        response = httpx.request(method, f"{url.rstrip('/')}/v1{path}", headers=headers, timeout=120, **kwargs)
    except httpx.HTTPError as exc:
        errors.print(f"[red]error:[/] cannot reach {url}: {exc}")
        raise typer.Exit(1) from exc
    if response.is_error:
        try:
            body = response.json()
            message = body["error"]["message"] if "error" in body else body.get("detail", response.text)
        except ValueError:
            message = response.text
        errors.print(f"[red]error ({response.status_code}):[/] {message}")
        raise typer.Exit(1)
    return response


def _target(text: str) -> dict[str, Any]:
    if text.startswith("agent:"):
        return {"agent_id": text.removeprefix("agent:")}
    return {"model": text}


def _show(job: dict[str, Any]) -> None:
    console.print(f"Evaluation [bold]{job['id']}[/] ({job['kind']}): {job['status']}, "
                  f"{job['completed_items']}/{job['total_items']} items, {job['failed_items']} failed")
    for event in job.get("events", []):
        if error := event.get("data", {}).get("error"):
            errors.print(f"  {error}")
    summary = job.get("summary")
    if not summary:
        return
    if job["kind"] == "evaluation":
        table = Table("target", "metric", "mean", "95% interval", "n")
        for target, data in summary["targets"].items():
            for metric, value in data["metrics"].items():
                if value["mean"] is None:  # no item had a score for it
                    table.add_row(target, metric, "-", "-", "0")
                    continue
                table.add_row(target, metric, f"{value['mean']:.3f}", f"[{value['ci_low']:.3f}, {value['ci_high']:.3f}]",
                              str(value["n"]))
        console.print(table)
        for comparison in summary["comparisons"]:
            mark = "significant" if comparison["significant"] else "not significant"
            difference = comparison["difference"]["mean"]
            shown = "no common item" if difference is None else f"{difference:+.3f}"
            console.print(f"{comparison['candidate']} vs {comparison['baseline']} on {comparison['metric']}: "
                          f"{shown}, p={comparison['p_value']:.4f} ({mark})")
    else:
        table = Table("target", "family", "attempts", "successes", "success rate")
        for target, data in summary["targets"].items():
            for family, stats in data["families"].items():
                rate = stats["attack_success_rate"]
                table.add_row(target, family, str(stats["attempts"]), str(stats["successes"]),
                              f"{rate['mean']:.2f}" if rate else "-")
        console.print(table)


def _follow(url: str, key: str | None, job: dict[str, Any]) -> dict[str, Any]:
    columns = (TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console) as progress:
        task = progress.add_task(job["status"], total=job["total_items"] or 1)
        while job["status"] not in TERMINAL:
            time.sleep(POLL_S)
            job = _call("GET", url, key, f"/evaluations/{job['id']}").json()
            progress.update(task, completed=job["completed_items"], description=job["status"])
    _show(job)
    if job["status"] != "SUCCESS":
        raise typer.Exit(1)
    return job


@app.command()
def run(
    dataset: Annotated[str, typer.Option(help="A dataset file id, or a local JSONL path to upload.")],
    target: Targets,
    metric: Annotated[list[str], typer.Option("--metric", "-m", help="A metric type or a JSON metric object.")],
    name: Annotated[str | None, typer.Option(help="A name for the evaluation.")] = None,
    max_tokens: Annotated[int, typer.Option(help="Tokens per answer.")] = 256,
    wait: Wait = True,
    url: Url = DEFAULT_URL,
    api_key: Key = None,
) -> None:
    """Evaluate targets on a dataset with the given metrics."""
    if Path(dataset).is_file():
        with open(dataset, "rb") as f:
            uploaded = _call("POST", url, api_key, "/files", files={"file": (Path(dataset).name, f)},
                             data={"purpose": "evals"}).json()
        dataset = uploaded["id"]
    metrics = [json.loads(m) if m.lstrip().startswith("{") else {"type": m} for m in metric]
    body = {"name": name, "dataset": dataset, "targets": [_target(t) for t in target], "metrics": metrics,
            "completion_args": {"max_tokens": max_tokens}}
    job = _call("POST", url, api_key, "/evaluations", json=body).json()
    _follow(url, api_key, job) if wait else _show(job)


@app.command("red-team")
def red_team(
    target: Targets,
    family: Annotated[list[str] | None, typer.Option("--family", help="An attack family; repeatable (default all).")]
    = None,
    judge: Annotated[str | None, typer.Option(help="A served chat model that judges each attempt.")] = None,
    wait: Wait = True,
    url: Url = DEFAULT_URL,
    api_key: Key = None,
) -> None:
    """Run the attack families against models or agents."""
    body = {"targets": [_target(t) for t in target], "red_team": {"families": family or None, "judge_model": judge}}
    job = _call("POST", url, api_key, "/evaluations", json=body).json()
    _follow(url, api_key, job) if wait else _show(job)


@app.command()
def status(evaluation_id: str, wait: Wait = False, url: Url = DEFAULT_URL, api_key: Key = None) -> None:
    """Show an evaluation and, once done, its summary."""
    job = _call("GET", url, api_key, f"/evaluations/{evaluation_id}").json()
    _follow(url, api_key, job) if wait else _show(job)


@app.command("list")
def list_jobs(url: Url = DEFAULT_URL, api_key: Key = None) -> None:
    """List the workspace's evaluations."""
    table = Table("id", "kind", "name", "status", "items")
    for job in _call("GET", url, api_key, "/evaluations").json()["data"]:
        table.add_row(job["id"], job["kind"], job["name"] or "", job["status"],
                      f"{job['completed_items']}/{job['total_items']}")
    console.print(table)


@app.command()
def results(
    evaluation_id: str,
    format: Annotated[str, typer.Option(help="jsonl or csv.")] = "jsonl",
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write to this file.")] = None,
    url: Url = DEFAULT_URL,
    api_key: Key = None,
) -> None:
    """Download the per-item results."""
    text = _call("GET", url, api_key, f"/evaluations/{evaluation_id}/results", params={"format": format}).text
    if output is None:
        typer.echo(text, nl=False)
    else:
        output.write_text(text)
        console.print(f"Wrote {output}")


@app.command()
def compare(
    evaluation_id: str,
    baseline: Annotated[str, typer.Option(help="The baseline target.")],
    candidate: Annotated[str, typer.Option(help="The candidate target.")],
    metric: Annotated[str, typer.Option(help="The metric to compare on.")],
    url: Url = DEFAULT_URL,
    api_key: Key = None,
) -> None:
    """Paired comparison of two targets on one metric."""
    params = {"baseline": baseline, "candidate": candidate, "metric": metric}
    result = _call("GET", url, api_key, f"/evaluations/{evaluation_id}/comparison", params=params).json()
    console.print_json(data=result)


@app.command()
def cancel(evaluation_id: str, url: Url = DEFAULT_URL, api_key: Key = None) -> None:
    """Cancel an evaluation; the items it finished are kept."""
    _show(_call("POST", url, api_key, f"/evaluations/{evaluation_id}/cancel").json())


@app.command()
def families(url: Url = DEFAULT_URL, api_key: Key = None) -> None:
    """List the red-team attack families."""
    table = Table("family", "attacks", "description")
    for family in _call("GET", url, api_key, "/evaluations/attack_families").json()["data"]:
        table.add_row(family["name"], str(family["attacks"]), family["description"])
    console.print(table)
