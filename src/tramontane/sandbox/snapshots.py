"""Snapshots of paused tier-1 sandboxes, on disk: what `pause()` writes and
`resume()` reads back, also after the server restarts.

CRIU cannot checkpoint here (Debian's criu 3.17 fails its own `criu check` on
current kernels: it cannot parse their vDSO), so a tier-1 snapshot is the
sandbox's files and a list of its processes to start again, not its memory:

- `files.tar`: the contents of /home/user, /tmp and /dev/shm (the only writable
  places a sandbox has; its root is a template or the host's /usr, read-only);
- `manifest.json`: the sandbox's spec (template, limits, environment, network
  allow-list), its remaining timeout, the commands running at pause time (each
  with its working directory; not its per-command environment, which may hold a
  caller's secrets), and the archive's SHA-256. The manifest carries its own
  SHA-256 too, so a damaged file of either kind is refused on resume.

Running processes are restarted from their command lines; their memory (a
variable in the code interpreter, a server's cache) is lost. Files are read
and written by a helper that enters the sandbox's root with `chroot` and runs as
the sandbox's own host uid: it can reach no path and write no file the sandbox
could not, whatever links or modes the sandbox left behind, and the sandbox is
frozen while it reads.

A tier-2 sandbox from a template (a microVM on a root disk) is snapshotted
whole instead, memory included: `vm.state` holds QEMU's migration stream (see
microvm/snapshot.py), checksummed and counted the same way.

Snapshots live under their workspace's folder (`<home>/workspaces/<id>/
sandbox-snapshots/<sandbox>/`), so erasing the workspace erases them, and count
against a per-workspace storage limit.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from .errors import Conflict, LimitReached, NotFound, SandboxError
from .policy import Limits, NetworkPolicy, SandboxSpec

logger = logging.getLogger("tramontane.sandbox")

FORMAT = 1
ARCHIVE = "files.tar"
VM_STATE = "vm.state"
MANIFEST = "manifest.json"
SAVED_PATHS = ("home/user", "tmp", "dev/shm")  # relative to the sandbox's root
_CHUNK = 1 << 20
_WORKSPACE_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")

# The helper's two halves; each enters the sandbox's root as its host uid first.
_ENTER = """
import json, os, sys, tarfile
root, uid = sys.argv[1], int(sys.argv[2])
os.chroot(root)
os.chdir("/")
os.setgroups([])
os.setgid(uid)
os.setuid(uid)
"""
_DUMP = _ENTER + """
skipped = 0
with tarfile.open(fileobj=sys.stdout.buffer, mode="w|", format=tarfile.PAX_FORMAT) as tar:
    for top in sys.argv[3:]:
        if not os.path.isdir(top) or os.path.islink(top):
            continue
        for directory, dirs, names in os.walk(top):
            for name in sorted(dirs) + sorted(names):
                try:
                    tar.add(os.path.join(directory, name), recursive=False)
                except OSError:
                    skipped += 1  # unreadable even to its owner (mode 000): not saved
print(json.dumps({"skipped": skipped}), file=sys.stderr)
"""
_RESTORE = _ENTER + """
with tarfile.open(fileobj=sys.stdin.buffer, mode="r|") as tar:
    tar.extractall("/", filter="tar")
"""


class SnapshotCorrupted(Conflict):
    """A snapshot's files do not match their checksums: it cannot be resumed."""

    default_code = "snapshot_corrupted"


class SnapshotStorageFull(LimitReached):
    """The workspace's snapshots would take more than its storage limit."""

    default_code = "snapshot_storage_limit"


@dataclass
class Snapshot:
    """One snapshot on disk, as its manifest describes it."""

    sandbox_id: str
    directory: Path
    spec: SandboxSpec
    template_id: str | None  # a built template's id; None: the spec's built-in template
    remaining_s: float  # of the absolute timeout, counted again from resume
    started_at: float
    processes: list[dict[str, str]]
    archive_sha256: str
    archive_bytes: int
    created_at: float
    skipped_files: int = 0
    # A microVM's snapshot: its root disk's identity (see microvm/snapshot.py);
    # None: a tier-1 snapshot of files.
    vm: dict[str, Any] | None = None

    @property
    def archive(self) -> Path:
        return self.directory / (ARCHIVE if self.vm is None else VM_STATE)

    def body(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "sandbox_id": self.sandbox_id,
            "spec": _spec_to_json(self.spec),
            "template_id": self.template_id,
            "remaining_s": self.remaining_s,
            "started_at": self.started_at,
            "processes": self.processes,
            "archive": {"sha256": self.archive_sha256, "bytes": self.archive_bytes},
            "created_at": self.created_at,
            "skipped_files": self.skipped_files,
            "vm": self.vm,
        }


