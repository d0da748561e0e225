"""Mistral's Agents, Conversations and Libraries APIs: agents with versions,
conversations stored per workspace and run by a loop that calls the model through
the server's chat path, server-side tools (a code interpreter in a tier-1 sandbox
kept per conversation, document-library search over a sqlite-vec index) and
client-side functions, and handoffs between agents.

    app.include_router(build_router(store, registry, home, EngineBackend(registry, metrics), sandboxes))
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter

from ..sandbox import SandboxManager
from ..server.registry import ModelRegistry
from ..store import Store
from .api import create_router
from .backend import ChatBackend, EngineBackend, ModelTurn
from .conversations import Conversations
from .libraries import Libraries
from .registry import AgentRegistry
from .tools import ConversationSandboxes

__all__ = [
    "AgentRegistry",
    "ChatBackend",
    "ConversationSandboxes",
    "Conversations",
    "EngineBackend",
    "Libraries",
    "ModelTurn",
    "build_router",
]


def build_router(
    store: Store,
    registry: ModelRegistry,
    home: Path,
    backend: ChatBackend,
    sandboxes: SandboxManager | None,
    *,
    sandbox_idle_timeout_s: float = 600.0,
) -> APIRouter:
    """The routes, over the store's agents and conversations and the home's indexes.
    A conversation's sandbox is reclaimed after `sandbox_idle_timeout_s` unused."""
    agents = AgentRegistry(store)
    libraries = Libraries(store, registry, home)
    conversation_sandboxes = ConversationSandboxes(sandboxes, idle_timeout_s=sandbox_idle_timeout_s)
    conversations = Conversations(store, agents, backend, conversation_sandboxes, libraries)
    return create_router(agents, conversations, libraries)
