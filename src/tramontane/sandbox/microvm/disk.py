"""A template's tree as a tier-2 guest's root disk: a read-only squashfs image.

A microVM cannot share a template's tree the way bwrap binds it, and the host's
/usr reaches the guest over virtio-9p, which QEMU will not migrate (a 9p export
mounted in the guest blocks `migrate`). So a VM from a template boots with the
template's /usr and /etc on a virtio-blk disk: a squashfs image built once per
template with `mksquashfs` (no loop mount, no root-only kernel feature), kept
next to the tree in the template's folder, so deleting the template deletes it.
squashfs rather than ext4: read-only by design, and its guest module is a
fifteenth of ext4's with jbd2, which every VM would otherwise load at boot.

The image holds the template's /usr and /etc, with the sandbox's generated
identity files (passwd, group, hosts) in place of the template's, as tier 1
binds them over it. It is named by a hash of those generated files, so changing
them builds a new image; the template's own content is already fixed by its id.
The disk is attached read-only and mounted `ro,nosuid,nodev` in the guest: every
VM of a template shares the one image, and the guest's writable places are its
own size-capped tmpfs mounts, in the VM's memory (so a memory snapshot holds them).
"""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
import subprocess
import threading
from pathlib import Path

from .. import bwrap
from ..errors import SandboxError, Unavailable

IMAGE_PREFIX = "microvm-root-"
MKFS_TIMEOUT_S = 600.0

_locks: dict[Path, threading.Lock] = {}
_locks_guard = threading.Lock()


def _identity_files() -> dict[str, bytes]:
    return {path: content for path, content in bwrap.sandbox_files().items() if path.startswith("/etc/")}


def image_path(rootfs: Path) -> Path:
    """Where the disk of the template whose tree is `rootfs` is kept."""
    digest = hashlib.sha256()
    for path, content in sorted(_identity_files().items()):
        digest.update(path.encode() + b"\0" + content + b"\0")
    return rootfs.parent / f"{IMAGE_PREFIX}{digest.hexdigest()[:16]}.squashfs"


def _stage(rootfs: Path, staging: Path) -> None:
    """The image's tree: /usr hard-linked (nothing copied), /etc copied so that
    the identity files can replace the template's without touching its tree."""
    staging.mkdir(mode=0o755)
    _run(["cp", "-al", "--", str(rootfs / "usr"), str(staging / "usr")])
    _run(["cp", "-a", "--", str(rootfs / "etc"), str(staging / "etc")])
    for path, content in _identity_files().items():
        target = staging / path.lstrip("/")
        target.unlink(missing_ok=True)
        target.write_bytes(content)
        target.chmod(0o644)


def _run(argv: list[str]) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=MKFS_TIMEOUT_S)
    if done.returncode != 0:
        raise SandboxError(f"{argv[0]} failed: {done.stderr.strip()[-500:]}", code="microvm_disk")


def _make(rootfs: Path, target: Path) -> None:
    scratch = target.with_name(f".{target.name}.{secrets.token_hex(4)}")
    staging = scratch.with_suffix(".tree")
    try:
        _stage(rootfs, staging)
        # Uncompressed: under CPU emulation decompressing every read would cost
        # more than the reads themselves; ownership and modes are kept as built.
        _run([
            "mksquashfs", str(staging), str(scratch), "-noappend", "-no-xattrs", "-no-progress", "-quiet",
            "-noI", "-noD", "-noF", "-noX",
        ])  # fmt: skip
        scratch.chmod(0o600)  # QEMU gets it as a descriptor; no sandbox uid opens it by path
        os.rename(scratch, target)
    finally:
        scratch.unlink(missing_ok=True)
        shutil.rmtree(staging, ignore_errors=True)


def template_disk(rootfs: Path) -> Path:
    """The root disk of the template whose tree is `rootfs`, built the first time
    (seconds per hundred MB); the same path afterwards. Blocking: call it in a thread."""
    target = image_path(rootfs)
    with _locks_guard:
        lock = _locks.setdefault(target, threading.Lock())
    with lock:
        if not target.exists():
            if shutil.which("mksquashfs") is None:
                raise Unavailable(
                    "tier-2 sandboxes from a template need mksquashfs (squashfs-tools, scripts/install-system-deps.sh)",
                    code="microvm_disk",
                )
            if not (rootfs / "usr").is_dir():
                raise SandboxError(f"the template tree {rootfs} has no /usr", code="microvm_disk")
            _make(rootfs, target)
    return target
