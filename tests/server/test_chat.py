"""/v1/chat/completions through the official openai and mistralai SDKs."""

from __future__ import annotations

import json

from tramontane.engine.defaults import DEFAULT_CHAT_MODEL_NAME as CHAT_MODEL

HI = [{"role": "user", "content": "Say hello to Ada."}]


def test_openai_plain_chat(oai):
    raw = oai.chat.completions.with_raw_response.create(model=CHAT_MODEL, messages=HI, max_tokens=8)
    assert raw.headers["x-request-id"]
    completion = raw.parse()
    assert completion.object == "chat.completion"
    assert completion.model == CHAT_MODEL
    choice = completion.choices[0]
    assert choice.message.role == "assistant" and choice.message.content
    assert choice.finish_reason in ("stop", "length")
    usage = completion.usage
    assert usage.completion_tokens <= 8 and usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_prefix_cache_shows_in_usage(oai):
    for _ in range(2):
        completion = oai.chat.completions.create(model=CHAT_MODEL, messages=HI, max_tokens=1)
    assert 0 < completion.usage.prompt_tokens_details.cached_tokens <= completion.usage.prompt_tokens


def test_mistral_plain_chat(mistral):
    response = mistral.chat.complete(model=CHAT_MODEL, messages=HI, max_tokens=8, random_seed=1)
    assert response.choices[0].message.content
    assert response.choices[0].finish_reason in ("stop", "length")
    assert response.usage.completion_tokens <= 8


def test_mistral_prefix_and_safe_prompt(mistral):
    messages = [*HI, {"role": "assistant", "content": "Hello Ada", "prefix": True}]
    response = mistral.chat.complete(model=CHAT_MODEL, messages=messages, max_tokens=4)
    # The model continues the prefix, which is part of the returned content.
    assert response.choices[0].message.content.startswith("Hello Ada")
    plain = mistral.chat.complete(model=CHAT_MODEL, messages=HI, max_tokens=1)
    safe = mistral.chat.complete(model=CHAT_MODEL, messages=HI, max_tokens=1, safe_prompt=True)
    assert safe.usage.prompt_tokens > plain.usage.prompt_tokens


def test_content_parts_and_system_roles(oai):
    messages = [
        {"role": "developer", "content": "You are terse."},
        {"role": "user", "content": [{"type": "text", "text": "Say"}, {"type": "text", "text": "hello."}]},
    ]
    completion = oai.chat.completions.create(model=CHAT_MODEL, messages=messages, max_tokens=4)
    assert completion.choices[0].message.content


def test_openai_stream_with_usage(oai):
    stream = oai.chat.completions.create(
        model=CHAT_MODEL, messages=HI, max_tokens=6, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.choices[0].delta.role is None for c in chunks[1:] if c.choices)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finishes) == 1
    last = chunks[-1]
    assert last.choices == [] and last.usage.completion_tokens <= 6
    assert last.usage.total_tokens == last.usage.prompt_tokens + last.usage.completion_tokens


def test_stream_wire_format(http):
    body = {"model": CHAT_MODEL, "messages": HI, "max_tokens": 3, "stream": True}
    with http.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["x-request-id"]
        events = [line for line in response.iter_lines() if line]
    assert events[-1] == "data: [DONE]"
    chunks = [json.loads(e.removeprefix("data: ")) for e in events[:-1]]
    assert all("finish_reason" in c["choices"][0] for c in chunks)
    # Without include_usage, usage still rides on the finishing chunk (Mistral style).
    assert chunks[-1]["choices"][0]["finish_reason"] and chunks[-1]["usage"]["completion_tokens"] <= 3


def test_mistral_stream(mistral):
    events = list(mistral.chat.stream(model=CHAT_MODEL, messages=HI, max_tokens=6))
    text = "".join(e.data.choices[0].delta.content or "" for e in events if e.data.choices)
    assert text
    assert events[-1].data.choices[0].finish_reason in ("stop", "length")
    assert events[-1].data.usage.completion_tokens <= 6


def test_n_choices(oai):
    completion = oai.chat.completions.create(model=CHAT_MODEL, messages=HI, max_tokens=4, n=2, seed=3)
    assert [c.index for c in completion.choices] == [0, 1]
    assert all(c.message.content for c in completion.choices)
    assert 2 <= completion.usage.completion_tokens <= 8


def test_n_choices_stream(oai):
    stream = oai.chat.completions.create(model=CHAT_MODEL, messages=HI, max_tokens=3, n=2, stream=True)
    finished = {c.choices[0].index for c in stream if c.choices and c.choices[0].finish_reason}
    assert finished == {0, 1}


def test_logprobs(oai):
    completion = oai.chat.completions.create(
        model=CHAT_MODEL, messages=HI, max_tokens=3, logprobs=True, top_logprobs=2, temperature=0
    )
    content = completion.choices[0].logprobs.content
    assert len(content) == completion.usage.completion_tokens
    for entry in content:
        assert entry.logprob <= 0 and bytes(entry.bytes).decode(errors="replace")
        assert len(entry.top_logprobs) == 2
        # Greedy: the sampled token is the most likely one.
        assert entry.logprob >= max(t.logprob for t in entry.top_logprobs) - 1e-4


def test_stop_string(oai):
    free = oai.chat.completions.create(model=CHAT_MODEL, messages=HI, max_tokens=10, temperature=0)
    text = free.choices[0].message.content
    words = text.split()
    assert len(words) >= 3, text
    stop = " " + words[2]
    stopped = oai.chat.completions.create(model=CHAT_MODEL, messages=HI, max_tokens=10, temperature=0, stop=[stop])
    assert stopped.choices[0].finish_reason == "stop"
    assert stopped.choices[0].message.content == text[: text.index(stop)]


def test_seed_reproducible(oai, mistral):
    def sample(seed: int) -> str:
        completion = oai.chat.completions.create(
            model=CHAT_MODEL, messages=HI, max_tokens=8, temperature=1.0, seed=seed
        )
        return completion.choices[0].message.content

    first = sample(1234)
    assert sample(1234) == first
    via_mistral = mistral.chat.complete(model=CHAT_MODEL, messages=HI, max_tokens=8, temperature=1.0, random_seed=1234)
    assert via_mistral.choices[0].message.content == first


def test_json_schema(oai):
    schema = {
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 12},
            "age": {"type": "integer", "minimum": 0, "maximum": 120},
        },
        "required": ["name", "age"],
        "additionalProperties": False,
    }
    completion = oai.chat.completions.create(
        model=CHAT_MODEL,
        messages=[{"role": "user", "content": "Invent a person. Answer in JSON."}],
        max_tokens=40,
        temperature=0,
        response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": schema, "strict": True}},
    )
    value = json.loads(completion.choices[0].message.content)
    assert set(value) == {"name", "age"}
    assert isinstance(value["name"], str) and len(value["name"]) <= 12
    assert isinstance(value["age"], int) and 0 <= value["age"] <= 120
    assert completion.choices[0].finish_reason == "stop"


def test_json_object(mistral):
    response = mistral.chat.complete(
        model=CHAT_MODEL,
        messages=[{"role": "user", "content": 'Reply with a JSON object holding one key, "colour".'}],
        max_tokens=60,
        temperature=0,
        response_format={"type": "json_object"},
    )
    assert response.choices[0].finish_reason == "stop"
    assert isinstance(json.loads(response.choices[0].message.content), dict)
