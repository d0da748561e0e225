"""Pixtral / Mistral Small 3 vision: tiny random checkpoints built from transformers'
reference configurations, in HF's layout and in Mistral's own, against transformers'
LlavaForConditionalGeneration and Mistral3ForConditionalGeneration; prompts laid out
by mistral-common; the prefix cache keyed by image content."""

import base64
import io
import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from tiny_mistral import MISTRAL_COMMON_DATA, hf_model, write_native
from tiny_pixtral import hf_vision_model, write_hf_vision, write_native_vision

from tramontane.engine import EngineConfig, ImageInput, LLMEngine, SamplingParams, Tokenizer, load_checkpoint
from tramontane.engine.errors import InvalidRequestError, ModelLoadError
from tramontane.engine.prepared import load_prepared, save_prepared

pytest.importorskip("transformers")


def picture(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8))


def data_url(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def ask(image: Image.Image, text: str = "Describe this:") -> list[dict]:
    return [{"role": "user", "content": [{"type": "text", "text": text}, {"type": "image", "image": image}]}]


@pytest.fixture(scope="module", params=["llava", "mistral3"])
def vision(request, tmp_path_factory):
    """(transformers model, our HF-layout checkpoint, our native-layout checkpoint)."""
    model = hf_vision_model(request.param)
    tmp = tmp_path_factory.mktemp(request.param)
    hf = load_checkpoint(str(write_hf_vision(model, tmp / "hf")))
    native = load_checkpoint(str(write_native_vision(model, tmp / "native")))
    return model, hf, native


def engine(checkpoint, **config) -> LLMEngine:
    settings = {"num_kv_blocks": 256, "quantization": "none", "max_num_batched_tokens": 4096} | config
    return LLMEngine(checkpoint, EngineConfig(**settings))


def prefill_logits(checkpoint, ids: list[int], pixels: list[np.ndarray]) -> torch.Tensor:
    """The last prompt token's logits, the prompt prefilled in one step."""
    eng = engine(checkpoint)
    eng.add_request("r", ids, SamplingParams(max_tokens=1), images=[ImageInput.from_array(p) for p in pixels])
    batch = eng.scheduler.schedule()
    assert batch.num_new_tokens == [len(ids)]
    logits, _ = eng.runner.execute(batch)
    return logits[0]


def reference_logits(model, ids: list[int], pixels: list[np.ndarray]) -> torch.Tensor:
    # As HF's processor batches them: padded to the largest, with each one's size.
    height, width = max(p.shape[1] for p in pixels), max(p.shape[2] for p in pixels)
    values = torch.zeros(len(pixels), 3, height, width)
    for i, p in enumerate(pixels):
        values[i, :, : p.shape[1], : p.shape[2]] = torch.from_numpy(p)
    sizes = torch.tensor([p.shape[1:] for p in pixels])
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids]), pixel_values=values, image_sizes=sizes).logits[0, -1]


def test_logits_match_transformers_in_either_layout(vision):
    model, hf, native = vision
    ids, pixels = hf.tokenizer.encode_chat_with_images(ask(picture(100, 70)), None)
    assert ids.count(10) > 4 and len(pixels) == 1
    ours = prefill_logits(hf, ids, pixels)
    assert torch.allclose(ours, reference_logits(model, ids, pixels), atol=1e-4, rtol=0)
    assert torch.equal(ours, prefill_logits(native, ids, pixels))


def test_two_images_of_different_shapes(vision):
    model, hf, _ = vision
    messages = [
        {"role": "user", "content": [
            {"type": "image", "image": picture(64, 40, seed=1)},
            {"type": "text", "text": "and"},
            {"type": "image", "image": picture(33, 90, seed=2)},
        ]},
    ]
    ids, pixels = hf.tokenizer.encode_chat_with_images(messages, None)
    assert [p.shape for p in pixels] != [pixels[0].shape] * 2
    want = reference_logits(model, ids, pixels)
    assert torch.allclose(prefill_logits(hf, ids, pixels), want, atol=1e-4, rtol=0)


def test_greedy_tokens_match_transformers_with_chunked_prefill(vision, run):
    model, hf, _ = vision
    ids, pixels = hf.tokenizer.encode_chat_with_images(ask(picture(120, 96)), None)
    images = [ImageInput.from_array(p) for p in pixels]
    # Chunks of 16 tokens: an image's tokens span several steps.
    eng = engine(hf, max_num_batched_tokens=16)
    eng.add_request("r", ids, SamplingParams(temperature=0, max_tokens=8, ignore_eos=True), images=images)
    ours = run(eng)[("r", 0)].token_ids
    values = torch.from_numpy(pixels[0])[None]
    with torch.no_grad():
        out = model.generate(
            input_ids=torch.tensor([ids]), pixel_values=values, image_sizes=torch.tensor([pixels[0].shape[1:]]),
            max_new_tokens=8, min_new_tokens=8, do_sample=False,
        )
    assert ours == out[0, len(ids):].tolist()


def test_prefix_cache_is_keyed_by_the_image(vision, run):
    _, hf, _ = vision
    eng = engine(hf)
    first = picture(96, 96, seed=3)

    def cached(image: Image.Image, request_id: str) -> int:
        ids, pixels = hf.tokenizer.encode_chat_with_images(ask(image), None)
        eng.add_request(request_id, ids, SamplingParams(temperature=0, max_tokens=1),
                        images=[ImageInput.from_array(p) for p in pixels])
        run(eng)
        return eng.stats().prefix_cache_hits

    assert cached(first, "a") == 0
    hits = cached(first, "b")  # the same image: its blocks come from the cache
    assert hits >= 16
    # Same text, same image size, other pixels: the same token ids, but no block is reused
    # (the image's tokens start in the first block).
    assert cached(picture(96, 96, seed=4), "c") == hits


