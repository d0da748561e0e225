"""The control plane: keeps every deployment's replicas at the wanted count,
places them by resources, scales them on load, and hands replicas to the router.

Runs on the server's event loop. `start()` restores the deployments in the store
(killing replicas a previous control plane left behind, then starting fresh
ones), and a reconcile loop re-decides every deployment's replica count each
`reconcile_interval_s`.

One control plane per database at a time: when several gateways share it, the
one holding the control lease runs it (seat.py, store/leases.py) and its writes
are fenced by the lease's token. `start()` adopts every replica a predecessor (a crashed
process, or a leader that lost its lease) left running and healthy, and kills
the rest (when still the same local process); `abdicate()` lets go of them
without stopping them, for the next leader to adopt."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import secrets
import shutil
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from sqlalchemy.orm import Session

from ..errors import Conflict, Invalid, NotFound, TramontaneError, Unavailable
from ..store import HOME_ENV, URL_ENV, Store, tramontane_home
from ..store.leases import Fenced
from ..store.types import new_id
from . import logs as replica_logs
from .autoscaler import Load, decide
from .backends import Backend, LocalBackend
from .clock import SYSTEM_CLOCK, Clock, wait_for
from .deployment import Deployment
from .domains import DomainTable
from .errors import DeploymentNotFound, NoCapacity
from .images import Images
from .models import EventRow, ReplicaRow, RevisionRow
from .replica import Replica
from .repository import Repository
from .scheduler import DEFAULT_MIN_IDLE_S, NodeCapacity, Occupant, place
from .secrets import Keyring, SecretStore
from .spec import DeploymentSpec, Kind
from .states import LIVE, ReplicaState
from .upstream import UpstreamPool

log = logging.getLogger(__name__)

# A rollout waits this long past the new revision's health-check grace period
# before it gives up on replicas that neither pass nor fail.
_ROLLOUT_SLACK_S = 5.0
# Replaced replicas get this long to finish their requests before they stop.
_DRAIN_TIMEOUT_S = 30.0
_POLL_S = 0.05


def _within(spec: DeploymentSpec, replicas: int) -> int:
    """`replicas` within the spec's bounds (one at least, for a rollout to prove the revision)."""
    return max(1, spec.scaling.min_replicas, min(replicas, spec.scaling.max_replicas))


