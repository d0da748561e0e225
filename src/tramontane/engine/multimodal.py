"""Images in a prompt: which [IMG] tokens each one fills, and their embeddings.

The tokenizer lays an image out as rows of [IMG] tokens (mistral-common's image
encoder); the vision model turns the image's pixels into one embedding per [IMG]
token, which replaces that token's embedding in the language model's input. The
[IMG_BREAK] and [IMG_END] tokens between rows keep their own embeddings.

Two prompts with the same tokens but different images must not share KV cache:
each image's content hash is part of the prefix-cache key of every block its
tokens touch (block_manager.py).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import xxhash

from .config import VisionConfig
from .errors import InvalidRequestError


@dataclass(frozen=True, eq=False)
class ImageInput:
    """One image as the vision encoder reads it."""

    pixels: torch.Tensor  # [C, H, W] float32, resized and normalised by the tokenizer's image encoder
    content_hash: int  # of the pixels (and their shape): the same image, the same hash

    @classmethod
    def from_array(cls, array: np.ndarray) -> ImageInput:
        pixels = np.ascontiguousarray(array, dtype=np.float32)
        digest = xxhash.xxh64(np.asarray(pixels.shape, dtype=np.int64).tobytes())
        digest.update(pixels.tobytes())
        return cls(torch.from_numpy(pixels), digest.intdigest())


def image_tokens(pixels: torch.Tensor, vision: VisionConfig) -> int:
    """How many [IMG] tokens an image of these pixels fills."""
    side = vision.patch_size * vision.spatial_merge_size
    _, height, width = pixels.shape
    if height % side or width % side or pixels.shape[0] != vision.num_channels:
        raise InvalidRequestError(
            f"an image of shape {tuple(pixels.shape)} does not tile into {side}-pixel squares of "
            f"{vision.num_channels} channels",
            param="messages",
        )
    return (height // side) * (width // side)


class PromptImages:
    """The images of one request's prompt, shared by its sequences (n > 1): each
    image's embeddings are computed once, on the first prefill step that needs them,
    and live as long as the request."""

    def __init__(self, prompt: list[int], images: Sequence[ImageInput], vision: VisionConfig):
        positions = [i for i, token in enumerate(prompt) if token == vision.image_token_id]
        counts = [image_tokens(image.pixels, vision) for image in images]
        if len(positions) != sum(counts):
            raise InvalidRequestError(
                f"the prompt has {len(positions)} image tokens, its {len(images)} image(s) fill {sum(counts)}",
                param="messages",
            )
        self.images = list(images)
        self.positions = torch.tensor(positions, dtype=torch.long)
        # Each image's first and past-the-last prompt position, and its hash.
        self.spans: list[tuple[int, int, int]] = []
        first = 0
        for image, count in zip(self.images, counts, strict=True):
            self.spans.append((positions[first], positions[first + count - 1] + 1, image.content_hash))
            first += count
        self._embeddings: torch.Tensor | None = None

    @property
    def num_images(self) -> int:
        return len(self.images)

    def cache_keys(self, start: int, end: int) -> tuple[int, ...]:
        """Hashes of the images with tokens in prompt positions [start, end)."""
        return tuple(h for first, past, h in self.spans if first < end and start < past)

    def in_chunk(self, start: int, end: int) -> tuple[torch.Tensor, torch.Tensor]:
        """For the tokens [start, end) a step computes: the offsets in that chunk of
        its [IMG] tokens, and those tokens' rows in `embeddings`."""
        rows = ((self.positions >= start) & (self.positions < end)).nonzero().flatten()
        return self.positions[rows] - start, rows

    def embeddings(self, encode: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """Every [IMG] token's embedding [num image tokens, hidden], in prompt order."""
        if self._embeddings is None:
            self._embeddings = torch.cat([encode(image.pixels) for image in self.images])
        return self._embeddings
