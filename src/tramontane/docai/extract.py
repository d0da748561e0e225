"""A document's pages as Markdown, whatever it came as: the text layer of a PDF
(pypdfium2), Tesseract for scanned pages and images, python-docx for Word files,
BeautifulSoup for HTML, and UTF-8 text as it is."""

from __future__ import annotations

import io
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Protocol

import pypdfium2 as pdfium
import pypdfium2.raw as pdfium_c
from PIL import Image, UnidentifiedImageError

from ..errors import Invalid, TooLarge
from .markup import docx_markdown, html_markdown
from .tables import PageTable, RuledTables, TextLine

# Pages are reported, and scanned pages rendered for OCR, at Mistral's 200 dpi.
DPI = 200
POINTS_PER_INCH = 72
MAX_PAGES = 500
# An image over this many pixels (a 7000 x 7000 scan) is refused before it is decoded.
MAX_IMAGE_PIXELS = 50_000_000
# A page whose text layer has fewer characters than this is treated as scanned.
MIN_TEXT_LAYER_CHARS = 16
# A picture covering most of a page is the scan itself, not a figure in it.
FULL_PAGE_FRACTION = 0.85

TEXT_EXTENSIONS = frozenset({"txt", "md", "markdown", "rst", "csv", "tsv", "json", "jsonl", "xml", "yaml", "yml"})
HTML_EXTENSIONS = frozenset({"html", "htm", "xhtml"})


class TextReader(Protocol):
    def read(self, image: Image.Image) -> str: ...


@dataclass
class PageImage:
    """A picture on a page, its box in pixels at the page's dpi, and its JPEG bytes."""

    id: str
    top_left_x: int
    top_left_y: int
    bottom_right_x: int
    bottom_right_y: int
    jpeg: bytes | None = None


@dataclass
class Page:
    index: int  # 0-based, in the whole document
    markdown: str
    width: int
    height: int
    dpi: int = DPI
    images: list[PageImage] = field(default_factory=list)
    ocr: bool = False  # read by Tesseract (no text layer)
    tables: list[PageTable] = field(default_factory=list)  # also in `markdown`, where they stand


@dataclass
class Document:
    kind: str  # pdf | image | docx | html | text
    pages: list[Page]
    page_count: int  # in the whole document, whichever pages were read

    @property
    def text(self) -> str:
        return "\n\n".join(page.markdown for page in self.pages if page.markdown.strip())


def extension_of(name: str | None) -> str | None:
    suffix = PurePosixPath(name or "").suffix.lower().lstrip(".")
    return suffix or None


def read_document(
    data: bytes,
    name: str | None,
    content_type: str | None,
    reader: TextReader,
    *,
    pages: Iterable[int] | None = None,
    with_images: bool = False,
) -> Document:
    """The pages of `data` (only `pages`, 0-based, when given). Raises Invalid for
    formats it cannot read, corrupt or encrypted files and pages out of range."""
    kind = sniff(data, name, content_type)
    if kind == "pdf":
        return _read_pdf(data, reader, pages, with_images)
    if kind == "image":
        return _only(Document("image", [_read_image(data, reader)], 1), pages)
    if kind == "docx":
        return _only(Document("docx", [Page(0, _docx(data), 0, 0)], 1), pages)
    if kind == "html":
        return _only(Document("html", [Page(0, html_markdown(_decode(data, name)), 0, 0)], 1), pages)
    return _only(Document("text", [Page(0, _decode(data, name), 0, 0)], 1), pages)


def sniff(data: bytes, name: str | None, content_type: str | None) -> str:
    """What `data` is, by its first bytes before its name or declared type."""
    extension = extension_of(name)
    mime = (content_type or "").split(";")[0].strip().lower()
    if data[:5] == b"%PDF-" or extension == "pdf" or mime == "application/pdf":
        return "pdf"  # a file named .pdf without the header is read as one, and refused as corrupt
    if data[:4] == b"PK\x03\x04" and (extension == "docx" or _is_docx(data)):
        return "docx"
    if extension == "docx":
        raise Invalid(f"'{name}' is not a Word (DOCX) file", code="invalid_document")
    if _looks_like_image(data):
        return "image"
    if extension in HTML_EXTENSIONS or mime in {"text/html", "application/xhtml+xml"}:
        return "html"
    head = data[:512].lstrip().lower()
    if head.startswith((b"<!doctype html", b"<html")):
        return "html"
    if extension in TEXT_EXTENSIONS or mime.startswith("text/"):
        return "text"
    raise Invalid(
        f"Cannot read '{name or 'the document'}': send a PDF, an image, a DOCX or HTML file, or plain text",
        code="unsupported_document_type",
    )


