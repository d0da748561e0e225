"""The Responses API through the unchanged openai SDK, and an openai-agents agent
calling a function tool through it."""

from __future__ import annotations

import json
import time

import httpx
import openai
import pytest
from pydantic import BaseModel

from tramontane.engine.defaults import DEFAULT_CHAT_MODEL_NAME as CHAT_MODEL

WEATHER_TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 20}},
        "required": ["city"],
        "additionalProperties": False,
    },
    "strict": True,
}
FORCED = {"type": "function", "name": "get_weather"}
SHORT_ANSWER = {
    "type": "json_schema",
    "name": "answer",
    "schema": {
        "type": "object",
        "properties": {"answer": {"type": "string", "maxLength": 12}},
        "required": ["answer"],
        "additionalProperties": False,
    },
    "strict": True,
}


class Answer(BaseModel):
    answer: str


def test_create_retrieve_and_input_items(oai: openai.OpenAI):
    response = oai.responses.create(model=CHAT_MODEL, input="Say hello.", max_output_tokens=6, temperature=0)
    assert response.object == "response" and response.id.startswith("resp_")
    assert response.status in ("completed", "incomplete")
    assert response.output_text and response.output[0].type == "message"
    assert response.usage.input_tokens > 0 and 0 < response.usage.output_tokens <= 6
    assert response.usage.total_tokens == response.usage.input_tokens + response.usage.output_tokens
    if response.status == "incomplete":
        assert response.incomplete_details.reason == "max_output_tokens"

    again = oai.responses.retrieve(response.id)
    assert again.output_text == response.output_text and again.status == response.status
    items = oai.responses.input_items.list(response.id)
    assert [item.type for item in items.data] == ["message"]
    assert items.data[0].role == "user" and items.data[0].content[0].text == "Say hello."


