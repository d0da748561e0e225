"""Durable control-plane state: each deployment's spec and replica count, and the
replicas last started for it. A restarted control plane reads these to put every
deployment back (see `ControlPlane.start`)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, ForeignKey, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from ..store.models import Base, WorkspaceOwned
from ..store.types import new_id, utcnow


class DeploymentRow(WorkspaceOwned, Base):
    __tablename__ = "deployments"
    __table_args__ = (UniqueConstraint("workspace_id", "name"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=lambda: new_id("dep"))
    name: Mapped[str] = mapped_column(String(63))
    # The validated DeploymentSpec, as JSON.
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    # What the autoscaler or `scale` last asked for; restored after a restart.
    desired_replicas: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class ReplicaRow(WorkspaceOwned, Base):
    __tablename__ = "replicas"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    deployment_id: Mapped[str] = mapped_column(String(32), ForeignKey("deployments.id", ondelete="CASCADE"), index=True)
    state: Mapped[str] = mapped_column(String(16))
    port: Mapped[int | None] = mapped_column(Integer, default=None)
    pid: Mapped[int | None] = mapped_column(Integer, default=None)
    # The process's start time in clock ticks since boot (/proc/PID/stat), so that a
    # restarted control plane never signals an unrelated process that reused the pid.
    pid_start: Mapped[int | None] = mapped_column(Integer, default=None)
    restarts: Mapped[int] = mapped_column(Integer, default=0)
    log_path: Mapped[str | None] = mapped_column(String(500), default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class DomainRow(WorkspaceOwned, Base):
    """A custom domain: requests whose Host is `hostname` go to the deployment.
    A hostname belongs to one deployment of one workspace at most."""

    __tablename__ = "deployment_domains"

    hostname: Mapped[str] = mapped_column(String(253), primary_key=True)
    deployment_id: Mapped[str] = mapped_column(String(32), ForeignKey("deployments.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
