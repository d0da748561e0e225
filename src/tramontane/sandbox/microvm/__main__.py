"""`python -m tramontane.sandbox.microvm`: builds (or finds) the tier-2 guest image."""

import sys

from ..errors import Unavailable
from .image import build

try:
    image = build(download=True)
except Unavailable as exc:
    sys.exit(f"tier-2 guest not built: {exc.message}")
print(f"tier-2 guest: kernel {image.kernel}, initramfs {image.initrd}")
