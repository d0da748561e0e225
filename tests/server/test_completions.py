"""/v1/completions (openai SDK) and /v1/fim/completions (mistralai SDK)."""

from __future__ import annotations

import openai
import pytest
from mistralai.client import errors as mistral_errors

from tramontane.engine.defaults import DEFAULT_CHAT_MODEL_NAME as CHAT_MODEL

PROMPT = "The capital of France is"


def test_completion_logprobs(oai):
    completion = oai.completions.create(model=CHAT_MODEL, prompt=PROMPT, max_tokens=4, logprobs=2, temperature=0)
    assert completion.object == "text_completion"
    choice = completion.choices[0]
    lp = choice.logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == completion.usage.completion_tokens
    assert "".join(lp.tokens) == choice.text
    assert lp.text_offset[0] == 0 and all(len(top) <= 2 for top in lp.top_logprobs)


def test_completion_defaults_to_16_tokens(oai):
    completion = oai.completions.create(model=CHAT_MODEL, prompt="Once upon a time", temperature=0)
    assert completion.usage.completion_tokens <= 16


def test_echo_and_several_prompts(oai):
    completion = oai.completions.create(model=CHAT_MODEL, prompt=[PROMPT, "One, two,"], max_tokens=2, echo=True, n=2)
    assert [c.index for c in completion.choices] == [0, 1, 2, 3]
    assert completion.choices[0].text.startswith(PROMPT) and completion.choices[3].text.startswith("One, two,")


def test_token_id_prompt(oai, live_server):
    ids = live_server.engine.tokenizer.encode(PROMPT)
    by_ids = oai.completions.create(model=CHAT_MODEL, prompt=ids, max_tokens=3, temperature=0)
    by_text = oai.completions.create(model=CHAT_MODEL, prompt=PROMPT, max_tokens=3, temperature=0)
    assert by_ids.choices[0].text == by_text.choices[0].text


def test_completion_stream(oai):
    chunks = list(
        oai.completions.create(
            model=CHAT_MODEL, prompt=PROMPT, max_tokens=4, stream=True, stream_options={"include_usage": True}
        )
    )
    assert "".join(c.choices[0].text for c in chunks if c.choices)
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 4


def test_suffix_without_fim_tokens_is_400(oai):
    with pytest.raises(openai.BadRequestError) as info:
        oai.completions.create(model=CHAT_MODEL, prompt="def f(x):", suffix="    return y", max_tokens=4)
    assert info.value.code == "fim_not_supported"


def test_mistral_fim_is_400_for_the_default_model(mistral):
    with pytest.raises(mistral_errors.SDKError) as info:
        mistral.fim.complete(model=CHAT_MODEL, prompt="def f(x):", suffix="    return y", max_tokens=4)
    assert info.value.status_code == 400 and "fill-in-the-middle" in info.value.body


def test_models_card_says_no_fim(mistral):
    assert mistral.models.retrieve(model_id=CHAT_MODEL).capabilities.completion_fim is False
