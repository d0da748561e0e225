"""SandboxManager: creates, lists, finds and kills sandboxes, and reclaims them
when their absolute or idle timeout passes.

The template picks the tier: "base" is tier 1 (bubblewrap) on the host's /usr,
a built template (see `templates`) tier 1 on its own tree, "microvm" tier 2 (a
QEMU microVM, where the host can run one; see `microvm`). Both tiers run the
same agent, so everything past creation is shared. A request that names no
template gets the operator's default (see `default_template`); plain "microvm"
gets it too, as "microvm:<default>", once it is built.

A few sandboxes of the default shape are kept started ahead of demand (the
pool): tier 1's of the default template (or base while it is not built), and
microVMs of it (plain microvm while it is not built). A pooled sandbox is a
pristine bwrap + agent, or a booted VM, that has run nothing, so handing it out
only means writing its cgroup limits and environment, which takes creation off
the start-up time. Sandboxes whose start-time settings (mount sizes, rlimits,
and for a VM its memory and vCPUs) differ from the default are started on demand.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import logging
import math
import os
import secrets
import shutil
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import bwrap
from .cgroups import CgroupTree
from .default_template import DefaultTemplate
from .channel import ByteBudget, OutputBudget
from .errors import Conflict, NotFound, SandboxError, Unavailable, Unprocessable
from .files import MAX_FILE_BYTES
from .launcher import Runtime, launch
from .microvm import MicroVMHost, VMDisk, launch_vm, template_disk
from .microvm.disk import image_path
from .microvm.snapshot import check_disk, disk_identity, save_state
from .policy import EgressRule, Limits, SandboxSpec, validate_timeout
from ..store import tramontane_home
from .sandbox import ManagedSandbox, SandboxState
from .snapshots import Snapshot, SnapshotStore, sandbox_root
from .templates import Template, TemplateStore
from .uid_lease import LEASE_DIR, RANGE_SIZE, UidRange, claim_uid_range

logger = logging.getLogger("tramontane.sandbox")

TIER1_TEMPLATE = "base"
MICROVM_TEMPLATE = "microvm"
MICROVM_PREFIX = "microvm:"  # "microvm:<template>": a built template's tree, in a microVM


def is_microvm(template: str) -> bool:
    return template == MICROVM_TEMPLATE or template.startswith(MICROVM_PREFIX)


def template_name(template: str) -> str:
    """The built template a sandbox's template names ("microvm:analytics": analytics)."""
    return template.removeprefix(MICROVM_PREFIX)


def _default_max_limits() -> Limits:
    return Limits(
        cpu=float(os.cpu_count() or 1),
        memory_mb=16384,
        pids=4096,
        workspace_mb=16384,
        tmp_mb=4096,
        nofile=65536,
    )


@dataclass(frozen=True)
class ManagerConfig:
    bwrap_path: str | None = None  # found on PATH when None
    max_sandboxes: int = 256
    pool_size: int = 4  # tier 1
    microvm_pool_size: int = 1
    # "tcg" emulates the CPU: slow, for hosts without hardware KVM; "auto" tries
    # KVM and falls back to TCG with a warning (in the log and each VM's info).
    microvm_accelerator: str = "kvm"
    default_limits: Limits = field(default_factory=Limits)
    max_limits: Limits = field(default_factory=_default_max_limits)
    max_timeout_s: float = 24 * 3600.0
    templates: frozenset[str] = frozenset({TIER1_TEMPLATE, MICROVM_TEMPLATE})
    # What a sandbox whose request names no template gets: a built template's
    # name (the bundled "data": numpy, pandas, matplotlib), or "base" (the
    # host's /usr). While it is not built, such sandboxes get base and say so.
    default_template: str = "data"
    # Whether start() builds a missing bundled default in the background (the
    # platform does; a library user or a test builds it itself).
    build_default_template: bool = False
    # Built templates (see `templates`); None: $TRAMONTANE_HOME/templates.
    templates_dir: str | None = None
    # Where paused tier-1 sandboxes' snapshots are kept (see `snapshots`):
    # <state_dir>/workspaces/<id>/sandbox-snapshots; None: $TRAMONTANE_HOME.
    # And how many bytes of them one workspace may keep.
    state_dir: str | None = None
    snapshot_bytes_per_workspace: int = 10 * 1024**3
    # Non-public networks (e.g. "10.20.0.0/16") a sandbox's egress allow-list may
    # name by exact IP:port. None by default: a tenant must not reach the host's
    # loopback services, the metadata address or the operator's private network
    # unless the operator says so here.
    egress_private_networks: tuple[str, ...] = ()
    # Each sandbox runs as its own host uid, from this one up; pick a range no
    # account or subordinate-id range (/etc/subuid) uses. Each manager on the host
    # leases its own slice of it in `uid_lease_dir` (see `uid_lease`).
    host_uid_base: int = 1_500_000_000
    uid_lease_dir: str = LEASE_DIR
    cgroup_v2_parent: str = "/"
    max_file_bytes: int = MAX_FILE_BYTES
    # Serves sandbox ports at {port}-{sandbox id}.{ports_domain} too (a wildcard DNS
    # name pointing at the platform), besides /v1/sandboxes/{id}/ports/{port}.
    ports_domain: str | None = None
    reap_interval_s: float = 0.25
    # Bytes of a sandbox's output the server may hold at once (unread output, a
    # file being read, a result); None: max_file_bytes plus 16 MiB. And for all
    # sandboxes together.
    sandbox_output_bytes: int | None = None
    total_output_bytes: int = 1024 * 1024 * 1024
    # Admission: the memory limits of all sandboxes (a microVM's: its VM and QEMU)
    # may add up to host_memory_mb (None: the host's MemTotal) times this ratio.
    memory_overcommit: float = 1.0
    host_memory_mb: int | None = None

    def output_bytes_per_sandbox(self) -> int:
        return self.sandbox_output_bytes or self.max_file_bytes + 16 * 1024 * 1024


