"""Word and HTML documents as Markdown: headings, paragraphs, list items and tables
(as Markdown tables), in document order."""

from __future__ import annotations

import io
import re

import docx
from bs4 import BeautifulSoup, Tag
from docx.table import Table
from docx.text.paragraph import Paragraph

_SPACES = re.compile(r"[ \t\r\f\v]+")
_WHITESPACE = re.compile(r"\s+")
_HEADING_LEVEL = re.compile(r"heading (\d)", re.IGNORECASE)
# HTML elements whose text is not part of the document.
_INVISIBLE = ("script", "style", "noscript", "template", "head", "svg", "iframe", "object")
_BLOCKS = ("h1", "h2", "h3", "h4", "h5", "h6", "p", "li", "pre", "blockquote", "table", "dt", "dd", "figcaption")


def markdown_table(rows: list[list[str]]) -> str:
    """`rows` (the first one the header) as a Markdown table; ragged rows are padded."""
    rows = [[_cell(text) for text in row] for row in rows if any(text.strip() for text in row)]
    if not rows:
        return ""
    width = max(len(row) for row in rows)
    rows = [row + [""] * (width - len(row)) for row in rows]
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + " --- |" * width]
    lines += ["| " + " | ".join(row) + " |" for row in rows[1:]]
    return "\n".join(lines)


def _cell(text: str) -> str:
    return _SPACES.sub(" ", text.replace("\n", " ")).strip().replace("|", "\\|")


# -- DOCX


def docx_markdown(data: bytes) -> str:
    document = docx.Document(io.BytesIO(data))
    blocks = []
    for item in document.iter_inner_content():
        block = _docx_table(item) if isinstance(item, Table) else _docx_paragraph(item)
        if block:
            blocks.append(block)
    return "\n\n".join(blocks)


def _docx_paragraph(paragraph: Paragraph) -> str:
    text = paragraph.text.strip()
    if not text:
        return ""
    style = (paragraph.style.name if paragraph.style is not None else "") or ""
    level = _HEADING_LEVEL.match(style)
    if level:
        return "#" * int(level.group(1)) + " " + text
    if style == "Title":
        return "# " + text
    if style.startswith("List Number"):
        return "1. " + text
    if style.startswith("List"):
        return "- " + text
    return text


def _docx_table(table: Table) -> str:
    return markdown_table([[cell.text for cell in row.cells] for row in table.rows])


# -- HTML


def html_markdown(html: str) -> str:
    soup = BeautifulSoup(html, "lxml")
    for hidden in soup.find_all(_INVISIBLE):
        hidden.decompose()
    root = soup.body or soup
    blocks = [block for block in (_html_block(tag) for tag in _outer_blocks(root)) if block]
    if not blocks:  # text outside any block element (a bare fragment)
        return _inline(root)
    return "\n\n".join(blocks)


def _outer_blocks(root: Tag) -> list[Tag]:
    """The block elements not inside another one (a table's cells belong to the table)."""
    return [tag for tag in root.find_all(_BLOCKS) if tag.find_parent(_BLOCKS) is None]


def _html_block(tag: Tag) -> str:
    if tag.name == "table":
        rows = [[cell.get_text(" ", strip=True) for cell in row.find_all(("th", "td"))] for row in tag.find_all("tr")]
        return markdown_table(rows)
    if tag.name == "pre":
        return "```\n" + tag.get_text().strip("\n") + "\n```"
    text = _inline(tag)
    if not text:
        return ""
    if tag.name[0] == "h" and tag.name[1:].isdigit():
        return "#" * int(tag.name[1:]) + " " + text
    if tag.name == "li":
        return ("1. " if tag.parent is not None and tag.parent.name == "ol" else "- ") + text
    if tag.name == "blockquote":
        return "> " + text
    return text


def _inline(tag: Tag) -> str:
    """The text of `tag` on one line: inline elements joined as written, runs of
    white space (line breaks in the source included) as one space."""
    return _WHITESPACE.sub(" ", tag.get_text()).strip()
