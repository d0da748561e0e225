"""The playground with a vision model, in a real browser: a tiny random Pixtral
served beside the console, an image picked in the page reaching the model as
image tokens (counted as mistral-common lays them out), and the conversation
going on about it."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from console_helpers import Platform, no_script_errors, shot, sign_in, wait_until
from live_app import serve_in_thread
from mistral_common.protocol.instruct.request import ChatCompletionRequest as MistralRequest
from mistral_common.tokens.tokenizers.mistral import MistralTokenizer
from PIL import Image
from tiny_pixtral import IMAGE_TOKEN, hf_vision_model, write_native_vision

from tramontane.cli.up import load_models
from tramontane.engine import EngineConfig
from tramontane.inference import ModelSpec
from tramontane.platform.app import create_app
from tramontane.tenancy import Tenancy

pytest.importorskip("transformers")
pytestmark = pytest.mark.slow

QUESTION = "What is in this picture?"
ANSWERED = ("() => document.querySelectorAll('.message.assistant').length === {n} && "
            "!document.querySelector('.message.assistant .content.streaming') && "
            "document.querySelector('[data-stat=prompt_tokens]').textContent !== '…'")


@dataclass
class VisionPlatform(Platform):
    folder: Path  # the checkpoint, with its tekken.json


def prompt_tokens(platform: VisionPlatform, messages: list[dict]) -> list[int]:
    """The prompt as mistral-common lays it out: the reference for Pixtral."""
    tokenizer = MistralTokenizer.from_file(str(platform.folder / "tekken.json"))
    return tokenizer.encode_chat_completion(MistralRequest.from_openai(messages)).tokens


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VisionPlatform]:
    """The console's platform serving only a tiny Pixtral (this module's own: the
    other browser tests' platform serves the default, text-only, models)."""
    home = tmp_path_factory.mktemp("console-vision")
    folder = write_native_vision(hf_vision_model("llava"), home / "pixtral")
    registry = load_models(
        [ModelSpec.parse(f"tiny-pixtral={folder}")], EngineConfig(kv_cache_memory_gb=0.05, quantization="none")
    )
    tenancy = Tenancy.open(f"sqlite:///{home / 'tramontane.db'}", home=home)
    admin_key = tenancy.bootstrap_admin_key()
    assert admin_key is not None
    with serve_in_thread(create_app(registry, tenancy), stop_timeout_s=30) as url:
        yield VisionPlatform(url, tenancy, admin_key, folder)
    tenancy.close()


def png(width: int, height: int) -> bytes:
    picture = io.BytesIO()
    Image.new("RGB", (width, height), (30, 90, 200)).save(picture, format="PNG")
    return picture.getvalue()


def test_a_picked_image_reaches_a_vision_model_as_image_tokens(page, platform: VisionPlatform, screenshots):
    tenant = platform.create_tenant("browser-vision", ("inference",))
    sign_in(page, tenant.key)
    page.select_option("#pg-model", "tiny-pixtral")
    page.fill("#pg-max-tokens", "3")
    page.fill("#pg-temperature", "0")
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.post_data or "") if r.url.endswith("/playground/chat") else None)
    picture = {"name": "blue.png", "mimeType": "image/png", "buffer": png(80, 50)}
    page.set_input_files("#pg-image", files=[picture])
    page.fill("#pg-input", QUESTION)
    page.click("#pg-send")
    wait_until(page, ANSWERED.format(n=1), timeout=120)
    assert page.inner_text("#pg-error") == ""
    sent = json.loads(requests[-1])["messages"]
    # The prompt the model read holds the image: 5 x 4 squares of 16 pixels, one [IMG] each.
    expected = prompt_tokens(platform, sent)
    assert expected.count(IMAGE_TOKEN) == 5 * 4
    assert int(page.inner_text("[data-stat=prompt_tokens]")) == len(expected)
    assert int(page.inner_text("[data-stat=completion_tokens]")) >= 1
    thumbnail = page.locator(".message.user img.thumbnail")
    assert thumbnail.count() == 1 and thumbnail.get_attribute("src").startswith("data:image/png;base64,")
    assert page.evaluate("document.querySelector('.message.user img.thumbnail').naturalWidth") == 80
    shot(page, screenshots, "playground-vision")
    # The picker is emptied once the image is in the conversation; the next question is
    # asked about the same image (sent once, with the first turn), not about a second copy.
    assert page.evaluate("document.getElementById('pg-image').files.length") == 0
    page.fill("#pg-input", "And its colour?")
    page.click("#pg-send")
    wait_until(page, ANSWERED.format(n=2), timeout=120)
    follow_up = json.loads(requests[-1])["messages"]
    images = [part for m in follow_up if isinstance(m["content"], list) for part in m["content"]
              if part["type"] == "image_url"]
    assert len(images) == 1 and follow_up[-1]["content"] == "And its colour?"
    expected = prompt_tokens(platform, follow_up)
    assert int(page.inner_text("[data-stat=prompt_tokens]")) == len(expected)
    no_script_errors(page)