def host_memory_mb() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    raise Unavailable("cannot read the host's memory size from /proc/meminfo", code="host_memory_unknown")


def _pool_name(template: str, custom: Template | None) -> str:
    """Which pool a sandbox of `template` comes from: a built template's by its
    id (whatever name or id the request used), a built-in one's by its name. A
    template's microVMs are not its tier-1 sandboxes (and only the default's are pooled)."""
    if custom is None:
        return template
    return f"{MICROVM_PREFIX}{custom.id}" if is_microvm(template) else custom.id


def _pool_key(template: str, limits: Limits) -> tuple[int, ...]:
    """The limits fixed when a sandbox starts: mount sizes and the agent's rlimits,
    and a VM's memory and vCPU count."""
    fixed = (limits.workspace_mb, limits.tmp_mb, limits.nofile, limits.pids)
    if is_microvm(template):
        return (*fixed, limits.memory_mb, math.ceil(limits.cpu))
    return fixed


class SandboxManager:
    def __init__(self, config: ManagerConfig | None = None):
        self.config = config or ManagerConfig()
        self._sandboxes: dict[str, ManagedSandbox] = {}
        # By pool key: "base", "microvm", or a template's id.
        self._pools: dict[str, list[tuple[str, Runtime]]] = {}
        pooled_at_most = self.config.pool_size + self.config.microvm_pool_size
        slots = self.config.max_sandboxes + pooled_at_most
        if slots > RANGE_SIZE:
            raise ValueError(f"max_sandboxes plus pool sizes exceed the {RANGE_SIZE} host uids a manager leases")
        # Slots: offsets into the leased uid range.
        self._slots = slots
        self._free_uids = list(range(slots))[::-1]
        self._uids: UidRange | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._creating = 0  # launches in flight for create(), counted against capacity
        self._closing = False
        self._reaper: asyncio.Task[None] | None = None
        self._filling: asyncio.Task[None] | None = None
        self._bwrap = ""
        self._tree: CgroupTree | None = None
        self._microvm: MicroVMHost | None = None
        self._microvm_missing = "tier-2 sandboxes are not set up"
        self._output_total = ByteBudget(self.config.total_output_bytes)
        self._memory_capacity_mb = 0
        self._reserved_mb = 0  # create()'s launches in flight, counted against host memory
        self._pool_launching_mb = 0  # the pool's: they yield to create()'s (see _add_to_pool)
        self.templates = TemplateStore(Path(self.config.templates_dir) if self.config.templates_dir else None)
        self.default_template = DefaultTemplate(
            self.config.default_template, self.templates, builtin=self.config.templates, fallback=TIER1_TEMPLATE
        )
        state = Path(self.config.state_dir) if self.config.state_dir else tramontane_home()
        self.snapshots = SnapshotStore(state, self.config.snapshot_bytes_per_workspace)
        self._snapshots: dict[str, Snapshot] = {}  # paused sandboxes whose state is on disk
        self._transitions: dict[str, asyncio.Lock] = {}  # one pause or resume at a time per sandbox

    # -- lifecycle

    async def start(self) -> None:
        """Checks the host can run tier-1 sandboxes, then starts the reaper and the pool."""
        found = self.config.bwrap_path or shutil.which("bwrap")
        if not found:
            raise Unavailable("bubblewrap (bwrap) is not installed", code="bwrap_missing")
        if os.geteuid() != 0:
            raise Unavailable("tier-1 sandboxes need root (a host uid and a cgroup per sandbox)", code="not_root")
        if not Path(bwrap.PYTHON).exists():
            raise Unavailable(f"{bwrap.PYTHON} is missing; the sandbox agent runs on it", code="python_missing")
        self._bwrap = found
        self._tree = CgroupTree.detect(self.config.cgroup_v2_parent)
        self._tree.reap_stale()
        if not self.default_template.built_elsewhere_now():  # its scratch folder is in use
            self.templates.clean()
        self._memory_capacity_mb = int((self.config.host_memory_mb or host_memory_mb()) * self.config.memory_overcommit)
        self._uids = claim_uid_range(self.config.uid_lease_dir, self.config.host_uid_base)
        if MICROVM_TEMPLATE in self.config.templates:
            try:
                self._microvm = MicroVMHost.detect(self.config.microvm_accelerator)
            except Unavailable as exc:
                self._microvm_missing = f"tier-2 (microvm) sandboxes are unavailable on this host: {exc.message}"
                logger.info("%s", self._microvm_missing)
        await asyncio.to_thread(self._load_snapshots)
        self._reaper = asyncio.create_task(self._reap_loop())
        self.default_template.start(build=self.config.build_default_template, on_change=self._refill)
        self._refill()

    def _load_snapshots(self) -> None:
        """Paused sandboxes of an earlier run come back paused, ready to resume."""
        for snapshot in self.snapshots.scan():
            if snapshot.sandbox_id in self._sandboxes:
                continue
            sandbox = ManagedSandbox(snapshot.sandbox_id, snapshot.spec, None, self.config.max_file_bytes)
            sandbox.state = SandboxState.PAUSED
            sandbox.started_at = snapshot.started_at
            self._sandboxes[sandbox.id] = sandbox
            self._snapshots[sandbox.id] = snapshot

    async def shutdown(self) -> None:
        self._closing = True
        await self.default_template.stop()
        if self._reaper is not None:
            self._reaper.cancel()
        if self._filling is not None:
            # It stops after the launch in flight, which must not be orphaned.
            await asyncio.gather(self._filling, return_exceptions=True)
        pooled = [entry for pool in self._pools.values() for entry in pool]
        for pool in self._pools.values():
            pool.clear()
        # Sandboxes paused to disk stay there, for the next run to resume.
        await asyncio.gather(
            *(self._remove(s, "shutdown") for s in list(self._sandboxes.values()) if s.runtime is not None),
            *(self._release(runtime) for _, runtime in pooled),
            return_exceptions=True,
        )
        for task in list(self._tasks):
            await asyncio.gather(task, return_exceptions=True)
        if self._uids is not None:
            self._uids.release()  # every sandbox, and so every uid of the range, is gone

    @property
    def host_uids(self) -> range:
        """The host uids this manager's sandboxes run as (leased when it starts)."""
        if self._uids is None:
            raise Unavailable("the sandbox manager is not started", code="not_started")
        return range(self._uids.first, self._uids.first + self._slots)

    # -- creation

    async def create(self, spec: SandboxSpec | None = None) -> ManagedSandbox:
        if self._tree is None:
            raise Unavailable("the sandbox manager is not started", code="not_started")
        spec = spec or SandboxSpec(limits=self.config.default_limits)
        spec, template, warnings = self._resolve_template(spec)
        assert spec.template is not None
        spec.validate(
            templates=self.config.templates | {spec.template},
            max_limits=self.config.max_limits,
            max_timeout_s=self.config.max_timeout_s,
        )
        if is_microvm(spec.template) and spec.network.allow_out:
            raise Unprocessable("egress allow-list is tier-1 only", param="network.allow_out", code="egress_tier1_only")
        self._check_private_egress(spec.network.rules())
        if is_microvm(spec.template) and self._microvm is None:
            raise Unavailable(self._microvm_missing, code="microvm_unavailable")
        if len(self._sandboxes) + self._creating >= self.config.max_sandboxes:
            raise Unavailable(f"all {self.config.max_sandboxes} sandboxes are in use", code="capacity")
        pooled = self._claim(spec, template)
        need_mb = self._memory_mb(spec.template, spec.limits)
        try:
            self._admit(need_mb - (pooled[1].committed_mb if pooled else 0))
        except Unavailable:
            if pooled is not None:
                self._pools.setdefault(_pool_name(spec.template, template), []).insert(0, pooled)
            raise
        if pooled is not None:
            sandbox_id, runtime = pooled
            try:
                # Inline, not in a thread: a few in-memory cgroupfs writes, and a
                # thread hop costs more on a loaded host.
                if spec.limits != self.config.default_limits:
                    runtime.cgroup.set_limits(self._host_limits(spec.template, spec.limits))
                    runtime.committed_mb = need_mb
                if spec.env:
                    await runtime.channel.call("configure", env=spec.env)
            except BaseException:
                self._background(self._release(runtime))
                raise
        else:
            self._creating += 1
            try:
                sandbox_id, runtime = await self._launch_to_completion(spec, template)
            finally:
                self._creating -= 1
        if is_microvm(spec.template) and self._microvm.warning:
            warnings.append(self._microvm.warning)
        sandbox = ManagedSandbox(sandbox_id, spec, runtime, self.config.max_file_bytes, warnings)
        self._sandboxes[sandbox_id] = sandbox
        self._watch(sandbox, runtime)
        self._refill()
        if template is not None and template.start:
            await self._start_command(sandbox, template.start)
        return sandbox

    def _resolve_template(self, spec: SandboxSpec) -> tuple[SandboxSpec, Template | None, list[str]]:
        """The spec with the template it really gets named, that template if it
        is a built one, and warnings for the caller (why it got base)."""
        if spec.template is None:
            default = self.default_template.current()
            if default is not None:
                return dataclasses.replace(spec, template=default.name), default, []
            if self.default_template.builtin:
                return dataclasses.replace(spec, template=self.default_template.name), None, []
            return dataclasses.replace(spec, template=TIER1_TEMPLATE), None, [self.default_template.warning()]
        if spec.template == MICROVM_TEMPLATE:
            return self._resolve_plain_microvm(spec)
        if spec.template in self.config.templates:
            return spec, None, []
        try:
            return spec, self.templates.resolve(template_name(spec.template), spec.owner), []
        except NotFound:
            if (building := self.default_template.unavailable(template_name(spec.template))) is not None:
                raise building from None
            raise

    def _resolve_plain_microvm(self, spec: SandboxSpec) -> tuple[SandboxSpec, Template | None, list[str]]:
        """Plain "microvm" follows the default as tier 1 does: on the default
        template's disk ("microvm:<default>", which pauses to disk) when it is
        ready, else on the host's /usr over 9p, saying why unless the operator
        chose a built-in default."""
        default = self.default_template.current()
        if default is not None:
            return dataclasses.replace(spec, template=f"{MICROVM_PREFIX}{default.name}"), default, []
        if self.default_template.builtin:
            return spec, None, []
        return spec, None, [self.default_template.warning(MICROVM_TEMPLATE, "the host's /usr over 9p")]

    async def _start_command(self, sandbox: ManagedSandbox, command: str) -> None:
        """Starts a template's start command in the background; a sandbox whose
        start command cannot even be started is removed."""
        try:
            await sandbox.commands.start(command, timeout=None)
        except BaseException:
            await self._remove(sandbox, "start command failed")
            raise

    def _watch(self, sandbox: ManagedSandbox, runtime: Runtime) -> None:
        """Removes the sandbox when `runtime`, while it is the sandbox's, ends on its own."""

        def ended(_: object) -> None:
            if sandbox.runtime is runtime:
                self._background(self._remove(sandbox, "exited"))

        runtime.channel.closed.add_done_callback(ended)

    def template_in_use(self, template: Template) -> bool:
        """Whether a sandbox runs from the template, or a paused one will resume from it."""
        running = any(s.runtime is not None and s.runtime.rootfs == template.rootfs for s in self._sandboxes.values())
        return running or any(snap.template_id == template.id for snap in self._snapshots.values())

    def _memory_mb(self, template: str, limits: Limits) -> int:
        return self._host_limits(template, limits).memory_mb

    def committed_mb(self) -> int:
        """The memory limits of every sandbox, pooled and starting ones included."""
        running = sum(s.runtime.committed_mb for s in self._sandboxes.values() if s.runtime is not None)
        pooled = sum(runtime.committed_mb for pool in self._pools.values() for _, runtime in pool)
        return running + pooled + self._reserved_mb

    def _fits(self, extra_mb: int) -> bool:
        return self.committed_mb() + extra_mb <= self._memory_capacity_mb

    def _admit(self, extra_mb: int) -> None:
        """Makes room for `extra_mb` more (stopping pooled sandboxes if need be), or
        refuses with the time the next sandbox's deadline frees some."""
        pooled = [(t, entry) for t, pool in self._pools.items() for entry in pool]
        while not self._fits(extra_mb) and pooled:
            template, entry = pooled.pop()
            self._pools[template].remove(entry)
            self._background(self._release(entry[1]))
        if self._fits(extra_mb):
            return
        now = time.monotonic()
        soonest = min((s.deadline - now for s in self._sandboxes.values()), default=5.0)
        raise Unavailable(
            f"the host's memory is committed to sandboxes ({self.committed_mb()} of {self._memory_capacity_mb} MiB); "
            f"this one needs {extra_mb} MiB more",
            code="host_memory_exhausted",
            retry_after_s=min(60.0, max(1.0, soonest)),
        )

    def _claim(self, spec: SandboxSpec, template: Template | None) -> tuple[str, Runtime] | None:
        assert spec.template is not None
        pool = self._pools.get(_pool_name(spec.template, template))
        # Pooled sandboxes have no egress proxy, whose socket is mounted at start.
        if spec.network.allow_out or not pool:
            return None
        if _pool_key(spec.template, spec.limits) != _pool_key(spec.template, self.config.default_limits):
            return None
        while pool:
            sandbox_id, runtime = pool.pop(0)
            if not runtime.channel.closed.done():
                return sandbox_id, runtime
            self._background(self._release(runtime))
        return None

    def _check_private_egress(self, rules: tuple[EgressRule, ...]) -> None:
        networks = [ipaddress.ip_network(n) for n in self.config.egress_private_networks]
        for rule in rules:
            if rule.ip is not None and not rule.ip.is_global and not any(rule.ip in n for n in networks):
                raise Unprocessable(
                    f"{rule.host}:{rule.port} is not a public address, and this platform allows no egress to it",
                    param="network.allow_out",
                    code="egress_private_not_allowed",
                )

    async def _launch_to_completion(
        self, spec: SandboxSpec, template: Template | None = None, incoming: Path | None = None
    ) -> tuple[str, Runtime]:
        """A launch the caller's cancellation (a client hanging up) cannot cut in
        half: it runs on, and what it started is released. `incoming`: a microVM's
        saved state to start from."""
        env = spec.env if template is None else {**template.env, **spec.env}
        launching = asyncio.ensure_future(
            self._launch(spec.template, spec.limits, env, spec.network.rules(), custom=template, incoming=incoming)
        )
        try:
            return await asyncio.shield(launching)
        except asyncio.CancelledError:
            launching.add_done_callback(self._release_orphan)
            raise

    def _release_orphan(self, launched: asyncio.Future[tuple[str, Runtime]]) -> None:
        if not launched.cancelled() and launched.exception() is None:
            self._background(self._release(launched.result()[1]))

    def _host_limits(self, template: str, limits: Limits) -> Limits:
        """The cgroup limits of a sandbox's host processes: a VM's are its QEMU's."""
        if is_microvm(template):
            assert self._microvm is not None
            return self._microvm.host_limits(limits)
        return limits

    async def _launch(
        self,
        template: str,
        limits: Limits,
        env: dict[str, str],
        egress_rules: tuple[EgressRule, ...] = (),
        for_pool: bool = False,
        custom: Template | None = None,
        incoming: Path | None = None,
    ) -> tuple[str, Runtime]:
        if not self._free_uids:
            raise Unavailable("no free sandbox slot", code="capacity")
        assert self._tree is not None
        slot = self._free_uids.pop()
        sandbox_id = secrets.token_hex(10)
        budget = OutputBudget(self.config.output_bytes_per_sandbox(), self._output_total)
        committed = self._memory_mb(template, limits)
        self._reserve(committed, for_pool)
        try:
            runtime = await self._start_runtime(
                template, limits, env, egress_rules, sandbox_id, slot, budget,
                None if custom is None else custom.rootfs, incoming,
            )  # fmt: skip
        except BaseException:
            self._free_uids.append(slot)
            raise
        finally:
            self._reserve(-committed, for_pool)
        runtime.committed_mb = committed
        return sandbox_id, runtime

    async def _start_runtime(
        self,
        template: str,
        limits: Limits,
        env: dict[str, str],
        egress_rules: tuple[EgressRule, ...],
        sandbox_id: str,
        slot: int,
        budget: OutputBudget,
        rootfs: Path | None = None,
        incoming: Path | None = None,
    ) -> Runtime:
        assert self._tree is not None
        if is_microvm(template):
            assert self._microvm is not None
            # A saved state runs on the disk it was saved with (checked before), never a rebuilt one.
            disk = None
            if rootfs is not None:
                image = image_path(rootfs) if incoming else await asyncio.to_thread(template_disk, rootfs)
                disk = VMDisk(image, incoming)
            runtime = await launch_vm(
                self._microvm, tree=self._tree, name=sandbox_id, limits=limits,
                host_uid=self.host_uids[slot], budget=budget, disk=disk,
            )  # fmt: skip
            runtime.rootfs = rootfs
            if incoming is not None:
                return runtime  # its agent has its environment already
            try:
                # The guest's init starts the agent with an empty environment.
                await runtime.channel.call("configure", env={**bwrap.base_env(), **env})
            except BaseException:
                await runtime.stop()
                raise
            return runtime
        return await launch(
            bwrap_path=self._bwrap,
            tree=self._tree,
            name=sandbox_id,
            limits=limits,
            host_uid=self.host_uids[slot],
            env={**bwrap.base_env(), **env},
            budget=budget,
            egress_rules=egress_rules,
            rootfs=rootfs,
        )

    def _reserve(self, mb: int, for_pool: bool) -> None:
        if for_pool:
            self._pool_launching_mb += mb
        else:
            self._reserved_mb += mb

    def _pooled_templates(self) -> dict[str, tuple[str, Template | None, int]]:
        """The pools to keep, by pool name: (template, built template, size).
        Tier 1's is the default's (base while the default is not built), tier
        2's the default's microVMs (plain microvm while it is not built)."""
        pools: dict[str, tuple[str, Template | None, int]] = {}
        default = self.default_template.current()
        if default is not None:
            pools[default.id] = (default.name, default, self.config.pool_size)
        elif TIER1_TEMPLATE in self.config.templates:
            pools[TIER1_TEMPLATE] = (TIER1_TEMPLATE, None, self.config.pool_size)
        if self._microvm is not None and MICROVM_TEMPLATE in self.config.templates:
            # Plain microvm's, on the default's disk once it is ready (the 9p ones go then).
            if default is not None:
                pools[f"{MICROVM_PREFIX}{default.id}"] = (
                    f"{MICROVM_PREFIX}{default.name}", default, self.config.microvm_pool_size
                )
            else:
                pools[MICROVM_TEMPLATE] = (MICROVM_TEMPLATE, None, self.config.microvm_pool_size)
        return {name: pool for name, pool in pools.items() if pool[2] > 0}

    def _refill(self) -> None:
        if self._closing:
            return
        wanted = self._pooled_templates()
        for name in [n for n in self._pools if n not in wanted]:
            # E.g. base's, once the default template is built: its sandboxes go.
            for _, runtime in self._pools.pop(name):
                self._background(self._release(runtime))
        if wanted and (self._filling is None or self._filling.done()):
            self._filling = asyncio.create_task(self._fill_pools())

    async def _fill_pools(self) -> None:
        # One sandbox at a time, to the pool furthest below its size: a claim from
        # any pool while this runs is refilled by this same loop.
        while self._free_uids and not self._closing:
            wanted = self._pooled_templates()
            short = {n: p for n, p in wanted.items() if len(self._pools.get(n, ())) < p[2]}
            if not short:
                return
            name = min(short, key=lambda n: len(self._pools.get(n, ())) / short[n][2])
            if not await self._add_to_pool(name, *short[name][:2]):
                return

    async def _add_to_pool(self, name: str, template: str, custom: Template | None) -> bool:
        # The host's memory is for sandboxes asked for: the pool takes what is left,
        # and gives it back if a create() took it meanwhile.
        if not self._fits(self._memory_mb(template, self.config.default_limits) + self._pool_launching_mb):
            return False
        env = custom.env if custom is not None else {}
        try:
            sandbox_id, runtime = await self._launch(
                template, self.config.default_limits, env, for_pool=True, custom=custom
            )
        except (OSError, SandboxError) as exc:
            # Not retried in a loop: the next create() launches directly and reports the cause.
            logger.error("could not start a pooled %s sandbox: %s", template, exc)
            return False
        try:
            await self._warm(runtime)
        except SandboxError as exc:
            logger.error("a pooled %s sandbox died while warming up: %s", template, exc)
            await self._release(runtime)
            return False
        if not self._fits(runtime.committed_mb):
            await self._release(runtime)
            return False
        if name not in self._pooled_templates():  # the default changed while it started
            await self._release(runtime)
            return True
        self._pools.setdefault(name, []).append((sandbox_id, runtime))
        return True

    @staticmethod
    async def _warm(runtime: Runtime) -> None:
        """Runs `true` twice: a fresh sandbox's first commands pay one-time costs
        (its new cgroup's and namespaces' first allocations, cold caches) that
        would otherwise land on the user's first command."""
        for _ in range(2):
            rid, events = runtime.channel.open("exec", cmd="true", cwd=None, env={}, timeout=10)
            async for _event in events:
                pass
            runtime.channel.forget(rid, events)

    # -- lookup

    def get(self, sandbox_id: str, owner: str | None = None) -> ManagedSandbox:
        """The sandbox; with `owner`, only if that owner created it (else not found)."""
        sandbox = self._sandboxes.get(sandbox_id)
        if sandbox is None or (owner is not None and sandbox.spec.owner != owner):
            raise NotFound(f"sandbox {sandbox_id!r} does not exist or was stopped", code="sandbox_not_found")
        return sandbox

    def list(
        self,
        *,
        metadata: dict[str, str] | None = None,
        state: SandboxState | None = None,
        owner: str | None = None,
    ) -> list[ManagedSandbox]:
        found = []
        for sandbox in self._sandboxes.values():
            if owner is not None and sandbox.spec.owner != owner:
                continue
            if state is not None and sandbox.state is not state:
                continue
            if metadata and any(sandbox.spec.metadata.get(k) != v for k, v in metadata.items()):
                continue
            found.append(sandbox)
        return sorted(found, key=lambda s: s.started_at)

    # -- control

    async def kill(self, sandbox_id: str, owner: str | None = None) -> None:
        await self._remove(self.get(sandbox_id, owner), "killed")

    def set_timeout(self, sandbox_id: str, seconds: float, owner: str | None = None) -> ManagedSandbox:
        validate_timeout(seconds, self.config.max_timeout_s)
        sandbox = self.get(sandbox_id, owner)
        sandbox.require_running_or_paused()
        sandbox.set_timeout(seconds)
        return sandbox

    async def pause(self, sandbox_id: str, owner: str | None = None) -> ManagedSandbox:
        """Writes the sandbox to a snapshot on disk and stops it: tier 1 its files
        and command list (see `snapshots`), a microVM from a template the whole VM
        (see `microvm.snapshot`). A microVM on the host's /usr (9p, which QEMU
        cannot migrate) is frozen in memory instead."""
        sandbox = self.get(sandbox_id, owner)
        async with self._transitions.setdefault(sandbox.id, asyncio.Lock()):
            if not is_microvm(sandbox.spec.template):
                await self._pause_to_disk(sandbox)
            elif sandbox.runtime is not None and sandbox.runtime.monitor is None:
                await sandbox.pause()
            else:
                await self._pause_vm_to_disk(sandbox)
        return sandbox

    async def resume(self, sandbox_id: str, owner: str | None = None) -> ManagedSandbox:
        sandbox = self.get(sandbox_id, owner)
        async with self._transitions.setdefault(sandbox.id, asyncio.Lock()):
            if sandbox.runtime is not None:
                await sandbox.resume()
            else:
                await self._resume_from_disk(sandbox)
        return sandbox

    async def _pause_to_disk(self, sandbox: ManagedSandbox) -> None:
        sandbox.require_running()
        runtime = sandbox.runtime
        assert runtime is not None
        processes = [{"cmd": p.cmd, "cwd": p.cwd} for p in await sandbox.commands.list()]
        await sandbox.pause()  # frozen: its files hold still while they are read
        try:
            snapshot = await asyncio.to_thread(
                self.snapshots.save,
                sandbox_root(runtime.process.pid),
                runtime.host_uid,
                sandbox.id,
                sandbox.spec,
                None if runtime.rootfs is None else runtime.rootfs.parent.name,
                max(1.0, sandbox.deadline - time.monotonic()),
                sandbox.started_at,
                processes,
            )
        except BaseException:
            await sandbox.resume()
            raise
        self._snapshots[sandbox.id] = snapshot
        sandbox.runtime = None  # first: this runtime's end is not the sandbox's
        await self._release(runtime)

    async def _pause_vm_to_disk(self, sandbox: ManagedSandbox) -> None:
        sandbox.require_running()
        runtime = sandbox.runtime
        assert runtime is not None and runtime.monitor is not None and runtime.rootfs is not None
        monitor, rootfs = runtime.monitor, runtime.rootfs
        remaining_s = max(1.0, sandbox.deadline - time.monotonic())

        def save(scratch: Path, final: Path, allowed: int) -> Snapshot:
            sha256, size = save_state(monitor, scratch, allowed, self.snapshots.bytes_per_workspace)
            return Snapshot(
                sandbox.id, final, sandbox.spec, rootfs.parent.name, remaining_s, sandbox.started_at, [],
                sha256, size, time.time(), vm=disk_identity(image_path(rootfs)),
            )  # fmt: skip

        sandbox.state = SandboxState.PAUSED  # no new operation while it is written
        try:
            snapshot = await asyncio.to_thread(self.snapshots.write, sandbox.id, sandbox.spec.owner, save)
        except BaseException:
            sandbox.state = SandboxState.RUNNING
            raise
        self._snapshots[sandbox.id] = snapshot
        sandbox.runtime = None  # first: this runtime's end is not the sandbox's
        await self._release(runtime)

    async def _resume_from_disk(self, sandbox: ManagedSandbox) -> None:
        snapshot = self._snapshots.get(sandbox.id)
        if sandbox.state is not SandboxState.PAUSED or snapshot is None:
            raise Conflict(f"sandbox {sandbox.id} is not paused", code="sandbox_not_paused")
        await asyncio.to_thread(self.snapshots.verify, snapshot)
        spec = sandbox.spec
        template = None
        if snapshot.template_id is not None:
            try:
                template = self.templates.resolve(snapshot.template_id, spec.owner)
            except NotFound:
                raise Conflict(
                    f"the template sandbox {sandbox.id} ran from was deleted", code="template_not_found"
                ) from None
        incoming = None
        if snapshot.vm is not None:
            if self._microvm is None:
                raise Unavailable(self._microvm_missing, code="microvm_unavailable")
            assert template is not None
            check_disk(snapshot.vm, image_path(template.rootfs))
            incoming = snapshot.archive
        self._admit(self._memory_mb(spec.template, spec.limits))
        self._creating += 1
        try:
            _, runtime = await self._launch_to_completion(spec, template, incoming)
        finally:
            self._creating -= 1
        if incoming is None:
            try:
                await asyncio.to_thread(
                    self.snapshots.restore, snapshot, sandbox_root(runtime.process.pid), runtime.host_uid
                )
            except BaseException:
                await self._release(runtime)
                raise
        sandbox.runtime = runtime
        sandbox.state = SandboxState.RUNNING
        sandbox.set_timeout(snapshot.remaining_s)
        sandbox.touch()
        self._watch(sandbox, runtime)
        del self._snapshots[sandbox.id]
        await asyncio.to_thread(self.snapshots.delete, snapshot)
        for process in snapshot.processes:
            try:
                await sandbox.commands.start(process["cmd"], cwd=process["cwd"])
            except SandboxError as exc:
                logger.warning("sandbox %s: %r did not start again: %s", sandbox.id, process["cmd"], exc.message)

    # -- reclaiming

    async def _reap_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.reap_interval_s)
            self.default_template.current()  # notices it built or deleted, and turns the pool over
            now = time.monotonic()
            for sandbox in list(self._sandboxes.values()):
                reason = sandbox.expired(now)
                if reason is not None:
                    self._background(self._remove(sandbox, reason))

    async def _remove(self, sandbox: ManagedSandbox, reason: str) -> None:
        if self._sandboxes.get(sandbox.id) is sandbox:
            del self._sandboxes[sandbox.id]
            logger.info("sandbox %s stopped: %s", sandbox.id, reason)
        snapshot = self._snapshots.pop(sandbox.id, None)
        if snapshot is not None:
            await asyncio.to_thread(self.snapshots.delete, snapshot)
        if await sandbox.stop(reason) and sandbox.runtime is not None:
            self._free_uid(sandbox.runtime)
            if reason == "exited":
                tail = sandbox.runtime.stderr_tail.decode(errors="replace").strip()
                logger.warning("sandbox %s ended on its own%s", sandbox.id, f"; its stderr: {tail}" if tail else "")

    async def _release(self, runtime: Runtime) -> None:
        await runtime.stop()
        self._free_uid(runtime)

    def _free_uid(self, runtime: Runtime) -> None:
        self._free_uids.append(self.host_uids.index(runtime.host_uid))

    def _background(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- figures

    def tiers(self) -> tuple[str, ...]:
        """The built-in templates this host can start now (a started manager)."""
        tiers = [TIER1_TEMPLATE] if self._tree is not None and TIER1_TEMPLATE in self.config.templates else []
        if self._microvm is not None:
            tiers.append(MICROVM_TEMPLATE)
        return tuple(tiers)

    def stats(self) -> dict[str, int]:
        states = [s.state for s in self._sandboxes.values()]
        return {
            "running": states.count(SandboxState.RUNNING),
            "paused": states.count(SandboxState.PAUSED),
            "pooled": sum(len(pool) for pool in self._pools.values()),
            "capacity": self.config.max_sandboxes,
            "committed_memory_mb": self.committed_mb(),
            "memory_capacity_mb": self._memory_capacity_mb,
            "output_held_bytes": self._output_total.used,
        }
