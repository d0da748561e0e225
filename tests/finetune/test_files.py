"""The Files API through both official SDKs, unchanged."""

from __future__ import annotations

import io

import httpx
import openai
import pytest
from finetune_helpers import TRAINING_LINE, Server, jsonl
from mistralai.client import errors as mistral_errors


def test_mistral_sdk_upload_list_retrieve_download_delete(platform: Server) -> None:
    tenant = platform.tenant("files-mistral")
    client = platform.mistral(tenant)
    data = jsonl(TRAINING_LINE, TRAINING_LINE)
    uploaded = client.files.upload(file={"file_name": "train.jsonl", "content": data}, purpose="fine-tune")
    assert (uploaded.filename, uploaded.purpose, uploaded.size_bytes, uploaded.num_lines) == (
        "train.jsonl",
        "fine-tune",
        len(data),
        2,
    )
    assert uploaded.sample_type == "instruct" and uploaded.source == "upload"

    listed = client.files.list(purpose="fine-tune")
    assert uploaded.id in [f.id for f in listed.data] and listed.total == len(listed.data)
    assert client.files.retrieve(file_id=uploaded.id).deleted is False
    download = client.files.download(file_id=uploaded.id)
    assert download.headers["content-type"] == "application/octet-stream"
    assert download.read() == data

    assert client.files.delete(file_id=uploaded.id).deleted is True
    with pytest.raises(mistral_errors.SDKError) as missing:
        client.files.retrieve(file_id=uploaded.id)
    assert missing.value.status_code == 404


def test_openai_sdk_create_list_retrieve_content_delete(platform: Server) -> None:
    client = platform.openai(platform.tenant("files-openai"))
    created = client.files.create(file=("batch.jsonl", io.BytesIO(b'{"a": 1}\n')), purpose="batch")
    assert (created.object, created.purpose, created.bytes, created.filename) == ("file", "batch", 9, "batch.jsonl")
    assert [f.id for f in client.files.list()] == [created.id]
    assert client.files.retrieve(created.id).created_at == created.created_at
    assert client.files.content(created.id).content == b'{"a": 1}\n'
    deleted = client.files.delete(created.id)
    assert deleted.deleted and deleted.id == created.id
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(created.id)


def test_another_workspace_sees_nothing(platform: Server) -> None:
    owner, stranger = platform.tenant("files-owner"), platform.tenant("files-stranger")
    created = platform.openai(owner).files.create(
        file=("mine.jsonl", io.BytesIO(jsonl(TRAINING_LINE))), purpose="fine-tune"
    )
    other = platform.openai(stranger)
    for call in (other.files.retrieve, other.files.content, other.files.delete):
        with pytest.raises(openai.NotFoundError):
            call(created.id)
    assert created.id not in [f.id for f in other.files.list()]
    assert platform.openai(owner).files.retrieve(created.id).id == created.id  # still there


def test_size_limit_purpose_and_capability(platform: Server) -> None:
    tenant = platform.tenant("files-limits")
    with platform.http(tenant) as http:
        too_big = http.post(
            "/v1/files", files={"file": ("big.jsonl", b"x" * (1024 * 1024 + 1))}, data={"purpose": "fine-tune"}
        )
        assert too_big.status_code == 413 and too_big.json()["error"]["code"] == "file_too_large"
        bad_purpose = http.post("/v1/files", files={"file": ("a.jsonl", b"{}\n")}, data={"purpose": "nonsense"})
        assert bad_purpose.status_code == 400 and bad_purpose.json()["error"]["param"] == "purpose"
        assert http.get("/v1/files").json()["data"] == []  # nothing half-stored
    inference_only = platform.tenant("files-inference-only", ("inference",))
    response = httpx.get(f"{platform.url}/v1/files", headers=inference_only.headers)
    assert response.status_code == 403
