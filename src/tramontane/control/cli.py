"""`tramontane deploy|ps|logs|scale|delete`: the deployments REST API from a terminal.

Mount with `app.add_typer(control.cli.app)` for top-level commands, or under a
name (`tramontane deployments ...`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console
from rich.table import Table

from .spec import DeploymentSpec

app = typer.Typer(help="Serverless deployments: deploy, list, scale, read logs, delete.", no_args_is_help=True)
console = Console()
errors = Console(stderr=True)

Url = Annotated[str, typer.Option("--url", envvar="TRAMONTANE_URL", help="The Tramontane server.")]
Key = Annotated[
    str | None, typer.Option("--api-key", envvar="TRAMONTANE_API_KEY", help="A key with the deploy capability.")
]
DEFAULT_URL = "http://127.0.0.1:8000"


def _call(method: str, url: str, key: str | None, path: str, **kwargs: Any) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    try:
        # Creating a deployment waits for its min_replicas to be placed and launched.
        response = httpx.request(
            method, f"{url.rstrip('/')}/v1/deployments{path}", headers=headers, timeout=120, **kwargs
        )
    except httpx.HTTPError as exc:
        errors.print(f"[red]error:[/] cannot reach {url}: {exc}")
        raise typer.Exit(1) from exc
    if response.is_error:
        try:
            message = response.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = response.text
        errors.print(f"[red]error ({response.status_code}):[/] {message}")
        raise typer.Exit(1)
    return response


@app.command()
def deploy(
    spec_file: Annotated[Path, typer.Argument(exists=True, dir_okay=False)], url: Url = DEFAULT_URL, api_key: Key = None
) -> None:
    """Create a deployment from a YAML or JSON spec."""
    try:
        spec = DeploymentSpec.load(spec_file)
    except ValueError as exc:
        errors.print(f"[red]invalid spec:[/] {exc}")
        raise typer.Exit(1) from exc
    created = _call("POST", url, api_key, "", json=spec.model_dump(mode="json")).json()
    console.print(f"Deployed [bold]{created['name']}[/] ({created['id']}), {created['desired_replicas']} replica(s)")


@app.command()
def ps(url: Url = DEFAULT_URL, api_key: Key = None) -> None:
    """List deployments and their replicas."""
    table = Table("NAME", "KIND", "DESIRED", "REPLICAS", "IN FLIGHT", "ROUTES")
    for d in _call("GET", url, api_key, "").json()["data"]:
        states = ", ".join(_replica_cell(r) for r in d["replicas"]) or "-"
        routes = d["spec"]["routes"]
        shown = " ".join(filter(None, [routes.get("path_prefix"), *routes.get("models", [])]))
        table.add_row(d["name"], d["kind"], str(d["desired_replicas"]), states, str(d["in_flight"]), shown)
    console.print(table)


def _replica_cell(replica: dict[str, Any]) -> str:
    """`running@3f9a1c2e`: the state and the node (a Ray node id's first characters
    tell nodes apart; the local backend's node is `local`)."""
    state = replica["state"].lower()
    return f"{state}@{replica['node'][:8]}" if replica["node"] else state


@app.command()
def logs(
    name: str,
    tail: Annotated[int, typer.Option(help="Lines to show.")] = 200,
    url: Url = DEFAULT_URL,
    api_key: Key = None,
) -> None:
    """Print a deployment's replica logs."""
    typer.echo(_call("GET", url, api_key, f"/{name}/logs", params={"tail": tail}).text)


@app.command()
def scale(name: str, replicas: int, url: Url = DEFAULT_URL, api_key: Key = None) -> None:
    """Set a deployment's replica count now (the autoscaler may change it later)."""
    scaled = _call("POST", url, api_key, f"/{name}/scale", json={"replicas": replicas}).json()
    console.print(f"{scaled['name']}: {scaled['desired_replicas']} replica(s)")


@app.command()
def delete(name: str, url: Url = DEFAULT_URL, api_key: Key = None) -> None:
    """Stop a deployment's replicas and remove it."""
    _call("DELETE", url, api_key, f"/{name}")
    console.print(f"Deleted {name}")
