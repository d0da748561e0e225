"""docai's readers on documents of known text: PDF text layers, Tesseract on scans
and images, Word and HTML as Markdown, and the refusals of what cannot be read."""

from __future__ import annotations

import io

import pytest
from document_samples import HTML_PAGE, encrypted_pdf, png, scanned_pdf, table_pdf, text_image, text_pdf, word_file
from pypdf import PdfReader, PdfWriter

from tramontane.docai import Tesseract, read_document
from tramontane.docai.extract import MAX_IMAGE_PIXELS, require_text
from tramontane.errors import Invalid, TooLarge

tesseract = Tesseract()
needs_tesseract = pytest.mark.skipif(not tesseract.available(), reason="Tesseract is not installed")


def words(text: str) -> set[str]:
    return {word.strip(".,:;|").lower() for word in text.split()}


def test_pdf_text_layer_by_page() -> None:
    pdf = text_pdf([["Invoice number 4417", "Due within thirty days"], ["Second page: bank transfer only"]])
    document = read_document(pdf, "invoice.pdf", None, tesseract)
    assert document.kind == "pdf" and document.page_count == 2
    first, second = document.pages
    assert (first.index, second.index) == (0, 1) and not first.ocr
    assert "Invoice number 4417" in first.markdown and "Due within thirty days" in first.markdown
    assert "bank transfer" in second.markdown and "4417" not in second.markdown
    assert (first.width, first.height, first.dpi) == (1700, 2200, 200)  # US Letter at 200 dpi
    only = read_document(pdf, "invoice.pdf", None, tesseract, pages=[1])
    assert [page.index for page in only.pages] == [1]


@needs_tesseract
def test_scanned_pdf_and_image_are_read_by_tesseract() -> None:
    scan = scanned_pdf([text_image(["Hospital discharge summary", "Patient walked home"])])
    document = read_document(scan, "scan.pdf", None, tesseract)
    assert document.pages[0].ocr
    assert {"hospital", "discharge", "summary", "patient", "walked", "home"} <= words(document.text)
    image = read_document(png(text_image(["Bonjour le monde", "Facture payee"])), None, "image/png", tesseract)
    assert image.kind == "image" and {"bonjour", "monde", "facture"} <= words(image.text)


def test_a_ruled_pdf_table_is_a_markdown_table_in_reading_order() -> None:
    rows = [["Item", "Qty", "Price"], ["Pens | blue", "12", "3.50"], ["Paper", "5", "22.00"]]
    pdf = table_pdf("Order 5521", rows, "Delivery on Monday.")
    (page,) = read_document(pdf, "order.pdf", None, tesseract).pages
    assert page.markdown.split("\n\n") == [
        "Order 5521",
        "| Item | Qty | Price |\n| --- | --- | --- |\n| Pens \\| blue | 12 | 3.50 |\n| Paper | 5 | 22.00 |",
        "Delivery on Monday.",
    ]
    (table,) = page.tables
    assert table.id == "tbl-0" and table.rows == rows
    # Text without drawn lines keeps PDFium's lines: no table is guessed from alignment.
    plain = read_document(text_pdf([["Item   Qty   Price", "Pens   12    3.50"]]), "p.pdf", None, tesseract)
    assert plain.pages[0].tables == [] and plain.pages[0].markdown == "Item Qty Price\nPens 12 3.50"
    # Tables are numbered through the pages read.
    both = PdfWriter()
    for heading in ("First", "Second"):
        both.append(PdfReader(io.BytesIO(table_pdf(heading, rows, "End."))))
    merged = io.BytesIO()
    both.write(merged)
    document = read_document(merged.getvalue(), "two.pdf", None, tesseract)
    assert [[t.id for t in p.tables] for p in document.pages] == [["tbl-0"], ["tbl-1"]]
    assert read_document(merged.getvalue(), "two.pdf", None, tesseract, pages=[1]).pages[0].tables[0].id == "tbl-0"


def test_word_file_keeps_headings_lists_and_tables() -> None:
    document = read_document(word_file(), "report.docx", None, tesseract)
    assert document.kind == "docx"
    assert "# Quarterly report" in document.text
    assert "- Open the new office in Lyon" in document.text
    assert "| Region | Revenue |\n| --- | --- |\n| North | 120 |\n| South | 95 |" in document.text


def test_html_is_read_without_scripts() -> None:
    document = read_document(HTML_PAGE.encode(), "policy.html", "text/html", tesseract)
    assert document.kind == "html"
    assert document.text.startswith("# Travel policy")
    assert "Trains are preferred for trips under four hours." in document.text
    assert "- Keep every receipt" in document.text and "| Second | Always |" in document.text
    assert "alert" not in document.text and "color" not in document.text


@pytest.mark.parametrize(
    ("data", "name", "code"),
    [
        (b"%PDF-1.7 \x00\x01 truncated", "broken.pdf", "invalid_document"),
        (encrypted_pdf(), "locked.pdf", "encrypted_document"),
        (b"PK\x03\x04 not a zip", "broken.docx", "invalid_document"),
        (b"\x89PNG\r\n\x1a\n garbage", "broken.png", "invalid_image"),
        (b"\x00\x01\x02 binary", "blob.bin", "unsupported_document_type"),
        (b"\xff\xfe not utf-8", "notes.txt", "invalid_document"),
    ],
)
def test_unreadable_documents_are_refused(data: bytes, name: str, code: str) -> None:
    with pytest.raises(Invalid) as refused:
        read_document(data, name, None, tesseract)
    assert refused.value.code == code


def test_page_out_of_range_and_huge_image_are_refused() -> None:
    with pytest.raises(Invalid) as outside:
        read_document(text_pdf([["one page only"]]), "a.pdf", None, tesseract, pages=[3])
    assert outside.value.code == "page_out_of_range"
    side = int(MAX_IMAGE_PIXELS**0.5) + 100
    with pytest.raises(TooLarge):
        read_document(png(__import__("PIL.Image", fromlist=["Image"]).new("1", (side, side))), None, None, tesseract)


@needs_tesseract
def test_blank_scan_has_no_text() -> None:
    blank = read_document(scanned_pdf([text_image([])]), "blank.pdf", None, tesseract)
    with pytest.raises(Invalid) as empty:
        require_text(blank, "blank.pdf")
    assert empty.value.code == "no_text_found"
