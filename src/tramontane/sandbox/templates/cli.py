"""`tramontane sandbox template build|list|delete`: the platform's templates,
built on this host (as root) into the store the server reads
($TRAMONTANE_HOME/templates). Workspaces build their own through the API."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from ...errors import TramontaneError
from .spec import load
from .store import TemplateStore

BUNDLED = Path(__file__).with_name("bundled")

app = typer.Typer(help="Sandbox templates: root filesystems sandboxes start from.", no_args_is_help=True)
console = Console()
errors = Console(stderr=True)

Store = Annotated[Path | None, typer.Option("--store", help="The template store (default: $TRAMONTANE_HOME/templates).")]


def _spec_path(spec: str) -> Path:
    path = Path(spec)
    if path.exists():
        return path
    bundled = BUNDLED / f"{spec}.toml"
    if bundled.exists():
        return bundled
    errors.print(f"[red]error:[/] no file {spec!r}, and no bundled template of that name ({', '.join(_bundled())})")
    raise typer.Exit(2)


def _bundled() -> list[str]:
    return sorted(p.stem for p in BUNDLED.glob("*.toml"))


@app.command()
def build(
    spec: Annotated[str, typer.Argument(help="A spec (.toml), a Containerfile, or a bundled template's name (data).")],
    name: Annotated[str | None, typer.Option(help="The template's name (default: the spec's).")] = None,
    store: Store = None,
) -> None:
    """Builds a template once; building an unchanged spec again is a cache hit."""
    started = time.monotonic()
    try:
        template, cached = asyncio.run(TemplateStore(store).build(load(_spec_path(spec), name)))
    except TramontaneError as exc:
        errors.print(f"[red]error:[/] {exc.message}", markup=False)
        raise typer.Exit(1) from None
    verb = "already built" if cached else f"built in {time.monotonic() - started:.0f} s"
    console.print(f"{template.name} ({template.id}): {verb}, {template.size_bytes / 2**20:.0f} MiB")


@app.command("list")
def list_templates(store: Store = None) -> None:
    """The platform's templates."""
    table = Table("name", "id", "size", "packages")
    for template in TemplateStore(store).list():
        table.add_row(
            template.name, template.id, f"{template.size_bytes / 2**20:.0f} MiB", " ".join(template.apt + template.pip)
        )
    console.print(table)


@app.command()
def delete(template: Annotated[str, typer.Argument(help="A name or id.")], store: Store = None) -> None:
    """Removes a platform template; stop the sandboxes running from it first."""
    try:
        TemplateStore(store).delete(template)
    except TramontaneError as exc:
        errors.print(f"[red]error:[/] {exc.message}", markup=False)
        raise typer.Exit(1) from None
