"""beta.agents through the official SDK: create, read, update into new versions,
switch versions, delete; another workspace sees none of it."""

from __future__ import annotations

import pytest
from agents_helpers import SCRIPTED
from mistralai.client import Mistral
from mistralai.client.errors import SDKError


def test_agent_lifecycle_with_versions(mistral: Mistral) -> None:
    agent = mistral.beta.agents.create(
        model=SCRIPTED,
        name="analyst",
        description="Crunches numbers",
        instructions="Be brief.",
        tools=[
            {"type": "code_interpreter"},
            {"type": "function", "function": {"name": "get_rate", "parameters": {"type": "object"}}},
        ],
        completion_args={"temperature": 0.2, "max_tokens": 64},
    )
    assert agent.id.startswith("ag_") and agent.version == 0 and agent.versions == [0]
    assert [t.type for t in agent.tools] == ["code_interpreter", "function"]
    assert agent.completion_args.temperature == 0.2

    assert mistral.beta.agents.get(agent_id=agent.id).name == "analyst"
    assert agent.id in [a.id for a in mistral.beta.agents.list()]

    updated = mistral.beta.agents.update(agent_id=agent.id, instructions="Be thorough.")
    assert updated.version == 1 and updated.versions == [0, 1]
    assert updated.instructions == "Be thorough." and updated.description == "Crunches numbers"  # others kept

    assert [v.version for v in mistral.beta.agents.list_versions(agent_id=agent.id)] == [1, 0]
    assert mistral.beta.agents.get_version(agent_id=agent.id, version="0").instructions == "Be brief."
    assert mistral.beta.agents.get(agent_id=agent.id, agent_version=0).instructions == "Be brief."

    switched = mistral.beta.agents.update_version(agent_id=agent.id, version=0)
    assert switched.version == 0 and mistral.beta.agents.get(agent_id=agent.id).instructions == "Be brief."

    mistral.beta.agents.delete(agent_id=agent.id)
    with pytest.raises(SDKError) as missing:
        mistral.beta.agents.get(agent_id=agent.id)
    assert missing.value.status_code == 404


def test_bad_agents_are_refused(mistral: Mistral) -> None:
    with pytest.raises(SDKError) as unknown_model:
        mistral.beta.agents.create(model="no-such-model", name="x")
    assert unknown_model.value.status_code == 404
    with pytest.raises(SDKError) as unknown_handoff:
        mistral.beta.agents.create(model=SCRIPTED, name="x", handoffs=["ag_0000000000000000"])
    assert unknown_handoff.value.status_code == 404


def test_another_workspace_sees_no_agent(mistral: Mistral, other: Mistral) -> None:
    agent = mistral.beta.agents.create(model=SCRIPTED, name="private")
    assert agent.id not in [a.id for a in other.beta.agents.list()]
    for call in (
        lambda: other.beta.agents.get(agent_id=agent.id),
        lambda: other.beta.agents.update(agent_id=agent.id, name="stolen"),
        lambda: other.beta.agents.delete(agent_id=agent.id),
        lambda: other.beta.agents.list_versions(agent_id=agent.id),
        lambda: other.beta.conversations.start(agent_id=agent.id, inputs="hi"),
    ):
        with pytest.raises(SDKError) as hidden:
            call()
        assert hidden.value.status_code == 404
    assert mistral.beta.agents.get(agent_id=agent.id).name == "private"
