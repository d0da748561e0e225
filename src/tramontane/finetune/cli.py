"""`tramontane finetune upload|create|start|status|list|cancel`: the files and
fine-tuning APIs from a terminal, with a progress bar that follows a job."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from .jobs import TERMINAL

app = typer.Typer(
    help="Fine-tune models on your own data: upload JSONL files, run and follow jobs.", no_args_is_help=True
)
console = Console()
errors = Console(stderr=True)

Url = Annotated[str, typer.Option("--url", envvar="TRAMONTANE_URL", help="The Tramontane server.")]
Key = Annotated[
    str | None, typer.Option("--api-key", envvar="TRAMONTANE_API_KEY", help="A key with the fine-tune capability.")
]
Wait = Annotated[bool, typer.Option("--wait/--no-wait", help="Follow the job with a progress bar until it ends.")]
DEFAULT_URL = "http://127.0.0.1:8000"
POLL_S = 1.0


def _call(method: str, url: str, key: str | None, path: str, **kwargs: Any) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    try:
        response = httpx.request(method, f"{url.rstrip('/')}/v1{path}", headers=headers, timeout=120, **kwargs)
    except httpx.HTTPError as exc:
        errors.print(f"[red]error:[/] cannot reach {url}: {exc}")
        raise typer.Exit(1) from exc
    if response.is_error:
        body = response.json() if response.headers.get("content-type") == "application/json" else {}
        message = body.get("error", {}).get("message") if "error" in body else body.get("detail", response.text)
        errors.print(f"[red]error ({response.status_code}):[/] {message}")
        raise typer.Exit(1)
    return response.json()


def _summary(job: dict[str, Any]) -> None:
    console.print(f"Job [bold]{job['id']}[/]: {job['status']}")
    if job.get("fine_tuned_model"):
        console.print(f"Model: [bold]{job['fine_tuned_model']}[/]")
    for event in job.get("events", []):
        for line in event.get("data", {}).get("errors", []):
            errors.print(f"  {line}")
        if error := event.get("data", {}).get("error"):
            errors.print(f"  {error}")


def _follow(url: str, key: str | None, job: dict[str, Any]) -> dict[str, Any]:
    """Polls the job until it ends, showing its latest checkpoint's step and loss."""
    total = job["hyperparameters"].get("training_steps") or 1
    columns = (TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console) as progress:
        task = progress.add_task(job["status"], total=total)
        while job["status"] not in TERMINAL:
            time.sleep(POLL_S)
            job = _call("GET", url, key, f"/fine_tuning/jobs/{job['id']}")
            latest = job["checkpoints"][0] if job["checkpoints"] else None
            loss = f" loss {latest['metrics']['train_loss']:.3f}" if latest else ""
            progress.update(task, completed=latest["step_number"] if latest else 0, description=job["status"] + loss)
    _summary(job)
    if job["status"] != "SUCCESS":
        raise typer.Exit(1)
    return job


@app.command()
def upload(
    path: Annotated[Path, typer.Argument(exists=True, dir_okay=False)],
    purpose: Annotated[str, typer.Option(help="fine-tune or batch.")] = "fine-tune",
    url: Url = DEFAULT_URL,
    api_key: Key = None,
) -> None:
    """Upload a JSONL file; prints its id."""
    with open(path, "rb") as f:
        created = _call("POST", url, api_key, "/files", files={"file": (path.name, f)}, data={"purpose": purpose})
    size = f"{created['bytes']} bytes, {created['num_lines']} lines"
    console.print(f"Uploaded {created['filename']} ({size}): [bold]{created['id']}[/]")


@app.command()
def create(
    model: Annotated[str, typer.Option(help="The base model to fine-tune.")],
    training_file: Annotated[list[str], typer.Option("--training-file", "-f", help="A training file id; repeatable.")],
    validation_file: Annotated[list[str] | None, typer.Option(help="A validation file id; repeatable.")] = None,
    suffix: Annotated[str | None, typer.Option(help="Part of the fine-tuned model's name.")] = None,
    training_steps: Annotated[int | None, typer.Option(help="Optimizer steps (default: from epochs).")] = None,
    epochs: Annotated[float | None, typer.Option(help="Passes over the training data (default 1).")] = None,
    learning_rate: Annotated[float, typer.Option(help="Peak learning rate.")] = 1e-4,
    seq_len: Annotated[int | None, typer.Option(help="Longest example, in tokens (default 512).")] = None,
    auto_start: Annotated[bool, typer.Option("--auto-start/--no-auto-start", help="Start once validated.")] = True,
    wait: Wait = True,
    url: Url = DEFAULT_URL,
    api_key: Key = None,
) -> None:
    """Create a fine-tuning job (validated at once) and, by default, follow it to the end."""
    hyperparameters = {
        "training_steps": training_steps,
        "epochs": epochs,
        "learning_rate": learning_rate,
        "seq_len": seq_len,
    }
    body = {
        "model": model,
        "training_files": [{"file_id": file_id, "weight": 1} for file_id in training_file],
        "validation_files": validation_file or [],
        "hyperparameters": {k: v for k, v in hyperparameters.items() if v is not None},
        "suffix": suffix,
        "auto_start": auto_start,
    }
    job = _call("POST", url, api_key, "/fine_tuning/jobs", json=body)
    if job["status"] == "FAILED_VALIDATION" or not (wait and auto_start):
        _summary(job)
        raise typer.Exit(1 if job["status"] == "FAILED_VALIDATION" else 0)
    _follow(url, api_key, job)


@app.command()
def start(job_id: str, wait: Wait = True, url: Url = DEFAULT_URL, api_key: Key = None) -> None:
    """Start a job created with --no-auto-start."""
    job = _call("POST", url, api_key, f"/fine_tuning/jobs/{job_id}/start")
    if wait:
        _follow(url, api_key, job)
    else:
        _summary(job)


@app.command()
def status(job_id: str, wait: Wait = False, url: Url = DEFAULT_URL, api_key: Key = None) -> None:
    """Show a job, its errors and checkpoints; --wait follows it."""
    job = _call("GET", url, api_key, f"/fine_tuning/jobs/{job_id}")
    if wait:
        _follow(url, api_key, job)
        return
    _summary(job)
    for checkpoint in reversed(job["checkpoints"]):
        metrics = {k: round(v, 4) for k, v in checkpoint["metrics"].items() if v is not None}
        console.print(f"  step {checkpoint['step_number']}: {metrics}")


@app.command("list")
def list_jobs(url: Url = DEFAULT_URL, api_key: Key = None) -> None:
    """List the workspace's fine-tuning jobs."""
    jobs = _call("GET", url, api_key, "/fine_tuning/jobs")["data"]
    table = Table("id", "model", "status", "fine-tuned model")
    for job in jobs:
        table.add_row(job["id"], job["model"], job["status"], job["fine_tuned_model"] or "")
    console.print(table)


@app.command()
def cancel(job_id: str, url: Url = DEFAULT_URL, api_key: Key = None) -> None:
    """Cancel a job; a running one stops after its current step."""
    _summary(_call("POST", url, api_key, f"/fine_tuning/jobs/{job_id}/cancel"))
