"""POST /v1/ocr through the mistralai SDK: a PDF's text layer and a scanned page by
data URL, an image, an uploaded file's id, and the refusals (another workspace's
file, a corrupt or encrypted PDF, a blank scan, a remote URL)."""

from __future__ import annotations

import base64
from collections.abc import Callable

import pytest
from document_samples import encrypted_pdf, png, scanned_pdf, table_pdf, text_image, text_pdf
from mistralai.client import Mistral
from mistralai.client.errors import SDKError

from tramontane.docai import Tesseract

needs_tesseract = pytest.mark.skipif(not Tesseract().available(), reason="Tesseract is not installed")


def data_url(data: bytes, media_type: str) -> str:
    return f"data:{media_type};base64," + base64.b64encode(data).decode()


@pytest.fixture(scope="module")
def owner(live_server):
    return live_server.create_tenant("ocr-owner", ("inference", "fine-tune"))


@pytest.fixture(scope="module")
def client(owner, mistral_with_key: Callable[[str | None], Mistral]) -> Mistral:
    return mistral_with_key(owner.key)


@needs_tesseract
def test_pdf_pages_by_data_url(client: Mistral) -> None:
    scan = text_image(["Scanned annex", "Signed in Toulouse"])
    pdf = text_pdf([["Contract 77-B between the parties", "Payment within sixty days"]])
    mixed = scanned_pdf([scan])
    response = client.ocr.process(
        model="mistral-ocr-latest",
        document={"type": "document_url", "document_url": data_url(pdf, "application/pdf")},
        include_image_base64=True,
    )
    assert response.model == "tramontane-ocr" and response.usage_info.pages_processed == 1
    (page,) = response.pages
    assert page.index == 0 and "Contract 77-B between the parties" in page.markdown
    assert page.dimensions is not None and (page.dimensions.dpi, page.dimensions.width) == (200, 1700)
    assert response.usage_info.doc_size_bytes == len(pdf)
    scanned = client.ocr.process(
        model="mistral-ocr-latest",
        document={"type": "document_url", "document_url": data_url(mixed, "application/pdf")},
    )
    assert "toulouse" in scanned.pages[0].markdown.lower() and "annex" in scanned.pages[0].markdown.lower()


RESULTS = [["Region", "Q1", "Q2"], ["North", "120", "135"], ["South", "98", "101"]]


def test_a_pdf_table_inline_or_apart_in_the_asked_format(client: Mistral) -> None:
    """A ruled table in a PDF's text layer is a Markdown table where it stood; with
    `table_format`, it is in `tables` and the Markdown links to it, as Mistral's OCR answers."""
    pdf = table_pdf("Quarterly results", RESULTS, "Figures are in thousands of euros.")
    document = {"type": "document_url", "document_url": data_url(pdf, "application/pdf")}
    inline = client.ocr.process(model="mistral-ocr-latest", document=document).pages[0]
    assert inline.markdown == (
        "Quarterly results\n\n| Region | Q1 | Q2 |\n| --- | --- | --- |\n| North | 120 | 135 |\n"
        "| South | 98 | 101 |\n\nFigures are in thousands of euros."
    )
    assert not inline.tables
    apart = client.ocr.process(model="mistral-ocr-latest", document=document, table_format="html").pages[0]
    assert apart.markdown == "Quarterly results\n\n[tbl-0.html](tbl-0.html)\n\nFigures are in thousands of euros."
    (table,) = apart.tables
    assert table.id == "tbl-0.html" and table.format_ == "html"
    assert table.content.startswith("<table><tr><th>Region</th><th>Q1</th>") and "<td>135</td>" in table.content
    as_markdown = client.ocr.process(model="mistral-ocr-latest", document=document, table_format="markdown").pages[0]
    assert as_markdown.tables[0].content == inline.markdown.split("\n\n")[1]


