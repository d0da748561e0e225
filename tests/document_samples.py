"""Documents with known text, made on the fly: a PDF with a text layer (written
object by object), a scanned PDF and an image (text drawn by Pillow), a Word file
with a table (python-docx) and an encrypted PDF (pypdf)."""

from __future__ import annotations

import io

import docx
from PIL import Image, ImageDraw, ImageFont
from pypdf import PdfWriter


def text_pdf(pages: list[list[str]]) -> bytes:
    """A PDF whose pages carry `pages`' lines in Helvetica, as a text layer."""
    streams = []
    for lines in pages:
        ops = ["BT", "/F1 14 Tf", "16 TL", "72 720 Td"]
        for line in lines:
            ops += [f"({_escaped(line)}) Tj", "T*"]
        ops.append("ET")
        streams.append("\n".join(ops))
    return _pdf(streams)


def table_pdf(heading: str, rows: list[list[str]], after: str) -> bytes:
    """A one-page PDF: a heading line, `rows` in a ruled grid (drawn with lines, as
    word processors write tables), and a line of text below it."""
    left, top, width, height = 72, 680, 150, 24
    ops = ["BT", "/F1 14 Tf", f"72 720 Td ({_escaped(heading)}) Tj", "ET", "0.5 w"]
    columns = max(len(row) for row in rows)
    for r in range(len(rows) + 1):  # horizontal rules
        y = top - r * height
        ops.append(f"{left} {y} m {left + columns * width} {y} l S")
    for c in range(columns + 1):  # vertical rules
        x = left + c * width
        ops.append(f"{x} {top} m {x} {top - len(rows) * height} l S")
    for r, row in enumerate(rows):
        for c, cell in enumerate(row):
            x, y = left + c * width + 6, top - (r + 1) * height + 8
            ops.append(f"BT /F1 11 Tf {x} {y} Td ({_escaped(cell)}) Tj ET")
    ops.append(f"BT /F1 14 Tf 72 {top - len(rows) * height - 40} Td ({_escaped(after)}) Tj ET")
    return _pdf(["\n".join(ops)])


def _escaped(text: str) -> str:
    return text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")


def _pdf(streams: list[str]) -> bytes:
    """A PDF of one page per content stream, in Letter size, with Helvetica as /F1."""
    objects: list[bytes] = []
    kids = " ".join(f"{4 + 2 * i} 0 R" for i in range(len(streams)))
    objects.append(b"<< /Type /Catalog /Pages 2 0 R >>")
    objects.append(f"<< /Type /Pages /Kids [{kids}] /Count {len(streams)} >>".encode())
    objects.append(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>")
    for i, text in enumerate(streams):
        stream = text.encode("latin-1")
        objects.append(
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << /Font << /F1 3 0 R >> >> "
            f"/Contents {5 + 2 * i} 0 R >>".encode()
        )
        objects.append(b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream")
    out = io.BytesIO()
    out.write(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(out.tell())
        out.write(b"%d 0 obj\n" % number + body + b"\nendobj\n")
    xref = out.tell()
    out.write(b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1))
    for offset in offsets:
        out.write(b"%010d 00000 n \n" % offset)
    out.write(b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref))
    return out.getvalue()


def text_image(lines: list[str], size: tuple[int, int] = (1400, 500)) -> Image.Image:
    """Black text on white, large enough for Tesseract to read without doubt."""
    image = Image.new("L", size, 255)
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=44)
    for i, line in enumerate(lines):
        draw.text((60, 60 + 80 * i), line, fill=0, font=font)
    return image


def png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def scanned_pdf(pages: list[Image.Image]) -> bytes:
    """A PDF of pictures only: no text layer, as a scanner makes it."""
    out = io.BytesIO()
    pages[0].convert("RGB").save(
        out, format="PDF", resolution=200.0, save_all=True, append_images=[p.convert("RGB") for p in pages[1:]]
    )
    return out.getvalue()


def encrypted_pdf(password: str = "s3cret") -> bytes:
    writer = PdfWriter()
    writer.add_blank_page(width=612, height=792)
    writer.encrypt(user_password=password, owner_password=password, algorithm="RC4-128")
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def word_file() -> bytes:
    document = docx.Document()
    document.add_heading("Quarterly report", level=1)
    document.add_paragraph("Revenue grew in every region during the third quarter.")
    document.add_paragraph("Open the new office in Lyon", style="List Bullet")
    table = document.add_table(rows=3, cols=2)
    for row, (region, revenue) in zip(table.rows, [("Region", "Revenue"), ("North", "120"), ("South", "95")]):
        row.cells[0].text, row.cells[1].text = region, revenue
    out = io.BytesIO()
    document.save(out)
    return out.getvalue()


HTML_PAGE = """<!doctype html><html><head><title>Policy</title><style>p{color:red}</style>
<script>alert('never shown')</script></head><body>
<h1>Travel policy</h1><p>Trains are preferred for trips under <b>four hours</b>.</p>
<ul><li>Book through the portal</li><li>Keep every receipt</li></ul>
<table><tr><th>Class</th><th>Allowed</th></tr><tr><td>Second</td><td>Always</td></tr></table>
</body></html>"""
