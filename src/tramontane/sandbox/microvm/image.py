"""The tier-2 guest: a Debian kernel and an initramfs the project assembles itself.

The kernel comes from Debian's `linux-image-amd64` package (`apt-get download`):
its vmlinuz, and the few modules the guest needs (virtio-mmio, the virtio serial
port the agent talks over, 9p to mount the host's /usr read-only, and virtio-blk
with squashfs for a template's root disk, loaded only when the VM has one). The
initramfs holds busybox (from `busybox-static`) for PID 1's set-up, those
modules, init.sh, the guest agent, the seccomp program, and the same generated
and public /etc files a tier-1 sandbox sees; everything else (python3, bash,
matplotlib) is the host's /usr, shared read-only.

Both are cached under `$TRAMONTANE_HOME/microvm`: the kernel per package, the
initramfs per hash of its contents, so building again costs a second and a
changed agent gets a new initramfs. `python -m tramontane.sandbox.microvm` builds.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ...store import tramontane_home
from .. import bwrap, seccomp
from ..errors import Unavailable

KERNEL_METAPACKAGE = "linux-image-amd64"
BUSYBOX = Path("/bin/busybox")
# Load order matters: each after what it depends on.
MODULES = ("virtio_ring", "virtio", "virtio_mmio", "virtio_console", "netfs", "fscache", "9pnet", "9pnet_virtio", "9p")
# A template's root disk (see disk.py): loaded after MODULES, only by a VM that has one.
DISK_MODULES = ("virtio_blk", "squashfs")
GUEST_FILES = (
    "__init__.py", "agent.py", "fileops.py", "interpreter.py", "vmboot.py", "terminal.py", "tunnel.py", "watcher.py",
)  # fmt: skip
INIT_SCRIPT = Path(__file__).with_name("init.sh")


@dataclass(frozen=True)
class GuestImage:
    kernel: Path
    initrd: Path


def image_root() -> Path:
    return tramontane_home() / "microvm"


def _run(argv: list[str], cwd: Path | None = None) -> str:
    done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True)
    if done.returncode != 0:
        raise Unavailable(f"{argv[0]} failed: {done.stderr.strip()[-500:]}", code="microvm_image")
    return done.stdout


def kernel_package() -> str:
    """The versioned kernel package the metapackage points at (e.g. linux-image-6.1.0-56-amd64)."""
    for line in _run(["apt-cache", "depends", KERNEL_METAPACKAGE]).splitlines():
        name = line.strip().removeprefix("Depends:").strip()
        if line.strip().startswith("Depends:") and name.startswith("linux-image-"):
            return name
    raise Unavailable(f"apt-cache knows no kernel behind {KERNEL_METAPACKAGE}", code="microvm_image")


def _complete(kernel: Path) -> bool:
    modules = (*MODULES, *DISK_MODULES)
    return (kernel / "vmlinuz").exists() and all((kernel / "modules" / f"{m}.ko").exists() for m in modules)


def fetch_kernel(package: str, root: Path) -> Path:
    """vmlinuz and the guest's modules of `package`, downloaded once."""
    target = root / "kernels" / package
    if _complete(target):
        return target
    shutil.rmtree(target, ignore_errors=True)  # cached before a module was added to MODULES
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root) as scratch:
        work = Path(scratch)
        _run(["apt-get", "download", package], cwd=work)
        deb = next(work.glob(f"{package}_*.deb"))
        _run(["dpkg-deb", "-x", str(deb), "tree"], cwd=work)
        staged = work / "kernel"
        (staged / "modules").mkdir(parents=True)
        shutil.copyfile(next((work / "tree" / "boot").glob("vmlinuz-*")), staged / "vmlinuz")
        found = {p.stem: p for p in (work / "tree" / "lib" / "modules").rglob("*.ko")}
        for name in (*MODULES, *DISK_MODULES):
            if name not in found:
                raise Unavailable(f"{package} has no module {name}", code="microvm_image")
            shutil.copyfile(found[name], staged / "modules" / f"{name}.ko")
        target.parent.mkdir(parents=True, exist_ok=True)
        staged.rename(target)
    return target


