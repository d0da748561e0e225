"""Error statuses and bodies, as the SDKs and raw HTTP clients see them."""

from __future__ import annotations

import httpx
import openai
import pytest
from mistralai.client import errors as mistral_errors

from tramontane import errors
from tramontane.engine import EngineOverloadedError
from tramontane.engine.defaults import DEFAULT_CHAT_MODEL_NAME as CHAT_MODEL
from tramontane.inference import ModelRegistry
from tramontane.platform.app import create_app
from tramontane.errors import as_api_error

HI = [{"role": "user", "content": "hi"}]


def _error(response: httpx.Response) -> dict:
    assert response.headers["x-request-id"]
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error


def test_unknown_model_openai(oai):
    with pytest.raises(openai.NotFoundError) as info:
        oai.chat.completions.create(model="gpt-9", messages=HI)
    assert info.value.code == "model_not_found"
    assert info.value.request_id
    with pytest.raises(openai.NotFoundError):
        oai.models.retrieve("gpt-9")


def test_unknown_model_mistral(mistral):
    with pytest.raises(mistral_errors.SDKError) as info:
        mistral.chat.complete(model="mistral-huge", messages=HI)
    assert info.value.status_code == 404 and "model_not_found" in info.value.body


def test_bad_parameter_is_400(oai):
    with pytest.raises(openai.BadRequestError) as info:
        oai.chat.completions.create(model=CHAT_MODEL, messages=HI, temperature=5)
    assert info.value.param == "temperature"
    with pytest.raises(openai.BadRequestError):
        oai.chat.completions.create(model=CHAT_MODEL, messages=HI, n=100)
    with pytest.raises(openai.BadRequestError):
        oai.chat.completions.create(model=CHAT_MODEL, messages=HI, max_tokens=10**7)


def test_image_content_is_400(oai):
    content = [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]
    with pytest.raises(openai.BadRequestError):
        oai.chat.completions.create(model=CHAT_MODEL, messages=[{"role": "user", "content": content}])


def test_malformed_body_is_fastapi_422(oai, http):
    with pytest.raises(openai.UnprocessableEntityError):
        oai.chat.completions.create(model=CHAT_MODEL, messages=[{"role": "wizard", "content": "hi"}])
    response = http.post("/v1/chat/completions", json={"model": CHAT_MODEL})
    assert response.status_code == 422 and response.headers["x-request-id"]
    assert response.json()["detail"][0]["loc"] == ["body", "messages"]


def test_mistral_validation_error_is_parsed(mistral, http):
    with pytest.raises(mistral_errors.HTTPValidationError) as info:
        mistral.chat.complete(model=CHAT_MODEL, messages=[])
    assert info.value.data.detail[0].loc[-1] == "messages"


def test_invalid_json_and_utf8(http):
    headers = {"content-type": "application/json"}
    bad_json = http.post("/v1/chat/completions", content=b'{"model": ', headers=headers)
    assert bad_json.status_code == 422 and bad_json.json()["detail"][0]["type"] == "json_invalid"
    bad_utf8 = http.post("/v1/chat/completions", content=b'{"model": "\xff\xfe"}', headers=headers)
    assert bad_utf8.status_code in (400, 422)
    assert bad_utf8.headers["x-request-id"]


def test_body_too_large_is_413(http):
    big = b'{"model": "' + b"x" * (9 * 1024 * 1024) + b'"}'
    response = http.post("/v1/chat/completions", content=big, headers={"content-type": "application/json"})
    assert response.status_code == 413 and _error(response)["code"] == "request_too_large"

    def chunks():  # no Content-Length: the limit must hold while reading
        for _ in range(10):
            yield b" " * (1024 * 1024)

    response = http.post("/v1/embeddings", content=chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 413 and response.headers["x-request-id"]


def test_unknown_route_and_method(http):
    response = http.get("/v1/nothing-here")
    assert response.status_code == 404 and _error(response)["type"] == "not_found_error"
    response = http.delete("/v1/chat/completions")
    assert response.status_code == 405 and _error(response)


def test_client_request_id_is_echoed(http):
    response = http.get("/v1/models", headers={"x-request-id": "trace-123"})
    assert response.headers["x-request-id"] == "trace-123"
    response = http.get("/v1/models", headers={"x-request-id": "bad id\twith junk"})
    assert response.headers["x-request-id"] != "bad id\twith junk"


def test_overloaded_engine_is_503_with_retry_after(live_server, oai, monkeypatch):
    async def refuse(*args, **kwargs):
        raise EngineOverloadedError("too many requests queued", retry_after_s=2.5)
        yield  # an async generator, like the real one

    monkeypatch.setattr(live_server.engine, "generate", refuse)
    with pytest.raises(openai.InternalServerError) as info:
        oai.chat.completions.create(model=CHAT_MODEL, messages=HI, stream=True)
    assert info.value.status_code == 503
    assert info.value.response.headers["retry-after"] == "3"
    assert info.value.code == "engine_overloaded"


async def test_ready_is_503_until_started(live_server):
    app = create_app(ModelRegistry(), live_server.tenancy)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://test") as client:
        response = await client.get("/ready")
        assert response.status_code == 503 and response.headers["retry-after"]
        assert (await client.get("/health")).status_code == 200


@pytest.mark.parametrize(
    ("kind", "status"),
    [
        (errors.NotFound, 404), (errors.Conflict, 409), (errors.Invalid, 400), (errors.TooLarge, 413),
        (errors.Unauthorized, 401), (errors.Forbidden, 403), (errors.Limited, 429), (errors.Unavailable, 503),
    ],
)
def test_each_domain_error_kind_has_one_status_at_the_edge(kind, status):
    error = as_api_error(kind("no luck", param="model", retry_after_s=1.2))
    assert error.status == status
    assert error.body()["error"] == {
        "message": "no luck", "type": error.type, "param": "model", "code": kind.default_code,
    }
    assert error.headers().get("Retry-After") == "2"
