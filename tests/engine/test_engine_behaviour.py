"""Scheduler, cache and sampling behaviour of the engine on the default model."""

import asyncio

import pytest

from tramontane.engine import (
    AsyncEngine,
    EngineOverloadedError,
    InvalidRequestError,
    ModelLoadError,
    SamplingParams,
    load_checkpoint,
)

GREEDY = dict(temperature=0.0, ignore_eos=True)


def test_prefix_cache_hit_gives_same_output(make_engine, run, chat_prompt):
    engine = make_engine()
    prompt = chat_prompt(engine, "Tell me about the history of the Roman Empire in a few words. " * 3)
    engine.add_request("first", prompt, SamplingParams(max_tokens=8, **GREEDY))
    first = run(engine)
    engine.add_request("second", prompt, SamplingParams(max_tokens=8, **GREEDY))
    hits_before = engine.stats().prefix_cache_hits
    second = run(engine)
    cached = engine.stats().prefix_cache_hits - hits_before
    assert cached >= (len(prompt) - 1) // engine.config.block_size * engine.config.block_size
    assert cached > 0
    assert second[("second", 0)].token_ids == first[("first", 0)].token_ids


def test_preemption_recomputes_and_matches_unpreempted(make_engine, run, chat_prompt):
    prompts = [f"Write a long story about a {animal}." for animal in ("cat", "dog", "fox", "owl")]
    roomy = make_engine()
    for i, text in enumerate(prompts):
        roomy.add_request(str(i), chat_prompt(roomy, text), SamplingParams(max_tokens=40, **GREEDY))
    roomy_results = run(roomy)
    expected = {i: roomy_results[(str(i), 0)].token_ids for i in range(len(prompts))}
    assert roomy.stats().num_preemptions == 0
    # 10 blocks of 16 tokens cannot hold four ~70-token sequences at once.
    tight = make_engine(num_kv_blocks=10, enable_prefix_caching=False)
    for i, text in enumerate(prompts):
        tight.add_request(str(i), chat_prompt(tight, text), SamplingParams(max_tokens=40, **GREEDY))
    results = run(tight)
    assert tight.stats().num_preemptions > 0
    for i in range(len(prompts)):
        assert results[(str(i), 0)].token_ids == expected[i]
        assert results[(str(i), 0)].finish_reason == "length"
    assert tight.stats().kv_cache_usage == 0.0


def test_chunked_prefill_matches_single_shot(make_engine, run, chat_prompt):
    text = "Summarise: " + "the quick brown fox jumps over the lazy dog. " * 12
    whole = make_engine()
    whole.add_request("a", chat_prompt(whole, text), SamplingParams(max_tokens=12, **GREEDY))
    chunked = make_engine(max_num_batched_tokens=16, enable_prefix_caching=False)
    chunked.add_request("a", chat_prompt(chunked, text), SamplingParams(max_tokens=12, **GREEDY))
    assert run(chunked)[("a", 0)].token_ids == run(whole)[("a", 0)].token_ids


def test_stop_string_split_across_tokens(make_engine, run, chat_prompt):
    engine = make_engine()
    prompt = chat_prompt(engine, "What is the capital of France?")
    engine.add_request("free", prompt, SamplingParams(max_tokens=24, **GREEDY))
    free = run(engine)[("free", 0)]
    pieces = [engine.tokenizer.decode([t]) for t in free.token_ids]
    # A stop string made of the last 2 characters of one token and the first 2 of the next.
    i = next(i for i in range(1, len(pieces) - 1) if len(pieces[i].strip()) >= 3 and len(pieces[i + 1]) >= 2)
    stop = pieces[i][-2:] + pieces[i + 1][:2]
    start = "".join(pieces[:i]) + pieces[i][:-2]
    engine.add_request("stopped", prompt, SamplingParams(max_tokens=24, stop=[stop], **GREEDY))
    results = run(engine)
    out = results[("stopped", 0)]
    assert out.finish_reason == "stop" and out.stop_reason == stop
    assert out.text == free.text[: free.text.index(stop)] == start[: free.text.index(stop)]
    assert results[("stopped", 0, "stream")] == out.text  # streaming never leaked part of it


