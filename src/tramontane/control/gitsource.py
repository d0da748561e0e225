"""Git deployments: a repository at a branch or commit, cloned and built into the
deployment's image when it is created.

Sources are what the operator allows (TRAMONTANE_GIT_ALLOWED: URL prefixes such
as `https://git.bank.internal/`, or directories such as `/srv/git`): a tenant
must not make the server read its own files or reach arbitrary hosts. The
clone runs with git's `ext` and `fd` transports off and no prompt for
credentials; the image is tagged with the commit it was built from, under the
workspace's own repository of images."""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from pathlib import Path

from ..errors import Forbidden
from .buildpack import plan_build
from .containers import ImageError, Podman
from .images import ImagesConfig, built_repository
from .spec import DeploymentSpec, GitSource

_GIT_TIMEOUT_S = 300.0
# Transports a repository URL may use; file for local paths.
_PROTOCOLS = ("https", "http", "ssh", "git", "file")


def is_local(repository: str) -> bool:
    return repository.startswith(("/", "file://"))


def _local_path(repository: str) -> Path:
    return Path(repository.removeprefix("file://")).resolve()


def check_allowed(repository: str, allowed: tuple[str, ...]) -> None:
    """Raises Forbidden unless `repository` falls under one of `allowed`."""
    if repository.startswith("-") or "::" in repository:
        raise Forbidden(f"'{repository}' is not a repository location", code="git_source_forbidden")
    for entry in allowed:
        if is_local(entry):
            if is_local(repository) and _local_path(repository).is_relative_to(_local_path(entry)):
                return
        elif repository == entry or repository.startswith(entry.rstrip("/") + "/"):
            return
    raise Forbidden(
        f"Git deployments from '{repository}' are not allowed on this platform; "
        "the operator lists allowed sources in TRAMONTANE_GIT_ALLOWED",
        code="git_source_forbidden",
    )


async def _git(*args: str, cwd: Path | None = None) -> str:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", "/"),
        "GIT_TERMINAL_PROMPT": "0",  # never wait on a password prompt
        "GIT_ALLOW_PROTOCOL": ":".join(_PROTOCOLS),
        "GIT_CONFIG_NOSYSTEM": "1",
    }
    process = await asyncio.create_subprocess_exec(
        "git", *args, cwd=cwd, env=env,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(_GIT_TIMEOUT_S):
            out, err = await process.communicate()
    except TimeoutError:
        process.kill()
        await process.wait()
        raise ImageError(f"git {args[0]} took over {_GIT_TIMEOUT_S:g} s", code="git_failed") from None
    if process.returncode != 0:
        raise ImageError(f"git {args[0]} failed: {err.decode(errors='replace').strip()}", code="git_failed")
    return out.decode().strip()


async def checkout(source: GitSource, into: Path) -> str:
    """Clones `source` into `into` at its branch or commit (default: the remote's
    HEAD); returns the full commit id. The clone's .git is removed after."""
    repository = source.repository
    if is_local(repository):
        repository = str(_local_path(repository))
    await _git("clone", "--quiet", "--no-checkout", "--", repository, str(into))
    if source.commit:
        wanted = source.commit
    elif source.branch:
        wanted = f"refs/remotes/origin/{source.branch}"
    else:
        wanted = "HEAD"
    try:
        commit = await _git("rev-parse", "--verify", "--quiet", f"{wanted}^{{commit}}", cwd=into)
    except ImageError:
        what = f"commit {source.commit}" if source.commit else f"branch '{source.branch}'" if source.branch else "HEAD"
        raise ImageError(f"{what} is not in '{source.repository}'", code="git_ref_not_found", param="git") from None
    await _git("checkout", "--quiet", "--detach", commit, cwd=into)
    shutil.rmtree(into / ".git")
    return commit


async def build_from_git(podman: Podman, config: ImagesConfig, workspace_id: str, spec: DeploymentSpec) -> str:
    """Builds the deployment's image from its git source; returns its tag."""
    assert spec.git is not None
    check_allowed(spec.git.repository, config.git_allowed)
    with tempfile.TemporaryDirectory(prefix="tramontane-git-", dir=config.work_dir) as work:
        source = Path(work) / "source"
        scratch = Path(work) / "scratch"
        scratch.mkdir()
        commit = await checkout(spec.git, source)
        plan = plan_build(
            source, scratch, config.base_image, containerfile=spec.git.containerfile, has_command=bool(spec.command)
        )
        tag = f"{built_repository(workspace_id, spec.name)}:{commit[:12]}"
        await podman.build(plan.context, plan.containerfile, tag, timeout_s=config.build_timeout_s)
    return tag