def _copy_public(source: Path, target: Path) -> None:
    """Copies what any local user may read of `source`: never /etc/ssl/private and the like."""
    mode = source.lstat().st_mode
    if stat.S_ISLNK(mode):
        target.symlink_to(os.readlink(source))
    elif stat.S_ISDIR(mode) and mode & 0o005 == 0o005:
        target.mkdir()
        for child in sorted(source.iterdir()):
            _copy_public(child, target / child.name)
    elif stat.S_ISREG(mode) and mode & 0o004:
        shutil.copyfile(source, target)


def _stage(tree: Path, kernel: Path) -> None:
    """Lays out the initramfs's root under `tree`."""
    opt = tree / bwrap.GUEST_ROOT.lstrip("/")
    (opt / "modules").mkdir(parents=True)
    shutil.copyfile(BUSYBOX, opt / "busybox")
    (opt / "busybox").chmod(0o755)
    for name in (*MODULES, *DISK_MODULES):
        shutil.copyfile(kernel / "modules" / f"{name}.ko", opt / "modules" / f"{name}.ko")
    (opt / "modules" / "order").write_text("\n".join(MODULES) + "\n")
    (opt / "modules" / "disk-order").write_text("\n".join(DISK_MODULES) + "\n")
    (opt / "seccomp.bpf").write_bytes(seccomp.filter_bpf())
    for path, content in bwrap.sandbox_files().items():
        (tree / path.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
        (tree / path.lstrip("/")).write_bytes(content)
    shutil.copyfile(Path(__file__).parent.parent / "guest" / "vmboot.py", opt / "guest" / "vmboot.py")
    for name in bwrap.ETC_PUBLIC:
        if (Path("/etc") / name).exists():
            _copy_public(Path("/etc") / name, tree / "etc" / name)
    # The merged-/usr links (or, on an older layout, plain directories nothing uses).
    for name in bwrap.USR_ROOTS:
        host = Path("/") / name
        if host.is_symlink():
            (tree / name).symlink_to(os.readlink(host))
    for name in ("proc", "sys", "dev", "usr", "tmp", "home/user", "opt/tramontane/root"):
        (tree / name).mkdir(parents=True, exist_ok=True)
    shutil.copyfile(INIT_SCRIPT, tree / "init")
    (tree / "init").chmod(0o755)


def _digest(tree: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(tree.rglob("*")):
        h.update(str(path.relative_to(tree)).encode() + b"\0")
        if path.is_symlink():
            h.update(b"link:" + os.readlink(path).encode())
        elif path.is_file():
            h.update(f"{path.stat().st_mode & 0o777}:".encode() + path.read_bytes())
        h.update(b"\0")
    return h.hexdigest()[:16]


def build(*, download: bool = True, root: Path | None = None) -> GuestImage:
    """The guest image, built where missing. Without `download`, a kernel must
    already be cached (the platform's start never reaches for the network)."""
    root = root or image_root()
    if not BUSYBOX.exists() or shutil.which("cpio") is None:
        raise Unavailable("busybox-static and cpio are needed (scripts/install-system-deps.sh)", code="microvm_image")
    if download:
        kernel = fetch_kernel(kernel_package(), root)
    else:
        kernels = root / "kernels"
        cached = [k for k in sorted(kernels.glob("*")) if _complete(k)] if kernels.exists() else []
        if not cached:
            raise Unavailable(
                "no tier-2 guest kernel is built; run `python -m tramontane.sandbox.microvm` (make install)",
                code="microvm_image",
            )
        kernel = cached[-1]
    with tempfile.TemporaryDirectory(dir=root) as scratch:
        tree = Path(scratch) / "tree"
        _stage(tree, kernel)
        initrd = root / "initrd" / f"{kernel.name}-{_digest(tree)}.cpio"
        if not initrd.exists():
            initrd.parent.mkdir(parents=True, exist_ok=True)
            files = _run(["find", ".", "-mindepth", "1"], cwd=tree)
            partial = Path(scratch) / "initrd.cpio"
            with partial.open("wb") as out:
                done = subprocess.run(
                    ["cpio", "--create", "--format=newc", "--owner=0:0", "--quiet"],
                    cwd=tree, input=files.encode(), stdout=out, stderr=subprocess.PIPE,
                )  # fmt: skip
            if done.returncode != 0:
                raise Unavailable(f"cpio failed: {done.stderr.decode(errors='replace')}", code="microvm_image")
            partial.rename(initrd)
    return GuestImage(kernel / "vmlinuz", initrd)