class ControlPlane:
    def __init__(
        self,
        store: Store,
        *,
        backend: Backend | None = None,
        capacity: NodeCapacity | None = None,
        home: Path | None = None,
        reconcile_interval_s: float = 1.0,
        clock: Clock = SYSTEM_CLOCK,
        images: Images | None = None,
        fence: Callable[[Session], None] | None = None,
        replica_secret: bytes | None = None,
        secret_store: SecretStore | None = None,
        min_idle_before_eviction_s: float = DEFAULT_MIN_IDLE_S,
    ):
        self.repository = Repository(store, fence)
        # Model replicas' sleep/wake tokens derive from it, so that a successor
        # sharing it can put to sleep and wake the replicas it adopts.
        self.replica_secret = replica_secret or secrets.token_bytes(32)
        self.backend: Backend = backend or LocalBackend()
        # Image deployments' images: checked, pulled or built before they are stored.
        self.images = images or Images.for_backend(self.backend)
        # Custom domains, routed by Host header (domains.py).
        self.domains = DomainTable(store)
        self.capacity = capacity or NodeCapacity.detect()
        self.home = home or tramontane_home()
        self.log_dir = self.home / "control" / "logs"
        self.store_url = store.url
        self.secrets = secret_store or SecretStore(store, Keyring(self.home))
        self.reconcile_interval_s = reconcile_interval_s
        # A running replica used more recently than this is not evicted to make
        # room for another deployment's (scheduler.py says why).
        self.min_idle_before_eviction_s = min_idle_before_eviction_s
        self.clock = clock
        self._deployments: dict[str, Deployment] = {}
        # Serialises changes to the replica set, so two wake-ups or a wake-up and
        # the loop never start the same replica twice or double-book resources.
        self._lock = asyncio.Lock()
        self.upstream = UpstreamPool()
        self._loop_task: asyncio.Task[None] | None = None
        self._abdicated = False

    # -- lifecycle -------------------------------------------------------------

    async def start(self) -> None:
        self._abdicated = False
        self.domains.load()
        for row in self.repository.deployments():
            spec = DeploymentSpec.model_validate(row.spec)
            desired = max(spec.scaling.min_replicas, min(spec.scaling.max_replicas, row.desired_replicas))
            deployment = Deployment(row.id, row.workspace_id, spec, desired, last_request=self.clock.now())
            self._deployments[row.id] = deployment
            self._restore_revisions(deployment)
        async with self._lock:
            for row in self.repository.replicas():
                if not self._adopt(row):
                    self.repository.delete_replica(row.id)
                    if row.pid is not None and self.backend.reap(row.pid, row.pid_start):
                        log.info("killed replica %s left by a previous control plane", row.id)
            for deployment in list(self._deployments.values()):
                await self._converge_or_shrink(deployment)
        self._loop_task = asyncio.create_task(self._reconcile_loop(), name="control-plane reconcile")

    def _adopt(self, row: ReplicaRow) -> bool:
        """Takes over a replica that was serving when its control plane went away;
        False when it cannot (not running, or out of the backend's reach)."""
        deployment = self._deployments.get(row.deployment_id)
        if deployment is None or row.state != ReplicaState.RUNNING.value:
            return False
        if row.revision != deployment.revision:
            return False  # of a rollout that did not finish, or draining from one that did
        handle = self.backend.adopt(row.id, row.port, row.pid, row.pid_start)
        if handle is None:
            return False
        replica = self._new_replica(deployment, row.id, deployment.spec, deployment.revision)
        replica.restarts = row.restarts
        deployment.replicas[row.id] = replica
        replica.adopt(handle)
        log.info("adopted replica %s of %s", row.id, deployment.name)
        return True

    async def abdicate(self) -> None:
        """Stops acting, leaving every replica running for the next leader to adopt:
        this gateway lost the control lease. Requests waiting for a replica here
        are refused (503); the deployments stay in the store."""
        if self._loop_task is not None:
            self._loop_task.cancel()
            await asyncio.wait({self._loop_task})
            self._loop_task = None
        # The next leader rolls back a rollout cut short here (and stops its replicas).
        await self._cancel_rollouts()
        for deployment in self._deployments.values():
            await asyncio.gather(*(r.detach() for r in deployment.replicas.values()))
            deployment.replicas.clear()
            deployment.signal_ready()
        self._deployments.clear()
        self._abdicated = True

    async def stop(self) -> None:
        """Stops every replica; deployments stay in the store for the next start."""
        if self._loop_task is not None:
            self._loop_task.cancel()
            await asyncio.wait({self._loop_task})
        # A rollout cut short here is rolled back by the next start.
        await self._cancel_rollouts()
        async with self._lock:
            replicas = [r for d in self._deployments.values() for r in d.replicas.values()]
            await asyncio.gather(*(r.stop() for r in replicas))
        self._deployments.clear()
        await self.backend.close()
        await self.upstream.aclose()

    async def _cancel_rollouts(self) -> None:
        rollouts = {d.rollout_task for d in self._deployments.values() if d.rollout_task is not None}
        for task in rollouts:
            task.cancel()
        if rollouts:
            await asyncio.wait(rollouts)

    # -- deployments -----------------------------------------------------------

    async def create(self, workspace_id: str, spec: DeploymentSpec) -> Deployment:
        # A secret the spec names but the workspace lacks refuses it now (422),
        # not later as replicas that cannot start.
        self.secrets.resolve(workspace_id, spec.secret_names())
        spec = await self.images.prepare(workspace_id, spec)
        desired = spec.scaling.min_replicas
        row = self.repository.insert_deployment(workspace_id, spec, desired)
        deployment = Deployment(row.id, workspace_id, spec, desired, last_request=self.clock.now())
        self._deployments[row.id] = deployment
        async with self._lock:
            try:
                await self._converge(deployment)
            except NoCapacity:
                await self._remove(deployment)
                raise
        self._event(deployment, "revision_created", "revision 1 created")
        return deployment

    def all(self) -> list[Deployment]:
        """Every workspace's deployments: for the operator's views (metrics)."""
        return list(self._deployments.values())

    def list(self, workspace_id: str) -> list[Deployment]:
        return [d for d in self._deployments.values() if d.workspace_id == workspace_id]

    def get(self, workspace_id: str, name: str) -> Deployment:
        for deployment in self.list(workspace_id):
            if deployment.name == name:
                return deployment
        raise DeploymentNotFound(name)

    async def delete(self, workspace_id: str, name: str) -> None:
        deployment = self.get(workspace_id, name)
        async with self._lock:
            await self._remove(deployment)

    async def scale(self, workspace_id: str, name: str, replicas: int) -> Deployment:
        """Sets the replica count now; the autoscaler may move it later within the
        deployment's bounds."""
        deployment = self.get(workspace_id, name)
        scaling = deployment.spec.scaling
        if not scaling.min_replicas <= replicas <= scaling.max_replicas:
            raise Invalid(
                f"replicas must be between min_replicas={scaling.min_replicas} and max_replicas={scaling.max_replicas}",
                code="invalid_replicas",
                param="replicas",
            )
        async with self._lock:
            previous = deployment.desired
            self._set_desired(deployment, replicas)
            if deployment.rolling_out is not None:
                deployment.rollout_target = replicas  # the new revision starts with it
            if replicas != previous:
                self._event(deployment, "scaled", f"scaled from {previous} to {replicas} replicas by hand")
            # Counts as activity, so the autoscaler leaves the new count alone for a while.
            deployment.last_request = self.clock.now()
            deployment.scale_memory.reset(self.clock.now(), replicas)
            if deployment.rolling_out is None:
                await self._converge(deployment)
        return deployment

    # -- revisions -------------------------------------------------------------

    async def update(
        self, workspace_id: str, name: str, spec: DeploymentSpec, *, reason: str | None = None
    ) -> Deployment:
        """Stores `spec` as a new revision and rolls it out in the background: new
        replicas start, and once all pass their health checks they take the
        traffic while the old ones drain and stop. A revision whose replicas fail
        is rolled back: the old replicas go on serving, and the deployment says why."""
        deployment = self.get(workspace_id, name)
        if spec.name != deployment.name:
            raise Invalid("A deployment cannot be renamed; create a new one", code="invalid_name", param="name")
        if deployment.rolling_out is not None:
            raise Conflict(
                f"Revision {deployment.rolling_out} of '{name}' is still rolling out", code="rollout_in_progress"
            )
        if deployment.preparing:
            # Its image is being built or pulled: a second change now would race it.
            raise Conflict(f"A change of '{name}' is being prepared", code="rollout_in_progress")
        self.secrets.resolve(workspace_id, spec.secret_names())
        deployment.preparing = True
        try:
            spec = await self.images.prepare(workspace_id, spec)
        finally:
            deployment.preparing = False
        if deployment.deleted or self._abdicated:
            raise DeploymentNotFound(name)  # deleted (or handed over) while its image was built
        number = self.repository.add_revision(workspace_id, deployment.id, spec, reason)
        created = f"revision {number} created" + (f" ({reason})" if reason else "")
        self._event(deployment, "revision_created", created, number)
        deployment.rolling_out = number
        deployment.rollout_task = asyncio.create_task(
            self._roll_out(deployment, number, spec), name=f"roll out {name} revision {number}"
        )
        return deployment

    async def rollback(self, workspace_id: str, name: str, number: int | None = None) -> Deployment:
        """Rolls out again the spec of revision `number` (default: the one served
        before the current one), as a new revision."""
        deployment = self.get(workspace_id, name)
        rows = self.repository.revisions(deployment.id)
        if number is None:
            earlier = [r for r in rows if r.status == "superseded" and r.number < deployment.revision]
            if not earlier:
                raise Invalid(f"'{name}' has no earlier revision to roll back to", code="no_earlier_revision")
            number = earlier[-1].number
        target = next((r for r in rows if r.number == number), None)
        if target is None:
            raise NotFound(f"'{name}' has no revision {number}", code="revision_not_found")
        if number == deployment.revision:
            raise Invalid(f"'{name}' is serving revision {number} already", code="revision_active", param="revision")
        spec = DeploymentSpec.model_validate(target.spec)
        return await self.update(workspace_id, name, spec, reason=f"rollback to revision {number}")

    def revisions(self, workspace_id: str, name: str) -> list[RevisionRow]:
        return self.repository.revisions(self.get(workspace_id, name).id)

    def events(self, workspace_id: str, name: str, limit: int = 100) -> list[EventRow]:
        return self.repository.events(self.get(workspace_id, name).id, limit)

    def _restore_revisions(self, deployment: Deployment) -> None:
        """On start: the active revision's number; a rollout a previous control
        plane left unfinished is rolled back (its replicas were killed with the
        rest), and says so."""
        rows = self.repository.revisions(deployment.id)
        if not rows:  # a deployment from before revisions were kept
            self.repository.add_revision(deployment.workspace_id, deployment.id, deployment.spec, None)
            self.repository.activate_revision(deployment.id, 1, deployment.spec)
            return
        active = [r.number for r in rows if r.status == "active"]
        deployment.revision = active[-1] if active else rows[0].number
        for row in rows:
            if row.status == "rolling_out":
                reason = "the control plane restarted during the rollout"
                self.repository.fail_revision(deployment.id, row.number, reason)
                deployment.rollback_reason = f"revision {row.number}: {reason}"
                self._event(
                    deployment,
                    "rolled_back",
                    f"revision {row.number} rolled back: {reason}; serving revision {deployment.revision}",
                    row.number,
                )

    async def _roll_out(self, deployment: Deployment, number: int, spec: DeploymentSpec) -> None:
        self._event(deployment, "rollout_started", f"rolling out revision {number}", number)
        # As many replicas as are live now (one at least, so that every revision proves itself).
        target = max(len(deployment.live()), 1, spec.scaling.min_replicas)
        deployment.rollout_target = min(target, spec.scaling.max_replicas)
        new: list[Replica] = []
        drains: list[asyncio.Task[None]] = []
        try:
            try:
                reason = await self._replace(deployment, number, spec, new, drains)
            except TramontaneError as exc:
                reason = exc.message
            if reason is None:
                await self._promote(deployment, number, spec)
            else:
                await self._abandon(deployment, number, new, drains, reason)
            await asyncio.gather(*drains)
        except asyncio.CancelledError:
            # Stopping or deleting: the replicas go with the rest.
            for drain in drains:
                drain.cancel()
            raise
        finally:
            deployment.rolling_out = deployment.rollout_task = deployment.rollout_target = None

    async def _replace(
        self,
        deployment: Deployment,
        number: int,
        spec: DeploymentSpec,
        new: list[Replica],
        drains: list[asyncio.Task[None]],
    ) -> str | None:
        """Replaces the old replicas step by step within the rollout's budgets: at
        most `max_surge` replicas above the target, at most `max_unavailable`
        ready ones below it. None once the new revision runs the target count,
        all ready; else why not. The deadline restarts with each step forward."""
        patience = spec.health_check.grace_period_s + _ROLLOUT_SLACK_S
        deadline = self.clock.now() + patience
        progress = (-1, -1)
        while True:
            if deployment.deleted:
                return "the deployment was deleted"
            if failed := next((r for r in new if r.restarts > 0), None):
                return f"replica {failed.id} {failed.failure or 'failed'}"
            async with self._lock:
                done = await self._step(deployment, number, spec, new, drains)
            if done:
                return None
            if (now := (sum(r.ready for r in new), len(new))) != progress:
                progress, deadline = now, self.clock.now() + patience
            elif self.clock.now() >= deadline:
                return f"its replicas were not healthy within {spec.health_check.grace_period_s:g} s"
            await self.clock.sleep(_POLL_S)

    async def _step(
        self,
        deployment: Deployment,
        number: int,
        spec: DeploymentSpec,
        new: list[Replica],
        drains: list[asyncio.Task[None]],
    ) -> bool:
        """One move of a rollout: retire what the budgets let go, launch what they
        let start. True once only the new revision's target count is left, all ready."""
        target = _within(spec, deployment.rollout_target or 1)
        surge, unavailable = spec.rollout.budgets(target)
        # A scale down during the rollout: surplus new replicas go first, not-ready ones first.
        for replica in sorted(new, key=lambda r: r.ready)[: max(len(new) - target, 0)]:
            new.remove(replica)
            await self._retire(replica)
        # Old replicas that are not ready (starting, restarting) cost nothing to retire.
        old = sorted((r for r in deployment.live() if r.revision != number), key=lambda r: (r.ready, r.last_used))
        ready = sum(r.ready for r in new) + sum(r.ready for r in old)
        while old and ready - old[0].ready >= target - unavailable:
            victim = old.pop(0)
            ready -= victim.ready
            drains.append(asyncio.create_task(self._drain(victim), name=f"drain {victim.id}"))
        while len(new) < target and len(old) + len(new) < target + surge:
            new.append(await self._launch(deployment, spec, number))
        return not old and len(new) == target and all(r.ready for r in new)

    async def _drain(self, replica: Replica) -> None:
        """Takes a replaced replica out of the router's choice, lets its requests
        finish (bounded), then stops it."""
        replica.draining = True
        deadline = self.clock.now() + _DRAIN_TIMEOUT_S
        while replica.in_flight and self.clock.now() < deadline:
            await self.clock.sleep(_POLL_S)
        async with self._lock:
            await self._retire(replica)

    async def _promote(self, deployment: Deployment, number: int, spec: DeploymentSpec) -> None:
        """The new revision is the deployment's; its count is the rollout's target
        (a manual scale meanwhile included). Sleeping old replicas stop."""
        async with self._lock:
            asleep = [r for r in deployment.replicas.values() if r.revision != number and not r.draining]
            deployment.spec, deployment.revision, deployment.rollback_reason = spec, number, None
            self.repository.activate_revision(deployment.id, number, spec)
            self._set_desired(deployment, _within(spec, deployment.rollout_target or len(deployment.live())))
            deployment.scale_memory.reset(self.clock.now(), deployment.desired)
            self._event(deployment, "rolled_out", f"revision {number} is serving", number)
            await asyncio.gather(*(self._retire(r) for r in asleep))
        # Requests waiting for a replica take the new ones.
        deployment.signal_ready()

    async def _abandon(
        self,
        deployment: Deployment,
        number: int,
        new: list[Replica],
        drains: list[asyncio.Task[None]],
        reason: str,
    ) -> None:
        """The old revision takes back the target count: its replacements start
        while the new replicas that are ready go on serving, then those drain."""
        async with self._lock:
            failing = [r for r in new if not r.ready]
            await asyncio.gather(*(self._retire(r) for r in failing))
            serving = [r for r in new if r.ready]
            if deployment.deleted:
                return
            self.repository.fail_revision(deployment.id, number, reason)
            deployment.rollback_reason = f"revision {number}: {reason}"
            self._event(
                deployment,
                "rolled_back",
                f"revision {number} rolled back: {reason}; serving revision {deployment.revision}",
                number,
            )
            # Back to the count wanted before (or set by hand since): replicas
            # retired for the new ones, or within `max_unavailable`, come back.
            old = [r for r in deployment.live() if r.revision != number]
            restored: list[Replica] = []
            try:
                for _ in range(max(deployment.desired - len(old), 0)):
                    restored.append(await self._launch(deployment, deployment.spec, deployment.revision))
            except TramontaneError as exc:
                self._event(deployment, "scale_failed", f"cannot restore revision {deployment.revision}: {exc.message}")
            self._set_desired(deployment, len(old) + len(restored))
        deadline = self.clock.now() + deployment.spec.health_check.grace_period_s + _ROLLOUT_SLACK_S
        while not all(r.ready for r in restored) and self.clock.now() < deadline and not deployment.deleted:
            await self.clock.sleep(_POLL_S)
        drains.extend(asyncio.create_task(self._drain(r), name=f"drain {r.id}") for r in serving)

    def logs(self, workspace_id: str, name: str, tail: int = 200) -> str:
        """The last `tail` lines of the deployment's replica logs, oldest file first,
        each line prefixed with its replica id."""
        deployment = self.get(workspace_id, name)
        return "\n".join(replica_logs.tail(self.log_dir / deployment.id, tail)[0])

    def follow_logs(self, workspace_id: str, name: str, tail: int = 200) -> AsyncIterator[list[str]]:
        """The last `tail` lines, then the new ones as replicas write them, until the
        deployment is deleted. A missing deployment raises here, before any line."""
        deployment = self.get(workspace_id, name)
        return replica_logs.follow(
            self.log_dir / deployment.id, tail, lambda: deployment.id in self._deployments, self.clock
        )

    # -- the data plane's side -------------------------------------------------

    def route_by_prefix(self, workspace_id: str, path: str) -> tuple[Deployment, str] | None:
        """The deployment whose path prefix is the longest match for `path`, and
        the path to forward (the prefix removed)."""
        chosen: Deployment | None = None
        for deployment in self._deployments.values():
            prefix = deployment.spec.routes.path_prefix
            if (
                prefix
                and deployment.workspace_id == workspace_id
                and (path == prefix or path.startswith(prefix + "/"))
                and (chosen is None or len(prefix) > len(chosen.spec.routes.path_prefix or ""))
            ):
                chosen = deployment
        if chosen is None:
            return None
        return chosen, path[len(chosen.spec.routes.path_prefix or "") :] or "/"

    def route_by_domain(self, workspace_id: str, hostname: str, path: str) -> tuple[Deployment, str] | None:
        """The deployment `hostname` is registered on, when it is the caller's; the path is kept."""
        deployment = self._deployments.get(self.domains.lookup(hostname) or "")
        if deployment is None or deployment.workspace_id != workspace_id:
            return None
        return deployment, path

    def route_by_model(self, workspace_id: str, model: str, path: str) -> tuple[Deployment, str] | None:
        """The deployment serving `model` (the JSON body's field); the path is kept."""
        for deployment in self._deployments.values():
            if deployment.workspace_id == workspace_id and model in deployment.spec.routes.models:
                return deployment, path
        return None

    @contextlib.asynccontextmanager
    async def acquire(self, deployment: Deployment) -> AsyncIterator[Replica]:
        """A ready replica with a request slot held on it until the block ends;
        waits (bounded) while the deployment wakes or its replicas start."""
        arrived = deployment.last_request = self.clock.now()
        deployment.arrivals.record(arrived)
        replica = deployment.pick()
        if replica is None:
            if deployment.queued >= deployment.spec.scaling.max_queued_requests:
                raise Unavailable(
                    f"Deployment '{deployment.name}' is starting and its queue is full",
                    code="queue_full",
                    retry_after_s=1,
                )
            deployment.queued += 1
            try:
                replica = await self._wait_for_replica(deployment)
            finally:
                deployment.queued -= 1
        replica.in_flight += 1
        try:
            yield replica
        finally:
            replica.in_flight -= 1
            replica.last_used = deployment.last_request = self.clock.now()
            deployment.history.record_request(replica.last_used - arrived)

    async def _wait_for_replica(self, deployment: Deployment) -> Replica:
        deadline = self.clock.now() + deployment.spec.scaling.wake_timeout_s
        while not deployment.deleted and not self._abdicated:
            signal = deployment.ready_signal
            if replica := deployment.pick():
                return replica
            if not deployment.live():
                async with self._lock:
                    if not deployment.live() and not deployment.deleted:
                        self._set_desired(deployment, max(deployment.desired, 1))
                        await self._converge(deployment)
            remaining = deadline - self.clock.now()
            if remaining <= 0:
                break
            await wait_for(self.clock, signal.wait(), min(remaining, 1.0))
        if deployment.deleted:
            raise DeploymentNotFound(deployment.name)
        if self._abdicated:
            raise Fenced()
        raise Unavailable(
            f"Deployment '{deployment.name}' has no ready replica yet", code="not_ready", retry_after_s=5
        )

    # -- reconciling -----------------------------------------------------------

    async def _reconcile_loop(self) -> None:
        while True:
            await self.clock.sleep(self.reconcile_interval_s)
            try:
                await self.reconcile()
            except Fenced:
                # Another gateway leads now; this one's seat abdicates when it
                # next fails to renew the lease. Until then, nothing more is done.
                log.warning("the control plane was fenced off: another gateway leads")
                return
            except Exception:
                # A pass that failed (the database busy or gone a moment, a backend
                # error) must not end the loop: every deployment would stop scaling,
                # restarting and sleeping for good. The next pass tries again.
                log.exception("a reconcile pass failed; the next one retries")

    async def reconcile(self) -> None:
        """One pass over every deployment: scale, converge the replicas on the
        wanted count, and let light sleep that lasted long enough become deep."""
        async with self._lock:
            now = self.clock.now()
            for deployment in list(self._deployments.values()):
                deployment.history.record_replicas(len(deployment.live()))
                if deployment.rolling_out is not None:
                    continue  # the rollout owns its replicas until it ends
                if deployment.spec.scaling.target_cpu_percent is not None:
                    await asyncio.to_thread(self._sample_cpu, deployment, now)
                self._autoscale(deployment)
                await self._converge_or_shrink(deployment)
                await self._deep_sleep_expired(deployment)

    @staticmethod
    def _sample_cpu(deployment: Deployment, now: float) -> None:
        for replica in deployment.live():
            replica.sample_cpu(now)

    def _autoscale(self, deployment: Deployment) -> None:
        now = self.clock.now()
        cpu = [r.cpu_percent for r in deployment.live() if r.ready and r.cpu_percent is not None]
        load = Load(deployment.load(), deployment.arrivals.rate(now), sum(cpu) / len(cpu) if cpu else None)
        idle_for = 0.0 if load.in_flight else now - deployment.last_request
        wanted = decide(deployment.spec.scaling, deployment.desired, load, idle_for, now, deployment.scale_memory)
        if wanted != deployment.desired:
            why = f"{load.in_flight} in flight, {load.requests_per_s:.1f} requests/s"
            if load.cpu_percent is not None:
                why += f", CPU {load.cpu_percent:.0f}%"
            self._event(deployment, "scaled", f"scaled from {deployment.desired} to {wanted} replicas ({why})")
            self._set_desired(deployment, wanted)

    async def _converge_or_shrink(self, deployment: Deployment) -> None:
        try:
            await self._converge(deployment)
        except Fenced:
            raise  # another gateway leads: nothing more to record
        except TramontaneError as exc:  # no room, or a secret it names was deleted
            self._event(deployment, "scale_failed", f"cannot scale up: {exc.message}")
            self._set_desired(deployment, len(deployment.live()))

    async def _converge(self, deployment: Deployment) -> None:
        """Starts or stops replicas until the live count equals `desired`: the most
        recently used sleeping replica is woken before a new one is launched, and
        surplus idle replicas fall asleep (or stop, without light sleep). Busy
        replicas are left for a later pass."""
        live = deployment.live()
        for _ in range(deployment.desired - len(live)):
            sleeping = deployment.sleeping()
            if sleeping:
                await self._wake(max(sleeping, key=lambda r: r.last_used))
            else:
                await self._launch(deployment, deployment.spec, deployment.revision)
        excess = len(live) - deployment.desired
        if excess > 0:
            # Not-yet-ready replicas first, then the least recently used.
            idle = sorted((r for r in live if r.in_flight == 0), key=lambda r: (r.ready, r.last_used))
            await asyncio.gather(*(self._scale_away(r) for r in idle[:excess]))

    def _occupants(self, leaving: str | None = None) -> list[Occupant]:
        """Every replica holding something on the node, but `leaving`."""
        occupants = []
        for d in self._deployments.values():
            removable = len(d.live()) > d.spec.scaling.min_replicas
            for r in d.replicas.values():
                if r.id == leaving:
                    continue
                if r.state is ReplicaState.SLEEPING:
                    occupants.append(
                        Occupant(r.id, d.id, d.spec.resources, True, r.last_used, held_memory_mb=r.held_memory_mb)
                    )
                elif r.state in LIVE:
                    evictable = r.in_flight == 0 and r.ready and removable
                    occupants.append(Occupant(r.id, d.id, d.spec.resources, evictable, r.last_used))
        return occupants

    async def _make_room(self, deployment: Deployment, waking: str | None = None) -> None:
        """Evicts what must go for one more replica of `deployment` to fit (the
        sleeping replica `waking` gives its own held memory back as it wakes)."""
        victims = place(
            self.capacity,
            self._occupants(waking),
            deployment.spec.resources,
            deployment.id,
            now=self.clock.now(),
            min_idle_s=self.min_idle_before_eviction_s,
        )
        for victim_id in victims:
            await self._evict(victim_id)

    async def _wake(self, replica: Replica) -> None:
        deployment = self._deployments[replica.deployment_id]
        await self._make_room(deployment, waking=replica.id)
        # A replica that fails to wake is UNHEALTHY, still live: its supervisor
        # restarts it, and waiters get it when that is done.
        if await replica.wake():
            self._event(deployment, "woke", f"replica {replica.id} woke from light sleep")

    async def _launch(self, deployment: Deployment, spec: DeploymentSpec, revision: int) -> Replica:
        await self._make_room(deployment)
        replica_id = new_id("rep")
        replica = self._new_replica(deployment, replica_id, spec, revision)
        deployment.replicas[replica_id] = replica
        self._on_replica_change(replica)
        replica.start()
        return replica

    def _new_replica(self, deployment: Deployment, replica_id: str, spec: DeploymentSpec, revision: int) -> Replica:
        token = hmac.new(self.replica_secret, replica_id.encode(), hashlib.sha256).hexdigest()
        # The secrets are read now, so a changed value reaches the replicas started after it.
        secret_env = self._secret_env(deployment.workspace_id, spec)
        return Replica(
            replica_id,
            deployment.id,
            spec,
            self.backend,
            self.log_dir / deployment.id / f"{replica_id}.log",
            {**secret_env, **self._platform_env(spec)},
            self._on_replica_change,
            self.clock,
            token=token,
            revision=revision,
            files=self._secret_files(deployment.workspace_id, spec),
        )

    def _secret_env(self, workspace_id: str, spec: DeploymentSpec) -> dict[str, str]:
        references = spec.secret_env()
        values = self.secrets.resolve(workspace_id, set(references.values()))
        return {variable: values[name] for variable, name in references.items()}

    def _secret_files(self, workspace_id: str, spec: DeploymentSpec) -> dict[str, str]:
        references = spec.secret_files()
        values = self.secrets.resolve(workspace_id, set(references.values()))
        return {path: values[name] for path, name in references.items()}

    async def _evict(self, replica_id: str) -> None:
        for other in self._deployments.values():
            if (victim := other.replicas.get(replica_id)) is not None:
                if victim.state is ReplicaState.SLEEPING:
                    self._event(other, "evicted", f"sleeping replica {replica_id} evicted to make room")
                else:
                    self._event(other, "evicted", f"idle replica {replica_id} evicted to make room")
                    self._set_desired(other, max(other.desired - 1, 0))
                await self._retire(victim)
                return

    async def _scale_away(self, replica: Replica) -> None:
        """Light sleep when the deployment keeps sleeping replicas and the replica
        can sleep; a stop otherwise (or when it would not fall asleep)."""
        if replica.ready and replica.can_sleep and replica.spec.scaling.light_sleep_s > 0 and await replica.sleep():
            if deployment := self._deployments.get(replica.deployment_id):
                self._event(deployment, "slept", f"replica {replica.id} fell into light sleep")
            return
        await self._retire(replica)

    async def _deep_sleep_expired(self, deployment: Deployment) -> None:
        now = self.clock.now()
        for replica in deployment.sleeping():
            if replica.slept_at is not None and now - replica.slept_at >= deployment.spec.scaling.light_sleep_s:
                self._event(deployment, "slept", f"replica {replica.id} went from light to deep sleep")
                await self._retire(replica)

    async def _retire(self, replica: Replica) -> None:
        await replica.stop()
        deployment = self._deployments.get(replica.deployment_id)
        if deployment is not None:
            deployment.replicas.pop(replica.id, None)

    async def _remove(self, deployment: Deployment) -> None:
        deployment.deleted = True
        deployment.signal_ready()
        if deployment.rollout_task is not None:
            deployment.rollout_task.cancel()
        await asyncio.gather(*(self._retire(r) for r in list(deployment.replicas.values())))
        self._deployments.pop(deployment.id, None)
        self.repository.delete_deployment(deployment.id)
        self.domains.forget(deployment.id)
        shutil.rmtree(self.log_dir / deployment.id, ignore_errors=True)

    def _platform_env(self, spec: DeploymentSpec) -> dict[str, str]:
        """A model replica is our own server: it checks the caller's API key (the
        router forwards it) against this database, with this home's pepper. User
        commands get neither."""
        if spec.kind is Kind.MODEL:
            return {URL_ENV: self.store_url, HOME_ENV: str(self.home)}
        return {}

    def _set_desired(self, deployment: Deployment, desired: int) -> None:
        deployment.desired = desired
        self.repository.set_desired(deployment.id, desired)

    def _event(self, deployment: Deployment, kind: str, message: str, revision: int | None = None) -> None:
        """Logs and stores an event of the deployment, for its event list."""
        log.info("deployment %s: %s", deployment.name, message)
        if deployment.deleted:
            return
        self.repository.add_event(
            EventRow(
                workspace_id=deployment.workspace_id,
                deployment_id=deployment.id,
                kind=kind,
                message=message,
                revision=revision if revision is not None else deployment.revision,
            )
        )

    def _on_replica_change(self, replica: Replica) -> None:
        deployment = self._deployments.get(replica.deployment_id)
        if deployment is None:
            return
        if replica.state is ReplicaState.STOPPED:
            self.repository.delete_replica(replica.id)
            return
        if replica.state is ReplicaState.RUNNING:
            deployment.signal_ready()
        if replica.state is ReplicaState.UNHEALTHY:
            self._event(
                deployment,
                "crashed",
                f"replica {replica.id} {replica.failure or 'failed'}; restart {replica.restarts + 1} "
                f"in {replica.backoff_s:g} s",
                replica.revision,
            )
        handle = replica.handle
        self.repository.save_replica(
            ReplicaRow(
                id=replica.id,
                workspace_id=deployment.workspace_id,
                deployment_id=deployment.id,
                state=replica.state.value,
                port=handle.port if handle else None,
                pid=handle.pid if handle else None,
                pid_start=handle.pid_start if handle else None,
                restarts=replica.restarts,
                log_path=str(replica.log_path),
                revision=replica.revision,
            )
        )
