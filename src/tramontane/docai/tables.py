"""Ruled tables in a PDF page's text layer, kept as tables.

PDFium gives a page's text line by line, so a table's cells come out as runs of
words. pdfplumber finds a table from the lines and rectangles that draw its grid
and reads each cell's words; the page is then the text outside the tables and the
tables themselves, in reading order (top to bottom). Only ruled tables are
found: a table drawn by alignment alone stays text lines (guessing columns from
whitespace splits ordinary text into false tables)."""

from __future__ import annotations

import io
from dataclasses import dataclass
from html import escape

import pdfplumber
from pdfplumber.page import Page as PlumberPage

from .markup import markdown_table

# Both directions from drawn lines only: no table is guessed from text alignment.
RULED = {"vertical_strategy": "lines", "horizontal_strategy": "lines"}


@dataclass
class PageTable:
    id: str  # tbl-N, numbered through the document
    rows: list[list[str]]

    def markdown(self) -> str:
        return markdown_table(self.rows)

    def html(self) -> str:
        body = "".join(
            "<tr>" + "".join(f"<{tag}>{escape(cell)}</{tag}>" for cell in row) + "</tr>"
            for tag, row in (("th" if i == 0 else "td", row) for i, row in enumerate(self.rows))
        )
        return f"<table>{body}</table>"


@dataclass
class TextLine:
    text: str


class RuledTables:
    """A PDF opened by pdfplumber, for the pages that PDFium found drawn lines on
    (opened on first use: most pages have no table, and pdfplumber parses slowly)."""

    def __init__(self, data: bytes):
        self._data = data
        self._pdf: pdfplumber.PDF | None = None

    def page_blocks(self, index: int, first_id: int) -> list[TextLine | PageTable] | None:
        """Page `index` as text lines and tables in reading order, or None when it
        has no ruled table (the caller keeps PDFium's text)."""
        if self._pdf is None:
            self._pdf = pdfplumber.open(io.BytesIO(self._data))
        return _blocks(self._pdf.pages[index], first_id)

    def close(self) -> None:
        if self._pdf is not None:
            self._pdf.close()


def _blocks(page: PlumberPage, first_id: int) -> list[TextLine | PageTable] | None:
    found = []
    for table in page.find_tables(RULED):
        rows = [[_cell(cell) for cell in row] for row in table.extract()]
        rows = [row for row in rows if any(row)]
        if len(rows) >= 2 and max(len(row) for row in rows) >= 2:  # a lone framed box is not a table
            found.append((table.bbox, rows))
    if not found:
        return None
    boxes = [bbox for bbox, _ in found]

    def outside(obj: dict) -> bool:
        if obj.get("object_type") != "char":
            return True
        x, y = (obj["x0"] + obj["x1"]) / 2, (obj["top"] + obj["bottom"]) / 2
        return not any(x0 <= x <= x1 and top <= y <= bottom for x0, top, x1, bottom in boxes)

    placed: list[tuple[float, TextLine | PageTable]] = [
        (line["top"], TextLine(line["text"])) for line in page.filter(outside).extract_text_lines()
    ]
    placed += [(bbox[1], PageTable(f"tbl-{first_id + i}", rows)) for i, (bbox, rows) in enumerate(found)]
    return [block for _, block in sorted(placed, key=lambda item: item[0])]


def _cell(text: str | None) -> str:
    return " ".join((text or "").split())
