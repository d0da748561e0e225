"""The default base image of Python projects, made from this host's own files.

Where no registry is reachable (air-gapped banks, hospitals) the operator still
needs a base for `FROM`: `tramontane build --python-base` assembles one from the
host's Python interpreter, its standard library, the shared libraries they load
(found with ldd), pip when the host has it, and a static busybox for /bin/sh.
Nothing is downloaded. An operator with a registry points
TRAMONTANE_BUILD_BASE_IMAGE at a base of their choice instead."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

BUSYBOX = Path("/bin/busybox")
# Parts of the standard library no server needs, left out to keep the image small.
# Installed packages stay out too: the base carries the standard library and pip only.
_SKIPPED = ("test", "idlelib", "tkinter", "turtledemo", "lib2to3", "__pycache__", "site-packages", "dist-packages")
# The system's interpreter, preferred: the server's own may be a large custom build.
_SYSTEM_PYTHON = Path("/usr/bin/python3")

CONTAINERFILE = """\
FROM scratch
COPY rootfs/ /
RUN ["/bin/busybox", "--install", "-s", "/bin"]
ENV PATH=/usr/local/bin:/usr/bin:/bin LANG=C.UTF-8
CMD ["python3"]
"""


def _interpreter() -> tuple[Path, Path]:
    """The host's interpreter (its real file, not a link) and its standard library."""
    python = (_SYSTEM_PYTHON if _SYSTEM_PYTHON.exists() else Path(sys.executable)).resolve()
    done = subprocess.run(
        [str(python), "-I", "-c", "import sysconfig; print(sysconfig.get_paths()['stdlib'])"],
        capture_output=True, text=True, check=True, timeout=30,
    )
    return python, Path(done.stdout.strip())


def _shared_libraries(binaries: list[Path]) -> set[Path]:
    """Every library `binaries` load, by the path the loader finds them at."""
    found: set[Path] = set()
    for binary in binaries:
        done = subprocess.run(["ldd", str(binary)], capture_output=True, text=True, check=False, timeout=30)
        for match in re.finditer(r"(/\S+) \(0x", done.stdout):
            found.add(Path(match.group(1)))
    return found


def _copy(source: Path, rootfs: Path) -> None:
    target = rootfs / source.relative_to("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(source.resolve(), target)


def python_base_context(folder: Path) -> Path:
    """Writes a build context for the base image into `folder`; returns it."""
    if not BUSYBOX.is_file():
        raise FileNotFoundError(f"{BUSYBOX} is missing: install Debian's busybox-static")
    rootfs = folder / "rootfs"
    python, stdlib = _interpreter()
    _copy(python, rootfs)
    (rootfs / "usr/bin").mkdir(parents=True, exist_ok=True)
    for alias in ("python3", "python"):
        link = rootfs / "usr/bin" / alias
        if not link.exists():
            link.symlink_to(python)
    shutil.copytree(stdlib, rootfs / stdlib.relative_to("/"), ignore=shutil.ignore_patterns(*_SKIPPED), symlinks=True)
    # pip, where the host has it (Debian's python3-pip), so projects can install their dependencies.
    for site in (Path("/usr/lib/python3/dist-packages"), stdlib / "site-packages"):
        if (site / "pip").is_dir():
            # Where the host's interpreter finds it, so the copy finds it there too.
            target = rootfs / (site / "pip").relative_to("/")
            shutil.copytree(site / "pip", target, ignore=shutil.ignore_patterns("__pycache__"))
            break
    extensions = list((stdlib / "lib-dynload").glob("*.so"))
    for library in _shared_libraries([python, *extensions]):
        _copy(library, rootfs)
    _copy(BUSYBOX, rootfs)
    (rootfs / "tmp").mkdir(mode=0o1777, exist_ok=True)
    (folder / "Containerfile").write_text(CONTAINERFILE)
    return folder
