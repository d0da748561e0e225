"""`tramontane deploy|ps|logs|events|revisions|rollback|scale|delete` and
`tramontane secrets ...`: the deployments and secrets REST APIs from a terminal.

Mount with `app.add_typer(control.cli.app)` for top-level commands, or under a
name (`tramontane deployments ...`); `secrets_app` under `secrets`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console
from rich.table import Table

from ..store import open_store, tramontane_home
from ..tenancy.audit import CLI
from .secrets import Keyring, SecretsKeyError, SecretStore
from .spec import DeploymentSpec

app = typer.Typer(help="Serverless deployments: deploy, list, scale, read logs, delete.", no_args_is_help=True)
secrets_app = typer.Typer(
    help="Workspace secrets: values given to deployments' replicas, never shown again.", no_args_is_help=True
)
console = Console()
errors = Console(stderr=True)

Url = Annotated[str, typer.Option("--url", envvar="TRAMONTANE_URL", help="The Tramontane server.")]
Key = Annotated[
    str | None, typer.Option("--api-key", envvar="TRAMONTANE_API_KEY", help="A key with the deploy capability.")
]
DEFAULT_URL = "http://127.0.0.1:8000"


def _call(
    method: str, url: str, key: str | None, path: str, *, base: str = "/v1/deployments", **kwargs: Any
) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    try:
        # Creating a deployment waits for its min_replicas to be placed and launched.
        response = httpx.request(method, f"{url.rstrip('/')}{base}{path}", headers=headers, timeout=120, **kwargs)
    except httpx.HTTPError as exc:
        errors.print(f"[red]error:[/] cannot reach {url}: {exc}")
        raise typer.Exit(1) from exc
    _exit_on_error(response)
    return response


def _exit_on_error(response: httpx.Response) -> None:
    if response.is_error:
        try:
            message = response.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = response.text
        errors.print(f"[red]error ({response.status_code}):[/] {message}")
        raise typer.Exit(1)


@app.command()
def deploy(
    spec_file: Annotated[Path, typer.Argument(exists=True, dir_okay=False)], url: Url = DEFAULT_URL, api_key: Key = None
) -> None:
    """Create a deployment from a YAML or JSON spec, or, when one of that name
    exists, roll out the spec as its new revision."""
    try:
        spec = DeploymentSpec.load(spec_file)
    except ValueError as exc:
        errors.print(f"[red]invalid spec:[/] {exc}")
        raise typer.Exit(1) from exc
    body = spec.model_dump(mode="json", exclude_defaults=True)
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    existing = httpx.get(f"{url.rstrip('/')}/v1/deployments/{spec.name}", headers=headers, timeout=30)
    if existing.status_code == 404:
        created = _call("POST", url, api_key, "", json=body).json()
        console.print(
            f"Deployed [bold]{created['name']}[/] ({created['id']}), {created['desired_replicas']} replica(s)"
        )
        return
    _exit_on_error(existing)
    updated = _call("PUT", url, api_key, f"/{spec.name}", json=body).json()
    console.print(f"Rolling out revision {updated['rolling_out']} of [bold]{updated['name']}[/]")


@app.command()
def ps(url: Url = DEFAULT_URL, api_key: Key = None) -> None:
    """List deployments and their replicas."""
    table = Table("NAME", "KIND", "REV", "DESIRED", "REPLICAS", "IN FLIGHT", "ROUTES")
    for d in _call("GET", url, api_key, "").json()["data"]:
        states = ", ".join(_replica_cell(r) for r in d["replicas"]) or "-"
        routes = d["spec"]["routes"]
        shown = " ".join(filter(None, [routes.get("path_prefix"), *routes.get("models", [])]))
        table.add_row(
            d["name"], d["kind"], _revision_cell(d), str(d["desired_replicas"]), states, str(d["in_flight"]), shown
        )
    console.print(table)


def _revision_cell(deployment: dict[str, Any]) -> str:
    """`3`, `3>4` while revision 4 rolls out, `3!` when the last rollout was rolled back."""
    if deployment["rolling_out"] is not None:
        return f"{deployment['revision']}>{deployment['rolling_out']}"
    return f"{deployment['revision']}{'!' if deployment['status'] == 'rolled_back' else ''}"


def _replica_cell(replica: dict[str, Any]) -> str:
    """`running@3f9a1c2e`: the state and the node (a Ray node id's first characters
    tell nodes apart; the local backend's node is `local`)."""
    state = replica["state"].lower()
    return f"{state}@{replica['node'][:8]}" if replica["node"] else state


@app.command()
def logs(
    name: str,
    tail: Annotated[int, typer.Option(help="Lines to show.")] = 200,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing new lines as they come.")] = False,
    url: Url = DEFAULT_URL,
    api_key: Key = None,
) -> None:
    """Print a deployment's replica logs."""
    if not follow:
        typer.echo(_call("GET", url, api_key, f"/{name}/logs", params={"tail": tail}).text)
        return
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    params = {"tail": tail, "follow": "true"}
    try:
        with httpx.stream(
            "GET", f"{url.rstrip('/')}/v1/deployments/{name}/logs", params=params, headers=headers, timeout=None
        ) as response:
            if response.is_error:
                response.read()
                _exit_on_error(response)
            for line in response.iter_lines():
                if line.startswith("data: "):
                    typer.echo(line[len("data: ") :])
    except httpx.HTTPError as exc:
        errors.print(f"[red]error:[/] lost {url}: {exc}")
        raise typer.Exit(1) from exc


@app.command()
def events(
    name: str,
    limit: Annotated[int, typer.Option(help="Events to show, the newest.")] = 50,
    url: Url = DEFAULT_URL,
    api_key: Key = None,
) -> None:
    """A deployment's events: revisions, rollouts, scaling, sleep, crashes."""
    table = Table("TIME", "REVISION", "KIND", "MESSAGE")
    for e in _call("GET", url, api_key, f"/{name}/events", params={"limit": limit}).json()["data"]:
        table.add_row(e["created_at"], str(e["revision"] or "-"), e["kind"], e["message"])
    console.print(table)


@app.command()
def revisions(name: str, url: Url = DEFAULT_URL, api_key: Key = None) -> None:
    """A deployment's revisions and their status."""
    table = Table("REVISION", "STATUS", "CREATED", "REASON")
    for r in _call("GET", url, api_key, f"/{name}/revisions").json()["data"]:
        table.add_row(str(r["number"]), r["status"], r["created_at"], r["reason"] or "")
    console.print(table)


@app.command()
def rollback(
    name: str,
    revision: Annotated[int | None, typer.Argument(help="Default: the revision served before the current one.")] = None,
    url: Url = DEFAULT_URL,
    api_key: Key = None,
) -> None:
    """Serve an earlier revision's spec again (rolled out as a new revision)."""
    body = {"revision": revision} if revision is not None else {}
    rolled = _call("POST", url, api_key, f"/{name}/rollback", json=body).json()
    console.print(f"Rolling out revision {rolled['rolling_out']} of [bold]{rolled['name']}[/]")


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


@secrets_app.command("create")
def create_secret(
    name: str,
    from_file: Annotated[
        Path | None, typer.Option("--from-file", exists=True, dir_okay=False, help="Read the value from a file.")
    ] = None,
    url: Url = DEFAULT_URL,
    api_key: Key = None,
) -> None:
    """Store a secret. Its value comes from --from-file, else standard input (or a
    hidden prompt at a terminal): never from the command line, where shells and
    process lists would keep it."""
    value = _secret_value(from_file)
    _call("POST", url, api_key, "", base="/v1/secrets", json={"name": name, "value": value})
    console.print(f"Stored secret [bold]{name}[/]")


@secrets_app.command("update")
def update_secret(
    name: str,
    from_file: Annotated[Path | None, typer.Option("--from-file", exists=True, dir_okay=False)] = None,
    url: Url = DEFAULT_URL,
    api_key: Key = None,
) -> None:
    """Replace a secret's value (replicas started from now on get it: redeploy to renew running ones)."""
    _call("PUT", url, api_key, f"/{name}", base="/v1/secrets", json={"value": _secret_value(from_file)})
    console.print(f"Updated secret [bold]{name}[/]")


@secrets_app.command("list")
def list_secrets(url: Url = DEFAULT_URL, api_key: Key = None) -> None:
    """The workspace's secrets, by name (values are never shown)."""
    table = Table("NAME", "CREATED", "UPDATED")
    for s in _call("GET", url, api_key, "", base="/v1/secrets").json()["data"]:
        table.add_row(s["name"], s["created_at"], s["updated_at"])
    console.print(table)


@secrets_app.command("delete")
def delete_secret(name: str, url: Url = DEFAULT_URL, api_key: Key = None) -> None:
    """Delete a secret that no deployment uses."""
    _call("DELETE", url, api_key, f"/{name}", base="/v1/secrets")
    console.print(f"Deleted secret {name}")


@secrets_app.command("rotate")
def rotate_secrets(
    database_url: Annotated[
        str | None,
        typer.Option("--database-url", envvar="TRAMONTANE_DATABASE_URL", help="Defaults to the SQLite file."),
    ] = None,
    drop_old: Annotated[bool, typer.Option("--drop-old", help="Then forget the older keys of the key file.")] = False,
) -> None:
    """Re-encrypt every stored secret with a new key (the operator's command, run
    on the server's host: with a key file, a new key is added first; with
    $TRAMONTANE_SECRETS_KEY, put the new key first there before running it)."""
    store = open_store(database_url)
    try:
        count = SecretStore(store, Keyring(tramontane_home())).rotate(CLI, drop_old=drop_old)
    except SecretsKeyError as exc:
        errors.print(f"[red]error:[/] {exc}")
        raise typer.Exit(1) from exc
    finally:
        store.close()
    console.print(f"Re-encrypted {count} secret(s) with the newest key")


def _secret_value(from_file: Path | None) -> str:
    if from_file is not None:
        return from_file.read_text()
    if sys.stdin.isatty():
        return typer.prompt("Value", hide_input=True)
    return sys.stdin.read()
