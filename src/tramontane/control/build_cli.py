"""`tramontane build`: images for image deployments, into this host's Podman store.

Run it on the machine (and as the user) that serves the deployments: the local
backend's containers run from that store. A folder is built from its
Containerfile or Dockerfile, or as a Python project on the base image; an
archive (`podman save`, `docker save`, an OCI layout tar) is loaded;
`--python-base` makes the default base image from this host's Python."""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from .baseimage import python_base_context
from .buildpack import plan_build
from .containers import ImageError, Podman
from .images import ImagesConfig

console = Console(stderr=True)

_ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.xz", ".tar.zst", ".oci")


def build(
    source: Annotated[
        Path | None,
        typer.Argument(help="A folder to build, or an image archive to load. Omit with --python-base."),
    ] = None,
    tag: Annotated[
        str | None, typer.Option("--tag", "-t", help="The image's name. Default: localhost/<folder>:latest.")
    ] = None,
    file: Annotated[
        str | None, typer.Option("--file", "-f", help="The Containerfile, relative to the folder.")
    ] = None,
    python_base: Annotated[
        bool,
        typer.Option(
            "--python-base",
            help="Make the default base image of Python projects from this host's Python (no download).",
        ),
    ] = False,
) -> None:
    """Build an image from a folder, or load an image archive, for image deployments."""
    podman = Podman()
    if not podman.available():
        console.print("[red]error:[/] podman is not installed (scripts/install-system-deps.sh installs it)")
        raise typer.Exit(1)
    config = ImagesConfig.from_env()
    try:
        if python_base:
            reference = tag or config.base_image
            with tempfile.TemporaryDirectory(prefix="tramontane-base-") as folder:
                context = python_base_context(Path(folder))
                asyncio.run(podman.build(context, context / "Containerfile", reference))
            console.print(f"Built [bold]{reference}[/]: the base of Python projects")
            return
        if source is None:
            console.print("[red]error:[/] give a folder or an archive (or --python-base)")
            raise typer.Exit(2)
        if source.is_file() and source.name.endswith(_ARCHIVE_SUFFIXES):
            loaded = asyncio.run(_load(podman, source, tag))
            console.print(f"Loaded [bold]{', '.join(loaded)}[/]")
            return
        if not source.is_dir():
            console.print(f"[red]error:[/] {source} is neither a folder nor an image archive")
            raise typer.Exit(2)
        reference = tag or f"localhost/{source.resolve().name.lower()}:latest"
        with tempfile.TemporaryDirectory(prefix="tramontane-build-") as scratch:
            plan = plan_build(source, Path(scratch), config.base_image, containerfile=file, has_command=True)
            asyncio.run(podman.build(plan.context, plan.containerfile, reference))
        how = "as a Python project" if plan.generated else f"from {plan.containerfile.name}"
        console.print(f"Built [bold]{reference}[/] {how}")
    except (ImageError, FileNotFoundError) as exc:
        console.print(f"[red]error:[/] {getattr(exc, 'message', exc)}", highlight=False)
        raise typer.Exit(1) from exc


async def _load(podman: Podman, archive: Path, tag: str | None) -> list[str]:
    loaded = await podman.load(archive)
    if tag is not None and loaded:
        await podman.tag(loaded[0], tag)
        return [tag]
    return loaded
