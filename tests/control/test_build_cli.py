"""`tramontane build`: a folder with a Containerfile, an image archive, and the
errors a user can act on."""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path

import pytest
from container_images import CONTAINERFILE, busybox_context, podman_usable, remove_image
from typer.testing import CliRunner

from tramontane.cli import app

pytestmark = pytest.mark.skipif(not podman_usable(), reason="needs podman and busybox-static")


def _exists(tag: str) -> bool:
    return subprocess.run(["podman", "image", "exists", tag], timeout=30, check=False).returncode == 0


def test_build_a_folder_then_load_its_archive(tmp_path: Path) -> None:
    context = busybox_context(tmp_path / "site")
    (context / "Containerfile").write_text(CONTAINERFILE)
    tag = f"localhost/tramontane-test/cli:{uuid.uuid4().hex[:8]}"
    loaded_tag = f"{tag}-loaded"
    try:
        built = CliRunner().invoke(app, ["build", str(context), "--tag", tag])
        assert built.exit_code == 0, built.output
        assert f"Built {tag} from Containerfile" in built.output and _exists(tag)

        archive = tmp_path / "site.tar"
        subprocess.run(["podman", "save", "-q", "-o", str(archive), tag], check=True, timeout=120)
        loaded = CliRunner().invoke(app, ["build", str(archive), "--tag", loaded_tag])
        assert loaded.exit_code == 0, loaded.output
        assert _exists(loaded_tag)
    finally:
        remove_image(tag)
        remove_image(loaded_tag)


def test_build_errors_say_what_to_fix(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    nothing = CliRunner().invoke(app, ["build", str(empty), "--tag", "localhost/tramontane-test/never:1"])
    assert nothing.exit_code == 1 and "no Containerfile" in nothing.output

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "Containerfile").write_text("FROM localhost/tramontane-test/no-such-base:1\n")
    failed = CliRunner().invoke(app, ["build", str(broken), "--tag", "localhost/tramontane-test/never:2"])
    assert failed.exit_code == 1 and "failed" in failed.output

    garbage = tmp_path / "not-an-image.tar"
    garbage.write_bytes(b"not a tar")
    bad_archive = CliRunner().invoke(app, ["build", str(garbage)])
    assert bad_archive.exit_code == 1 and "cannot load" in bad_archive.output
