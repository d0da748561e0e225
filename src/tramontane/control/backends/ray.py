"""Replicas as Ray actors: the same control plane, with replicas spread over a
Ray cluster's machines.

Each replica is one actor (`ray_actor.ReplicaProcess`) that asks Ray for the
replica's resources (CPUs, GPUs, memory, GPU memory and custom resources), so
Ray picks a node that has room; the actor starts the replica's process there
and reports its address and node. The control plane then treats it like a local
replica: it probes it over HTTP, proxies to it, and restarts it when the actor
or its process dies. A pump per replica pulls the process's output into the
replica's log file on the control plane's machine, where `logs` reads it.

Actors are owned by the control plane's Ray driver: if the control plane dies,
Ray kills its actors, and each actor's watchdog kills its process, so nothing
is left to reap after a crash.

Ray is imported only when this backend is built: the platform runs without it."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from pathlib import Path
from typing import Any

from ..scheduler import NodeCapacity
from ..spec import DeploymentSpec, Resources
from .base import open_log
from .http import HttpReplicaCalls
from .ray_actor import ReplicaProcess

# Ray resources that `NodeCapacity` has fields for; every other one a cluster
# offers (custom resources, `node:<ip>`) can be asked for through `Resources.custom`.
_MAPPED = {"CPU", "GPU", "memory", "object_store_memory", "gpu_memory_mb"}
# The exit status reported when the actor died, so the process's own is unknown.
_ACTOR_DIED = -1
_PUMP_DRAIN_S = 2.0
_CONNECT_TIMEOUT_S = 5.0


def import_ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise RuntimeError("the Ray backend needs Ray: pip install 'tramontane[ray]'") from exc
    return ray


class RayReplica:
    """A replica's handle: where it listens, and its actor."""

    def __init__(self, ray: Any, actor: Any, started: dict[str, Any], log_path: Path):
        self._ray = ray
        self.actor = actor
        self._host: str = started["host"]
        self._port: int = started["port"]
        self._pid: int = started["pid"]
        self._node: str = started["node"]
        # One long-poll for the exit, shared by every wait(): a cancelled waiter
        # must not leave a call behind in the actor.
        self._exit = asyncio.wrap_future(actor.wait.remote().future())
        self._pump = asyncio.create_task(self._pump_output(log_path), name=f"ray replica log {log_path.stem}")

    @property
    def host(self) -> str:
        return self._host

    @property
    def port(self) -> int:
        return self._port

    @property
    def pid(self) -> int | None:
        """The process id on its node (shown, never signalled from here)."""
        return self._pid

    @property
    def pid_start(self) -> int | None:
        return None

    @property
    def node(self) -> str:
        """The Ray node id of the machine the replica runs on."""
        return self._node

    async def wait(self) -> int:
        try:
            return await asyncio.shield(self._exit)
        except self._ray.exceptions.RayError:
            # The actor died, or its node: the process is gone or going (watchdog).
            return _ACTOR_DIED

    async def stop(self, grace_s: float) -> None:
        # Bounded: a node that is gone never answers, and the actor is killed anyway.
        with contextlib.suppress(self._ray.exceptions.RayError, TimeoutError):
            async with asyncio.timeout(grace_s + 5):
                await self.actor.stop.remote(grace_s)
        # The process has ended, so its output ends: let the last lines reach the log.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_PUMP_DRAIN_S):
                await asyncio.shield(self._pump)
        self._ray.kill(self.actor, no_restart=True)
        self._pump.cancel()
        await asyncio.wait({self._pump})
        # Collects the exit (or the actor's death) so that no result is left unread.
        with contextlib.suppress(self._ray.exceptions.RayError, TimeoutError):
            async with asyncio.timeout(grace_s):
                await self._exit

    async def _pump_output(self, log_path: Path) -> None:
        with open_log(log_path) as log:
            while True:
                try:
                    chunk = await self.actor.read_output.remote()
                except self._ray.exceptions.RayError:
                    return
                if chunk is None:
                    return
                log.write(chunk)
                log.flush()