def _is_docx(data: bytes) -> bool:
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            return "word/document.xml" in archive.namelist()
    except zipfile.BadZipFile:
        return False


def _looks_like_image(data: bytes) -> bool:
    signatures = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a", b"II*\x00", b"MM\x00*", b"BM")
    return data.startswith(signatures) or (data[:4] == b"RIFF" and data[8:12] == b"WEBP")


def _decode(data: bytes, name: str | None) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise Invalid(f"'{name or 'the document'}' is not valid UTF-8 text", code="invalid_document") from None


def _only(document: Document, pages: Iterable[int] | None) -> Document:
    if pages is not None:
        wanted = sorted(set(pages))
        _check_range(wanted, document.page_count)
        document.pages = [page for page in document.pages if page.index in wanted]
    return document


def _check_range(wanted: list[int], count: int) -> None:
    outside = [index for index in wanted if index < 0 or index >= count]
    if outside:
        raise Invalid(
            f"Page {outside[0]} is out of range: the document has {count} page(s), numbered from 0",
            code="page_out_of_range",
            param="pages",
        )


# -- images


def open_image(data: bytes) -> Image.Image:
    """The decoded image; 413 for one too large to decode safely, 400 for a corrupt one."""
    try:
        image = Image.open(io.BytesIO(data))
    except (UnidentifiedImageError, OSError):
        raise Invalid("The image is corrupt or in a format that cannot be read", code="invalid_image") from None
    width, height = image.size
    if width * height > MAX_IMAGE_PIXELS:
        raise TooLarge(
            f"The image is {width} x {height} pixels; at most {MAX_IMAGE_PIXELS:,} pixels are read",
            code="image_too_large",
        )
    try:
        image.load()
    except (OSError, Image.DecompressionBombError, SyntaxError):
        raise Invalid("The image is corrupt or truncated", code="invalid_image") from None
    return image


def _read_image(data: bytes, reader: TextReader) -> Page:
    image = open_image(data)
    dpi = image.info.get("dpi", (DPI, DPI))[0]
    return Page(0, reader.read(image).strip(), image.width, image.height, int(round(float(dpi))), ocr=True)


# -- PDF


def _open_pdf(data: bytes) -> pdfium.PdfDocument:
    try:
        return pdfium.PdfDocument(data)
    except pdfium.PdfiumError as exc:
        if exc.err_code == pdfium_c.FPDF_ERR_PASSWORD:
            raise Invalid("The PDF is encrypted with a password; upload it decrypted", code="encrypted_document") from None
        raise Invalid("The PDF is corrupt and cannot be read", code="invalid_document") from None


def _read_pdf(data: bytes, reader: TextReader, pages: Iterable[int] | None, with_images: bool) -> Document:
    pdf = _open_pdf(data)
    ruled = RuledTables(data)
    try:
        count = len(pdf)
        wanted = sorted(set(pages)) if pages is not None else list(range(count))
        _check_range(wanted, count)
        if len(wanted) > MAX_PAGES:
            raise TooLarge(f"At most {MAX_PAGES} pages are read per request", code="too_many_pages", param="pages")
        read: list[Page] = []
        image_count = table_count = 0
        for index in wanted:
            page = _read_pdf_page(pdf[index], index, reader, with_images, image_count, ruled, table_count)
            image_count += len(page.images)
            table_count += len(page.tables)
            read.append(page)
        return Document("pdf", read, count)
    finally:
        ruled.close()
        pdf.close()


