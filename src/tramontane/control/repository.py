"""Reading and writing the control plane's rows. Synchronous and short: SQLite
commits take about a millisecond, so the event loop calls these directly.

With a `fence` (a leading gateway's, see store/leases.py), every write first
checks in its own transaction that the gateway still holds the lease."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ..errors import Conflict
from ..store import Store
from .models import DeploymentRow, EventRow, ReplicaRow, RevisionRow
from .spec import DeploymentSpec

# Events kept per deployment: the newest, so that a crash loop cannot fill the disk.
EVENTS_KEPT = 500


class Repository:
    def __init__(self, store: Store, fence: Callable[[Session], None] | None = None):
        self.store = store
        self.fence = fence

    @contextmanager
    def _write(self) -> Iterator[Session]:
        with self.store.write_session() as session:
            if self.fence is not None:
                self.fence(session)
            yield session

    def insert_deployment(self, workspace_id: str, spec: DeploymentSpec, desired: int) -> DeploymentRow:
        """The deployment with its first revision, active."""
        dumped = spec.model_dump(mode="json")
        row = DeploymentRow(workspace_id=workspace_id, name=spec.name, spec=dumped, desired_replicas=desired)
        try:
            with self._write() as session:
                session.add(row)
                session.flush()
                session.add(
                    RevisionRow(
                        workspace_id=workspace_id, deployment_id=row.id, number=1, spec=dumped, status="active"
                    )
                )
        except IntegrityError:
            raise Conflict(f"A deployment named '{spec.name}' already exists") from None
        return row

    def deployments(self) -> list[DeploymentRow]:
        with self.store.session() as session:
            return list(session.scalars(select(DeploymentRow).order_by(DeploymentRow.created_at)))

    def set_desired(self, deployment_id: str, desired: int) -> None:
        with self._write() as session:
            row = session.get(DeploymentRow, deployment_id)
            if row is not None:
                row.desired_replicas = desired

    def delete_deployment(self, deployment_id: str) -> None:
        with self._write() as session:
            session.execute(delete(DeploymentRow).where(DeploymentRow.id == deployment_id))

    def save_replica(self, row: ReplicaRow) -> None:
        with self._write() as session:
            session.merge(row)

    def delete_replica(self, replica_id: str) -> None:
        with self._write() as session:
            session.execute(delete(ReplicaRow).where(ReplicaRow.id == replica_id))

    def replicas(self) -> list[ReplicaRow]:
        with self.store.session() as session:
            return list(session.scalars(select(ReplicaRow)))

    # -- revisions ---------------------------------------------------------------

    def add_revision(self, workspace_id: str, deployment_id: str, spec: DeploymentSpec, reason: str | None) -> int:
        """Stores `spec` as the deployment's next revision, being rolled out; its number."""
        with self._write() as session:
            last = session.scalar(
                select(func.max(RevisionRow.number)).where(RevisionRow.deployment_id == deployment_id)
            )
            number = (last or 0) + 1
            session.add(
                RevisionRow(
                    workspace_id=workspace_id,
                    deployment_id=deployment_id,
                    number=number,
                    spec=spec.model_dump(mode="json"),
                    status="rolling_out",
                    reason=reason,
                )
            )
        return number

    def activate_revision(self, deployment_id: str, number: int, spec: DeploymentSpec) -> None:
        """`number` is served from now on: the deployment's spec, the old active one superseded."""
        with self._write() as session:
            session.execute(
                update(RevisionRow)
                .where(RevisionRow.deployment_id == deployment_id, RevisionRow.status == "active")
                .values(status="superseded")
            )
            session.execute(
                update(RevisionRow)
                .where(RevisionRow.deployment_id == deployment_id, RevisionRow.number == number)
                .values(status="active")
            )
            row = session.get(DeploymentRow, deployment_id)
            if row is not None:
                row.spec = spec.model_dump(mode="json")

    def fail_revision(self, deployment_id: str, number: int, reason: str) -> None:
        with self._write() as session:
            session.execute(
                update(RevisionRow)
                .where(RevisionRow.deployment_id == deployment_id, RevisionRow.number == number)
                .values(status="failed", reason=reason)
            )

    def revisions(self, deployment_id: str) -> list[RevisionRow]:
        with self.store.session() as session:
            return list(
                session.scalars(
                    select(RevisionRow).where(RevisionRow.deployment_id == deployment_id).order_by(RevisionRow.number)
                )
            )

    def revision(self, deployment_id: str, number: int) -> RevisionRow | None:
        with self.store.session() as session:
            return session.scalars(
                select(RevisionRow).where(RevisionRow.deployment_id == deployment_id, RevisionRow.number == number)
            ).one_or_none()

    # -- events ----------------------------------------------------------------

    def add_event(self, row: EventRow) -> None:
        with self._write() as session:
            session.add(row)
            session.flush()
            # Trims the oldest beyond EVENTS_KEPT: one indexed read per event.
            cutoff = session.scalar(
                select(EventRow.created_at)
                .where(EventRow.deployment_id == row.deployment_id)
                .order_by(EventRow.created_at.desc())
                .offset(EVENTS_KEPT)
                .limit(1)
            )
            if cutoff is not None:
                session.execute(
                    delete(EventRow).where(EventRow.deployment_id == row.deployment_id, EventRow.created_at <= cutoff)
                )

    def events(self, deployment_id: str, limit: int) -> list[EventRow]:
        """The newest `limit` events, oldest first."""
        with self.store.session() as session:
            rows = list(
                session.scalars(
                    select(EventRow)
                    .where(EventRow.deployment_id == deployment_id)
                    .order_by(EventRow.created_at.desc(), EventRow.id.desc())
                    .limit(limit)
                )
            )
        return rows[::-1]
