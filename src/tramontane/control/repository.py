"""Reading and writing the control plane's rows. Synchronous and short: SQLite
commits take about a millisecond, so the event loop calls these directly.

With a `fence` (a leading gateway's, see leadership.py), every write first
checks in its own transaction that the gateway still holds the lease."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ..errors import Conflict
from ..store import Store
from .models import DeploymentRow, ReplicaRow
from .spec import DeploymentSpec


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
        row = DeploymentRow(
            workspace_id=workspace_id, name=spec.name, spec=spec.model_dump(mode="json"), desired_replicas=desired
        )
        try:
            with self._write() as session:
                session.add(row)
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