def test_seed_reproducible_and_batch_independent(make_engine, run, chat_prompt):
    engine = make_engine()
    prompt = chat_prompt(engine, "Invent a name for a cat.")
    params = dict(temperature=1.0, max_tokens=16, ignore_eos=True)
    engine.add_request("a", prompt, SamplingParams(seed=7, **params))
    a = run(engine)[("a", 0)].token_ids
    # Same seed again, now batched with unrelated random requests.
    engine.add_request("b", prompt, SamplingParams(seed=7, **params))
    engine.add_request("noise", prompt, SamplingParams(seed=99, n=2, **params))
    results = run(engine)
    assert results[("b", 0)].token_ids == a
    assert results[("noise", 0)].token_ids != results[("noise", 1)].token_ids


def test_n_logprobs_and_penalties(make_engine, run, chat_prompt):
    engine = make_engine()
    prompt = chat_prompt(engine, "Count: one one one one")
    engine.add_request("lp", prompt, SamplingParams(max_tokens=5, logprobs=3, n=2, temperature=0.7, seed=1))
    engine.add_request("rep", prompt, SamplingParams(max_tokens=20, frequency_penalty=2.0, **GREEDY))
    results = run(engine)
    for i in range(2):
        out = results[("lp", i)]
        assert len(out.token_ids) == 5
    engine.add_request("lp1", prompt, SamplingParams(max_tokens=3, logprobs=3, **GREEDY))
    lp_run = run(engine)
    rep = results[("rep", 0)].token_ids
    # A strong frequency penalty keeps any token from dominating the output.
    assert max(rep.count(t) for t in set(rep)) <= 5
    assert lp_run[("lp1", 0)].token_ids


def test_streamed_logprobs_have_top_alternatives(make_engine, chat_prompt):
    engine = make_engine()
    engine.add_request("x", chat_prompt(engine, "Hi"), SamplingParams(max_tokens=4, logprobs=3, **GREEDY))
    seen = []
    while engine.has_work():
        for out in engine.step():
            seen.extend(out.outputs[0].delta_logprobs)
    assert len(seen) == 4
    for lp in seen:
        assert len(lp.top) == 3
        assert lp.top[0][0] == lp.token_id  # greedy picks the best
        assert lp.logprob <= 0.0


@pytest.mark.parametrize(
    "prompt,params,param",
    [
        ([], dict(), "prompt"),
        ([1] * 5000, dict(), "messages"),
        ([1, 2, 3], dict(max_tokens=10**7), "max_tokens"),
        ([10**9], dict(), "prompt"),
    ],
)
def test_bad_requests_are_refused_and_engine_keeps_serving(make_engine, run, chat_prompt, prompt, params, param):
    engine = make_engine(max_model_len=4096)
    engine.add_request("good", chat_prompt(engine, "Hello"), SamplingParams(max_tokens=4, **GREEDY))
    with pytest.raises(InvalidRequestError) as err:
        engine.add_request("bad", prompt, SamplingParams(**params))
    assert err.value.param == param
    assert run(engine)[("good", 0)].finish_reason == "length"


def test_bad_sampling_params():
    with pytest.raises(InvalidRequestError):
        SamplingParams(max_tokens=0)
    with pytest.raises(InvalidRequestError):
        SamplingParams(temperature=-1)
    with pytest.raises(InvalidRequestError):
        SamplingParams(logprobs=50)
    with pytest.raises(InvalidRequestError):
        SamplingParams(repetition_penalty=5e-324)  # found by the API fuzzer: overflowed to inf
    with pytest.raises(InvalidRequestError) as err:
        SamplingParams(max_tokens=4, min_tokens=5)
    assert err.value.param == "min_tokens"


