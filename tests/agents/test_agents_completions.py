"""Agents completions (`agents.complete` / `agents.stream`) and agent version
aliases, through the official SDK, on the default small model."""

from __future__ import annotations

import json

import pytest
from mistralai.client import Mistral
from mistralai.client.errors import SDKError

from tramontane.engine.defaults import DEFAULT_CHAT_MODEL_NAME as CHAT_MODEL

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 20}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}
HI = [{"role": "user", "content": "Hi"}]


def _status(call) -> int:
    with pytest.raises(SDKError) as failed:
        call()
    return failed.value.status_code


def test_complete_uses_the_agents_settings(mistral: Mistral) -> None:
    instructions = "You answer every question with one short sentence, in English, politely."
    agent = mistral.beta.agents.create(
        model=CHAT_MODEL, name="terse", instructions=instructions, completion_args={"max_tokens": 3, "temperature": 0}
    )
    response = mistral.agents.complete(agent_id=agent.id, messages=HI)
    assert response.model == CHAT_MODEL and response.choices[0].message.content
    # The agent's completion_args hold (3 tokens)...
    assert response.usage.completion_tokens == 3 and response.choices[0].finish_reason == "length"
    # ...and its instructions are the system message, exactly as a chat client would send them.
    chat = mistral.chat.complete(
        model=CHAT_MODEL, messages=[{"role": "system", "content": instructions}, *HI], max_tokens=3, temperature=0
    )
    assert response.usage.prompt_tokens == chat.usage.prompt_tokens
    assert response.choices[0].message.content == chat.choices[0].message.content
    # The request's own fields override the agent's.
    longer = mistral.agents.complete(agent_id=agent.id, messages=HI, max_tokens=5)
    assert longer.usage.completion_tokens == 5


def test_stream(mistral: Mistral) -> None:
    agent = mistral.beta.agents.create(model=CHAT_MODEL, name="streamer", completion_args={"max_tokens": 4})
    chunks = list(mistral.agents.stream(agent_id=agent.id, messages=HI))
    text = "".join(chunk.data.choices[0].delta.content or "" for chunk in chunks if chunk.data.choices)
    assert text and chunks[-1].data.usage.completion_tokens == 4


def test_agent_function_tools_are_offered(mistral: Mistral) -> None:
    agent = mistral.beta.agents.create(
        model=CHAT_MODEL,
        name="forecaster",
        tools=[WEATHER, {"type": "code_interpreter"}],
        completion_args={"tool_choice": "any", "temperature": 0, "max_tokens": 48},
    )
    response = mistral.agents.complete(agent_id=agent.id, messages=[{"role": "user", "content": "Paris weather?"}])
    calls = response.choices[0].message.tool_calls
    assert response.choices[0].finish_reason == "tool_calls"
    assert calls and calls[0].function.name == "get_weather"
    arguments = calls[0].function.arguments
    assert set(json.loads(arguments) if isinstance(arguments, str) else arguments) == {"city"}


def test_another_workspaces_agent_is_404(mistral: Mistral, other: Mistral) -> None:
    agent = mistral.beta.agents.create(model=CHAT_MODEL, name="private", completion_args={"max_tokens": 1})
    assert _status(lambda: other.agents.complete(agent_id=agent.id, messages=HI)) == 404
    assert _status(lambda: mistral.agents.complete(agent_id="ag_missing", messages=HI)) == 404


def test_aliases_name_versions(mistral: Mistral, other: Mistral) -> None:
    agent = mistral.beta.agents.create(model=CHAT_MODEL, name="aliased", instructions="First.")
    mistral.beta.agents.update(agent_id=agent.id, instructions="Second.")
    alias = mistral.beta.agents.create_version_alias(agent_id=agent.id, alias="stable", version=0)
    assert alias.alias == "stable" and alias.version == 0
    assert mistral.beta.agents.get(agent_id=agent.id, agent_version="stable").instructions == "First."
    assert mistral.beta.agents.get_version(agent_id=agent.id, version="stable").version == 0
    assert mistral.beta.agents.get(agent_id=agent.id).instructions == "Second."  # the current version is unchanged

    moved = mistral.beta.agents.create_version_alias(agent_id=agent.id, alias="stable", version=1)
    assert moved.version == 1 and moved.updated_at >= alias.updated_at
    mistral.beta.agents.create_version_alias(agent_id=agent.id, alias="canary", version=0)
    # A conversation started on an alias keeps the version it named then.
    started = mistral.beta.conversations.start(
        agent_id=agent.id, agent_version="canary", inputs="Hi", completion_args={"max_tokens": 1}
    )
    assert mistral.beta.conversations.get(conversation_id=started.conversation_id).agent_version == 0
    listed = mistral.beta.agents.list_version_aliases(agent_id=agent.id)
    assert [(a.alias, a.version) for a in listed] == [("canary", 0), ("stable", 1)]

    assert _status(lambda: other.beta.agents.list_version_aliases(agent_id=agent.id)) == 404
    assert _status(lambda: other.beta.agents.create_version_alias(agent_id=agent.id, alias="x", version=0)) == 404
    assert _status(lambda: mistral.beta.agents.create_version_alias(agent_id=agent.id, alias="x", version=7)) == 404
    assert _status(lambda: mistral.beta.agents.create_version_alias(agent_id=agent.id, alias="12", version=0)) == 400

    mistral.beta.agents.delete_version_alias(agent_id=agent.id, alias="canary")
    assert _status(lambda: mistral.beta.agents.get(agent_id=agent.id, agent_version="canary")) == 404
    assert _status(lambda: mistral.beta.agents.delete_version_alias(agent_id=agent.id, alias="canary")) == 404
