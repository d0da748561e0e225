"""The deployment spec: what to run, with what resources, how to scale and check it,
and which requests reach it. Written as YAML or JSON by users, stored as JSON."""

from __future__ import annotations

import json
import math
import sys
from enum import StrEnum
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

NAME_PATTERN = r"^[a-z0-9][a-z0-9-]{0,62}$"
# A workspace secret's name: letters, digits, `_`, `-` and `.`, as env-style names are common.
SECRET_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"

# `tramontane up` started through the interpreter running the control plane, so a
# model deployment needs no console script on PATH.
_TRAMONTANE_UP = "import sys; from tramontane.cli import app; sys.argv[0] = 'tramontane'; app()"


# Ours and Ray's names for the resources that have their own fields.
_BUILTIN_RESOURCES = frozenset(
    {"cpu", "memory_mb", "gpus", "gpu_memory_mb", "CPU", "GPU", "memory", "object_store_memory"}
)


class Kind(StrEnum):
    COMMAND = "command"
    MODEL = "model"
    IMAGE = "image"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Resources(_Strict):
    """What one replica reserves on the node; the scheduler packs by these."""

    cpu: float = Field(default=1.0, gt=0)
    memory_mb: int = Field(default=512, gt=0)
    gpus: int = Field(default=0, ge=0)
    gpu_memory_mb: int = Field(default=0, ge=0)
    # Named resources a node must offer, e.g. {"node_b": 1} or {"a100": 1}: Ray
    # custom resources, set on a node with `ray start --resources`.
    custom: dict[str, float] = Field(default_factory=dict)

    @field_validator("custom")
    @classmethod
    def _custom(cls, value: dict[str, float]) -> dict[str, float]:
        if reserved := sorted(value.keys() & _BUILTIN_RESOURCES):
            raise ValueError(f"{', '.join(reserved)} cannot be a custom resource: use the field of that name")
        if any(amount <= 0 for amount in value.values()):
            raise ValueError("custom resource amounts must be positive")
        return value


class Scaling(_Strict):
    min_replicas: int = Field(default=0, ge=0)
    max_replicas: int = Field(default=1, ge=1)
    # In-flight requests one replica should carry; the autoscaler aims for it.
    target_concurrency: float = Field(default=4.0, gt=0)
    # Also scale on requests per second per replica (averaged over the last 10 s)
    # and on CPU use, in percent of the CPUs a replica reserves, when set; the
    # signal asking for the most replicas wins.
    target_requests_per_s: float | None = Field(default=None, gt=0)
    target_cpu_percent: float | None = Field(default=None, gt=0, le=1000)
    # Idle seconds before scaling to zero (only when min_replicas is 0).
    scale_to_zero_after_s: float = Field(default=300.0, gt=0)
    # The stabilisation window: replicas are removed only down to the highest count
    # wanted during this long, so a short lull does not throw away warm replicas
    # that the next burst needs, and the count does not flap.
    downscale_delay_s: float = Field(default=30.0, ge=0)
    # Requests allowed to wait for a replica (waking from zero, or all busy
    # starting); more are refused with 503 and Retry-After.
    max_queued_requests: int = Field(default=64, ge=0)
    wake_timeout_s: float = Field(default=120.0, gt=0)
    # How long a replica scaled away keeps its process, frozen with its weights in
    # host memory (light sleep: woken in milliseconds), before it is stopped (deep
    # sleep: a new process on wake). 0 stops it at once.
    light_sleep_s: float = Field(default=3600.0, ge=0)

    @model_validator(mode="after")
    def _bounds(self) -> Scaling:
        if self.min_replicas > self.max_replicas:
            raise ValueError("min_replicas must not exceed max_replicas")
        return self


class HealthCheck(_Strict):
    type: Literal["tcp", "http"] = "tcp"
    path: str = "/"
    # Seconds a new replica may take to start answering before it counts as failed.
    grace_period_s: float = Field(default=60.0, gt=0)
    interval_s: float = Field(default=5.0, gt=0)
    timeout_s: float = Field(default=2.0, gt=0)
    failures_before_restart: int = Field(default=3, ge=1)


# A count of replicas, or a percentage of the wanted count ("25%").
ReplicaBudget = int | str


