"""Mistral's Agents, Conversations and Libraries APIs: agents with versions,
conversations stored per workspace and run by a loop that calls the model through
the inference layer's chat path, server-side tools (a code interpreter in a tier-1 sandbox
kept per conversation, document-library search over a sqlite-vec index),
client-side functions, and handoffs between agents.

Import-light, like `control`: `tramontane.platform.schema` imports
`agents.models` for the platform's tables. Import
`agents.api` (`routers`), `agents.service` (`AgentsService`, what the
routes work on) and `agents.backend` (`ChatBackend`,
`EngineBackend`, `ModelTurn`: how the loop calls a model) directly.
"""
