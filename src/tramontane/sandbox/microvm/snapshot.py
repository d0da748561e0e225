"""Snapshots of tier-2 sandboxes on a root disk: the whole VM, memory included.

`pause()` stops the VM's CPUs over QMP and has QEMU migrate it into a pipe the
host reads, hashes and writes into the snapshot's `vm.state` (bounded by the
workspace's storage limit as it goes); QEMU then exits. `resume()` checks the
file against its checksum and starts a new QEMU with `-incoming fd:N` on it: the
guest goes on where it stopped, every process with its memory and PID, its
files (the guest's tmpfs mounts are memory too) and its open descriptors.

Only VMs on a template's root disk can be migrated: QEMU refuses while the
host's /usr is mounted over virtio-9p. The disk itself is not copied (it is
read-only and shared); the snapshot records which image it was and refuses to
resume on another, since the guest's page cache holds the old one's blocks.
Pipes, not files, because QEMU runs `-sandbox spawn=deny` as a uid that cannot
open the snapshot folder: it only ever gets descriptors.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from ..errors import Conflict, SandboxError
from ..snapshots import VM_STATE, copy_limited
from .qmp import Monitor, MonitorError

# QEMU throttles migration to 32 MiB/s unless told otherwise: a local file needs none.
MAX_BANDWIDTH = 1 << 40
MIGRATION_TIMEOUT_S = 600.0
POLL_S = 0.02


def disk_identity(image: Path) -> dict[str, Any]:
    info = image.stat()
    return {"image": image.name, "bytes": info.st_size, "mtime_ns": info.st_mtime_ns}


def check_disk(recorded: dict[str, Any], image: Path) -> None:
    """Refuses to resume a VM on a disk image other than the one it was paused on."""
    try:
        current = disk_identity(image)
    except FileNotFoundError:
        current = None
    if current != {k: recorded.get(k) for k in ("image", "bytes", "mtime_ns")}:
        raise Conflict(
            "the root disk this microVM was paused on has changed or is gone; it cannot resume",
            code="snapshot_disk_changed",
        )


def _wait_for_migration(monitor: Monitor) -> None:
    deadline = time.monotonic() + MIGRATION_TIMEOUT_S
    while time.monotonic() < deadline:
        info = monitor.execute("query-migrate")
        status = info.get("status")
        if status == "completed":
            return
        if status in ("failed", "cancelled"):
            raise SandboxError(f"QEMU could not save the VM: {info.get('error-desc', status)}", code="snapshot_failed")
        time.sleep(POLL_S)
    raise SandboxError("QEMU did not finish saving the VM in time", code="snapshot_failed")


def save_state(monitor: Monitor, scratch: Path, allowed: int, limit_bytes: int) -> tuple[str, int]:
    """Stops the VM and writes its state into `scratch`/vm.state: its SHA-256 and
    size. On failure (the storage limit, QEMU's error) the VM runs on, untouched.
    Blocking: call it from a thread."""
    monitor.execute("stop")
    try:
        monitor.execute("migrate-set-parameters", {"max-bandwidth": MAX_BANDWIDTH})
        read_end, write_end = os.pipe2(os.O_CLOEXEC)
        try:
            monitor.execute("getfd", {"fdname": "snapshot"}, fds=[write_end])
        finally:
            os.close(write_end)
        with os.fdopen(read_end, "rb") as stream:
            monitor.execute("migrate", {"uri": "fd:snapshot"})
            saved = copy_limited(stream, scratch / VM_STATE, allowed, limit_bytes)
        _wait_for_migration(monitor)
    except BaseException:
        # The reader is gone (QEMU's writes fail) or QEMU failed: the VM carries on.
        try:
            monitor.execute("migrate_cancel")
            monitor.execute("cont")
        except MonitorError:
            pass
        raise
    return saved