def test_stream_sends_typed_events_in_order(oai: openai.OpenAI):
    with oai.responses.stream(model=CHAT_MODEL, input="Name a colour.", text_format=Answer, temperature=0) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_response()
    assert kinds[:5] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
    ]
    assert kinds[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert final.status == "completed"
    assert isinstance(final.output_parsed, Answer) and len(final.output_parsed.answer) <= 12
    assert oai.responses.retrieve(final.id).output_text == final.output_text


def test_structured_output_with_text_format(oai: openai.OpenAI):
    response = oai.responses.create(model=CHAT_MODEL, input="Capital of France?", text={"format": SHORT_ANSWER})
    assert response.status == "completed"
    assert set(json.loads(response.output_text)) == {"answer"}
    parsed = oai.responses.parse(model=CHAT_MODEL, input="Capital of Italy?", text_format=Answer)
    assert isinstance(parsed.output_parsed, Answer)


def test_previous_response_id_chains_the_context(oai: openai.OpenAI):
    first = oai.responses.create(
        model=CHAT_MODEL, input="My name is Ada.", instructions="Be brief.", max_output_tokens=4, temperature=0
    )
    second = oai.responses.create(
        model=CHAT_MODEL, input="What is my name?", previous_response_id=first.id, max_output_tokens=4, temperature=0
    )
    alone = oai.responses.create(model=CHAT_MODEL, input="What is my name?", max_output_tokens=4, temperature=0)
    assert second.previous_response_id == first.id
    # The chain's context is the first turn's input and output, before the new input
    # (the first turn's instructions are not carried over).
    assert second.usage.input_tokens >= alone.usage.input_tokens + first.usage.output_tokens + 4
    assert [item.content[0].text for item in oai.responses.input_items.list(second.id).data] == ["What is my name?"]


def test_another_workspace_cannot_see_or_chain(oai: openai.OpenAI, live_server, openai_with_key):
    mine = oai.responses.create(model=CHAT_MODEL, input="Secret: 0451.", max_output_tokens=2)
    stranger = openai_with_key(live_server.create_tenant("responses-stranger").key)
    with pytest.raises(openai.NotFoundError):
        stranger.responses.retrieve(mine.id)
    with pytest.raises(openai.NotFoundError) as refused:
        stranger.responses.create(model=CHAT_MODEL, input="Go on", previous_response_id=mine.id, max_output_tokens=2)
    assert refused.value.body["param"] == "previous_response_id"
    with pytest.raises(openai.NotFoundError):
        stranger.responses.delete(mine.id)
    assert oai.responses.retrieve(mine.id).output_text == mine.output_text


def test_store_false_and_delete(oai: openai.OpenAI):
    unstored = oai.responses.create(model=CHAT_MODEL, input="Hi", store=False, max_output_tokens=2)
    assert unstored.store is False and unstored.output_text
    with pytest.raises(openai.NotFoundError):
        oai.responses.retrieve(unstored.id)
    with pytest.raises(openai.NotFoundError):
        oai.responses.create(model=CHAT_MODEL, input="Hi", previous_response_id=unstored.id)

    kept = oai.responses.create(model=CHAT_MODEL, input="Hi", max_output_tokens=2)
    oai.responses.delete(kept.id)
    with pytest.raises(openai.NotFoundError):
        oai.responses.retrieve(kept.id)


def test_forced_function_call_then_its_output(oai: openai.OpenAI):
    call = oai.responses.create(
        model=CHAT_MODEL, input="Weather in Paris?", tools=[WEATHER_TOOL], tool_choice=FORCED, temperature=0
    )
    calls = [item for item in call.output if item.type == "function_call"]
    assert len(calls) >= 1 and calls[0].name == "get_weather"
    assert set(json.loads(calls[0].arguments)) == {"city"}
    assert calls[0].call_id and calls[0].id.startswith("fc_")

    answer = oai.responses.create(
        model=CHAT_MODEL,
        previous_response_id=call.id,
        input=[{"type": "function_call_output", "call_id": calls[0].call_id, "output": '{"sky": "clear"}'}],
        tools=[WEATHER_TOOL],
        tool_choice="none",
        max_output_tokens=8,
        temperature=0,
    )
    assert answer.output[0].type == "message" and answer.output_text
    # The same transcript replayed in full, without the chain, as openai-agents sends it.
    replayed = oai.responses.create(
        model=CHAT_MODEL,
        input=[
            {"role": "user", "content": "Weather in Paris?"},
            calls[0].model_dump(exclude_none=True),
            {"type": "function_call_output", "call_id": calls[0].call_id, "output": '{"sky": "clear"}'},
        ],
        tools=[WEATHER_TOOL],
        tool_choice="none",
        max_output_tokens=8,
        temperature=0,
    )
    assert replayed.usage.input_tokens == answer.usage.input_tokens


def test_streamed_function_call(oai: openai.OpenAI):
    with oai.responses.stream(
        model=CHAT_MODEL, input="Weather in Oslo?", tools=[WEATHER_TOOL], tool_choice=FORCED, temperature=0
    ) as stream:
        events = list(stream)
        final = stream.get_final_response()
    kinds = [event.type for event in events]
    assert "response.function_call_arguments.delta" in kinds and "response.function_call_arguments.done" in kinds
    done = next(e for e in events if e.type == "response.function_call_arguments.done")
    assert json.loads(done.arguments)["city"]
    assert final.output[0].type == "function_call" and final.output[0].arguments == done.arguments
    numbers = [event.sequence_number for event in events]
    assert numbers == list(range(len(numbers)))


def test_background_response_is_cancelled(oai: openai.OpenAI, live_server):
    started = oai.responses.create(
        model=CHAT_MODEL, input="Write a very long story.", background=True, max_output_tokens=4000
    )
    assert started.status in ("queued", "in_progress") and started.background
    cancelled = oai.responses.cancel(started.id)
    assert cancelled.status == "cancelled"
    assert oai.responses.retrieve(started.id).status == "cancelled"
    live_server.wait_idle()

    finished = oai.responses.create(model=CHAT_MODEL, input="Hi", background=True, max_output_tokens=3)
    deadline = time.monotonic() + 60
    while (current := oai.responses.retrieve(finished.id)).status in ("queued", "in_progress"):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert current.status in ("completed", "incomplete") and current.usage.output_tokens > 0


def test_a_background_response_holds_its_workspaces_concurrency_slot(live_server, openai_with_key):
    """A workspace limited to two requests at a time cannot run three by asking for
    one in the background (every request, a retrieve or cancel too, takes a slot)."""
    tenant = live_server.create_tenant("two-at-a-time")
    with live_server.admin() as admin:
        limits = {"limits": {"max_concurrent_requests": 2}}
        admin.patch(f"/workspaces/{tenant.workspace_id}", json=limits).raise_for_status()
    client = openai_with_key(tenant.key)
    gate = live_server.tenancy.gate
    hi = {"model": CHAT_MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
    live_server.wait_idle()
    started = client.responses.create(
        model=CHAT_MODEL, input="Write a very long story.", background=True, max_output_tokens=4000
    )
    assert gate.running(tenant.workspace_id) == 1  # the request answered; its slot stays taken
    with client.chat.completions.create(**hi, stream=True) as stream:
        next(iter(stream))
        with pytest.raises(openai.RateLimitError):
            client.chat.completions.create(**hi)
    deadline = time.monotonic() + 10  # the server frees the stream's slot once it sees it closed
    while gate.running(tenant.workspace_id) != 1:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    time.sleep(0.2)  # and its lease, in a worker thread just after
    assert client.responses.cancel(started.id).status == "cancelled"
    assert gate.running(tenant.workspace_id) == 0
    assert client.chat.completions.create(**hi).usage.completion_tokens > 0


def test_bad_requests_are_clear_4xx(http: httpx.Client, oai: openai.OpenAI):
    image = [{"role": "user", "content": [{"type": "input_image", "image_url": "data:image/png;base64,AAAA"}]}]
    orphan = [{"type": "function_call_output", "call_id": "nope", "output": "x"}]
    for body, param in (
        ({"input": image}, "input[0]"),
        ({"input": orphan}, "input"),
        ({"input": "hi", "tools": [{"type": "web_search"}]}, "tools[0]"),
        ({"input": "hi", "background": True, "stream": True}, "background"),
        ({"input": "hi", "text": {"format": {"type": "json_schema", "name": "x"}}}, "text.format.schema"),
    ):
        response = http.post("/v1/responses", json={"model": CHAT_MODEL, **body})
        assert response.status_code == 400, (body, response.text)
        assert response.json()["error"]["param"] == param
    assert http.post("/v1/responses", json={"model": "nope", "input": "hi"}).status_code == 404
    unknown = {"model": CHAT_MODEL, "input": "hi", "previous_response_id": "resp_x"}
    assert http.post("/v1/responses", json=unknown).status_code == 404
    plain = oai.responses.create(model=CHAT_MODEL, input="Hi", max_output_tokens=1)
    with pytest.raises(openai.BadRequestError):
        oai.responses.cancel(plain.id)


def test_openai_agents_runs_a_function_tool(live_server):
    agents = pytest.importorskip("agents")
    from agents import Agent, ModelSettings, OpenAIResponsesModel, Runner, function_tool, set_tracing_disabled

    set_tracing_disabled(True)
    calls: list[str] = []

    @function_tool
    def get_weather(city: str) -> str:
        """The weather in a city."""
        calls.append(city)
        return f"Sunny in {city}"

    client = openai.AsyncOpenAI(base_url=f"{live_server.url}/v1", api_key=live_server.tenant.key, max_retries=0)
    agent = Agent(
        name="forecaster",
        instructions="Answer questions about the weather with the tool.",
        tools=[get_weather],
        model=OpenAIResponsesModel(model=CHAT_MODEL, openai_client=client),
        model_settings=ModelSettings(tool_choice="get_weather", max_tokens=48, temperature=0),
        tool_use_behavior="stop_on_first_tool",
    )
    result = Runner.run_sync(agent, "What is the weather in Paris?", max_turns=2)
    assert len(calls) == 1 and calls[0]
    assert result.final_output == f"Sunny in {calls[0]}"
    assert agents is not None
