"""`python -m tramontane.sandbox.microvm`: builds (or finds) the tier-2 guest image."""

from .image import build

image = build(download=True)
print(f"tier-2 guest: kernel {image.kernel}, initramfs {image.initrd}")
