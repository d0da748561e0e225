"""How a source folder becomes an image: its own Containerfile (or Dockerfile),
else a Containerfile generated for a Python project found by its
pyproject.toml or requirements.txt, on the base image the operator configures.

A generated build installs the project's declared dependencies with pip (from
the index the base image is configured for: an internal mirror where the
internet is out of reach) and starts the `web:` line of a Procfile, or the
deployment's `command`."""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass
from pathlib import Path

from .containers import ImageError

CONTAINERFILES = ("Containerfile", "Dockerfile")
_PIP_INSTALL = ["python3", "-m", "pip", "install", "--no-cache-dir"]


@dataclass(frozen=True)
class BuildPlan:
    """What `podman build` is given: the context folder and the Containerfile
    (inside the context, or generated beside it)."""

    context: Path
    containerfile: Path
    generated: bool


def plan_build(
    context: Path, scratch: Path, base_image: str, *, containerfile: str | None = None, has_command: bool = False
) -> BuildPlan:
    """The build of `context`; a generated Containerfile is written to `scratch`,
    never into the source. `containerfile` is a path inside the source the user
    chose; `has_command` says the deployment gives its own start command."""
    if containerfile is not None:
        chosen = (context / containerfile).resolve()
        if not chosen.is_relative_to(context.resolve()) or not chosen.is_file():
            raise ImageError(f"No Containerfile at '{containerfile}' in the source", param="git.containerfile")
        return BuildPlan(context, chosen, generated=False)
    for name in CONTAINERFILES:
        if (context / name).is_file():
            return BuildPlan(context, context / name, generated=False)
    if (context / "pyproject.toml").is_file() or (context / "requirements.txt").is_file():
        generated = scratch / "Containerfile"
        generated.write_text(python_containerfile(context, base_image, has_command=has_command))
        return BuildPlan(context, generated, generated=True)
    raise ImageError(
        "The source has no Containerfile or Dockerfile, and is not a Python project "
        "(no pyproject.toml or requirements.txt)",
        code="unbuildable_source",
    )


def python_containerfile(context: Path, base_image: str, *, has_command: bool) -> str:
    """A Containerfile for the Python project in `context`."""
    lines = [
        f"FROM {base_image}",
        "WORKDIR /app",
        "COPY . /app",
        # Sources importable from the project root or a src/ layout, logs unbuffered.
        "ENV PYTHONPATH=/app/src:/app PYTHONUNBUFFERED=1",
    ]
    if (context / "requirements.txt").is_file():
        lines.append(f"RUN {json.dumps([*_PIP_INSTALL, '-r', 'requirements.txt'])}")
    elif dependencies := _pyproject_dependencies(context):
        # Exec form: each requirement one argument, no shell to quote for.
        lines.append(f"RUN {json.dumps([*_PIP_INSTALL, *dependencies])}")
    command = _procfile_web(context)
    if command is not None:
        lines.append(f"CMD {json.dumps(['/bin/sh', '-c', command])}")
    elif not has_command:
        raise ImageError(
            "A Python project needs a start command: a Procfile with a `web:` line, or `command` in the spec",
            code="no_start_command",
        )
    return "\n".join(lines) + "\n"


def _pyproject_dependencies(context: Path) -> list[str]:
    try:
        project = tomllib.loads((context / "pyproject.toml").read_text()).get("project", {})
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ImageError(f"pyproject.toml cannot be read: {exc}", code="unbuildable_source") from exc
    dependencies = project.get("dependencies", [])
    if not isinstance(dependencies, list) or not all(isinstance(d, str) for d in dependencies):
        raise ImageError("pyproject.toml: [project] dependencies must be a list of strings", code="unbuildable_source")
    return dependencies


def _procfile_web(context: Path) -> str | None:
    procfile = context / "Procfile"
    if not procfile.is_file():
        return None
    for line in procfile.read_text().splitlines():
        kind, sep, command = line.partition(":")
        if sep and kind.strip() == "web" and command.strip():
            return command.strip()
    return None