class RayBackend(HttpReplicaCalls):
    """Runs replicas as actors on the Ray cluster at `address` (None: the one in
    RAY_ADDRESS, else a Ray instance started on this machine). Reuses the Ray
    connection of this process when there is one."""

    def __init__(self, address: str | None = None):
        self._ray = connect(address)
        self._actor_class = self._ray.remote(ReplicaProcess)

    def capacity(self) -> NodeCapacity:
        """The cluster's total resources now, for the control plane's packing and
        eviction; Ray picks the node within them."""
        total: dict[str, float] = self._ray.cluster_resources()
        return NodeCapacity(
            cpu=total.get("CPU", 0.0),
            memory_mb=int(total.get("memory", 0) // 2**20),
            gpus=int(total.get("GPU", 0)),
            gpu_memory_mb=int(total.get("gpu_memory_mb", 0)),
            custom={name: amount for name, amount in total.items() if name not in _MAPPED},
        )

    async def launch(
        self,
        replica_id: str,
        spec: DeploymentSpec,
        log_path: Path,
        platform_env: dict[str, str],
        files: dict[str, str] | None = None,
    ) -> RayReplica:
        # max_restarts=0: the control plane, not Ray, restarts a replica whose actor died.
        actor = self._actor_class.options(max_restarts=0, **actor_resources(spec.resources)).remote()
        try:
            # Until Ray finds a node with room, the actor waits unplaced; give up
            # after the grace period, like a replica that never becomes healthy.
            async with asyncio.timeout(spec.health_check.grace_period_s):
                started = await actor.start.remote(replica_id, spec, platform_env, files or {})
        except (TimeoutError, self._ray.exceptions.RayError) as exc:
            self._ray.kill(actor, no_restart=True)
            if isinstance(exc, TimeoutError):
                raise OSError(f"no Ray node could take replica {replica_id} ({spec.resources})") from None
            raise OSError(f"replica {replica_id}'s actor failed to start it: {exc}") from exc
        log_path.parent.mkdir(parents=True, exist_ok=True)
        return RayReplica(self._ray, actor, started, log_path)

    def adopt(self, replica_id: str, port: int | None, pid: int | None, pid_start: int | None) -> None:
        # A dead leader's actors died with its Ray driver: nothing to adopt, its
        # successor launches the replicas afresh.
        return None

    def reap(self, pid: int, pid_start: int | None) -> bool:
        # A previous control plane's actors died with its Ray driver (see above).
        return False

    async def close(self) -> None:
        # The Ray connection belongs to this process (its driver): the replicas'
        # actors are stopped by the plane, and Ray's own state ends with the process.
        await self.close_calls()


def connect(address: str | None) -> Any:
    """Ray, connected to the cluster at `address` unless this process already is
    (the deployments' backend and the jobs executor share one connection)."""
    ray = import_ray()
    if not ray.is_initialized():
        _check_reachable(address)
        # Replicas' and jobs' output goes to their own logs, not the driver's stdout.
        ray.init(address=address, log_to_driver=False)
    return ray


def _check_reachable(address: str | None) -> None:
    """Fails fast on a GCS address that does not answer: `ray.init` would retry
    for minutes. Other forms (None, "auto", "ray://...") are left to Ray."""
    if address is None or "://" in address:
        return
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        return
    try:
        socket.create_connection((host, int(port)), timeout=_CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        raise ConnectionError(f"no Ray cluster answers at {address}: {exc}") from exc


def actor_resources(resources: Resources) -> dict[str, Any]:
    """A replica's resources as Ray actor options. GPU memory is the custom
    resource `gpu_memory_mb`, which GPU nodes declare (`ray start --resources
    '{"gpu_memory_mb": 81920}'`), so that Ray packs models on GPUs by memory."""
    custom = dict(resources.custom)
    if resources.gpu_memory_mb:
        custom["gpu_memory_mb"] = resources.gpu_memory_mb
    return {
        "num_cpus": resources.cpu,
        "num_gpus": resources.gpus,
        "memory": resources.memory_mb * 2**20,
        "resources": custom,
    }
