"""Durable control-plane state: each deployment's spec and replica count, and the
replicas last started for it. A restarted control plane reads these to put every
deployment back (see `ControlPlane.start`)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, ForeignKey, Integer, String, Text, UniqueConstraint
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
    # The deployment revision it runs: a restarted control plane adopts only the
    # active revision's replicas.
    revision: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class DomainRow(WorkspaceOwned, Base):
    """A custom domain: requests whose Host is `hostname` go to the deployment.
    A hostname belongs to one deployment of one workspace at most."""

    __tablename__ = "deployment_domains"

    hostname: Mapped[str] = mapped_column(String(253), primary_key=True)
    deployment_id: Mapped[str] = mapped_column(String(32), ForeignKey("deployments.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class SecretRow(WorkspaceOwned, Base):
    """One workspace secret: its value only as a Fernet token (see control/secrets.py)."""

    __tablename__ = "secrets"
    __table_args__ = (UniqueConstraint("workspace_id", "name"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=lambda: new_id("sec"))
    name: Mapped[str] = mapped_column(String(63))
    ciphertext: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class RevisionRow(WorkspaceOwned, Base):
    """One version of a deployment's spec. Every change of spec is a new revision,
    numbered from 1; the one being served is `active`, and one being rolled out
    is `rolling_out` until it replaces it (`active`) or fails (`failed`)."""

    __tablename__ = "deployment_revisions"
    __table_args__ = (UniqueConstraint("deployment_id", "number"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=lambda: new_id("rev"))
    deployment_id: Mapped[str] = mapped_column(String(32), ForeignKey("deployments.id", ondelete="CASCADE"), index=True)
    number: Mapped[int] = mapped_column(Integer)
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16))
    # Why a revision failed, or which revision it was rolled back from.
    reason: Mapped[str | None] = mapped_column(Text, default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class EventRow(WorkspaceOwned, Base):
    """Something that happened to a deployment (scaled, crashed, rolled back...),
    for its event list. Kept durably so that a restarted control plane still
    shows why it rolled a revision back."""

    __tablename__ = "deployment_events"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=lambda: new_id("evt"))
    deployment_id: Mapped[str] = mapped_column(String(32), ForeignKey("deployments.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(32))
    message: Mapped[str] = mapped_column(Text)
    revision: Mapped[int | None] = mapped_column(Integer, default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
