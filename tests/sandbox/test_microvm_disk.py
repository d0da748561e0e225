"""A template's root disk for tier 2, built without a VM: what the image holds,
that the template's own tree is left untouched, caching, and the snapshot's
check that a VM resumes on the disk it was paused on."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tramontane.sandbox import bwrap
from tramontane.sandbox.errors import Conflict, SandboxError
from tramontane.sandbox.microvm.disk import image_path, template_disk
from tramontane.sandbox.microvm.snapshot import check_disk, disk_identity

pytestmark = pytest.mark.skipif(shutil.which("mksquashfs") is None, reason="squashfs-tools is not installed")


def cat(image: Path, path: str) -> str:
    return subprocess.run(["unsquashfs", "-cat", str(image), path], capture_output=True, text=True, check=True).stdout


def listing(image: Path) -> list[str]:
    out = subprocess.run(["unsquashfs", "-l", str(image)], capture_output=True, text=True, check=True).stdout
    return [line.removeprefix("squashfs-root") for line in out.splitlines() if line.startswith("squashfs-root")]


@pytest.fixture
def rootfs(tmp_path: Path) -> Path:
    """A template's tree, as the store keeps it (<id>/rootfs)."""
    root = tmp_path / "0123abcd" / "rootfs"
    (root / "usr/bin").mkdir(parents=True)
    (root / "usr/bin/tool").write_text("#!/bin/sh\necho tool\n")
    (root / "usr/bin/tool").chmod(0o755)
    (root / "usr/lib/python3").mkdir(parents=True)
    (root / "usr/lib/python3/module.py").write_text("VALUE = 1\n")
    (root / "etc").mkdir()
    (root / "etc/passwd").write_text("root:x:0:0::/root:/bin/sh\nbuilder:x:999:999::/:/bin/sh\n")
    (root / "etc/app.conf").write_text("mode = fast\n")
    (root / "var/lib/dpkg").mkdir(parents=True)
    (root / "var/lib/dpkg/status").write_text("not needed in the guest\n")
    return root


def test_the_image_holds_usr_and_etc_with_the_generated_identity(rootfs: Path) -> None:
    image = template_disk(rootfs)
    assert image == image_path(rootfs) and image.parent == rootfs.parent  # deleted with the template
    assert image.stat().st_mode & 0o777 == 0o600
    assert cat(image, "usr/bin/tool") == "#!/bin/sh\necho tool\n"
    assert cat(image, "usr/lib/python3/module.py") == "VALUE = 1\n"
    assert cat(image, "etc/app.conf") == "mode = fast\n"
    assert cat(image, "etc/passwd").encode() == bwrap.sandbox_files()["/etc/passwd"]
    assert {p.split("/")[1] for p in listing(image) if p} == {"usr", "etc"}  # only /usr and /etc
    # The template's own tree is untouched (its /etc was copied, not linked).
    assert "builder" in (rootfs / "etc/passwd").read_text()
    assert not any(p.name.startswith(".") for p in rootfs.parent.iterdir())  # no scratch left


def test_the_image_is_built_once(rootfs: Path) -> None:
    first = template_disk(rootfs)
    built_at = first.stat().st_mtime_ns
    assert template_disk(rootfs) == first and first.stat().st_mtime_ns == built_at


def test_a_tree_without_usr_is_refused_and_leaves_nothing(tmp_path: Path) -> None:
    empty = tmp_path / "feed" / "rootfs"
    empty.mkdir(parents=True)
    with pytest.raises(SandboxError):
        template_disk(empty)
    assert os.listdir(empty.parent) == ["rootfs"]


def test_a_snapshot_resumes_only_on_the_disk_it_was_paused_on(rootfs: Path) -> None:
    image = template_disk(rootfs)
    recorded = disk_identity(image)
    check_disk(recorded, image)
    os.utime(image, ns=(recorded["mtime_ns"], recorded["mtime_ns"] + 1))  # rebuilt since
    with pytest.raises(Conflict) as changed:
        check_disk(recorded, image)
    assert changed.value.code == "snapshot_disk_changed"
    image.unlink()
    with pytest.raises(Conflict):
        check_disk(recorded, image)
