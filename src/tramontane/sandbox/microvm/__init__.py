"""Tier-2 sandboxes: a QEMU microVM per sandbox (`-M microvm`, KVM), booting a
Debian kernel and the project's own initramfs, with the tier-1 agent inside."""

from .image import GuestImage, build
from .qemu import MicroVMHost, launch_vm

__all__ = ["GuestImage", "MicroVMHost", "build", "launch_vm"]
