"""`DocumentReader`: documents read off the event loop, a few at a time."""

from __future__ import annotations

from collections.abc import Iterable
from functools import partial

import anyio
import anyio.to_thread

from .extract import Document, TextReader, read_document
from .ocr import Tesseract

# OCR holds a core for seconds per page: a few documents at once keep the others'
# requests (and the engine) served; the rest wait their turn.
DEFAULT_CONCURRENCY = 2


class DocumentReader:
    """What the OCR endpoint and document libraries read documents with."""

    def __init__(self, reader: TextReader | None = None, concurrency: int = DEFAULT_CONCURRENCY):
        self.reader = reader or Tesseract()
        self._slots = anyio.Semaphore(concurrency)

    async def read(
        self,
        data: bytes,
        name: str | None,
        content_type: str | None,
        *,
        pages: Iterable[int] | None = None,
        with_images: bool = False,
    ) -> Document:
        call = partial(read_document, data, name, content_type, self.reader, pages=pages, with_images=with_images)
        async with self._slots:
            return await anyio.to_thread.run_sync(call)