class Rollout(_Strict):
    """How a new revision replaces the old replicas, as Kubernetes' rolling update:
    at most `max_surge` replicas above the wanted count run at any time, and at most
    `max_unavailable` below it are not ready. Each new replica that passes its
    health check retires an old one, so a rollout never needs room for two full
    revisions side by side."""

    max_surge: ReplicaBudget = 1
    max_unavailable: ReplicaBudget = 0

    @field_validator("max_surge", "max_unavailable")
    @classmethod
    def _budget(cls, value: ReplicaBudget) -> ReplicaBudget:
        if isinstance(value, int):
            if value < 0:
                raise ValueError("must be 0 or more")
            return value
        if not value.endswith("%") or not value[:-1].isdigit() or int(value[:-1]) > 100:
            raise ValueError("must be a replica count or a percentage from 0% to 100%")
        return value

    def budgets(self, replicas: int) -> tuple[int, int]:
        """(surge, unavailable) for `replicas` wanted: a surge percentage rounds up and
        an unavailable one down (so that both err on the side of serving). Both 0
        would leave a rollout no move: it surges by one then."""
        surge = _resolve(self.max_surge, replicas, math.ceil)
        unavailable = _resolve(self.max_unavailable, replicas, math.floor)
        return (1 if surge == unavailable == 0 else surge), unavailable


def _resolve(budget: ReplicaBudget, replicas: int, rounding: Any) -> int:
    if isinstance(budget, int):
        return budget
    return int(rounding(replicas * int(budget[:-1]) / 100))


