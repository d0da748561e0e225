"""The `tramontane` command line."""

import typer

from ..control import cli as control_cli
from ..control import domains_cli
from ..control.build_cli import build
from ..evaluations import cli as evaluations_cli
from ..finetune import cli as finetune_cli
from ..sandbox.templates import cli as templates_cli
from ..tenancy import cli as tenancy_cli
from . import bench, chat, node, up

app = typer.Typer(
    help="Tramontane: serve models, run deployments and sandboxes, govern tenants.",
    no_args_is_help=True,
    add_completion=False,
)
app.command("up")(up.up)
app.command("node")(node.node)
app.command("chat")(chat.chat)
app.command("bench")(bench.bench)
app.command("build")(build)
app.add_typer(tenancy_cli.app, name="tenancy")
app.add_typer(control_cli.app)  # deploy, ps, logs, events, revisions, rollback, scale, delete
app.add_typer(domains_cli.app, name="domains")
app.add_typer(control_cli.secrets_app, name="secrets")
app.add_typer(finetune_cli.app, name="finetune")
sandbox_app = typer.Typer(help="Sandboxes: their templates.", no_args_is_help=True)
sandbox_app.add_typer(templates_cli.app, name="template")
app.add_typer(sandbox_app, name="sandbox")
app.add_typer(evaluations_cli.app, name="eval")

__all__ = ["app"]