def test_running_headers_and_footers_split_off_when_asked(client: Mistral) -> None:
    pages = [
        ["ACME Logistics - Annual report 2026", f"Section {n}: {topic}", f"Page {n} of 3"]
        for n, topic in ((1, "revenue grew"), (2, "costs fell"), (3, "outlook"))
    ]
    document = {"type": "document_url", "document_url": data_url(text_pdf(pages), "application/pdf")}
    split = client.ocr.process(model="mistral-ocr-latest", document=document, extract_header=True, extract_footer=True)
    assert [(p.header, p.markdown, p.footer) for p in split.pages] == [
        ("ACME Logistics - Annual report 2026", "Section 1: revenue grew", "Page 1 of 3"),
        ("ACME Logistics - Annual report 2026", "Section 2: costs fell", "Page 2 of 3"),
        ("ACME Logistics - Annual report 2026", "Section 3: outlook", "Page 3 of 3"),
    ]
    only_footer = client.ocr.process(model="mistral-ocr-latest", document=document, extract_footer=True).pages[0]
    assert only_footer.header is None and only_footer.footer == "Page 1 of 3"
    assert only_footer.markdown.startswith("ACME Logistics")
    kept = client.ocr.process(model="mistral-ocr-latest", document=document).pages[0]
    assert kept.header is None and "Page 1 of 3" in kept.markdown
    # A line on one page only is no running header: nothing is taken from a single page.
    single = {"type": "document_url", "document_url": data_url(text_pdf(pages[:1]), "application/pdf")}
    alone = client.ocr.process(model="mistral-ocr-latest", document=single, extract_header=True).pages[0]
    assert alone.header is None and alone.markdown.startswith("ACME Logistics")


@needs_tesseract
def test_image_and_uploaded_file(client: Mistral) -> None:
    image = png(text_image(["Order confirmed", "Livraison demain"]))
    response = client.ocr.process(
        model="mistral-ocr-latest", document={"type": "image_url", "image_url": data_url(image, "image/png")}
    )
    text = response.pages[0].markdown.lower()
    assert "order confirmed" in text and "livraison" in text
    pdf = text_pdf([["First page"], ["Second page has the total: 1250 EUR"], ["Third page"]])
    uploaded = client.files.upload(file={"file_name": "statement.pdf", "content": pdf}, purpose="ocr")
    pages = client.ocr.process(
        model="mistral-ocr-latest", document={"type": "file", "file_id": uploaded.id}, pages=[1]
    )
    assert [p.index for p in pages.pages] == [1] and "1250 EUR" in pages.pages[0].markdown


def test_another_workspaces_file_is_not_found(client: Mistral, mistral: Mistral) -> None:
    uploaded = client.files.upload(file={"file_name": "private.pdf", "content": text_pdf([["Private"]])}, purpose="ocr")
    with pytest.raises(SDKError) as hidden:
        mistral.ocr.process(model="mistral-ocr-latest", document={"type": "file", "file_id": uploaded.id})
    assert hidden.value.status_code == 404


@pytest.mark.parametrize(
    ("document", "status", "code"),
    [
        ({"type": "document_url", "document_url": data_url(b"%PDF-1.7 broken", "application/pdf")}, 400,
         "invalid_document"),
        ({"type": "document_url", "document_url": data_url(encrypted_pdf(), "application/pdf")}, 400,
         "encrypted_document"),
        ({"type": "document_url", "document_url": "https://example.org/a.pdf"}, 400, "url_not_supported"),
        ({"type": "image_url", "image_url": "data:image/png;base64,@@@"}, 400, "invalid_data_url"),
        ({"type": "document_url", "document_url": data_url(text_pdf([["x" * 40]]), "application/pdf")}, 400,
         "page_out_of_range"),
    ],
)
def test_bad_documents_get_a_clear_4xx(client: Mistral, document: dict, status: int, code: str) -> None:
    pages = [5] if code == "page_out_of_range" else None
    with pytest.raises(SDKError) as refused:
        client.ocr.process(model="mistral-ocr-latest", document=document, pages=pages)
    assert refused.value.status_code == status and code in refused.value.body


@needs_tesseract
def test_blank_scan_is_refused(client: Mistral) -> None:
    blank = scanned_pdf([text_image([])])
    with pytest.raises(SDKError) as refused:
        client.ocr.process(
            model="mistral-ocr-latest",
            document={"type": "document_url", "document_url": data_url(blank, "application/pdf")},
        )
    assert refused.value.status_code == 400 and "no_text_found" in refused.value.body


def test_unknown_model_is_not_found(client: Mistral) -> None:
    with pytest.raises(SDKError) as unknown:
        client.ocr.process(
            model="open-mistral-7b",
            document={"type": "document_url", "document_url": data_url(text_pdf([["Hello world"]]), "application/pdf")},
        )
    assert unknown.value.status_code == 404
