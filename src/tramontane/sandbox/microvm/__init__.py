"""Tier-2 sandboxes: a QEMU microVM per sandbox (`-M microvm`, KVM), booting a
Debian kernel and the project's own initramfs, with the tier-1 agent inside, on
the host's /usr or a template's root disk."""

from .disk import template_disk
from .image import GuestImage, build
from .qemu import MicroVMHost, VMDisk, launch_vm

__all__ = ["GuestImage", "MicroVMHost", "VMDisk", "build", "launch_vm", "template_disk"]
