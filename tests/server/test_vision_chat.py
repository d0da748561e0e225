"""A tiny Pixtral served as `tramontane up --model NAME=FOLDER` serves it, driven by
the official OpenAI and Mistral SDKs: images as data URLs, Mistral's string form and
Files API ids; prompts as mistral-common lays them out; the limits' clear errors;
the prefix cache keyed by the image; /v1/models says vision."""

from __future__ import annotations

import base64
import io
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import numpy as np
import openai
import pytest
from live_app import serve_in_thread
from mistral_common.protocol.instruct.request import ChatCompletionRequest as MistralRequest
from mistral_common.tokens.tokenizers.mistral import MistralTokenizer
from mistralai.client import Mistral
from PIL import Image
from tiny_pixtral import hf_vision_model, write_native_vision

from tramontane.cli.up import load_models
from tramontane.engine import EngineConfig
from tramontane.errors import Invalid
from tramontane.finetune.service import FineTuning
from tramontane.inference import ModelSpec
from tramontane.inference.images import ImageLimits, ImageLoader
from tramontane.platform.app import create_app
from tramontane.tenancy import Tenancy

pytest.importorskip("transformers")

LIMITS = ImageLimits(max_bytes=200_000, max_pixels=1200 * 1200, max_images=3)


def png(width: int, height: int, seed: int = 0, fmt: str = "PNG", plain: bool = False) -> bytes:
    """Random pixels (plain: one colour, which compresses to a few bytes)."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 255, (1, 1, 3) if plain else (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(np.broadcast_to(pixels, (height, width, 3))).save(buffer, format=fmt)
    return buffer.getvalue()


def data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode()


def image_message(url, text: str = "What is in this picture?") -> list[dict]:
    return [{"role": "user", "content": [{"type": "text", "text": text}, {"type": "image_url", "image_url": url}]}]


class Served:
    def __init__(self, url: str, keys: list[str], folder: str):
        self.url, self.keys, self.folder = url, keys, folder

    def openai(self, key: int = 0) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=self.keys[key], max_retries=0)

    def http(self, key: int = 0) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {self.keys[key]}"}, timeout=60)


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> Iterator[Served]:
    home = tmp_path_factory.mktemp("home")
    folder = write_native_vision(hf_vision_model("llava"), home / "pixtral")
    registry = load_models(
        [ModelSpec.parse(f"tiny-pixtral={folder}")], EngineConfig(kv_cache_memory_gb=0.05, quantization="none"), LIMITS
    )
    tenancy = Tenancy.open(f"sqlite:///{home / 'db.sqlite'}", home=home)
    admin_key = tenancy.bootstrap_admin_key()
    assert admin_key is not None
    finetune = FineTuning(tenancy.store, home, {})
    with serve_in_thread(create_app(registry, tenancy, finetune=finetune)) as url:
        admin = httpx.Client(base_url=f"{url}/v1/admin", headers={"Authorization": f"Bearer {admin_key}"}, timeout=30)
        keys = []
        with admin:
            for name in ("one", "two"):
                workspace = admin.post("/workspaces", json={"name": name}).raise_for_status().json()["id"]
                # fine-tune: the Files API's capability.
                body = {"name": "sdk", "capabilities": ["inference", "fine-tune"]}
                keys.append(admin.post(f"/workspaces/{workspace}/keys", json=body).raise_for_status().json()["key"])
        yield Served(url, keys, str(folder))
    tenancy.close()


def reference_tokens(folder: str, messages: list[dict]) -> list[int]:
    tokenizer = MistralTokenizer.from_file(f"{folder}/tekken.json")
    return tokenizer.encode_chat_completion(MistralRequest.from_openai(messages)).tokens


def test_openai_sdk_image_and_usage_count_image_tokens(served):
    url = data_url(png(80, 50))
    messages = image_message({"url": url})
    reply = served.openai().chat.completions.create(
        model="tiny-pixtral", messages=messages, max_tokens=3, temperature=0
    )
    want = reference_tokens(served.folder, messages)
    assert want.count(10) == 5 * 4  # [IMG] tokens: one per 16-pixel square
    assert reply.usage.prompt_tokens == len(want)
    with served.http() as http:
        body = {"model": "tiny-pixtral", "messages": messages}
        assert http.post("/v1/tokenize", json=body).raise_for_status().json()["tokens"] == want


def test_mistral_sdk_string_form(served):
    with Mistral(api_key=served.keys[0], server_url=served.url) as client:
        reply = client.chat.complete(
            model="tiny-pixtral",
            messages=[{"role": "user", "content": [
                {"type": "text", "text": "Describe"}, {"type": "image_url", "image_url": data_url(png(40, 40))},
            ]}],
            max_tokens=2,
            temperature=0,
        )
        assert reply.usage.prompt_tokens == len(
            reference_tokens(served.folder, image_message(data_url(png(40, 40)), "Describe"))
        )
        card = client.models.retrieve(model_id="tiny-pixtral")
        assert card.capabilities.vision is True


def test_prefix_cache_hits_the_same_image_only(served):
    client = served.openai()
    first = image_message({"url": data_url(png(64, 64, seed=1))}, "Same text")
    other = image_message({"url": data_url(png(64, 64, seed=2))}, "Same text")

    def cached(messages) -> int:
        reply = client.chat.completions.create(model="tiny-pixtral", messages=messages, max_tokens=1)
        return reply.usage.prompt_tokens_details.cached_tokens

    cached(first)
    assert cached(first) >= 16  # the second time, the image's blocks come from the cache
    assert cached(other) == 0  # the same tokens, but another image: its first block already differs


def test_files_api_image_of_the_callers_workspace_only(served):
    data = png(48, 32, seed=3)
    with served.http() as http:
        upload = http.post("/v1/files", files={"file": ("cat.png", data, "image/png")}, data={"purpose": "vision"})
        file_id = upload.raise_for_status().json()["id"]
    by_file = served.openai().chat.completions.create(
        model="tiny-pixtral", messages=image_message({"url": file_id}), max_tokens=1
    )
    by_url = served.openai().chat.completions.create(
        model="tiny-pixtral", messages=image_message({"url": data_url(data)}), max_tokens=1
    )
    assert by_file.usage.prompt_tokens == by_url.usage.prompt_tokens
    with pytest.raises(openai.NotFoundError):
        served.openai(key=1).chat.completions.create(
            model="tiny-pixtral", messages=image_message({"url": file_id}), max_tokens=1
        )


@pytest.mark.parametrize(
    ("image", "error", "says"),
    [
        ({"url": "https://example.com/cat.png"}, openai.BadRequestError, "Remote image URLs are not fetched"),
        ({"url": data_url(png(300, 300))}, openai.APIStatusError, "at most 200000 bytes"),  # 413
        ({"url": data_url(png(64, 64)[:200])}, openai.BadRequestError, "corrupt or truncated"),
        ({"url": data_url(b"not an image at all")}, openai.BadRequestError, "not a readable image"),
        ({"url": data_url(png(16, 16, fmt="TIFF"), "image/tiff")}, openai.BadRequestError, "supported type"),
        (
            {"url": data_url(png(1300, 1200, fmt="JPEG", plain=True), "image/jpeg")},
            openai.BadRequestError,
            "1300x1200 pixels",
        ),
        ({"url": "data:image/png;base64,@@@"}, openai.BadRequestError, "not valid base64"),
    ],
)
def test_bad_images_are_clear_errors(served, image, error, says):
    client = served.openai()
    with pytest.raises(error) as raised:
        client.chat.completions.create(model="tiny-pixtral", messages=image_message(image), max_tokens=1)
    assert says in str(raised.value)
    if error is openai.APIStatusError:
        assert raised.value.status_code == 413
    # Nothing was lost: the model still answers.
    small = image_message({"url": data_url(png(16, 16))})
    reply = client.chat.completions.create(model="tiny-pixtral", messages=small, max_tokens=1)
    assert reply.choices[0].finish_reason in ("length", "stop")


def test_too_many_images(served):
    part = {"type": "image_url", "image_url": {"url": data_url(png(16, 16))}}
    with pytest.raises(openai.BadRequestError, match="at most 3 images"):
        served.openai().chat.completions.create(
            model="tiny-pixtral", messages=[{"role": "user", "content": [part] * 4}], max_tokens=1
        )


def test_streamed_answer_to_an_image(served):
    stream = served.openai().chat.completions.create(
        model="tiny-pixtral", messages=image_message({"url": data_url(png(32, 32))}), max_tokens=4, stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[-1].usage.prompt_tokens == len(
        reference_tokens(served.folder, image_message({"url": data_url(png(32, 32))}))
    )


@pytest.fixture
def image_server() -> Iterator[str]:
    body = png(20, 20)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            if self.path == "/big.png":
                self.send_response(200)
                self.end_headers()
                for _ in range(64):
                    self.wfile.write(b"\0" * 65536)
                return
            self.send_response(200 if self.path == "/cat.png" else 404)
            self.send_header("Content-Type", "image/png")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        thread.join(timeout=5)


def test_remote_images_when_the_operator_allows_them(image_server):
    loader = ImageLoader(ImageLimits(allow_remote=True, max_bytes=1_000_000))
    image = loader.load({"type": "image_url", "image_url": {"url": f"{image_server}/cat.png"}}, None)
    assert image.size == (20, 20)
    with pytest.raises(Invalid, match="answered 404"):
        loader.load({"type": "image_url", "image_url": f"{image_server}/missing.png"}, None)
    with pytest.raises(Invalid, match="at most 1000000 bytes"):  # the download stops at the limit
        loader.load({"type": "input_image", "image_url": f"{image_server}/big.png"}, None)
