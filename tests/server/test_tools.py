"""Tool calls: forced with tool_choice so that the tiny model has to call one."""

from __future__ import annotations

import json

import openai
import pytest

from tramontane.engine.defaults import DEFAULT_CHAT_MODEL_NAME as CHAT_MODEL

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 20}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}
TIME = {
    "type": "function",
    "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}, "additionalProperties": False}},
}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


def _check_weather_call(call) -> None:
    assert call.type == "function" and call.function.name == "get_weather"
    assert len(call.id) == 9 and call.id.isalnum()
    assert isinstance(json.loads(call.function.arguments)["city"], str)


def test_openai_required(oai):
    completion = oai.chat.completions.create(
        model=CHAT_MODEL,
        messages=ASK,
        tools=[WEATHER],
        tool_choice="required",
        max_tokens=40,
        parallel_tool_calls=False,
        temperature=0,
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert len(choice.message.tool_calls) == 1
    _check_weather_call(choice.message.tool_calls[0])


def test_openai_named_stream(oai):
    stream = oai.chat.completions.create(
        model=CHAT_MODEL,
        messages=ASK,
        tools=[TIME, WEATHER],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        max_tokens=40,
        temperature=0,
        stream=True,
    )
    calls: dict[int, dict] = {}
    finish = None
    for chunk in stream:
        for choice in chunk.choices:
            finish = choice.finish_reason or finish
            for delta in choice.delta.tool_calls or []:
                call = calls.setdefault(delta.index, {"id": None, "name": "", "arguments": ""})
                if delta.id:
                    assert call["id"] is None, "id sent twice for one index"
                    call["id"] = delta.id
                    call["name"] += delta.function.name
                call["arguments"] += delta.function.arguments or ""
    assert finish == "tool_calls"
    assert list(calls) == [0] and calls[0]["name"] == "get_weather"
    assert isinstance(json.loads(calls[0]["arguments"])["city"], str)


def test_mistral_any_and_tool_result_round_trip(mistral):
    response = mistral.chat.complete(
        model=CHAT_MODEL, messages=ASK, tools=[WEATHER], tool_choice="any", max_tokens=40, temperature=0
    )
    message = response.choices[0].message
    assert response.choices[0].finish_reason == "tool_calls"
    _check_weather_call(message.tool_calls[0])
    # Send the call and its result back: the model now answers in text.
    call = message.tool_calls[0]
    follow_up = [
        *ASK,
        {"role": "assistant", "content": "", "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "name": "get_weather", "content": '{"temperature_c": 21}'},
    ]
    answer = mistral.chat.complete(
        model=CHAT_MODEL, messages=follow_up, tools=[WEATHER], tool_choice="none", max_tokens=8
    )
    assert answer.choices[0].message.content
    assert not answer.choices[0].message.tool_calls


def test_unknown_named_tool_is_400(oai):
    with pytest.raises(openai.BadRequestError):
        oai.chat.completions.create(
            model=CHAT_MODEL,
            messages=ASK,
            tools=[WEATHER],
            tool_choice={"type": "function", "function": {"name": "nope"}},
        )
