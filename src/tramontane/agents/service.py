"""`AgentsService`: what the Agents, Conversations and Libraries routes work on,
built once per app and read by the routes from `app.state.agents`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from fastapi import Depends, Request

from ..docai import DocumentReader
from ..inference.registry import ModelRegistry
from ..sandbox import SandboxManager
from ..store import Store
from .backend import ChatBackend
from .conversations import Conversations
from .libraries import Libraries
from .registry import AgentRegistry
from .tools import ConversationSandboxes


@dataclass(frozen=True)
class AgentsService:
    agents: AgentRegistry
    conversations: Conversations
    libraries: Libraries

    @classmethod
    def open(
        cls,
        store: Store,
        registry: ModelRegistry,
        home: Path,
        backend: ChatBackend,
        sandboxes: SandboxManager | None,
        reader: DocumentReader,
        *,
        sandbox_idle_timeout_s: float = 600.0,
    ) -> AgentsService:
        """Over the store's agents and conversations, with the libraries' indexes
        under `home`. A conversation's sandbox is reclaimed after
        `sandbox_idle_timeout_s` unused."""
        agents = AgentRegistry(store)
        libraries = Libraries(store, registry, home, reader)
        conversation_sandboxes = ConversationSandboxes(sandboxes, idle_timeout_s=sandbox_idle_timeout_s)
        return cls(agents, Conversations(store, agents, backend, conversation_sandboxes, libraries), libraries)

    @staticmethod
    def of(request: Request) -> AgentsService:
        return request.app.state.agents


# Plain attribute reads, async so that FastAPI does not hop to a worker thread for them.
async def _agents(request: Request) -> AgentRegistry:
    return AgentsService.of(request).agents


async def _conversations(request: Request) -> Conversations:
    return AgentsService.of(request).conversations


async def _libraries(request: Request) -> Libraries:
    return AgentsService.of(request).libraries


AgentStore = Annotated[AgentRegistry, Depends(_agents)]
ConversationStore = Annotated[Conversations, Depends(_conversations)]
LibraryStore = Annotated[Libraries, Depends(_libraries)]
