"""Turning an uploaded document's pages (read by `docai`) into searchable passages."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import PurePosixPath

from ..docai import Document

DEFAULT_CHUNK_SIZE = 800  # characters: about the 256 word pieces MiniLM reads at most
MAX_DOCUMENT_BYTES = 16 * 1024 * 1024

_PARAGRAPH = re.compile(r"\n\s*\n")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def extension_of(name: str) -> str | None:
    suffix = PurePosixPath(name).suffix.lower().lstrip(".")
    return suffix or None


@dataclass(frozen=True)
class Passage:
    text: str
    page: int | None  # 1-based, for paged documents (PDF)


def passages(document: Document, size: int) -> list[Passage]:
    """The document's chunks, each within one page, so that a citation names its page."""
    paged = document.kind == "pdf"
    return [
        Passage(chunk, page.index + 1 if paged else None)
        for page in document.pages
        for chunk in chunk_text(page.markdown, size)
    ]


def chunk_text(text: str, size: int) -> list[str]:
    """Passages of at most `size` characters, cut at paragraph, then sentence, then
    word boundaries, so that a passage reads as a whole when cited."""
    pieces: list[str] = []
    for paragraph in _PARAGRAPH.split(text):
        paragraph = paragraph.strip()
        if not paragraph:
            continue
        if len(paragraph) <= size:
            pieces.append(paragraph)
            continue
        for sentence in _SENTENCE_END.split(paragraph):
            while len(sentence) > size:
                cut = sentence.rfind(" ", 0, size)
                cut = cut if cut > 0 else size
                pieces.append(sentence[:cut])
                sentence = sentence[cut:].lstrip()
            if sentence:
                pieces.append(sentence)
    chunks: list[str] = []
    for piece in pieces:  # pack neighbours together up to `size`; a Markdown heading opens a chunk
        if chunks and not piece.startswith("#") and len(chunks[-1]) + 2 + len(piece) <= size:
            chunks[-1] += "\n\n" + piece
        else:
            chunks.append(piece)
    return chunks
