"""The tier-2 pieces that need no VM: the guest image's contents and caching,
and the QEMU command line's confinement."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tramontane.sandbox.errors import Unavailable
from tramontane.sandbox.microvm import GuestImage, MicroVMHost, image
from tramontane.sandbox.policy import Limits

needs_tools = pytest.mark.skipif(
    not image.BUSYBOX.exists() or shutil.which("cpio") is None, reason="busybox-static and cpio are not installed"
)


@pytest.fixture
def fake_kernel(tmp_path: Path) -> Path:
    """A cached kernel as fetch_kernel leaves it, with stand-in files."""
    kernel = tmp_path / "kernels" / "linux-image-test-amd64"
    (kernel / "modules").mkdir(parents=True)
    (kernel / "vmlinuz").write_bytes(b"kernel")
    for name in (*image.MODULES, *image.DISK_MODULES):
        (kernel / "modules" / f"{name}.ko").write_bytes(name.encode())
    return kernel


@needs_tools
def test_initramfs_is_built_once_per_content(tmp_path: Path, fake_kernel: Path) -> None:
    first = image.build(download=False, root=tmp_path)
    assert first.kernel == fake_kernel / "vmlinuz"
    assert image.build(download=False, root=tmp_path) == first  # cached: same file
    listing = subprocess.run(
        ["cpio", "-t", "--quiet"], stdin=first.initrd.open("rb"), capture_output=True, text=True, check=True
    ).stdout.split()
    for path in (
        "init",
        "opt/tramontane/busybox",
        "opt/tramontane/seccomp.bpf",
        "opt/tramontane/guest/agent.py",
        "opt/tramontane/guest/vmboot.py",
        "opt/tramontane/modules/9p.ko",
        "opt/tramontane/modules/squashfs.ko",
        "opt/tramontane/modules/disk-order",
        "etc/passwd",
        "home/user",
    ):
        assert path in listing, path  # fmt: skip
    # Public /etc only: nothing a local user could not read on the host.
    assert not any(p.startswith("etc/ssl/private") for p in listing)
    assert not any(p in listing for p in ("etc/shadow", "root", "etc/ssh"))


@needs_tools
def test_no_kernel_means_unavailable(tmp_path: Path) -> None:
    with pytest.raises(Unavailable, match="no tier-2 guest kernel"):
        image.build(download=False, root=tmp_path)


def test_qemu_command_line_is_confined() -> None:
    host = MicroVMHost("/usr/bin/qemu-system-x86_64", GuestImage(Path("k"), Path("i")), "kvm")
    limits = Limits(cpu=1.5, memory_mb=256, workspace_mb=32)
    argv = host.argv(limits, "/proc/self/fd/5", "/proc/self/fd/6")
    joined = " ".join(argv)
    assert argv[argv.index("-m") + 1] == str(256 + 96) and argv[argv.index("-smp") + 1] == "2"
    assert "-nodefaults" in argv and "-netdev" not in argv and "-nic" not in argv  # no network device
    sandbox = argv[argv.index("-sandbox") + 1]
    for option in ("on", "elevateprivileges=deny", "spawn=deny", "resourcecontrol=deny", "obsolete=deny"):
        assert option in sandbox.split(",")
    assert "readonly=on" in joined and "workspace_mb=32" in joined
    host_limits = host.host_limits(limits)
    assert host_limits.memory_mb > 256 + 96 and host_limits.cpu == 1.5


def test_a_vm_from_a_template_gets_its_disk_and_no_host_usr() -> None:
    host = MicroVMHost("/usr/bin/qemu-system-x86_64", GuestImage(Path("k"), Path("i")), "kvm")
    argv = host.argv(Limits(), "/proc/self/fd/5", "/proc/self/fd/6", root_disk="7", monitor_fd=8, incoming_fd=9)
    joined = " ".join(argv)
    assert "-fsdev" not in argv and "9p" not in joined  # the host's /usr is not exported
    assert argv[argv.index("-add-fd") + 1] == "fd=7,set=1"
    drive = argv[argv.index("-drive") + 1].split(",")
    assert "readonly=on" in drive and "file=/dev/fdset/1" in drive
    assert "root_disk=vda" in argv[argv.index("-append") + 1].split()
    assert argv[argv.index("-incoming") + 1] == "fd:9" and "socket,id=qmp,fd=8" in argv
    plain = host.argv(Limits(), "/proc/self/fd/5", "/proc/self/fd/6")
    assert "-incoming" not in plain and "-mon" not in plain and "root_disk=vda" not in " ".join(plain)
