"""Getting an image deployment's image ready before any replica starts.

A spec names an image on this host (built with `tramontane build` or loaded
from an archive), an image of a registry the operator allows (pulled once, at
deploy time), or a git repository (cloned and built, see gitsource.py). What
cannot be run is refused when the deployment is created, with the reason, rather
than discovered by replicas crash-looping."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import Forbidden, Invalid
from .containers import ImageError, Podman
from .spec import DeploymentSpec, Kind

# Operator settings, from the server's environment.
REGISTRIES_ENV = "TRAMONTANE_IMAGE_REGISTRIES"
GIT_ALLOWED_ENV = "TRAMONTANE_GIT_ALLOWED"
BASE_IMAGE_ENV = "TRAMONTANE_BUILD_BASE_IMAGE"
# The base of generated Containerfiles unless the operator names another: made
# from this host's own Python by `tramontane build --python-base`.
DEFAULT_BASE_IMAGE = "localhost/tramontane/python-base:latest"
# Images built from git repositories: one repository per workspace, so that one
# workspace's builds can never be named by another's deployments.
BUILT_PREFIX = "localhost/tramontane/builds/"


def _split(value: str | None) -> tuple[str, ...]:
    return tuple(item.strip() for item in (value or "").split(",") if item.strip())


@dataclass(frozen=True)
class ImagesConfig:
    """What the operator allows: registries images may be pulled from (none: only
    this host's images), git sources (URL or directory prefixes) and the base
    image of Python projects."""

    registries: tuple[str, ...] = ()
    git_allowed: tuple[str, ...] = ()
    base_image: str = DEFAULT_BASE_IMAGE
    build_timeout_s: float = 1800.0
    work_dir: Path | None = field(default=None)

    @classmethod
    def from_env(cls) -> ImagesConfig:
        return cls(
            registries=_split(os.environ.get(REGISTRIES_ENV)),
            git_allowed=_split(os.environ.get(GIT_ALLOWED_ENV)),
            base_image=os.environ.get(BASE_IMAGE_ENV) or DEFAULT_BASE_IMAGE,
        )


def registry_of(reference: str) -> str | None:
    """The registry host of an image reference, None for a short name
    (`busybox`, `team/app`), which podman would resolve through its own search list."""
    first, sep, _ = reference.partition("/")
    if not sep:
        return None
    if "." in first or ":" in first or first == "localhost":
        return first
    return None


def built_repository(workspace_id: str, name: str) -> str:
    return f"{BUILT_PREFIX}{workspace_id.lower()}/{name}"


class Images:
    """Prepares image deployments' specs; owns nothing but a Podman wrapper.
    `enabled` is False where the backend cannot run containers (Ray's actors)."""

    def __init__(self, podman: Podman | None = None, config: ImagesConfig | None = None, *, enabled: bool = True):
        self.podman = podman or Podman()
        self.config = config or ImagesConfig.from_env()
        self.enabled = enabled

    @classmethod
    def for_backend(cls, backend: object) -> Images:
        """Images for the backend's own Podman, when it runs containers."""
        podman = getattr(backend, "podman", None)
        return cls(podman, enabled=isinstance(podman, Podman))

    async def prepare(self, workspace_id: str, spec: DeploymentSpec) -> DeploymentSpec:
        """The spec to store: a git source built (its image set to the build's
        tag), an image checked to be on this host or pulled from an allowed
        registry. Raises ImageError (400) or Forbidden (403) otherwise."""
        if spec.kind is not Kind.IMAGE:
            return spec
        if not self.enabled:
            raise Invalid(
                "Image deployments run on the local backend; this server's replicas run on Ray",
                code="unsupported_kind",
                param="kind",
            )
        if spec.git is not None:
            from .gitsource import build_from_git  # only image deployments need git

            image = await build_from_git(self.podman, self.config, workspace_id, spec)
            return spec.model_copy(update={"image": image})
        assert spec.image is not None
        self._check_owner(workspace_id, spec.image)
        if await self.podman.image_exists(spec.image):
            return spec
        registry = registry_of(spec.image)
        if registry is None or registry == "localhost" or registry not in self.config.registries:
            pulls = f"; images may be pulled from {', '.join(self.config.registries)}" if self.config.registries else ""
            raise ImageError(
                f"Image '{spec.image}' is not on this host: build it with `tramontane build` or load an archive{pulls}",
                code="image_not_found",
                param="image",
            )
        await self.podman.pull(spec.image)
        return spec

    @staticmethod
    def _check_owner(workspace_id: str, image: str) -> None:
        if image.startswith(BUILT_PREFIX) and not image.startswith(built_repository(workspace_id, "")):
            raise Forbidden(f"Image '{image}' was built for another workspace", code="image_forbidden")
