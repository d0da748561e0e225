"""Built templates on disk, by content hash, and the names that point at them.

    <root>/<id>/rootfs/         the tree sandboxes start from (read-only to them)
    <root>/<id>/template.json   its spec, owner, size and what the build stripped
    <root>/apt-archives/        downloaded .debs, shared by builds
    <root>/.build-<id>-*/       a build in progress (removed if it fails or at start)

A template belongs to the workspace that built it through the API, or to the
platform (built by the operator with `tramontane sandbox template build`):
a workspace sees its own and the platform's, by name or id. Building the same
spec again is a cache hit and costs nothing.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from ...store import tramontane_home
from ..errors import InvalidArgument, NotFound
from .build import build_tree
from .spec import TemplateSpec

logger = logging.getLogger("tramontane.sandbox")

_META = "template.json"


@dataclass(frozen=True)
class Template:
    id: str
    name: str
    owner: str | None
    rootfs: Path
    env: dict[str, str]
    start: str | None
    size_bytes: int
    created_at: float
    apt: tuple[str, ...] = ()
    pip: tuple[str, ...] = ()

    def describe(self) -> dict[str, object]:
        return {
            "id": self.id, "name": self.name, "size_bytes": self.size_bytes, "created_at": self.created_at,
            "apt": list(self.apt), "pip": list(self.pip), "start": self.start, "env": sorted(self.env),
        }  # fmt: skip


def _detach_mounts(tree: Path) -> bool:
    """Lazily unmounts everything mounted under `tree`, deepest first; whether
    nothing is mounted there any more."""
    prefix = str(tree.resolve()) + "/"

    def under() -> list[str]:
        with open("/proc/self/mounts") as mounts:
            points = [line.split()[1].encode().decode("unicode_escape") for line in mounts]
        return [p for p in points if p.startswith(prefix)]

    for point in sorted(under(), key=len, reverse=True):
        subprocess.run(["umount", "--lazy", point], capture_output=True)
    return not under()


def _tree_size(root: Path) -> int:
    total = 0
    for directory, _dirs, names in os.walk(root):
        for name in names:
            info = os.lstat(os.path.join(directory, name))
            total += info.st_blocks * 512
    return total


def default_root() -> Path:
    return tramontane_home() / "templates"


class TemplateStore:
    def __init__(self, root: Path | None = None):
        self.root = root or default_root()
        self._locks: dict[str, asyncio.Lock] = {}
        self._building = asyncio.Semaphore(1)  # builds are disk- and network-heavy: one at a time

    def clean(self) -> None:
        """Removes scratch folders of builds a crash cut short. A build killed
        mid-way can leave mmdebstrap's mounts in its tree (/proc, /sys, and the
        host's own /dev/shm bound in): they are detached first, since removing
        through them would delete the host's files; a tree that keeps a mount
        is left alone."""
        if self.root.exists():
            for scratch in self.root.glob(".build-*"):
                if _detach_mounts(scratch):
                    shutil.rmtree(scratch, ignore_errors=True)
                else:
                    logger.error("left %s: something is still mounted under it", scratch)

    # -- lookup

    def _load(self, template_id: str) -> Template | None:
        meta = self.root / template_id / _META
        try:
            data = json.loads(meta.read_text())
        except (OSError, ValueError):
            return None
        return Template(
            id=template_id, name=data["name"], owner=data["owner"], rootfs=self.root / template_id / "rootfs",
            env=data["env"], start=data["start"], size_bytes=data["size_bytes"], created_at=data["created_at"],
            apt=tuple(data["apt"]), pip=tuple(data["pip"]),
        )  # fmt: skip

    def list(self, owner: str | None = None) -> list[Template]:
        """The templates `owner` may use: its own and the platform's (None: the platform's)."""
        if not self.root.exists():
            return []
        found = [t for d in self.root.iterdir() if not d.name.startswith(".") and (t := self._load(d.name))]
        return sorted((t for t in found if t.owner in (None, owner)), key=lambda t: t.created_at)

    def resolve(self, name_or_id: str, owner: str | None = None) -> Template:
        """The newest template of that name (the workspace's before the platform's), or that id."""
        visible = self.list(owner)
        by_id = [t for t in visible if t.id == name_or_id]
        named = sorted((t for t in visible if t.name == name_or_id), key=lambda t: (t.owner is not None, t.created_at))
        if found := by_id or named[-1:]:
            return found[0]
        raise NotFound(f"no template {name_or_id!r}", param="template", code="template_not_found")

    def delete(self, name_or_id: str, owner: str | None = None) -> None:
        template = self.resolve(name_or_id, owner)
        if template.owner != owner:
            raise NotFound(f"no template {name_or_id!r} of yours", param="template", code="template_not_found")
        # Renamed first so that no sandbox can start from a half-deleted tree.
        doomed = self.root / f".build-deleted-{template.id}-{secrets.token_hex(4)}"
        os.rename(self.root / template.id, doomed)
        shutil.rmtree(doomed, ignore_errors=True)

    # -- building

    async def build(self, spec: TemplateSpec, owner: str | None = None) -> tuple[Template, bool]:
        """The template for `spec`, built if it is not yet; and whether it was cached."""
        spec.validate()
        template_id = spec.content_hash(owner)
        lock = self._locks.setdefault(template_id, asyncio.Lock())
        async with lock:
            if (found := self._load(template_id)) is not None:
                return found, True
            async with self._building:
                return await asyncio.to_thread(self._build, spec, owner, template_id), False

    def _build(self, spec: TemplateSpec, owner: str | None, template_id: str) -> Template:
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o711)  # sandboxes' uids traverse to their tree; none may list the store
        scratch = self.root / f".build-{template_id}-{secrets.token_hex(4)}"
        scratch.mkdir(mode=0o755)
        started = time.monotonic()
        try:
            stripped = build_tree(spec, scratch / "rootfs", self.root / "apt-archives")
            meta = {
                "name": spec.name, "owner": owner, "env": spec.env, "start": spec.start,
                "apt": list(spec.apt), "pip": list(spec.pip), "base": spec.base,
                "size_bytes": _tree_size(scratch / "rootfs"), "created_at": time.time(),
                "stripped": stripped.__dict__, "build_seconds": round(time.monotonic() - started, 1),
            }  # fmt: skip
            (scratch / _META).write_text(json.dumps(meta, indent=1))
            os.rename(scratch, self.root / template_id)
        except BaseException:
            shutil.rmtree(scratch, ignore_errors=True)
            raise
        logger.info("built template %s (%s) in %.0f s", spec.name, template_id, time.monotonic() - started)
        template = self._load(template_id)
        if template is None:
            raise InvalidArgument(f"template {template_id} vanished after its build", code="template_not_found")
        return template
