"""POST /v1/ocr, Mistral's document AI shape: a PDF or an image (a data URL or an
uploaded file's id) to pages of Markdown, read by `docai` (the PDF's text layer,
Tesseract for scanned pages and images).

Documents are not fetched from http(s) URLs: a server that fetches any URL a
client names reaches what the client cannot (the SSRF risk), so clients send the
bytes. Metered as a request of the OCR model with no tokens; the pages read are in
the response's `usage_info`."""

from __future__ import annotations

import base64
import binascii
from dataclasses import replace
from urllib.parse import unquote_to_bytes

from fastapi import APIRouter

from ..docai import Document, DocumentReader, Page
from ..docai.extract import require_text
from ..docai.running import RunningLines
from ..docai.schemas import (
    FileChunk,
    ImageURLChunk,
    OCRImage,
    OCRPage,
    OCRPageDimensions,
    OCRRequest,
    OCRResponse,
    OCRTable,
)
from ..errors import Invalid, NotFound
from ..inference.fast_path import Call, InferenceRoute

router = APIRouter(route_class=InferenceRoute)

OCR_MODEL = "tramontane-ocr"
# Names clients written for Mistral's API send; they get the same reader.
MISTRAL_OCR_PREFIX = "mistral-ocr"


@router.post("/v1/ocr", response_model=OCRResponse)
async def ocr(body: OCRRequest, call: Call) -> OCRResponse:
    _check_model(body.model)
    data, name, content_type = _source(body, call)
    reader: DocumentReader = call.request.app.state.document_reader
    document = await reader.read(
        data, name, content_type, pages=body.page_indices(), with_images=bool(body.include_image_base64)
    )
    require_text(document, name)
    response = OCRResponse(
        pages=_pages(document, body),
        model=OCR_MODEL,
        usage_info={"pages_processed": len(document.pages), "doc_size_bytes": len(data)},
    )
    call.meter.track(OCR_MODEL, response=lambda: response)
    return response


def _check_model(model: str | None) -> None:
    if model is None or model == OCR_MODEL or model.startswith(MISTRAL_OCR_PREFIX):
        return
    raise NotFound(f"The model '{model}' does not exist; OCR is served as '{OCR_MODEL}'", code="model_not_found",
        param="model")


def _source(body: OCRRequest, call: Call) -> tuple[bytes, str | None, str | None]:
    """The document's bytes, name and declared type."""
    document = body.document
    if isinstance(document, FileChunk):
        finetune = getattr(call.request.app.state, "finetune", None)
        if finetune is None:
            raise NotFound(f"No such file: '{document.file_id}'", code="file_not_found", param="document")
        row = finetune.files.get(call.principal.workspace_id, document.file_id)
        return finetune.files.read(row), row.filename, None
    if isinstance(document, ImageURLChunk):
        data, content_type = _data_url(document.url)
        return data, None, content_type
    data, content_type = _data_url(document.document_url)
    return data, document.document_name, content_type


def _data_url(url: str) -> tuple[bytes, str | None]:
    if not url.startswith("data:"):
        raise Invalid(
            "Documents are not fetched from URLs here: send a data: URL (base64) or upload the file and send its id",
            code="url_not_supported",
            param="document",
        )
    header, comma, payload = url[5:].partition(",")
    if not comma:
        raise Invalid("The data URL has no ',' before its data", code="invalid_data_url", param="document")
    media_type, *options = header.split(";")
    try:
        if "base64" in options:
            return base64.b64decode(payload, validate=True), media_type or None
        return unquote_to_bytes(payload), media_type or None
    except (binascii.Error, ValueError):
        raise Invalid("The data URL's base64 is not valid", code="invalid_data_url", param="document") from None


def _pages(document: Document, body: OCRRequest) -> list[OCRPage]:
    pages, budget = [], body.image_limit
    running = RunningLines.of(document.pages) if body.extract_header or body.extract_footer else None
    for page in document.pages:
        images = [image for image in page.images if _big_enough(image, body.image_min_size)]
        if budget is not None:
            images, budget = images[:budget], max(0, budget - len(images))
        header = footer = None
        if running is not None:
            header, markdown, footer = running.split(page, bool(body.extract_header), bool(body.extract_footer))
            page = replace(page, markdown=markdown)
        markdown, tables = _tables(page, body.table_format)
        pages.append(
            OCRPage(
                index=page.index,
                markdown=markdown,
                tables=tables,
                header=header,
                footer=footer,
                images=[
                    OCRImage(
                        id=image.id,
                        top_left_x=image.top_left_x,
                        top_left_y=image.top_left_y,
                        bottom_right_x=image.bottom_right_x,
                        bottom_right_y=image.bottom_right_y,
                        image_base64=_jpeg_data_url(image.jpeg) if body.include_image_base64 else None,
                    )
                    for image in images
                ],
                dimensions=OCRPageDimensions(dpi=page.dpi, height=page.height, width=page.width)
                if page.width
                else None,
            )
        )
    return pages


def _tables(page: Page, table_format: str | None) -> tuple[str, list[OCRTable]]:
    """The page's Markdown and tables: tables inline (Markdown tables) when no
    `table_format` is asked; else each table in `tables`, in that format, and a link
    to it where it stood (as Mistral's OCR answers)."""
    if table_format is None or not page.tables:
        return page.markdown, []
    markdown, tables = page.markdown, []
    extension = "md" if table_format == "markdown" else "html"
    for table in page.tables:
        name = f"{table.id}.{extension}"
        markdown = markdown.replace(table.markdown(), f"[{name}]({name})", 1)
        content = table.markdown() if table_format == "markdown" else table.html()
        tables.append(OCRTable(id=name, content=content, format=table_format))
    return markdown, tables


def _big_enough(image, min_size: int | None) -> bool:
    if not min_size:
        return True
    side = min(image.bottom_right_x - image.top_left_x, image.bottom_right_y - image.top_left_y)
    return side >= min_size


def _jpeg_data_url(jpeg: bytes | None) -> str | None:
    return "data:image/jpeg;base64," + base64.b64encode(jpeg).decode("ascii") if jpeg else None
