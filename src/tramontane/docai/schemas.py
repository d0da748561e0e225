"""`/v1/ocr` bodies, in Mistral's shapes (mistralai's OCRRequest and OCRResponse)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ..errors import Invalid


class DocumentURLChunk(BaseModel):
    type: Literal["document_url"] = "document_url"
    document_url: str
    document_name: str | None = None


class ImageURL(BaseModel):
    url: str
    detail: str | None = None


class ImageURLChunk(BaseModel):
    type: Literal["image_url"] = "image_url"
    image_url: str | ImageURL

    @property
    def url(self) -> str:
        return self.image_url if isinstance(self.image_url, str) else self.image_url.url


class FileChunk(BaseModel):
    type: Literal["file"] = "file"
    file_id: str


DocumentSource = Annotated[DocumentURLChunk | ImageURLChunk | FileChunk, Field(discriminator="type")]


class OCRRequest(BaseModel):
    model_config = ConfigDict(extra="allow")  # annotation options we do not run are accepted and ignored

    model: str | None = None
    id: str | None = None
    document: DocumentSource
    pages: str | list[int] | None = None
    include_image_base64: bool | None = None
    image_limit: int | None = Field(default=None, ge=0)
    image_min_size: int | None = Field(default=None, ge=0)
    table_format: Literal["markdown", "html"] | None = None
    extract_header: bool | None = None
    extract_footer: bool | None = None
    include_blocks: bool | None = None
    bbox_annotation_format: dict[str, Any] | None = None
    document_annotation_format: dict[str, Any] | None = None
    document_annotation_prompt: str | None = None

    def page_indices(self) -> list[int] | None:
        """`pages` as 0-based indices: a list, or a string such as "0,2-4"."""
        if self.pages is None:
            return None
        if isinstance(self.pages, list):
            return self.pages
        indices: list[int] = []
        for part in filter(None, (p.strip() for p in self.pages.split(","))):
            first, dash, last = part.partition("-")
            try:
                start, end = int(first), int(last if dash else first)
            except ValueError:
                raise Invalid(f"pages: '{part}' is not a page number or range", param="pages") from None
            if end < start or end - start > 10_000:
                raise Invalid(f"pages: '{part}' is not a valid range", param="pages")
            indices.extend(range(start, end + 1))
        return indices


class OCRImage(BaseModel):
    id: str
    top_left_x: int | None
    top_left_y: int | None
    bottom_right_x: int | None
    bottom_right_y: int | None
    image_base64: str | None = None


class OCRPageDimensions(BaseModel):
    dpi: int
    height: int
    width: int


class OCRTable(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    id: str
    content: str
    format: Literal["markdown", "html"] = "markdown"


class OCRPage(BaseModel):
    index: int
    markdown: str
    images: list[OCRImage]
    dimensions: OCRPageDimensions | None
    tables: list[OCRTable] = []
    hyperlinks: list[str] = []
    header: str | None = None
    footer: str | None = None


class OCRUsageInfo(BaseModel):
    pages_processed: int
    doc_size_bytes: int | None = None


class OCRResponse(BaseModel):
    pages: list[OCRPage]
    model: str
    usage_info: OCRUsageInfo
    document_annotation: str | None = None
