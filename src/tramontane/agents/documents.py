"""Turning an uploaded document into searchable passages: text extraction and chunking."""

from __future__ import annotations

import re
from pathlib import PurePosixPath

from ..errors import Invalid

# Formats read as UTF-8 text. Binary formats (PDF, office files) are refused
# rather than indexed as garbage.
TEXT_EXTENSIONS = frozenset(
    {"txt", "md", "markdown", "rst", "csv", "tsv", "json", "jsonl", "html", "xml", "yaml", "yml"}
)
DEFAULT_CHUNK_SIZE = 800  # characters: about the 256 word pieces MiniLM reads at most
MAX_DOCUMENT_BYTES = 16 * 1024 * 1024

_PARAGRAPH = re.compile(r"\n\s*\n")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def extension_of(name: str) -> str | None:
    suffix = PurePosixPath(name).suffix.lower().lstrip(".")
    return suffix or None


def extract_text(name: str, content_type: str | None, data: bytes) -> str:
    """The document's text; a 400 for formats that cannot be read as text."""
    extension = extension_of(name)
    textual = extension in TEXT_EXTENSIONS or (content_type or "").startswith("text/")
    if not textual:
        raise Invalid(f"Cannot extract text from '{name}': upload plain text or Markdown", code="unsupported_document_type"
        )
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise Invalid(f"'{name}' is not valid UTF-8 text", code="unsupported_document_type") from None


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
