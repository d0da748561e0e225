"""Document AI: text and page markdown out of PDFs, images, DOCX and HTML, with
Tesseract reading the pages that carry no text layer."""

from .extract import Document, Page, PageImage, read_document
from .service import DocumentReader
from .ocr import Tesseract

__all__ = ["Document", "DocumentReader", "Page", "PageImage", "Tesseract", "read_document"]
