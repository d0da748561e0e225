"""One replica at run time: launches its process through the backend, waits for it
to pass its health check, watches it, and restarts it when it dies or fails its
checks, until it is told to stop. It can be put to sleep and woken (light sleep,
see states.py). Every state change goes through `_enter`; every effect on the
process goes through the backend, and every wait through the clock, so tests
drive it with `MemoryBackend` and `ManualClock`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Callable
from pathlib import Path

from .backends.base import Backend, Measurable, Pausable, ReplicaHandle
from .clock import SYSTEM_CLOCK, Clock, within
from .spec import DeploymentSpec, Kind
from .states import ReplicaState, check_transition

log = logging.getLogger(__name__)

# How often a starting replica is probed: short, because waking from zero waits on it.
_STARTUP_PROBE_S = 0.02
_STOP_GRACE_S = 5.0
# Restart back-off: doubles per consecutive failure, capped, so a crash-looping
# command costs little and a one-off crash is back almost at once.
_BACKOFF_FIRST_S = 0.1
_BACKOFF_MAX_S = 30.0

# A model replica's token for its sleep and wake routes (server/sleep.py).
REPLICA_TOKEN_ENV = "TRAMONTANE_REPLICA_TOKEN"

StateListener = Callable[["Replica"], None]


class Replica:
    def __init__(
        self,
        replica_id: str,
        deployment_id: str,
        spec: DeploymentSpec,
        backend: Backend,
        log_path: Path,
        platform_env: dict[str, str],
        on_change: StateListener,
        clock: Clock = SYSTEM_CLOCK,
        token: str | None = None,
        *,
        revision: int = 1,
        files: dict[str, str] | None = None,
    ):
        self.id = replica_id
        self.revision = revision
        # Taken out of the router's choice (a rollout replaced it): it finishes
        # what it has, then stops.
        self.draining = False
        # Why it last failed, and how long it waits before starting again.
        self.failure: str | None = None
        self.backoff_s = 0.0
        # CPU use in percent of its reserved CPUs, from the last two samples.
        self.cpu_percent: float | None = None
        self._cpu_sample: tuple[float, float] | None = None
        self.deployment_id = deployment_id
        self.spec = spec
        self.log_path = log_path
        self.state = ReplicaState.PENDING
        self.handle: ReplicaHandle | None = None
        self.restarts = 0
        self.in_flight = 0
        self._clock = clock
        self.last_used = clock.now()
        # Measured when it falls asleep: what its frozen processes keep resident.
        self.held_memory_mb = 0
        self.slept_at: float | None = None
        self.token = token or secrets.token_urlsafe(32)
        self.platform_env = {**platform_env, REPLICA_TOKEN_ENV: self.token} if spec.kind is Kind.MODEL else platform_env
        # Secret files (spec path -> content), written by the backend where the replica runs.
        self.files = files or {}
        self._backend = backend
        self._on_change = on_change
        self._ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stop_task: asyncio.Task[None] | None = None
        self._launching: asyncio.Task[ReplicaHandle] | None = None

    @property
    def url(self) -> str:
        assert self.handle is not None
        return f"http://{self.handle.host}:{self.handle.port}"

    @property
    def ready(self) -> bool:
        return self.state is ReplicaState.RUNNING

    @property
    def can_sleep(self) -> bool:
        return isinstance(self.handle, Pausable)

    def start(self) -> None:
        self._task = asyncio.create_task(self._supervise(), name=f"replica {self.id}")

    def adopt(self, handle: ReplicaHandle) -> None:
        """Supervises a process that another control plane launched (and left
        running when it died): health-checked like a fresh start, then watched
        and restarted like any other."""
        self._task = asyncio.create_task(self._supervise(handle), name=f"replica {self.id}")

    async def detach(self) -> None:
        """Stops supervising without touching the process: for a control plane
        that lost its lease, whose successor adopts the replica."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait({self._task})

    async def sleep(self) -> bool:
        """Light sleep for an idle RUNNING replica: a model frees its KV cache, then
        the processes are frozen. False (and still RUNNING) when it would not."""
        assert self.state is ReplicaState.RUNNING and isinstance(self.handle, Pausable)
        # First, so that the router stops choosing it while it falls asleep.
        self._enter(ReplicaState.SLEEPING)
        try:
            if self.spec.kind is Kind.MODEL:
                await self._backend.control(self.handle, "sleep", self.token)
        except OSError as exc:
            log.warning("replica %s would not sleep: %s", self.id, exc)
            self._enter(ReplicaState.RUNNING)
            return False
        await self.handle.pause()
        # Asleep since it froze, not since its memory was read (in a worker thread:
        # late, on a busy host); set last, it also says the measurement is done.
        frozen_at = self._clock.now()
        self.held_memory_mb = await asyncio.to_thread(self.handle.memory_mb)
        self.slept_at = frozen_at
        self._on_change(self)
        return True

    async def wake(self) -> bool:
        """Thaws a SLEEPING replica and checks it answers: RUNNING then. When it
        does not, it is killed and left to its supervisor, which restarts it."""
        assert self.state is ReplicaState.SLEEPING and isinstance(self.handle, Pausable)
        await self.handle.resume()
        try:
            if self.spec.kind is Kind.MODEL:
                await self._backend.control(self.handle, "wake", self.token)
            elif not await self._backend.probe(self.handle, self.spec.health_check):
                raise OSError("it failed its health check")
        except OSError as exc:
            log.warning("replica %s did not wake: %s", self.id, exc)
            if self.state is not ReplicaState.SLEEPING:
                return False  # its supervisor saw it die meanwhile, and restarts it
            self.failure = f"did not wake: {exc}"
            self.backoff_s = _BACKOFF_FIRST_S
            self._enter(ReplicaState.UNHEALTHY)
            await self._kill()
            return False
        if self.state is not ReplicaState.SLEEPING:
            # It died while being woken (its supervisor restarts it): not awake.
            return self.ready
        self.held_memory_mb = 0
        self.slept_at = None
        self.last_used = self._clock.now()
        self._enter(ReplicaState.RUNNING)
        return True

    async def stop(self) -> None:
        """Stops the replica; every caller waits for the same stop, and a caller
        being cancelled does not interrupt it (that would leak the process)."""
        if self._stop_task is None:
            self._stop_task = asyncio.create_task(self._stop(), name=f"stop replica {self.id}")
        await asyncio.shield(self._stop_task)

    async def _stop(self) -> None:
        # Supervision ends first: a supervisor resumed after STOPPING could
        # otherwise still move the replica to RUNNING or restart it.
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait({self._task})
        if self._launching is not None:
            with contextlib.suppress(OSError):
                self.handle = await self._launching
        self._enter(ReplicaState.STOPPING)
        await self._kill()
        self._enter(ReplicaState.STOPPED)

    def _enter(self, state: ReplicaState) -> None:
        check_transition(self.state, state)
        self.state = state
        if state is ReplicaState.RUNNING:
            self._ready.set()
        else:
            self._ready.clear()
        self._on_change(self)

    def sample_cpu(self, now: float) -> None:
        """Updates `cpu_percent` from the CPU time its processes used since the
        last sample (backends whose handles cannot tell leave it None)."""
        if self.state is not ReplicaState.RUNNING or not isinstance(self.handle, Measurable):
            return
        used = self.handle.cpu_seconds()
        if self._cpu_sample is not None and now > self._cpu_sample[0]:
            then, used_then = self._cpu_sample
            self.cpu_percent = 100.0 * (used - used_then) / (now - then) / self.spec.resources.cpu
        self._cpu_sample = (now, used)

    async def _kill(self) -> None:
        if self.handle is not None:
            await self.handle.stop(_STOP_GRACE_S)

    async def _supervise(self, adopted: ReplicaHandle | None = None) -> None:
        # Ends only by cancellation (stop), so a replica is never silently lost.
        failures_in_a_row = 0
        while True:
            self._enter(ReplicaState.STARTING)
            if adopted is not None:
                self.handle, adopted = adopted, None
            else:
                self.handle = await self._launch()
            if self.handle is not None:
                self._on_change(self)
                if await self._wait_healthy():
                    self._enter(ReplicaState.RUNNING)
                    failures_in_a_row = 0
                    self.failure = await self._watch()
            failures_in_a_row += 1
            # A replica that failed to wake is UNHEALTHY already.
            if self.state is not ReplicaState.UNHEALTHY:
                self.backoff_s = min(_BACKOFF_FIRST_S * 2 ** (failures_in_a_row - 1), _BACKOFF_MAX_S)
                self._enter(ReplicaState.UNHEALTHY)
            self.held_memory_mb, self.slept_at = 0, None
            self.cpu_percent, self._cpu_sample = None, None
            await self._kill()
            self.restarts += 1
            await self._clock.sleep(self.backoff_s)

    async def _launch(self) -> ReplicaHandle | None:
        try:
            # Shielded: a stop landing mid-launch must still find (and kill) the
            # process that the launch goes on to start.
            self._launching = asyncio.create_task(
                self._backend.launch(self.id, self.spec, self.log_path, self.platform_env, self.files)
            )
            return await asyncio.shield(self._launching)
        except OSError as exc:
            log.warning("replica %s failed to launch: %s", self.id, exc)
            self.failure = f"failed to launch: {exc}"
            return None

    async def _wait_healthy(self) -> bool:
        assert self.handle is not None
        exited = asyncio.create_task(self.handle.wait())
        grace = self.spec.health_check.grace_period_s
        deadline = self._clock.now() + grace
        try:
            while self._clock.now() < deadline and not exited.done():
                if await self._backend.probe(self.handle, self.spec.health_check):
                    return True
                await self._clock.sleep(_STARTUP_PROBE_S)
            if exited.done():
                self.failure = f"exited with status {exited.result()} while starting"
            else:
                self.failure = f"did not pass its health check within {grace:g} s"
            log.warning("replica %s %s", self.id, self.failure)
            return False
        finally:
            exited.cancel()

    async def _watch(self) -> str:
        """Returns, saying why, when the process exits (asleep or not) or fails
        `failures_before_restart` checks in a row."""
        assert self.handle is not None
        check = self.spec.health_check
        exited = asyncio.create_task(self.handle.wait())
        failures = 0
        try:
            while failures < check.failures_before_restart:
                if await within(self._clock, exited, check.interval_s):
                    log.warning("replica %s exited with status %s", self.id, exited.result())
                    return f"exited with status {exited.result()}"
                if self.state is ReplicaState.SLEEPING:
                    continue  # frozen: it answers nothing until woken, but its exit still counts
                healthy = await self._backend.probe(self.handle, check)
                # It may have fallen asleep while being probed.
                failures = 0 if healthy or self.state is ReplicaState.SLEEPING else failures + 1
            log.warning("replica %s failed %d health checks", self.id, failures)
            return f"failed {failures} health checks in a row"
        finally:
            exited.cancel()
