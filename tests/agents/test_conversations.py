"""beta.conversations through the official SDK: every endpoint, streamed and not,
function calls handed to the client, handoffs between agents, and the real
default model end to end."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
from agents_helpers import SCRIPTED, AgentsServer
from mistralai.client import Mistral
from mistralai.client.errors import SDKError

from tramontane.engine.defaults import DEFAULT_CHAT_MODEL_NAME


def call(name: str, **arguments: object) -> str:
    return f"<tool_call>\n{json.dumps({'name': name, 'arguments': arguments})}\n</tool_call>"


def test_conversation_endpoints(mistral: Mistral, server: AgentsServer, script: Callable[..., None]) -> None:
    agent = mistral.beta.agents.create(model=SCRIPTED, name="greeter", instructions="Greet warmly.")
    script("Hello there!", "Bonjour !", "Hallo!")
    started = mistral.beta.conversations.start(agent_id=agent.id, inputs="Hi")
    assert started.conversation_id.startswith("conv_")
    [answer] = started.outputs
    assert answer.type == "message.output" and answer.content == "Hello there!" and answer.agent_id == agent.id
    assert started.usage.completion_tokens > 0

    appended = mistral.beta.conversations.append(conversation_id=started.conversation_id, inputs="In French?")
    assert appended.conversation_id == started.conversation_id and appended.outputs[0].content == "Bonjour !"

    history = mistral.beta.conversations.get_history(conversation_id=started.conversation_id)
    assert [e.type for e in history.entries] == ["message.input", "message.output"] * 2
    messages = mistral.beta.conversations.get_messages(conversation_id=started.conversation_id)
    assert [m.content for m in messages.messages] == ["Hi", "Hello there!", "In French?", "Bonjour !"]

    conversation = mistral.beta.conversations.get(conversation_id=started.conversation_id)
    assert conversation.agent_id == agent.id
    assert started.conversation_id in [c.id for c in mistral.beta.conversations.list()]

    # Restart from the first answer: a new conversation that forgets the French turn.
    restarted = mistral.beta.conversations.restart(
        conversation_id=started.conversation_id, from_entry_id=history.entries[1].id, inputs="In German?"
    )
    assert restarted.conversation_id != started.conversation_id and restarted.outputs[0].content == "Hallo!"
    replay = mistral.beta.conversations.get_messages(conversation_id=restarted.conversation_id)
    assert [m.content for m in replay.messages] == ["Hi", "Hello there!", "In German?", "Hallo!"]
    # The model read the agent's instructions and the restarted history, not the French turn.
    last = server.backend.requests[-1]
    assert [(m.role, m.content) for m in last.messages] == [
        ("system", "Greet warmly."),
        ("user", "Hi"),
        ("assistant", "Hello there!"),
        ("user", "In German?"),
    ]
    mistral.beta.conversations.delete(conversation_id=started.conversation_id)
    with pytest.raises(SDKError) as gone:
        mistral.beta.conversations.get(conversation_id=started.conversation_id)
    assert gone.value.status_code == 404


def test_streamed_conversation_events(mistral: Mistral, script: Callable[..., None]) -> None:
    script("Streaming works.", "Again.")
    with mistral.beta.conversations.start_stream(model=SCRIPTED, inputs="Stream please") as stream:
        events = list(stream)
    kinds = [e.event for e in events]
    assert kinds[0] == "conversation.response.started" and kinds[-1] == "conversation.response.done"
    assert set(kinds[1:-1]) == {"message.output.delta"}
    assert "".join(e.data.content for e in events[1:-1]) == "Streaming works."
    assert events[-1].data.usage.total_tokens > 0
    conversation_id = events[0].data.conversation_id
    with mistral.beta.conversations.append_stream(conversation_id=conversation_id, inputs="More") as stream:
        assert "".join(e.data.content for e in stream if e.event == "message.output.delta") == "Again."
    history = mistral.beta.conversations.get_history(conversation_id=conversation_id)
    assert [e.content for e in history.entries if e.type == "message.output"] == ["Streaming works.", "Again."]


WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}


def test_function_calls_go_to_the_client(mistral: Mistral, server: AgentsServer, script: Callable[..., None]) -> None:
    script("Let me check. " + call("get_weather", city="Paris"), "It is sunny in Paris.")
    with mistral.beta.conversations.start_stream(model=SCRIPTED, inputs="Weather in Paris?", tools=[WEATHER]) as s:
        events = list(s)
    deltas = [e.data for e in events if e.event == "function.call.delta"]
    assert deltas and deltas[0].name == "get_weather"
    assert json.loads("".join(d.arguments for d in deltas)) == {"city": "Paris"}
    conversation_id = events[0].data.conversation_id
    history = mistral.beta.conversations.get_history(conversation_id=conversation_id)
    message, function_call = history.entries[1:]
    assert message.content == "Let me check." and function_call.type == "function.call"

    # Anything but the result is refused while the call is pending.
    with pytest.raises(SDKError) as waiting:
        mistral.beta.conversations.append(conversation_id=conversation_id, inputs="Hello?")
    assert waiting.value.status_code == 400
    result = {"type": "function.result", "tool_call_id": function_call.tool_call_id, "result": '{"sky": "sunny"}'}
    answer = mistral.beta.conversations.append(conversation_id=conversation_id, inputs=[result])
    assert answer.outputs[0].content == "It is sunny in Paris."
    seen = server.backend.requests[-1].messages
    assert seen[-2].tool_calls[0].function.name == "get_weather" and seen[-1].role == "tool"


def test_handoff_between_agents(mistral: Mistral, script: Callable[..., None]) -> None:
    expert = mistral.beta.agents.create(model=SCRIPTED, name="expert", description="Knows everything")
    triage = mistral.beta.agents.create(model=SCRIPTED, name="triage", handoffs=[expert.id])
    script(call(f"handoff_to_{expert.id}"), "The expert answers: 42.")
    with mistral.beta.conversations.start_stream(agent_id=triage.id, inputs="Meaning of life?") as stream:
        events = list(stream)
    kinds = [e.event for e in events]
    assert (
        kinds.index("agent.handoff.started") < kinds.index("agent.handoff.done") < kinds.index("message.output.delta")
    )
    done = next(e.data for e in events if e.event == "agent.handoff.done")
    assert done.next_agent_id == expert.id and done.next_agent_name == "expert"
    history = mistral.beta.conversations.get_history(conversation_id=events[0].data.conversation_id)
    handoff, answer = history.entries[1:]
    assert handoff.type == "agent.handoff" and handoff.previous_agent_id == triage.id
    assert answer.agent_id == expert.id and answer.content == "The expert answers: 42."


def test_another_workspace_sees_no_conversation(mistral: Mistral, other: Mistral, script: Callable[..., None]) -> None:
    script("Secret.")
    conversation_id = mistral.beta.conversations.start(model=SCRIPTED, inputs="Hi").conversation_id
    assert conversation_id not in [c.id for c in other.beta.conversations.list()]
    for attempt in (
        lambda: other.beta.conversations.get(conversation_id=conversation_id),
        lambda: other.beta.conversations.get_history(conversation_id=conversation_id),
        lambda: other.beta.conversations.get_messages(conversation_id=conversation_id),
        lambda: other.beta.conversations.append(conversation_id=conversation_id, inputs="x"),
        lambda: other.beta.conversations.restart(conversation_id=conversation_id, from_entry_id="msg_x", inputs="x"),
        lambda: other.beta.conversations.delete(conversation_id=conversation_id),
    ):
        with pytest.raises(SDKError) as hidden:
            attempt()
        assert hidden.value.status_code == 404
    assert mistral.beta.conversations.get(conversation_id=conversation_id).id == conversation_id


def test_the_default_model_end_to_end(mistral: Mistral) -> None:
    """The real embedded model, through the engine: one answer, then a streamed one."""
    args = {"max_tokens": 12, "temperature": 0.0}
    started = mistral.beta.conversations.start(model=DEFAULT_CHAT_MODEL_NAME, inputs="Say hello.", completion_args=args)
    [answer] = started.outputs
    assert answer.type == "message.output" and answer.content and answer.model == DEFAULT_CHAT_MODEL_NAME
    assert 0 < started.usage.completion_tokens <= 12
    with mistral.beta.conversations.append_stream(
        conversation_id=started.conversation_id, inputs="Once more.", completion_args=args
    ) as stream:
        events = list(stream)
    assert events[-1].event == "conversation.response.done" and events[-1].data.usage.prompt_tokens > 0
    text = "".join(e.data.content for e in events if e.event == "message.output.delta")
    history = mistral.beta.conversations.get_history(conversation_id=started.conversation_id)
    assert history.entries[-1].content == text != ""


def test_unstored_conversation_leaves_nothing(mistral: Mistral, script: Callable[..., None]) -> None:
    script("Forgotten.")
    response = mistral.beta.conversations.start(model=SCRIPTED, inputs="Hi", store=False)
    assert response.outputs[0].content == "Forgotten."
    with pytest.raises(SDKError) as missing:
        mistral.beta.conversations.get_history(conversation_id=response.conversation_id)
    assert missing.value.status_code == 404
