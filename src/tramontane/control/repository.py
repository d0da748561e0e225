"""Reading and writing the control plane's rows. Synchronous and short: SQLite
commits take about a millisecond, so the event loop calls these directly."""

from __future__ import annotations

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError

from ..errors import Conflict
from ..store import Store
from .models import DeploymentRow, ReplicaRow
from .spec import DeploymentSpec


class Repository:
    def __init__(self, store: Store):
        self.store = store

    def insert_deployment(self, workspace_id: str, spec: DeploymentSpec, desired: int) -> DeploymentRow:
        row = DeploymentRow(
            workspace_id=workspace_id, name=spec.name, spec=spec.model_dump(mode="json"), desired_replicas=desired
        )
        try:
            with self.store.write_session() as session:
                session.add(row)
        except IntegrityError:
            raise Conflict(f"A deployment named '{spec.name}' already exists") from None
        return row

    def deployments(self) -> list[DeploymentRow]:
        with self.store.session() as session:
            return list(session.scalars(select(DeploymentRow).order_by(DeploymentRow.created_at)))

    def set_desired(self, deployment_id: str, desired: int) -> None:
        with self.store.write_session() as session:
            row = session.get(DeploymentRow, deployment_id)
            if row is not None:
                row.desired_replicas = desired

    def delete_deployment(self, deployment_id: str) -> None:
        with self.store.write_session() as session:
            session.execute(delete(DeploymentRow).where(DeploymentRow.id == deployment_id))

    def save_replica(self, row: ReplicaRow) -> None:
        with self.store.write_session() as session:
            session.merge(row)

    def delete_replica(self, replica_id: str) -> None:
        with self.store.write_session() as session:
            session.execute(delete(ReplicaRow).where(ReplicaRow.id == replica_id))

    def take_replicas(self) -> list[ReplicaRow]:
        """Every replica row a previous control plane left, removed from the table."""
        with self.store.write_session() as session:
            rows = list(session.scalars(select(ReplicaRow)))
            session.execute(delete(ReplicaRow))
        return rows