def _spec_to_json(spec: SandboxSpec) -> dict[str, Any]:
    data = dataclasses.asdict(spec)
    data["network"] = {"allow_out": list(spec.network.allow_out)}
    return data


def _spec_from_json(data: dict[str, Any]) -> SandboxSpec:
    return SandboxSpec(
        **{**data, "limits": Limits(**data["limits"]), "network": NetworkPolicy(tuple(data["network"]["allow_out"]))}
    )


def _digest(body: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def copy_limited(source: BinaryIO, target: Path, allowed: int, limit_bytes: int) -> tuple[str, int]:
    """Copies `source` to `target` (fsynced), hashing it; past `allowed` bytes it
    stops with SnapshotStorageFull. The SHA-256 and the size."""
    digest, size = hashlib.sha256(), 0
    with target.open("wb") as out:
        while chunk := source.read(_CHUNK):
            size += len(chunk)
            if size > allowed:
                raise SnapshotStorageFull(
                    f"the workspace's snapshots would exceed their storage limit of "
                    f"{limit_bytes // 2**20} MiB; delete paused sandboxes or files",
                )
            digest.update(chunk)
            out.write(chunk)
        out.flush()
        os.fsync(out.fileno())
    return digest.hexdigest(), size


def _dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def sandbox_root(runtime_pid: int) -> str:
    """The sandbox's root directory as the host reaches it: through its PID 1
    (bwrap's only child), whose mount namespace it is."""
    children = Path(f"/proc/{runtime_pid}/task/{runtime_pid}/children").read_text().split()
    if not children:
        raise SandboxError("the sandbox has no PID 1 to snapshot", code="sandbox_died")
    return f"/proc/{children[0]}/root"


class SnapshotStore:
    def __init__(self, home: Path, bytes_per_workspace: int):
        self.home = home
        self.bytes_per_workspace = bytes_per_workspace

    def owner_dir(self, owner: str | None) -> Path:
        """A workspace's snapshots live in its folder (erased with it); unscoped
        sandboxes' in the home."""
        if owner is None:
            return self.home / "sandbox-snapshots"
        if not _WORKSPACE_ID.fullmatch(owner):
            raise SandboxError(f"owner {owner!r} cannot name a folder", code="invalid_owner")
        return self.home / "workspaces" / owner / "sandbox-snapshots"

    def used_bytes(self, owner: str | None) -> int:
        directory = self.owner_dir(owner)
        return _dir_bytes(directory) if directory.exists() else 0

    # -- writing

    def save(
        self,
        root: str,
        host_uid: int,
        sandbox_id: str,
        spec: SandboxSpec,
        template_id: str | None,
        remaining_s: float,
        started_at: float,
        processes: list[dict[str, str]],
    ) -> Snapshot:
        """Writes the snapshot of a frozen sandbox whose root is `root`; on any
        failure, nothing of it is left."""

        def dump(scratch: Path, final: Path, allowed: int) -> Snapshot:
            sha256, size, skipped = self._dump(root, host_uid, scratch / ARCHIVE, allowed)
            return Snapshot(
                sandbox_id, final, spec, template_id, remaining_s, started_at, processes, sha256, size, time.time(),
                skipped,
            )  # fmt: skip

        return self.write(sandbox_id, spec.owner, dump)

    def write(self, sandbox_id: str, owner: str | None, fill: Callable[[Path, Path, int], Snapshot]) -> Snapshot:
        """Makes a snapshot: `fill(scratch, final, allowed_bytes)` writes its data
        into the scratch folder and describes it; the manifest follows, and the
        folder is renamed into place. On any failure, nothing of it is left."""
        final = self.owner_dir(owner) / sandbox_id
        scratch = final.with_name(f".{sandbox_id}.partial")
        shutil.rmtree(scratch, ignore_errors=True)
        scratch.mkdir(parents=True, mode=0o700)
        try:
            snapshot = fill(scratch, final, self.bytes_per_workspace - self.used_bytes(owner))
            body = snapshot.body()
            (scratch / MANIFEST).write_text(json.dumps({"body": body, "sha256": _digest(body)}))
            shutil.rmtree(final, ignore_errors=True)
            os.rename(scratch, final)
        except BaseException:
            shutil.rmtree(scratch, ignore_errors=True)
            raise
        return snapshot

    def _dump(self, root: str, host_uid: int, target: Path, allowed: int) -> tuple[str, int, int]:
        helper = subprocess.Popen(
            [sys.executable, "-I", "-S", "-c", _DUMP, root, str(host_uid), *SAVED_PATHS],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
        )
        assert helper.stdout is not None and helper.stderr is not None
        try:
            sha256, size = copy_limited(helper.stdout, target, allowed, self.bytes_per_workspace)
            errors = helper.stderr.read().decode(errors="replace")
        finally:
            if helper.poll() is None:  # stopped early (storage limit, an error): it may block on a full pipe
                helper.kill()
            helper.wait()
        if helper.returncode != 0:
            raise SandboxError(f"could not read the sandbox's files: {errors.strip()[-500:]}", code="snapshot_failed")
        skipped = json.loads(errors.strip().splitlines()[-1]).get("skipped", 0)
        return sha256, size, skipped

    # -- reading

    def scan(self) -> list[Snapshot]:
        """Every snapshot on disk (at start: the paused sandboxes of the last run).
        A damaged manifest is logged and left for an operator, not deleted."""
        found = []
        folders = [self.home / "sandbox-snapshots", *self.home.glob("workspaces/*/sandbox-snapshots")]
        for folder in folders:
            for directory in folder.glob("*") if folder.is_dir() else ():
                if directory.name.startswith("."):
                    shutil.rmtree(directory, ignore_errors=True)  # a pause cut short
                    continue
                try:
                    found.append(self.load(directory))
                except SandboxError as exc:
                    logger.error("snapshot %s cannot be read: %s", directory, exc.message)
        return found

    def load(self, directory: Path) -> Snapshot:
        try:
            document = json.loads((directory / MANIFEST).read_text())
            body = document["body"]
            if document["sha256"] != _digest(body) or body["format"] != FORMAT:
                raise ValueError("checksum")
            return Snapshot(
                body["sandbox_id"], directory, _spec_from_json(body["spec"]), body["template_id"],
                body["remaining_s"], body["started_at"], body["processes"], body["archive"]["sha256"],
                body["archive"]["bytes"], body["created_at"], body.get("skipped_files", 0), body.get("vm"),
            )  # fmt: skip
        except FileNotFoundError:
            raise NotFound(f"the snapshot in {directory.name} is gone", code="snapshot_not_found") from None
        except (OSError, ValueError, KeyError, TypeError):
            raise SnapshotCorrupted(f"the manifest of snapshot {directory.name} is damaged") from None

    def verify(self, snapshot: Snapshot) -> None:
        """Refuses a snapshot whose manifest or archive changed on disk."""
        fresh = self.load(snapshot.directory)
        archive = fresh.archive
        try:
            intact = archive.stat().st_size == fresh.archive_bytes and _file_sha256(archive) == fresh.archive_sha256
        except FileNotFoundError:
            intact = False
        if not intact:
            raise SnapshotCorrupted(f"the snapshot of sandbox {snapshot.sandbox_id} is damaged on disk")

    def restore(self, snapshot: Snapshot, root: str, host_uid: int) -> None:
        """Unpacks the archive into a fresh sandbox whose root is `root`."""
        with (snapshot.directory / ARCHIVE).open("rb") as archive:
            done = subprocess.run(
                [sys.executable, "-I", "-S", "-c", _RESTORE, root, str(host_uid)],
                stdin=archive,
                capture_output=True,
            )
        if done.returncode != 0:
            message = done.stderr.decode(errors="replace").strip()[-500:]
            raise SandboxError(f"could not restore the sandbox's files: {message}", code="snapshot_failed")

    def delete(self, snapshot: Snapshot) -> None:
        shutil.rmtree(snapshot.directory, ignore_errors=True)
