"""Request and response bodies of the sandbox REST API."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from .files import EntryInfo
from .metrics import SandboxMetrics
from .policy import MAX_ALLOW_OUT, Limits, NetworkPolicy, SandboxSpec, parse_egress_rule
from .process import ProcessInfo
from .sandbox import SandboxInfo


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class NetworkBody(_Body):
    allow_out: list[str] = Field(
        default_factory=list,
        max_length=MAX_ALLOW_OUT,
        description=(
            'Where the sandbox may connect through its HTTP proxy, as "host:port": a name, "*.domain" '
            '(subdomains), "*" (any public host) or an IP ("[v6]"); port a number or "*". '
            "Private, loopback and link-local addresses need their exact IP:port. Empty: no network."
        ),
    )

    @field_validator("allow_out")
    @classmethod
    def _entries_parse(cls, entries: list[str]) -> list[str]:
        for entry in entries:
            parse_egress_rule(entry)
        return entries


class CreateSandboxBody(_Body):
    template: str | None = Field(
        None,
        description='A built template\'s name or id, "base" (tier 1 on the host\'s /usr), "microvm" (tier 2, a '
        'microVM) or "microvm:<template>" (that template in a microVM). Default: the platform\'s default template '
        "(data: numpy, pandas, matplotlib); the response's template says which one the sandbox got.",
    )
    timeout: float = Field(300, description="Seconds until the sandbox is killed; extend with POST /timeout.")
    idle_timeout: float | None = Field(None, description="Seconds without an API call after which it is killed.")
    envs: dict[str, str] = Field(default_factory=dict)
    metadata: dict[str, str] = Field(default_factory=dict)
    cpu: float | None = Field(None, description="Cores (a CFS quota).")
    memory_mb: int | None = None
    disk_mb: int | None = Field(None, description="Size of /home/user.")
    allow_internet_access: bool = Field(False, description='E2B\'s switch: true adds "*:*" to network.allow_out.')
    network: NetworkBody = Field(default_factory=NetworkBody)

    def spec(self, defaults: Limits) -> SandboxSpec:
        changes = {"cpu": self.cpu, "memory_mb": self.memory_mb, "workspace_mb": self.disk_mb}
        limits = Limits(**{**defaults.__dict__, **{k: v for k, v in changes.items() if v is not None}})
        allow_out = tuple(self.network.allow_out) + (("*:*",) if self.allow_internet_access else ())
        return SandboxSpec(
            template=self.template,
            timeout_s=self.timeout,
            idle_timeout_s=self.idle_timeout,
            env=dict(self.envs),
            metadata=dict(self.metadata),
            limits=limits,
            network=NetworkPolicy(allow_out=allow_out),
        )


def _utc(timestamp: float) -> datetime:
    return datetime.fromtimestamp(timestamp, tz=UTC)


class SandboxModel(BaseModel):
    sandbox_id: str
    template: str
    state: Literal["running", "paused", "killed"]
    metadata: dict[str, str]
    started_at: datetime
    end_at: datetime
    cpu: float
    memory_mb: int
    disk_mb: int
    idle_timeout: float | None
    warnings: list[str] = Field(default_factory=list, description="e.g. a microVM whose CPU is emulated (slow).")

    @classmethod
    def of(cls, info: SandboxInfo) -> SandboxModel:
        return cls(
            sandbox_id=info.sandbox_id,
            template=info.template,
            state=info.state.value,
            metadata=info.metadata,
            started_at=_utc(info.started_at),
            end_at=_utc(info.end_at),
            cpu=info.cpu,
            memory_mb=info.memory_mb,
            disk_mb=info.disk_mb,
            idle_timeout=info.idle_timeout_s,
            warnings=list(info.warnings),
        )


class SandboxList(BaseModel):
    sandboxes: list[SandboxModel]


class TimeoutBody(_Body):
    timeout: float


class MetricsModel(BaseModel):
    timestamp: datetime
    cpu_count: float = Field(description="The sandbox's CPU limit, in CPUs.")
    cpu_used_pct: float = Field(description="Of its CPU limit, since the previous request (or its start).")
    cpu_usage_seconds: float
    memory_bytes: int
    memory_limit_bytes: int
    pids: int
    oom_kills: int
    disk_used_bytes: int | None = Field(description="/home/user and /tmp; null while paused, before any sample.")
    disk_total_bytes: int | None

    @classmethod
    def of(cls, metrics: SandboxMetrics) -> MetricsModel:
        return cls(**{**metrics.__dict__, "timestamp": _utc(metrics.timestamp)})


class CommandBody(_Body):
    cmd: str
    cwd: str | None = None
    envs: dict[str, str] = Field(default_factory=dict)
    timeout: float | None = Field(60, description="Seconds; null for none (background commands default to none).")
    background: bool = Field(False, description="Keep running when the stream is closed.")
    stream: bool = Field(True, description="NDJSON (or SSE with Accept: text/event-stream) events as they happen.")


class CommandResultModel(BaseModel):
    pid: int
    exit_code: int
    stdout: str
    stderr: str
    error: str | None
    truncated: bool


class StartedModel(BaseModel):
    pid: int


class KilledModel(BaseModel):
    killed: int = Field(description="Processes found and killed (at the first pass).")


class ProcessModel(BaseModel):
    pid: int
    cmd: str
    cwd: str
    started_at: datetime

    @classmethod
    def of(cls, process: ProcessInfo) -> ProcessModel:
        return cls(pid=process.pid, cmd=process.cmd, cwd=process.cwd, started_at=_utc(process.started_at))


class ProcessList(BaseModel):
    processes: list[ProcessModel]


class EntryModel(BaseModel):
    name: str
    path: str
    type: Literal["file", "dir", "symlink"]
    size: int
    mode: int
    modified_at: datetime
    symlink_target: str | None = None

    @classmethod
    def of(cls, entry: EntryInfo) -> EntryModel:
        return cls(**{**entry.__dict__, "modified_at": _utc(entry.modified_at)})


class EntryList(BaseModel):
    entries: list[EntryModel]


class RenameBody(_Body):
    old_path: str
    new_path: str


class MakeDirModel(BaseModel):
    created: bool


class CodeBody(_Body):
    code: str
    timeout: float | None = 300
    stream: bool = Field(False, description="NDJSON events stdout/stderr, then result.")


class TerminalBody(_Body):
    rows: int = Field(24, ge=1, le=1000)
    cols: int = Field(80, ge=1, le=1000)
    cwd: str | None = None
    envs: dict[str, str] = Field(default_factory=dict)
    timeout: float | None = Field(
        None, description="Seconds the shell may live; null: until killed or the sandbox ends."
    )


class TerminalSizeBody(_Body):
    rows: int = Field(ge=1, le=1000)
    cols: int = Field(ge=1, le=1000)
