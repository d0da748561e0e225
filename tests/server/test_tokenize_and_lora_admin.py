"""/v1/tokenize and /v1/detokenize (vLLM's shapes), and runtime LoRA adapter
load/unload by a platform admin."""

from __future__ import annotations

import httpx
import openai
import pytest

from tramontane.engine.defaults import DEFAULT_CHAT_MODEL_NAME as CHAT_MODEL
from tramontane.engine.defaults import DEFAULT_EMBEDDING_MODEL_NAME as EMBEDDING_MODEL

MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name three colours."}]


def test_tokenize_a_prompt_and_back(http: httpx.Client, live_server):
    tokenizer = live_server.engine.tokenizer
    text = "Tramontane blows from the north."
    tokenized = http.post("/v1/tokenize", json={"model": CHAT_MODEL, "prompt": text, "return_token_strs": True})
    assert tokenized.status_code == 200, tokenized.text
    body = tokenized.json()
    assert body["tokens"] == tokenizer.encode(text, add_special_tokens=True) and body["count"] == len(body["tokens"])
    assert body["max_model_len"] == live_server.engine.max_model_len
    assert "".join(body["token_strs"]).replace("Ġ", " ").endswith("north.")
    plain = http.post("/v1/tokenize", json={"model": CHAT_MODEL, "prompt": text, "add_special_tokens": False}).json()
    back = http.post("/v1/detokenize", json={"model": CHAT_MODEL, "tokens": plain["tokens"]})
    assert back.status_code == 200 and back.json() == {"prompt": text}


def test_tokenize_messages_counts_what_chat_sends(http: httpx.Client, oai: openai.OpenAI):
    tokenized = http.post("/v1/tokenize", json={"model": CHAT_MODEL, "messages": MESSAGES}).json()
    completion = oai.chat.completions.create(model=CHAT_MODEL, messages=MESSAGES, max_tokens=1)
    assert tokenized["count"] == completion.usage.prompt_tokens
    without_prompt = http.post(
        "/v1/tokenize", json={"model": CHAT_MODEL, "messages": MESSAGES, "add_generation_prompt": False}
    ).json()
    assert without_prompt["count"] < tokenized["count"]
    assert tokenized["tokens"][: without_prompt["count"]] == without_prompt["tokens"]


def test_bad_tokenize_requests(http: httpx.Client, live_server):
    vocab = live_server.engine.tokenizer.vocab_size
    cases = [
        ("/v1/tokenize", {"model": CHAT_MODEL}, 400),
        ("/v1/tokenize", {"model": CHAT_MODEL, "prompt": "a", "messages": MESSAGES}, 400),
        ("/v1/tokenize", {"model": "no-such-model", "prompt": "a"}, 404),
        ("/v1/tokenize", {"model": EMBEDDING_MODEL, "prompt": "a"}, 400),
        ("/v1/detokenize", {"model": CHAT_MODEL, "tokens": [vocab]}, 400),
        ("/v1/detokenize", {"model": CHAT_MODEL, "tokens": [-1]}, 400),
        ("/v1/detokenize", {"model": CHAT_MODEL, "tokens": "abc"}, 422),
    ]
    for path, body, status in cases:
        response = http.post(path, json=body)
        assert response.status_code == status, (path, body, response.text)


@pytest.fixture
def admin_http(live_server):
    headers = {"Authorization": f"Bearer {live_server.admin_key}"}
    with httpx.Client(base_url=live_server.url, headers=headers, timeout=60) as client:
        yield client


def test_platform_admin_loads_and_unloads_an_adapter(admin_http, http, live_server, make_lora, openai_with_key):
    path = make_lora(live_server.engine.model_config, seed=11)
    name = "runtime-adapter"
    body = {"lora_name": name, "lora_path": str(path)}
    assert http.post("/v1/load_lora_adapter", json=body).status_code == 403  # an inference key
    loaded = admin_http.post("/v1/load_lora_adapter", json=body)
    assert loaded.status_code == 200, loaded.text
    assert "added successfully" in loaded.text
    try:
        client = openai_with_key(live_server.tenant.key)
        assert name in [m.id for m in client.models.list()]
        prompt = [{"role": "user", "content": "Name three colours."}]
        tuned = client.chat.completions.create(model=name, messages=prompt, temperature=0, max_tokens=8)
        assert tuned.model == name and tuned.choices[0].message.content
        assert admin_http.post("/v1/load_lora_adapter", json=body).status_code == 409
    finally:
        unloaded = admin_http.post("/v1/unload_lora_adapter", json={"lora_name": name})
    assert unloaded.status_code == 200, unloaded.text
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model=name, messages=prompt, max_tokens=1)
    assert admin_http.post("/v1/unload_lora_adapter", json={"lora_name": name}).status_code == 404
    assert admin_http.post("/v1/unload_lora_adapter", json={"lora_name": CHAT_MODEL}).status_code == 400


def test_adapter_scoped_to_a_workspace(admin_http, live_server, make_lora, openai_with_key):
    owner = live_server.create_tenant("runtime-lora-owner")
    path = make_lora(live_server.engine.model_config, seed=12)
    body = {"lora_name": "scoped-adapter", "lora_path": str(path), "workspace_id": owner.workspace_id}
    assert admin_http.post("/v1/load_lora_adapter", json=body).status_code == 200
    try:
        assert "scoped-adapter" in [m.id for m in openai_with_key(owner.key).models.list()]
        assert "scoped-adapter" not in [m.id for m in openai_with_key(live_server.tenant.key).models.list()]
    finally:
        admin_http.post("/v1/unload_lora_adapter", json={"lora_name": "scoped-adapter"})


def test_bad_adapter_paths(admin_http, tmp_path):
    for path in ("relative/path", str(tmp_path), "/nonexistent/adapter"):
        response = admin_http.post("/v1/load_lora_adapter", json={"lora_name": "bad", "lora_path": path})
        assert response.status_code == 400 and response.json()["error"]["param"] == "lora_path", response.text
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "adapter_config.json").write_text("{not json")
    response = admin_http.post("/v1/load_lora_adapter", json={"lora_name": "bad", "lora_path": str(corrupt)})
    assert response.status_code == 400, response.text