def test_admission_control_rejects_when_queue_full(make_engine):
    engine = make_engine(max_waiting_requests=2)
    engine.add_request("a", [1, 2, 3], SamplingParams(max_tokens=2))
    engine.add_request("b", [1, 2, 3], SamplingParams(max_tokens=2))
    with pytest.raises(EngineOverloadedError):
        engine.add_request("c", [1, 2, 3], SamplingParams(max_tokens=2))


def test_unknown_and_corrupt_model_paths(tmp_path):
    with pytest.raises(ModelLoadError):
        load_checkpoint(str(tmp_path / "missing.gguf"))
    corrupt = tmp_path / "corrupt.gguf"
    corrupt.write_bytes(b"GGUF" + b"\x00" * 64)
    with pytest.raises(ModelLoadError):
        load_checkpoint(str(corrupt))


async def test_async_cancellation_frees_engine(make_engine, chat_prompt):
    engine = AsyncEngine(make_engine())
    await engine.start()
    try:
        prompt = chat_prompt(engine.engine, "Write a very long essay about the sea.")

        async def consume_two():
            seen = 0
            async for _ in engine.generate("cancel-me", prompt, SamplingParams(max_tokens=500, **GREEDY)):
                seen += 1
                if seen == 2:
                    break  # the client went away

        async def full():
            text = ""
            async for out in engine.generate("keep", prompt, SamplingParams(max_tokens=8, **GREEDY)):
                text += out.outputs[0].delta_text
            return out

        last, _ = await asyncio.gather(full(), consume_two())
        assert last.finished and last.outputs[0].finish_reason == "length"
        for _ in range(100):
            if engine.stats().num_running == 0 and not engine.engine.requests:
                break
            await asyncio.sleep(0.05)
        assert engine.stats().num_running == 0
        assert engine.stats().kv_cache_usage == 0.0
    finally:
        await engine.shutdown()


async def test_async_errors_raised_before_streaming(make_engine):
    engine = AsyncEngine(make_engine())
    await engine.start()
    try:
        with pytest.raises(InvalidRequestError):
            async for _ in engine.generate("empty", [], SamplingParams()):
                pass
    finally:
        await engine.shutdown()


def test_a_failing_step_fails_its_requests_and_the_engine_serves_on(make_engine, run, chat_prompt, monkeypatch):
    engine = make_engine()
    prompt = chat_prompt(engine, "Hello")
    engine.add_request("doomed", prompt, SamplingParams(max_tokens=4, **GREEDY))
    calls = {"n": 0}
    real_sample = __import__("tramontane.engine.llm_engine", fromlist=["sample"]).sample

    def flaky_sample(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("probability tensor contains inf")
        return real_sample(*args, **kwargs)

    monkeypatch.setattr("tramontane.engine.llm_engine.sample", flaky_sample)
    results = run(engine)
    assert results[("doomed", 0)].finish_reason == "error"
    engine.add_request("fine", prompt, SamplingParams(max_tokens=4, **GREEDY))
    assert run(engine)[("fine", 0)].finish_reason == "length"
    assert engine.stats().kv_cache_usage == 0.0


@pytest.mark.parametrize("quant", ["none", "int4"])
def test_a_prompt_answers_the_same_after_a_prefix_cache_hit(make_engine, run, chat_prompt, quant):
    # The second time, the prompt's first blocks come from the cache and only its tail
    # is computed: each token's computation must not depend on how many share its step.
    engine = make_engine(quantization=quant)
    for i, text in enumerate(["Name three colours.", "List three colours.", "What is 2+2?", "Tell me a joke."]):
        prompt = chat_prompt(engine, text)
        answers = []
        for attempt in range(2):
            engine.add_request(f"{i}-{attempt}", prompt, SamplingParams(max_tokens=24, **GREEDY))
            answers.append(run(engine)[(f"{i}-{attempt}", 0)].token_ids)
        assert answers[0] == answers[1]
    assert engine.stats().prefix_cache_hits > 0