def _read_pdf_page(
    page: pdfium.PdfPage,
    index: int,
    reader: TextReader,
    with_images: bool,
    first_image: int,
    ruled: RuledTables,
    first_table: int,
) -> Page:
    scale = DPI / POINTS_PER_INCH
    width_pt, height_pt = page.get_size()
    width, height = round(width_pt * scale), round(height_pt * scale)
    textpage = page.get_textpage()
    text = textpage.get_text_range().replace("\r\n", "\n").replace("\r", "\n").strip()
    textpage.close()
    if len(text) >= MIN_TEXT_LAYER_CHARS:
        images = _page_images(page, scale, height_pt, first_image, with_images)
        figures = "".join(f"\n\n![{image.id}]({image.id})" for image in images)
        blocks = ruled.page_blocks(index, first_table) if _draws_lines(page) else None
        if blocks is None:
            return Page(index, _paragraphs(text) + figures, width, height, images=images)
        markdown, tables = _with_tables(blocks)
        return Page(index, markdown + figures, width, height, images=images, tables=tables)
    bitmap = page.render(scale=scale, grayscale=True)
    try:
        return Page(index, reader.read(bitmap.to_pil()).strip(), width, height, ocr=True)
    finally:
        bitmap.close()


def _draws_lines(page: pdfium.PdfPage) -> bool:
    """Whether the page has path objects (lines, rectangles): a ruled table needs them."""
    return next(iter(page.get_objects(filter=(pdfium_c.FPDF_PAGEOBJ_PATH,))), None) is not None


def _with_tables(blocks: list[TextLine | PageTable]) -> tuple[str, list[PageTable]]:
    """The page's Markdown: its runs of text lines and its tables (Markdown tables),
    a blank line between each; and the tables."""
    chunks: list[str] = []
    lines: list[str] = []
    tables: list[PageTable] = []
    for block in blocks:
        if isinstance(block, TextLine):
            lines.append(block.text)
            continue
        if lines:
            chunks.append("\n".join(lines))
            lines = []
        chunks.append(block.markdown())
        tables.append(block)
    if lines:
        chunks.append("\n".join(lines))
    return "\n\n".join(chunks), tables


def _paragraphs(text: str) -> str:
    """PDFium gives one line per text line; a blank line stays a paragraph break."""
    return "\n".join(line.rstrip() for line in text.split("\n"))


def _page_images(page: pdfium.PdfPage, scale: float, height_pt: float, first: int, with_images: bool) -> list[PageImage]:
    width_pt = page.get_width()
    images: list[PageImage] = []
    for obj in page.get_objects(filter=(pdfium_c.FPDF_PAGEOBJ_IMAGE,)):
        left, bottom, right, top = obj.get_pos()
        if (right - left) * (top - bottom) >= FULL_PAGE_FRACTION * width_pt * height_pt:
            continue
        image = PageImage(
            f"img-{first + len(images)}.jpeg",
            round(left * scale),
            round((height_pt - top) * scale),
            round(right * scale),
            round((height_pt - bottom) * scale),
        )
        if with_images:
            image.jpeg = _jpeg(obj)
        images.append(image)
    return images


def _jpeg(obj: pdfium.PdfImage) -> bytes | None:
    try:
        picture = obj.get_bitmap(render=True).to_pil()
    except pdfium.PdfiumError:
        return None  # a picture PDFium cannot decode keeps its box, without pixels
    out = io.BytesIO()
    picture.convert("RGB").save(out, format="JPEG", quality=85)
    return out.getvalue()


# -- DOCX


def _docx(data: bytes) -> str:
    try:
        return docx_markdown(data)
    except (zipfile.BadZipFile, KeyError, ValueError) as exc:
        raise Invalid(f"The Word file is corrupt: {exc}", code="invalid_document") from None
    except Exception as exc:  # python-docx raises its own PackageNotFoundError and lxml's errors
        if type(exc).__module__.startswith(("docx", "lxml")):
            raise Invalid("The Word file is corrupt and cannot be read", code="invalid_document") from None
        raise


def require_text(document: Document, name: str | None) -> None:
    """A 400 for a document with no text at all (a blank scan, an empty file). Not a
    422: Mistral's SDK reads every 422 as a request validation error."""
    if not document.text.strip():
        raise Invalid(
            f"No text was found in '{name or 'the document'}' (a blank or unreadable scan?)", code="no_text_found"
        )
