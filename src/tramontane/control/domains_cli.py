"""`tramontane domains add|ls|rm`: a deployment's custom domains from a terminal."""

from __future__ import annotations

import typer
from rich.console import Console

from .cli import DEFAULT_URL, Key, Url, _call

app = typer.Typer(help="Custom domains of deployments: requests by Host header.", no_args_is_help=True)
console = Console()


@app.command("add")
def add(deployment: str, domain: str, url: Url = DEFAULT_URL, api_key: Key = None) -> None:
    """Route requests for DOMAIN to DEPLOYMENT (point its DNS at this server)."""
    added = _call("POST", url, api_key, f"/{deployment}/domains", json={"domain": domain}).json()
    console.print(f"{added['domain']} -> {added['deployment']}")


@app.command("ls")
def ls(deployment: str, url: Url = DEFAULT_URL, api_key: Key = None) -> None:
    """List a deployment's domains."""
    for entry in _call("GET", url, api_key, f"/{deployment}/domains").json()["data"]:
        typer.echo(entry["domain"])


@app.command("rm")
def rm(deployment: str, domain: str, url: Url = DEFAULT_URL, api_key: Key = None) -> None:
    """Stop routing DOMAIN to DEPLOYMENT."""
    _call("DELETE", url, api_key, f"/{deployment}/domains/{domain}")
    console.print(f"Removed {domain}")
