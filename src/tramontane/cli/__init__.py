"""The `tramontane` command line."""

import typer

from ..tenancy import cli as tenancy_cli
from . import bench, chat, up

app = typer.Typer(help="Tramontane: serve, chat with and benchmark LLMs.", no_args_is_help=True, add_completion=False)
app.command("up")(up.up)
app.command("chat")(chat.chat)
app.command("bench")(bench.bench)
app.add_typer(tenancy_cli.app, name="tenancy")

__all__ = ["app"]
