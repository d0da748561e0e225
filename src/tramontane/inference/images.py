"""Images in chat requests: where they may come from, the limits they meet, and
their decoding, before the model's tokenizer lays them out.

A message part names an image in one of the SDKs' shapes:

- OpenAI's `{"type": "image_url", "image_url": {"url": URL}}`, Mistral's
  `{"type": "image_url", "image_url": URL}`, the Responses API's
  `{"type": "input_image", "image_url": URL}` or `{"type": "input_image", "file_id": ID}`;
- URL is a `data:image/...;base64,` URL, the id of a file uploaded to the Files API
  (`file_...`, the caller's workspace's only), or an http(s) URL, which is fetched
  only where the operator allows it (the platform is offline by default).

Every image is checked before anything is decoded in full: its encoded size
(413 past `max_bytes`), its format (PNG, JPEG, WebP, GIF), its pixel count read from
the header (400 past `max_pixels`, so a small file cannot expand into gigabytes),
and the count of images in the request (400 past `max_images`).
"""

from __future__ import annotations

import base64
import binascii
import io
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
from PIL import Image, UnidentifiedImageError

from ..errors import Invalid, TooLarge

IMAGE_PARTS = ("image_url", "image", "input_image")
_FORMATS = ("PNG", "JPEG", "WEBP", "GIF")
_DATA_URL = re.compile(r"data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[^,;]*)*?);base64,(?P<data>.*)", re.DOTALL)
_FILE_ID = re.compile(r"file[-_][A-Za-z0-9]+")

# (workspace id or None, file id) -> the file's bytes; NotFound for a file the workspace does not own.
FileReader = Callable[[str | None, str], bytes]


@dataclass(frozen=True)
class ImageLimits:
    max_bytes: int = 10 * 2**20  # of one encoded image
    max_pixels: int = 4096 * 4096  # of one image, width x height
    max_images: int = 8  # in one request
    # Fetch http(s) image URLs; off, they are refused (the platform is offline by default).
    allow_remote: bool = False
    fetch_timeout_s: float = 10.0


@dataclass
class ImageLoader:
    """Turns a request's image parts into checked, decoded images."""

    limits: ImageLimits = field(default_factory=ImageLimits)
    # Set by the composition root where the Files API is served.
    read_file: FileReader | None = None
    # How remote images are fetched (a test may hand in its own transport).
    transport: httpx.BaseTransport | None = None

    def load_parts(self, content: list[dict[str, Any]], workspace_id: str | None, seen: int = 0) -> list[dict]:
        """`content` with each image part replaced by {"type": "image", "image": PIL image};
        `seen`: images already loaded from earlier messages of the request."""
        parts = []
        for part in content:
            if part.get("type") not in IMAGE_PARTS:
                parts.append(part)
                continue
            seen += 1
            if seen > self.limits.max_images:
                raise Invalid(f"A request may hold at most {self.limits.max_images} images", param="messages")
            parts.append({"type": "image", "image": self.load(part, workspace_id)})
        return parts

    def load(self, part: dict[str, Any], workspace_id: str | None) -> Image.Image:
        return self.decode(self._bytes(part, workspace_id))

    def _bytes(self, part: dict[str, Any], workspace_id: str | None) -> bytes:
        source = _source(part)
        if source.startswith("data:"):
            return self._data_url(source)
        if _FILE_ID.fullmatch(source):
            if self.read_file is None:
                raise Invalid("Files API ids are not served here; send the image as a data: URL", param="messages")
            return self._check_size(self.read_file(workspace_id, source))
        if source.startswith(("http://", "https://")):
            return self._fetch(source)
        raise Invalid("An image must be a data: URL, a file id or an http(s) URL", param="messages")

    def _data_url(self, url: str) -> bytes:
        match = _DATA_URL.fullmatch(url)
        if match is None:
            raise Invalid("An image data URL must be data:image/...;base64,...", param="messages")
        # Checked before decoding: base64 takes 4 characters for 3 bytes.
        if len(match["data"]) * 3 // 4 > self.limits.max_bytes + 3:
            raise self._too_large()
        try:
            return self._check_size(base64.b64decode(match["data"], validate=True))
        except binascii.Error as e:
            raise Invalid(f"The image data URL is not valid base64: {e}", param="messages") from e

    def _fetch(self, url: str) -> bytes:
        if not self.limits.allow_remote:
            raise Invalid(
                "Remote image URLs are not fetched by this platform (it is offline); "
                "send the image as a data: URL or a Files API id",
                code="remote_images_disabled",
                param="messages",
            )
        try:
            with (
                httpx.Client(transport=self.transport, timeout=self.limits.fetch_timeout_s) as client,
                client.stream("GET", url, follow_redirects=True) as response,
            ):
                if response.status_code != 200:
                    raise Invalid(f"Fetching the image {url} answered {response.status_code}", param="messages")
                body = bytearray()
                for chunk in response.iter_bytes():
                    body += chunk
                    if len(body) > self.limits.max_bytes:
                        raise self._too_large()
                return bytes(body)
        except httpx.HTTPError as e:
            raise Invalid(f"The image {url} could not be fetched: {type(e).__name__}", param="messages") from e

    def _check_size(self, data: bytes) -> bytes:
        if len(data) > self.limits.max_bytes:
            raise self._too_large()
        return data

    def _too_large(self) -> TooLarge:
        return TooLarge(f"An image may be at most {self.limits.max_bytes} bytes", param="messages")

    def decode(self, data: bytes) -> Image.Image:
        """The decoded image, after its format and pixel count pass."""
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                image = Image.open(io.BytesIO(data), formats=_FORMATS)
                width, height = image.size  # from the header: nothing decoded yet
                if width * height > self.limits.max_pixels:
                    raise Invalid(
                        f"The image is {width}x{height} pixels; at most {self.limits.max_pixels} pixels are read",
                        param="messages",
                    )
                image.load()
        except UnidentifiedImageError as e:
            raise Invalid(
                f"The image is not a readable image of a supported type ({', '.join(_FORMATS)})", param="messages"
            ) from e
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise Invalid(f"The image is corrupt or truncated: {e}", param="messages") from e
        return image


def _source(part: dict[str, Any]) -> str:
    """The URL or file id a part names, whichever SDK shaped it."""
    if part.get("file_id"):
        return str(part["file_id"])
    value = part.get("image_url", part.get("image"))
    if isinstance(value, dict):
        value = value.get("url")
    if not isinstance(value, str) or not value:
        raise Invalid(f"An image part of type '{part.get('type')}' names no image", param="messages")
    return value


def has_images(messages: list[dict[str, Any]]) -> bool:
    return any(
        isinstance(m.get("content"), list) and any(p.get("type") in IMAGE_PARTS for p in m["content"])
        for m in messages
    )
