"""`Tenancy`: the one object a server holds for keys, limits, metering and erasure."""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

import anyio.to_thread
from fastapi import FastAPI

from ..store import Store, open_store, tramontane_home
from . import audit, directory, erasure, keys, usage
from .audit import CLI, Actor
from .auth import Authenticator, Rejection
from .capabilities import Capability
from .energy import EnergyMeter, EnergyReading
from .errors import install_error_handler
from .limits import DEFAULT_LEASE_TTL_S, AdmissionLimits, Limiter, WorkspaceGate
from .pepper import load_pepper
from .principal import Principal, Ticket
from .request_logs import RequestLogWriter
from .usage import Usage, UsageWriter


@dataclass
class HeldSlot:
    """A concurrency slot taken over from the request that was admitted with it."""

    workspace_id: str
    gated: bool
    lease_id: str | None


class Tenancy:
    def __init__(
        self,
        store: Store,
        *,
        home: Path | None = None,
        pepper: bytes | None = None,
        meter: EnergyMeter | None = None,
        lease_ttl_s: float = DEFAULT_LEASE_TTL_S,
        admission: AdmissionLimits | None = None,
    ):
        """`admission`: the per-workspace limits of this process (limits.py)."""
        self.store = store
        self.home = home or tramontane_home()
        self.pepper = pepper or load_pepper(self.home)
        self.authenticator = Authenticator(store, self.pepper)
        self.limiter = Limiter(store, lease_ttl_s=lease_ttl_s)
        self.gate = WorkspaceGate(admission or AdmissionLimits())
        self.meter = meter or EnergyMeter()
        self.request_logs = RequestLogWriter(store)
        self.usage_writer = UsageWriter(store, self.limiter)

    @classmethod
    def open(
        cls, url: str | None = None, *, home: Path | None = None, admission: AdmissionLimits | None = None
    ) -> Tenancy:
        """Opens (and migrates) the database at `url` or `$TRAMONTANE_DATABASE_URL`."""
        return cls(open_store(url), home=home, admission=admission)

    @property
    def admission(self) -> AdmissionLimits:
        return self.gate.limits

    def scheduling_weight(self, principal: Principal) -> float:
        """`principal`'s workspace's share of the engines: the weight stored on the
        workspace (the admin API's), else the operator's `--workspace-weight`, else 1."""
        if principal.scheduling_weight is not None:
            return principal.scheduling_weight
        return self.admission.weight(principal.workspace_id)

    def install(self, app: FastAPI) -> None:
        """Makes `require(...)` work in `app` and renders tenancy errors there."""
        app.state.tenancy = self
        install_error_handler(app)

    def close(self) -> None:
        self.usage_writer.close()
        self.request_logs.close()
        self.store.close()

    def bootstrap_admin_key(self) -> str | None:
        """The admin key, on the very first start only; print it then."""
        return keys.bootstrap_admin_key(self.store, self.pepper)

    def create_tenant(self, name: str, capabilities: frozenset[Capability], *, actor: Actor = CLI) -> tuple[str, str]:
        """A new organisation with one workspace and one key, all called `name`:
        (workspace id, the key in plaintext: show it once). For set-up scripts,
        benchmarks and tests; the admin API does the same step by step."""
        with self.store.write_session() as session:
            organisation = directory.create_organisation(session, name, actor)
            workspace = directory.create_workspace(session, organisation, name, actor)
            created = keys.create_key(
                session, self.pepper, workspace, name=name, capabilities=capabilities, actor=actor
            )
            return workspace.id, created.plaintext

    def authenticate(self, authorization: str | None, *, where: str | None = None) -> Principal:
        return self.authenticator.authenticate(authorization, where=where)

    def record_action(
        self, principal: Principal, action: str, *, target: str, details: dict[str, object] | None = None
    ) -> None:
        """Audits `action` taken with `principal`'s key, under the key's public id."""
        with self.store.write_session() as session:
            audit.record(
                session, action, Actor(principal.key_prefix), organisation_id=principal.organisation_id,
                workspace_id=principal.workspace_id, target=target, details=details,
            )  # fmt: skip

    def key_principal(self, key_id: str) -> Principal | None:
        """Key `key_id`'s principal, revoked or expired alike (None once erased): for
        work the key started that runs on without it, such as a batch job."""
        return self.authenticator.key_principal(key_id)

    def authorize(self, principal: Principal, capability: Capability, *, where: str | None = None) -> None:
        self.authenticator.authorize(principal, capability, where=where)

    async def enter(self, authorization: str | None, capability: Capability, *, where: str) -> Principal:
        """`authenticate`, `authorize` and `admit` for one HTTP request, from the
        event loop. The common case (a valid key, holding `capability`, without
        limits) is one indexed read, run inline: cheaper than the two hops to a
        worker thread and back. Whatever writes (the audit of a refusal, limit
        counters) runs in a worker thread, so a busy database never stalls the loop.
        Pair with `leave`."""
        return await self._enter(self.authenticator.verify(authorization), capability, where)

    async def enter_key(self, key_id: str, capability: Capability, *, where: str) -> Principal:
        """`enter` for key `key_id` without its secret, for a credential the
        platform signed under that key (a sandbox port link): the key's state,
        capability and limits are checked as for a request carrying it."""
        return await self._enter(self.authenticator.verify_key_id(key_id), capability, where)

    async def _enter(self, verdict: Principal | Rejection, capability: Capability, where: str) -> Principal:
        if isinstance(verdict, Rejection):
            await anyio.to_thread.run_sync(self.authenticator.reject, verdict, where)
            raise AssertionError("reject always raises")
        if not verdict.can(capability):
            await anyio.to_thread.run_sync(partial(self.authorize, verdict, capability, where=where))
        if self.limiter.applies_to(verdict):
            admitted = await anyio.to_thread.run_sync(self.admit, verdict)
        else:
            admitted = self.admit(verdict)
        if capability is Capability.INFERENCE:
            try:
                await self.gate.enter(admitted.workspace_id, admitted.workspace_limits.max_concurrent_requests)
            except BaseException:
                await self.leave(admitted)
                raise
            assert admitted.ticket is not None
            admitted.ticket.gated = True
        return admitted

    async def leave(self, principal: Principal) -> None:
        """`finish` from the event loop: a concurrency lease is freed in a worker thread."""
        if principal.ticket is not None and principal.ticket.gated:
            principal.ticket.gated = False
            self.gate.leave(principal.workspace_id)
        if principal.ticket is not None and principal.ticket.lease_id is not None:
            await anyio.to_thread.run_sync(self.finish, principal)
        else:
            self.finish(principal)

    def detach_slot(self, principal: Principal) -> HeldSlot:
        """Hands the request's concurrency slot (its place in this process's gate and
        its lease, where a limit applies) to work that outlives the request, such as
        a background response: `leave` no longer frees it, `release_slot` does."""
        ticket = principal.ticket
        if ticket is None:
            return HeldSlot(principal.workspace_id, gated=False, lease_id=None)
        slot = HeldSlot(principal.workspace_id, gated=ticket.gated, lease_id=ticket.lease_id)
        ticket.gated, ticket.lease_id = False, None
        return slot

    async def release_slot(self, slot: HeldSlot) -> None:
        if slot.gated:
            slot.gated = False
            self.gate.leave(slot.workspace_id)
        if slot.lease_id is not None:
            lease_id, slot.lease_id = slot.lease_id, None
            await anyio.to_thread.run_sync(self.limiter.release, lease_id)

    def admit(self, principal: Principal, *, weight_tokens: int = 1) -> Principal:
        """Applies the limits (429 when over) and starts metering; returns the
        principal carrying the request's ticket. Pair with `finish`."""
        lease_id = self.limiter.admit(principal)
        return replace(principal, ticket=Ticket(lease_id, self.meter.begin(weight_tokens)))

    def finish(self, principal: Principal) -> None:
        """Ends an admitted request: frees its concurrency slot, stops its meter."""
        if principal.ticket is not None:
            self.meter.finish(principal.ticket.span)
            self.limiter.release(principal.ticket.lease_id)

    def record_usage(
        self,
        principal: Principal,
        *,
        model: str,
        prompt_tokens: int,
        completion_tokens: int,
        request_id: str | None = None,
        latency_s: float | None = None,
        energy: EnergyReading | None = None,
    ) -> Usage:
        """Meters one finished request. For a request admitted by `require`, latency
        and energy come from its ticket; otherwise pass both."""
        record = self._usage(principal, model, prompt_tokens, completion_tokens, request_id, latency_s, energy)
        usage.record(self.store, self.limiter, principal, record)
        return record

    def submit_usage(
        self, principal: Principal, *, model: str, prompt_tokens: int, completion_tokens: int, request_id: str
    ) -> Usage:
        """`record_usage` for an admitted request, written by a background thread
        (`usage_writer`): cheap enough to call from the event loop."""
        record = self._usage(principal, model, prompt_tokens, completion_tokens, request_id, None, None)
        self.usage_writer.submit_usage(principal, record)
        return record

    def _usage(
        self,
        principal: Principal,
        model: str,
        prompt_tokens: int,
        completion_tokens: int,
        request_id: str | None,
        latency_s: float | None,
        energy: EnergyReading | None,
    ) -> Usage:
        ticket = principal.ticket
        if ticket is not None:
            if ticket.usage_recorded:
                raise RuntimeError("usage of this request was already recorded")
            ticket.usage_recorded = True
            latency_s = time.perf_counter() - ticket.started if latency_s is None else latency_s
            energy = energy or self.meter.finish(ticket.span, prompt_tokens + completion_tokens)
        if latency_s is None or energy is None:
            raise ValueError("outside an admitted request, pass latency_s and energy")
        return Usage(
            model=model,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            latency_ms=latency_s * 1000.0,
            energy_wh=energy.wh,
            energy_source=energy.source,
            request_id=request_id,
        )

    def workspace_dir(self, workspace_id: str) -> Path:
        """Where the workspace's files go; erasure removes the whole directory."""
        return directory.workspace_dir(self.home, workspace_id)

    def erase_workspace(self, workspace_id: str, actor: Actor) -> None:
        erasure.erase_workspace(self.store, self.home, workspace_id, actor)

    def erase_organisation(self, organisation_id: str, actor: Actor) -> None:
        erasure.erase_organisation(self.store, self.home, organisation_id, actor)
