"""Building a template's root filesystem, as root on the host, in three steps:

1. mmdebstrap installs the base suite (minbase), python3 and the spec's Debian
   packages from the Debian mirror, with apt's signature checks;
2. pip installs the spec's PyPI packages as wheels only (`--only-binary=:all:`,
   into /usr/local of the tree, for the tree's Python and glibc): installing a
   wheel runs none of its code, so nothing from PyPI executes on the host;
3. the spec's files are written, resolving symlinks inside the tree as a chroot
   would, never on the host.

Then the tree is made safe to share: set-uid/set-gid bits and file capabilities
are cleared and device nodes, FIFOs and sockets removed (sandboxes also mount it
nosuid,nodev, and run with no_new_privs: three locks, not one). The build
happens in a scratch folder renamed into place only once complete, so a failed
build (a package that does not exist: apt's message comes back) leaves nothing.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from ..errors import Unavailable, Unprocessable
from .spec import TemplateSpec

DEBIAN_MIRROR = "http://deb.debian.org/debian"
BUILD_TIMEOUT_S = 1800
_MESSAGE_BYTES = 2000
_CAPABILITY_XATTR = "security.capability"


class TemplateBuildFailed(Unprocessable):
    """The spec cannot be built as written: apt or pip refused it (their message says why)."""

    default_code = "template_build_failed"


@dataclass
class Stripped:
    """What the build removed from the tree to keep sandboxes unprivileged."""

    setuid: int = 0
    capabilities: int = 0
    special_files: int = 0


def _tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise Unavailable(f"{name} is not installed (apt-get install {name})", code="template_builder_missing")
    return found


def _run(argv: list[str], what: str, marker: str) -> None:
    """Runs a build step; its failure is the caller's (the spec's), told in the tool's own lines."""
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise Unavailable(f"{what} took longer than {BUILD_TIMEOUT_S} s", code="template_build_timeout") from None
    if done.returncode == 0:
        return
    output = done.stderr + done.stdout
    lines = [line for line in output.splitlines() if line.startswith(marker)] or output.splitlines()[-10:]
    message = "\n".join(dict.fromkeys(lines))[-_MESSAGE_BYTES:]
    raise TemplateBuildFailed(f"{what} failed:\n{message}", param="apt" if marker == "E:" else "pip")


def debootstrap(spec: TemplateSpec, rootfs: Path, apt_cache: Path) -> None:
    """The base tree with the spec's Debian packages; `apt_cache` keeps downloaded
    .debs between builds (apt checks each against the signed index before use)."""
    apt_cache.mkdir(parents=True, exist_ok=True)
    # mmdebstrap mounts the host's /dev, /proc and /sys inside the tree; in a
    # mount namespace of its own those mounts die with it, so a build cut short
    # leaves nothing attached that removing its scratch folder could reach through.
    _run(
        [
            _tool("unshare"), "--mount", "--propagation", "private", "--",
            _tool("mmdebstrap"), "--mode=root", "--format=directory", "--variant=minbase",
            "--include=" + ",".join(spec.packages()),
            "--aptopt=APT::Install-Recommends false",
            '--setup-hook=mkdir -p "$1"/var/cache/apt/archives/',
            f"--setup-hook=sync-in {apt_cache} /var/cache/apt/archives/",
            f"--customize-hook=sync-out /var/cache/apt/archives {apt_cache}",
            spec.suite, str(rootfs), DEBIAN_MIRROR,
        ],  # fmt: skip
        "installing the Debian packages",
        "E:",
    )


def _python_version(rootfs: Path) -> str:
    for name in sorted(os.listdir(rootfs / "usr/bin"), reverse=True):
        if match := re.fullmatch(r"python(3\.\d+)", name):
            return match.group(1)
    raise TemplateBuildFailed("the tree has no /usr/bin/python3.X", param="apt")


def _glibc_minor(rootfs: Path) -> int:
    status = (rootfs / "var/lib/dpkg/status").read_text()
    match = re.search(r"^Package: libc6\n(?:.+\n)*?Version: 2\.(\d+)", status, re.MULTILINE)
    if match is None:
        raise TemplateBuildFailed("the tree has no libc6", param="apt")
    return int(match.group(1))


def pip_install(spec: TemplateSpec, rootfs: Path) -> None:
    if not spec.pip:
        return
    version = _python_version(rootfs)
    platforms = [f"manylinux_2_{minor}_x86_64" for minor in range(_glibc_minor(rootfs), 4, -1)]
    platforms += ["manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64", "linux_x86_64"]
    target = rootfs / f"usr/local/lib/python{version}/dist-packages"
    _run(
        [
            sys.executable, "-m", "pip", "install", "--disable-pip-version-check", "--no-input", "--no-cache-dir",
            "--only-binary=:all:", "--no-compile",
            "--python-version", version, "--implementation", "cp", "--abi", f"cp{version.replace('.', '')}",
            *(arg for platform in platforms for arg in ("--platform", platform)),
            "--target", str(target), "--", *spec.pip,
        ],  # fmt: skip
        "installing the pip packages",
        "ERROR:",
    )