def test_prompt_tokens_equal_mistral_commons(tmp_path):
    """The prompt and pixels for requests with images are mistral-common's own
    encode_chat_completion of the same request (which decodes the data URLs itself)."""
    from mistral_common.protocol.instruct.request import ChatCompletionRequest
    from mistral_common.tokens.tokenizers.mistral import MistralTokenizer

    a, b = picture(50, 30, seed=5), picture(300, 1500, seed=6)  # the second is resized to fit 1024
    weather = {"type": "function", "function": {"name": "weather", "description": "Weather in a city",
                                                "parameters": {"type": "object", "properties": {}}}}
    conversations = [
        ([("text", "What is it?"), ("image", a)], None),
        ([("image", a)], None),
        ([("text", "Compare"), ("image", a), ("text", "with"), ("image", b)], [weather]),
    ]
    for name in ("tekken_240911.json", "mistral_instruct_tokenizer_241114.model.v7m1"):
        ours = Tokenizer.from_mistral_file(str(MISTRAL_COMMON_DATA / name))
        reference = MistralTokenizer.from_file(str(MISTRAL_COMMON_DATA / name))
        for parts, tools in conversations:
            history = [
                {"role": "system", "content": "Be precise."},
                {"role": "user", "content": "Hello"},
                {"role": "assistant", "content": "Hi! Send a picture."},
            ]
            mine = [{"type": k, k: v} for k, v in parts]
            theirs = [
                {"type": "text", "text": v} if k == "text" else {"type": "image_url", "image_url": {"url": data_url(v)}}
                for k, v in parts
            ]
            ids, pixels = ours.encode_chat_with_images([*history, {"role": "user", "content": mine}], tools)
            want = reference.encode_chat_completion(
                ChatCompletionRequest.from_openai([*history, {"role": "user", "content": theirs}], tools=tools)
            )
            assert ids == want.tokens, name
            assert len(pixels) == len(want.images)
            for got, expected in zip(pixels, want.images, strict=True):
                assert np.array_equal(got, expected)


def test_image_count_must_match_the_prompt(vision):
    _, hf, _ = vision
    eng = engine(hf)
    ids, pixels = hf.tokenizer.encode_chat_with_images(ask(picture(40, 40)), None)
    image = ImageInput.from_array(pixels[0])
    with pytest.raises(InvalidRequestError, match="image tokens"):
        eng.add_request("r", ids, SamplingParams(max_tokens=1), images=[image, image])
    with pytest.raises(InvalidRequestError, match="does not tile"):
        eng.add_request("r", ids, SamplingParams(max_tokens=1), images=[ImageInput.from_array(pixels[0][:, :7])])
    assert not eng.requests


def test_text_only_engine_refuses_images(tmp_path):
    eng = engine(load_checkpoint(str(write_native(hf_model(), tmp_path / "m"))))
    image = ImageInput.from_array(np.zeros((3, 16, 16), dtype=np.float32))
    with pytest.raises(InvalidRequestError, match="text-only"):
        eng.add_request("r", [1, 2, 3], SamplingParams(max_tokens=1), images=[image])


def test_missing_vision_tensor_is_named(tmp_path):
    folder = write_native_vision(hf_vision_model("llava"), tmp_path / "m")
    tensors = load_file(str(folder / "consolidated.safetensors"))
    del tensors["vision_encoder.transformer.layers.1.attention.wk.weight"]
    save_file(tensors, str(folder / "consolidated.safetensors"))
    missing = r"'vision_encoder\.transformer\.layers\.1\.attention\.wk\.weight' is missing"
    with pytest.raises(ModelLoadError, match=missing):
        load_checkpoint(str(folder))


def test_tokenizer_must_lay_images_out_as_the_encoder_reads_them(tmp_path):
    folder = write_native_vision(hf_vision_model("llava"), tmp_path / "m")
    params = json.loads((folder / "params.json").read_text())
    params["vision_encoder"]["spatial_merge_size"] = 2
    params["vision_encoder"]["mm_projector_id"] = "patch_merge"
    (folder / "params.json").write_text(json.dumps(params))
    with pytest.raises(ModelLoadError, match="lays out images"):
        load_checkpoint(str(folder))


def test_prepared_vision_model_gives_the_same_logits(vision, tmp_path):
    _, hf, _ = vision
    ids, pixels = hf.tokenizer.encode_chat_with_images(ask(picture(48, 80)), None)
    eng = engine(hf)
    save_prepared(tmp_path / "m.pt", hf, eng.runner.model)
    checkpoint, prepared = load_prepared(tmp_path / "m.pt")
    assert checkpoint.config.vision == hf.config.vision
    again = LLMEngine(checkpoint, EngineConfig(num_kv_blocks=256, quantization="none"), prepared)
    again.add_request("r", ids, SamplingParams(max_tokens=1), images=[ImageInput.from_array(p) for p in pixels])
    logits, _ = again.runner.execute(again.scheduler.schedule())
    # (Mapped from the file, tensors may sit at other alignments: other SIMD paths, last-bit differences.)
    assert torch.allclose(logits[0], prefill_logits(hf, ids, pixels), atol=1e-5, rtol=0)