class Routes(_Strict):
    """Which requests reach the deployment: a JSON body whose `model` is one of
    `models`, or a path under `path_prefix`."""

    models: list[str] = Field(default_factory=list)
    path_prefix: str | None = None

    @field_validator("path_prefix")
    @classmethod
    def _prefix(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not value.startswith("/") or value == "/":
            raise ValueError("path_prefix must start with '/' and not be '/' alone")
        return value.rstrip("/")


class GitSource(_Strict):
    """A repository built into the deployment's image when it is created (gitsource.py)."""

    # A local path, or a URL the operator allows (TRAMONTANE_GIT_ALLOWED).
    repository: str = Field(min_length=1)
    branch: str | None = None
    commit: str | None = Field(default=None, pattern=r"^[0-9a-fA-F]{4,40}$")
    # A Containerfile in the repository; default: Containerfile or Dockerfile at its
    # root, else a Python project's generated one.
    containerfile: str | None = None

    @model_validator(mode="after")
    def _one_ref(self) -> GitSource:
        if self.branch and self.commit:
            raise ValueError("give a branch or a commit, not both")
        return self


class SecretRef(_Strict):
    """An environment variable's value taken from a workspace secret, by name:
    `env: {DATABASE_URL: {secret: db-url}}`. The value reaches the replica's
    environment only; the spec keeps the name."""

    secret: str = Field(pattern=SECRET_NAME_PATTERN)


class DeploymentSpec(_Strict):
    name: str = Field(pattern=NAME_PATTERN)
    kind: Kind = Kind.COMMAND
    # kind=command: a shell command listening on $PORT, on 127.0.0.1 or on $HOST
    # when set (a Ray node's address, so that the control plane can reach it).
    command: str | None = None
    # kind=model: a model path for `tramontane up --model`.
    model: str | None = None
    # kind=image: an OCI image on this host (`tramontane build`), run with its own
    # command, or `command` through the image's /bin/sh. Set from `git` once built.
    image: str | None = None
    git: GitSource | None = None
    # The port the image listens on, published to the replica's port; default: the
    # replica's port itself, given to the container as $PORT.
    container_port: int | None = Field(default=None, ge=1, le=65535)
    resources: Resources = Field(default_factory=Resources)
    scaling: Scaling = Field(default_factory=Scaling)
    health_check: HealthCheck = Field(default_factory=HealthCheck)
    rollout: Rollout = Field(default_factory=Rollout)
    env: dict[str, str | SecretRef] = Field(default_factory=dict)
    # Workspace secrets as read-only files: path -> {secret: NAME}. A relative path
    # is under the replica's own secrets directory ($TRAMONTANE_SECRETS_DIR, which
    # is /run/secrets in a container); an image deployment may give an absolute
    # path in its container instead.
    files: dict[str, SecretRef] = Field(default_factory=dict)
    routes: Routes = Field(default_factory=Routes)

    @field_validator("files")
    @classmethod
    def _file_paths(cls, value: dict[str, SecretRef]) -> dict[str, SecretRef]:
        for path in value:
            segments = path.removeprefix("/").split("/")
            if len(path) > 255 or "\0" in path:
                raise ValueError(f"{path!r} is not a file path")
            if any(segment in {"", ".", ".."} for segment in segments):
                raise ValueError(f"{path!r}: a file path must be plain, without '.', '..' or empty parts")
            if "," in path or ":" in path:  # the container engine's mount syntax
                raise ValueError(f"{path!r}: a file path cannot hold ',' or ':'")
        inner = {PurePosixPath(p) for p in value}
        if clash := next((p for p in inner if any(q in inner for q in p.parents if q != PurePosixPath("/"))), None):
            raise ValueError(f"{clash} is under another file of `files`")
        return value

    @model_validator(mode="after")
    def _kind_fields(self) -> DeploymentSpec:
        if self.kind is not Kind.IMAGE and any(path.startswith("/") for path in self.files):
            raise ValueError(
                "absolute `files` paths are for image deployments; give a path relative to $TRAMONTANE_SECRETS_DIR"
            )
        if self.kind is Kind.IMAGE:
            if not self.image and self.git is None:
                raise ValueError("an image deployment needs `image` or `git`")
            if self.resources.gpus:
                raise ValueError("image deployments cannot reserve GPUs")
        elif self.image or self.git or self.container_port:
            raise ValueError("`image`, `git` and `container_port` belong to image deployments (kind: image)")
        if self.kind is Kind.COMMAND and not self.command:
            raise ValueError("a command deployment needs `command`")
        if self.kind is Kind.MODEL:
            if not self.model:
                raise ValueError("a model deployment needs `model`")
            if not self.routes.models:
                # Clients name the model by the deployment's name unless told otherwise.
                self.routes.models = [self.name]
        if not self.routes.models and self.routes.path_prefix is None:
            self.routes.path_prefix = f"/{self.name}"
        if "PORT" in self.env:
            raise ValueError("PORT is chosen by the control plane; remove it from env")
        return self

    def plain_env(self) -> dict[str, str]:
        """The environment variables given as values (secrets are resolved by the
        plane and reach the replica through its platform environment)."""
        return {k: v for k, v in self.env.items() if isinstance(v, str)}

    def secret_env(self) -> dict[str, str]:
        """Environment variable -> the name of the secret that gives its value."""
        return {k: v.secret for k, v in self.env.items() if isinstance(v, SecretRef)}

    def secret_files(self) -> dict[str, str]:
        """File path -> the name of the secret that is its content."""
        return {path: ref.secret for path, ref in self.files.items()}

    def secret_names(self) -> set[str]:
        """Every secret the spec names, in env or in files."""
        return set(self.secret_env().values()) | set(self.secret_files().values())

    def argv(self) -> list[str]:
        """The replica's command line; $PORT comes from its environment."""
        if self.kind is Kind.MODEL:
            return [sys.executable, "-c", _TRAMONTANE_UP, *self.tramontane_args("$PORT")]
        # Killed as a process group, so the shell's children go with it.
        return ["/bin/sh", "-c", self.command]

    def tramontane_args(self, port: int | str) -> list[str]:
        """A model replica's `tramontane` arguments."""
        return ["up", "--model", f"{self.routes.models[0]}={self.model}", "--port", str(port)]

    @classmethod
    def load(cls, path: str | Path) -> DeploymentSpec:
        """Reads a spec from a .yaml/.yml or .json file."""
        return cls.model_validate(parse_document(Path(path).read_text(), Path(path).suffix))


def parse_document(text: str, suffix: str = ".yaml") -> Any:
    return json.loads(text) if suffix == ".json" else yaml.safe_load(text)


def expand_port(argv: list[str], port: int) -> list[str]:
    """Substitutes $PORT in a model replica's argv (a command's shell expands it itself)."""
    return [str(port) if arg == "$PORT" else arg for arg in argv]
