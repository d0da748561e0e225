"""Agents and their versions, per workspace. An update never changes a version: it
adds one and makes it current; conversations may pin any version."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from ..errors import Invalid, NotFound
from ..store import Store
from ..store.types import utcnow
from ..tenancy import Principal, get_owned, owned
from .models import AgentAliasRow, AgentRow, AgentVersionRow
from .schemas import Agent, AgentAlias, AgentCreate, AgentUpdate


def _versions(session: Session, agent_id: str) -> list[AgentVersionRow]:
    query = select(AgentVersionRow).where(AgentVersionRow.agent_id == agent_id).order_by(AgentVersionRow.version)
    return list(session.scalars(query))


def _view(agent: AgentRow, version: AgentVersionRow, numbers: list[int]) -> Agent:
    return Agent(
        id=agent.id,
        version=version.version,
        versions=numbers,
        created_at=agent.created_at,
        updated_at=version.created_at,
        **version.config,
    )


def _version_number(session: Session, agent: AgentRow, value: int | str | None) -> int:
    """The version `value` names: a number, an alias, or (None) the current one."""
    if value is None:
        return agent.version
    if isinstance(value, int):
        return value
    if value.isdigit():
        return int(value)
    alias = session.get(AgentAliasRow, (agent.id, value))
    if alias is None:
        raise NotFound(f"Agent {agent.id} has no version or alias '{value}'", code="agent_version_not_found")
    return alias.version


def _alias_view(row: AgentAliasRow) -> AgentAlias:
    return AgentAlias(alias=row.alias, version=row.version, created_at=row.created_at, updated_at=row.updated_at)


class AgentRegistry:
    def __init__(self, store: Store):
        self._store = store

    def _check_handoffs(self, session: Session, principal: Principal, handoffs: list[str] | None) -> None:
        for agent_id in handoffs or []:
            get_owned(session, AgentRow, agent_id, principal, "agent")

    def create(self, principal: Principal, body: AgentCreate) -> Agent:
        config = body.model_dump(mode="json", exclude_none=True)
        with self._store.write_session() as session:
            self._check_handoffs(session, principal, body.handoffs)
            agent = AgentRow(workspace_id=principal.workspace_id, version=0)
            session.add(agent)
            session.flush()
            version = AgentVersionRow(agent_id=agent.id, version=0, workspace_id=agent.workspace_id, config=config)
            session.add(version)
            session.flush()  # fills in the timestamps
            return _view(agent, version, [0])

    def list(self, principal: Principal, page: int, page_size: int) -> list[Agent]:
        with self._store.session() as session:
            query = owned(AgentRow, principal).order_by(AgentRow.created_at.desc(), AgentRow.id)
            agents = session.scalars(query.offset(page * page_size).limit(page_size)).all()
            views = []
            for agent in agents:
                versions = _versions(session, agent.id)
                current = next(v for v in versions if v.version == agent.version)
                views.append(_view(agent, current, [v.version for v in versions]))
            return views

    def get(self, principal: Principal, agent_id: str, version: int | str | None = None) -> Agent:
        with self._store.session() as session:
            agent = get_owned(session, AgentRow, agent_id, principal, "agent")
            versions = _versions(session, agent.id)
            wanted = _version_number(session, agent, version)
            found = next((v for v in versions if v.version == wanted), None)
            if found is None:
                raise NotFound(f"Agent {agent_id} has no version {wanted}", code="agent_version_not_found")
            return _view(agent, found, [v.version for v in versions])

    def versions(self, principal: Principal, agent_id: str, page: int, page_size: int) -> list[Agent]:
        with self._store.session() as session:
            agent = get_owned(session, AgentRow, agent_id, principal, "agent")
            versions = _versions(session, agent.id)
            numbers = [v.version for v in versions]
            chosen = versions[::-1][page * page_size : (page + 1) * page_size]
            return [_view(agent, v, numbers) for v in chosen]

    def update(self, principal: Principal, agent_id: str, body: AgentUpdate) -> Agent:
        changes: dict[str, Any] = body.model_dump(mode="json", exclude_unset=True)
        with self._store.write_session() as session:
            agent = get_owned(session, AgentRow, agent_id, principal, "agent")
            self._check_handoffs(session, principal, body.handoffs)
            versions = _versions(session, agent.id)
            current = next(v for v in versions if v.version == agent.version)
            config = {k: v for k, v in {**current.config, **changes}.items() if v is not None}
            for required in ("model", "name"):
                if required not in config:
                    raise Invalid(f"An agent needs a {required}", param=required)
            number = versions[-1].version + 1
            version = AgentVersionRow(agent_id=agent.id, version=number, workspace_id=agent.workspace_id, config=config)
            session.add(version)
            agent.version = number
            agent.updated_at = utcnow()
            session.flush()
            return _view(agent, version, [v.version for v in versions] + [number])

    def switch(self, principal: Principal, agent_id: str, version: int) -> Agent:
        with self._store.write_session() as session:
            agent = get_owned(session, AgentRow, agent_id, principal, "agent")
            versions = _versions(session, agent.id)
            found = next((v for v in versions if v.version == version), None)
            if found is None:
                raise NotFound(f"Agent {agent_id} has no version {version}", code="agent_version_not_found")
            agent.version = version
            agent.updated_at = utcnow()
            return _view(agent, found, [v.version for v in versions])

    def delete(self, principal: Principal, agent_id: str) -> None:
        with self._store.write_session() as session:
            session.delete(get_owned(session, AgentRow, agent_id, principal, "agent"))

    # -- aliases

    def set_alias(self, principal: Principal, agent_id: str, alias: str, version: int) -> AgentAlias:
        """Points `alias` at `version`, creating the alias or moving it."""
        if alias.isdigit():
            raise Invalid("An alias cannot be a number: it would hide a version", param="alias")
        with self._store.write_session() as session:
            agent = get_owned(session, AgentRow, agent_id, principal, "agent")
            if version not in [v.version for v in _versions(session, agent.id)]:
                raise NotFound(f"Agent {agent_id} has no version {version}", code="agent_version_not_found")
            row = session.get(AgentAliasRow, (agent.id, alias))
            if row is None:
                row = AgentAliasRow(agent_id=agent.id, alias=alias, version=version, workspace_id=agent.workspace_id)
                session.add(row)
            else:
                row.version, row.updated_at = version, utcnow()
            session.flush()
            return _alias_view(row)

    def aliases(self, principal: Principal, agent_id: str) -> list[AgentAlias]:
        with self._store.session() as session:
            agent = get_owned(session, AgentRow, agent_id, principal, "agent")
            query = select(AgentAliasRow).where(AgentAliasRow.agent_id == agent.id).order_by(AgentAliasRow.alias)
            return [_alias_view(row) for row in session.scalars(query)]

    def delete_alias(self, principal: Principal, agent_id: str, alias: str) -> None:
        with self._store.write_session() as session:
            agent = get_owned(session, AgentRow, agent_id, principal, "agent")
            row = session.get(AgentAliasRow, (agent.id, alias))
            if row is None:
                raise NotFound(f"Agent {agent_id} has no alias '{alias}'", code="agent_alias_not_found")
            session.delete(row)

    def find(self, workspace_id: str, agent_id: str) -> Agent:
        """The current version of a workspace's agent, for a handoff (no caller key at hand)."""
        with self._store.session() as session:
            agent = get_owned(session, AgentRow, agent_id, workspace_id, "agent")
            versions = _versions(session, agent.id)
            current = next(v for v in versions if v.version == agent.version)
            return _view(agent, current, [v.version for v in versions])
