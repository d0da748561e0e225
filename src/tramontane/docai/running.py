"""Running headers and footers: the lines a document repeats at the top or the
bottom of its pages ("ACME - Annual report 2026", "Page 3 of 12").

A page's first line is its header, and its last line its footer, when the same
line (numbers aside, so page numbers match) starts or ends at least half of the
pages read, and at least two. One page alone shows no repetition: nothing is
split off it."""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

from .extract import Page

_NUMBERS = re.compile(r"\d+")


@dataclass(frozen=True)
class RunningLines:
    headers: frozenset[str]  # normalized
    footers: frozenset[str]

    @classmethod
    def of(cls, pages: list[Page]) -> RunningLines:
        firsts = Counter(_key(lines[0]) for lines in map(_lines, pages) if lines)
        lasts = Counter(_key(lines[-1]) for lines in map(_lines, pages) if len(lines) > 1)
        least = max(2, (len(pages) + 1) // 2)
        return cls(
            frozenset(key for key, count in firsts.items() if count >= least),
            frozenset(key for key, count in lasts.items() if count >= least),
        )

    def split(self, page: Page, header: bool, footer: bool) -> tuple[str | None, str, str | None]:
        """The page's header (when asked and found), its Markdown without what was
        split off, and its footer."""
        lines = page.markdown.split("\n")
        text = [i for i, line in enumerate(lines) if line.strip() and not line.startswith("![")]
        top = bottom = None
        dropped: set[int] = set()
        if header and text and _key(lines[text[0]]) in self.headers:
            top = lines[text[0]].strip()
            dropped.add(text[0])
        if footer and len(text) > 1 and _key(lines[text[-1]]) in self.footers:
            bottom = lines[text[-1]].strip()
            dropped.add(text[-1])
        body = "\n".join(line for i, line in enumerate(lines) if i not in dropped).strip("\n")
        return top, body, bottom


def _lines(page: Page) -> list[str]:
    """The page's lines of text (not its figures' references)."""
    return [line for line in page.markdown.split("\n") if line.strip() and not line.startswith("![")]


def _key(line: str) -> str:
    return _NUMBERS.sub("#", " ".join(line.split()).lower())