def resolve_inside(root: Path, path: str, follow_last: bool = False) -> Path:
    """Where `path` of the tree lies on the host, symlinks resolved relative to `root`
    as inside a chroot: an absolute link in the tree never points out of it."""
    parts = [p for p in path.split("/") if p]
    resolved: list[str] = []
    hops = 0
    while parts:
        part = parts.pop(0)
        if part in ("", "."):
            continue
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        here = root.joinpath(*resolved, part)
        if here.is_symlink() and (parts or follow_last):
            hops += 1
            if hops > 40:
                raise OSError(errno.ELOOP, f"too many symlinks under {path}")
            target = os.readlink(here)
            if target.startswith("/"):
                resolved = []
            parts = [p for p in target.split("/") if p] + parts
            continue
        resolved.append(part)
    return root.joinpath(*resolved)


def write_files(spec: TemplateSpec, rootfs: Path) -> None:
    for path, file in spec.files.items():
        host = resolve_inside(rootfs, path)  # the file itself, if a link, is replaced, not followed
        host.parent.mkdir(parents=True, exist_ok=True)
        if host.is_symlink() or host.exists():
            if host.is_dir() and not host.is_symlink():
                raise TemplateBuildFailed(f"{path} is a directory in the tree", param="files")
            host.unlink()
        fd = os.open(host, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, file.mode)
        with os.fdopen(fd, "wb") as out:
            out.write(file.content)
        os.chmod(host, file.mode, follow_symlinks=False)


def strip_privileges(rootfs: Path) -> Stripped:
    """Clears set-uid/set-gid bits and file capabilities; removes device nodes,
    FIFOs and sockets."""
    stripped = Stripped()
    for directory, dirs, names in os.walk(rootfs):
        for name in [*names, *dirs]:
            path = os.path.join(directory, name)
            info = os.lstat(path)
            if stat.S_ISLNK(info.st_mode):
                continue
            if stat.S_ISCHR(info.st_mode) or stat.S_ISBLK(info.st_mode) or stat.S_ISFIFO(info.st_mode) or stat.S_ISSOCK(info.st_mode):
                os.unlink(path)
                stripped.special_files += 1
                continue
            if info.st_mode & (stat.S_ISUID | stat.S_ISGID) and not stat.S_ISDIR(info.st_mode):
                os.chmod(path, stat.S_IMODE(info.st_mode) & ~(stat.S_ISUID | stat.S_ISGID))
                stripped.setuid += 1
            try:
                os.removexattr(path, _CAPABILITY_XATTR, follow_symlinks=False)
                stripped.capabilities += 1
            except OSError as exc:
                if exc.errno not in (errno.ENODATA, errno.ENOTSUP):
                    raise
    return stripped


def privileged_entries(rootfs: Path) -> list[str]:
    """Anything in the tree that could grant a privilege: the check a template must pass."""
    found = []
    for directory, dirs, names in os.walk(rootfs):
        for name in [*names, *dirs]:
            path = os.path.join(directory, name)
            mode = os.lstat(path).st_mode
            if stat.S_ISLNK(mode):
                continue
            special = not (stat.S_ISREG(mode) or stat.S_ISDIR(mode))
            setid = bool(mode & (stat.S_ISUID | stat.S_ISGID)) and not stat.S_ISDIR(mode)
            try:
                capability = os.getxattr(path, _CAPABILITY_XATTR, follow_symlinks=False) is not None
            except OSError:
                capability = False
            if special or setid or capability:
                found.append(os.path.relpath(path, rootfs))
    return found


def scrub_host_files(rootfs: Path) -> None:
    """mmdebstrap copies the build host's name and resolver into the tree: a
    sandbox must learn nothing of the host. Sandboxes never log in, so the
    shadow files go. And bwrap mounts the sandbox's own
    passwd, group and hosts over files that must exist in the read-only tree."""
    etc = rootfs / "etc"
    # No logins happen in a sandbox: the password databases have nothing to do there.
    for name in ("shadow", "shadow-", "gshadow", "gshadow-", "passwd-", "group-"):
        (etc / name).unlink(missing_ok=True)
    for name, content in (("hostname", "sandbox\n"), ("resolv.conf", ""), ("passwd", None), ("group", None), ("hosts", "")):
        path = etc / name
        if path.is_symlink():
            path.unlink()
        if content is not None or not path.exists():
            path.write_text(content or "")
            path.chmod(0o644)


def build_tree(spec: TemplateSpec, rootfs: Path, apt_cache: Path) -> Stripped:
    """The whole build into `rootfs` (which must not exist yet)."""
    debootstrap(spec, rootfs, apt_cache)
    scrub_host_files(rootfs)
    pip_install(spec, rootfs)
    write_files(spec, rootfs)
    stripped = strip_privileges(rootfs)
    if left := privileged_entries(rootfs):
        raise TemplateBuildFailed(f"privileged files remain in the tree: {', '.join(left[:5])}", param="files")
    return stripped
