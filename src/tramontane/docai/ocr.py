"""Tesseract, the one place a process is started to read text off an image."""

from __future__ import annotations

import io
import shutil
import subprocess

from PIL import Image

from ..errors import Unavailable

# English and French, as Debian's tesseract-ocr-eng and -fra install them.
DEFAULT_LANGUAGES = "eng+fra"
# A page at 200 dpi takes one to three seconds on one core; a stuck process is cut off.
TIMEOUT_S = 120.0


class Tesseract:
    """`read(image)` -> the image's text, in reading order, paragraphs separated by
    blank lines. Tests and hosts without Tesseract may pass another reader with the
    same method."""

    def __init__(self, languages: str = DEFAULT_LANGUAGES, binary: str = "tesseract", timeout_s: float = TIMEOUT_S):
        self.languages = languages
        self.binary = binary
        self.timeout_s = timeout_s

    def available(self) -> bool:
        return shutil.which(self.binary) is not None

    def read(self, image: Image.Image) -> str:
        if not self.available():
            raise Unavailable(
                "OCR needs Tesseract on the server (Debian: tesseract-ocr, tesseract-ocr-eng, tesseract-ocr-fra)",
                code="ocr_unavailable",
            )
        png = io.BytesIO()
        image.convert("L").save(png, format="PNG")
        # psm 3: automatic page segmentation, so columns and paragraphs keep their order.
        command = [self.binary, "stdin", "stdout", "-l", self.languages, "--psm", "3"]
        try:
            done = subprocess.run(
                command, input=png.getvalue(), capture_output=True, timeout=self.timeout_s, check=False
            )
        except subprocess.TimeoutExpired:
            raise Unavailable(f"OCR of a page took over {self.timeout_s:.0f} s", code="ocr_timeout") from None
        if done.returncode != 0:
            message = done.stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or ["no message"]
            raise Unavailable(f"Tesseract failed: {message[0]}", code="ocr_failed")
        return done.stdout.decode("utf-8", "replace")
