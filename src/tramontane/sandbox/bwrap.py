"""The bubblewrap command line of a tier-1 sandbox.

The sandbox sees: the host's /usr read-only (with the merged-/usr links), a few
public files of /etc, generated passwd/group/hosts, a fresh /proc of its own PID
namespace, a minimal /dev, and three size-capped tmpfs mounts (/home/user, /tmp,
/dev/shm). No /sys, no /root, no /home of the host, no /etc/shadow, nothing of the
platform's own files. The root itself is a tmpfs remounted read-only.

A sandbox started from a template sees that template's tree in place of the
host's /usr and public /etc (its /usr and whole /etc), bound read-only like the host's (bwrap binds are
nosuid,nodev), shared by every sandbox of the template: nothing is copied.

bwrap runs as the sandbox's host uid and must walk to what it binds (it
resolves even a bound descriptor's path). Where a template's store lies below a
directory that uid cannot search (e.g. $TRAMONTANE_HOME in root's 0700 home),
bwrap is started in a mount namespace of its own, where the tree is bound at
TEMPLATE_VIEW first (`in_template_view`): the host's mounts are untouched, and
nothing outside that one tree becomes reachable.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from .policy import Limits, MiB

SANDBOX_UID = 1000
SANDBOX_USER = "user"
HOME = "/home/user"
HOSTNAME = "sandbox"
PYTHON = "/usr/bin/python3"
GUEST_ROOT = "/opt/tramontane"  # the guest package lands in GUEST_ROOT/guest
OPTIONAL_PARTS = ("terminal.py", "tunnel.py", "watcher.py")  # the agent imports them on first use
EGRESS_SOCKET = "/run/tramontane/egress.sock"  # the host's egress proxy, where a sandbox has one
PROXY_URL = "http://127.0.0.1:3128"  # the guest's forwarder to EGRESS_SOCKET
# An empty directory any uid can search; a template tree is bound over it in the
# launch's own mount namespace only (see `in_template_view`).
TEMPLATE_VIEW = "/run/tramontane-sandbox-template"

# Top-level directories a merged-/usr system links into /usr, or binds on an older one.
USR_ROOTS = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")
# Public configuration programs read; none of it is secret.
ETC_PUBLIC = (
    "alternatives",  # Debian's /usr/bin/* -> /etc/alternatives/* links
    "ld.so.cache",
    "localtime",
    "ssl",
    "ca-certificates",
    "fonts",
    "matplotlibrc",
    "mime.types",
    "protocols",
    "services",
)


def _passwd() -> bytes:
    return (
        f"root:x:0:0:root:/root:/usr/sbin/nologin\n"
        f"{SANDBOX_USER}:x:{SANDBOX_UID}:{SANDBOX_UID}:{SANDBOX_USER}:{HOME}:/bin/bash\n"
        f"nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
    ).encode()


def _group() -> bytes:
    return f"root:x:0:\n{SANDBOX_USER}:x:{SANDBOX_UID}:\nnogroup:x:65534:\n".encode()


def _hosts() -> bytes:
    return f"127.0.0.1\tlocalhost {HOSTNAME}\n::1\tlocalhost ip6-localhost ip6-loopback\n".encode()


def sandbox_files() -> dict[str, bytes]:
    """Files bwrap writes into the sandbox read-only: identity files and the guest code."""
    files = {"/etc/passwd": _passwd(), "/etc/group": _group(), "/etc/hosts": _hosts()}
    guest = Path(__file__).with_name("guest")
    for name in ("__init__.py", "agent.py", "fileops.py", "forwarder.py", "interpreter.py", *OPTIONAL_PARTS):
        files[f"{GUEST_ROOT}/guest/{name}"] = (guest / name).read_bytes()
    return files


def base_env() -> dict[str, str]:
    """The environment every sandboxed process starts from."""
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
        "HOME": HOME,
        "USER": SANDBOX_USER,
        "LOGNAME": SANDBOX_USER,
        "SHELL": "/bin/bash",
        "LANG": "C.UTF-8",
        "TERM": "dumb",
        "MPLCONFIGDIR": "/tmp/.matplotlib",
        "PYTHONDONTWRITEBYTECODE": "1",
    }


def proxy_env() -> dict[str, str]:
    """Points HTTP clients (curl, pip, requests, urllib) at the egress forwarder."""
    env = {"HTTP_PROXY": PROXY_URL, "HTTPS_PROXY": PROXY_URL, "NO_PROXY": "localhost,127.0.0.1,::1"}
    return env | {name.lower(): value for name, value in env.items()}


@dataclass
class LaunchFds:
    """Descriptors bwrap inherits; the caller opens and closes them."""

    seccomp: int
    info: int
    block: int
    files: dict[str, int]  # path in the sandbox -> fd holding its content
    root: dict[str, int] = field(default_factory=dict)  # a template's directories (`open_template_root`)
    rootfs: Path | None = None  # the template's tree; None: the host's /usr
    view: str | None = None  # where bwrap finds the tree instead of `root` (see `in_template_view`)

    def all(self) -> tuple[int, ...]:
        return (self.seccomp, self.info, self.block, *self.files.values(), *self.root.values())


def open_file_fds(files: dict[str, bytes]) -> dict[str, int]:
    fds = {}
    for path, content in files.items():
        fd = os.memfd_create("tramontane-file", os.MFD_CLOEXEC)
        os.write(fd, content)
        os.lseek(fd, 0, os.SEEK_SET)
        fds[path] = fd
    return fds


def _host_root_filesystem() -> list[str]:
    host_root = Path("/")
    argv = ["--ro-bind", "/usr", "/usr"]
    for name in USR_ROOTS:
        host = host_root / name
        if host.is_symlink():
            argv += ["--symlink", os.readlink(host), f"/{name}"]
        elif host.is_dir():
            argv += ["--ro-bind", str(host), f"/{name}"]
    argv += ["--dir", "/etc"]
    for name in ETC_PUBLIC:
        if (host_root / "etc" / name).exists():
            argv += ["--ro-bind", str(host_root / "etc" / name), f"/etc/{name}"]
    return argv


def open_template_root(rootfs: Path) -> dict[str, int]:
    """Descriptors of a template's /usr, /etc and top-level directories, by path
    in the sandbox: bwrap, running as the sandbox's host uid,
    could not walk to the (root-only) template store itself."""
    fds: dict[str, int] = {}
    try:
        for name in ("usr", "etc", *USR_ROOTS):
            path = rootfs / name
            if path.exists() and not path.is_symlink():
                fds[f"/{name}"] = os.open(path, os.O_PATH | os.O_CLOEXEC | os.O_NOFOLLOW)
    except BaseException:
        for fd in fds.values():
            os.close(fd)
        raise
    return fds


def searchable_by_all(path: Path) -> bool:
    """Whether any uid can walk down to `path` (every directory above it is o+x)."""
    return all(os.stat(parent).st_mode & 0o001 for parent in path.parents)


def in_template_view(rootfs: Path, host_uid: int, unshare: str, mount: str, setpriv: str) -> list[str]:
    """The command that runs the rest of the argv (bwrap's) as `host_uid` in a
    mount namespace of its own (private: nothing propagates to the host) where
    `rootfs` is bound at TEMPLATE_VIEW. Run as root; it execs, so bwrap keeps the pid."""
    script = '"$1" --bind -- "$2" "$3" && shift 3 && exec "$@"'
    drop = [setpriv, f"--reuid={host_uid}", f"--regid={host_uid}", "--clear-groups", "--"]
    view = [mount, str(rootfs), TEMPLATE_VIEW]
    return [unshare, "--mount", "--propagation=private", "--", "/bin/sh", "-c", script, "sh", *view, *drop]


def _template_root_filesystem(rootfs: Path, fds: dict[str, int], view: str | None) -> list[str]:
    def bind(name: str) -> list[str]:
        return ["--ro-bind", f"{view}/{name}", f"/{name}"] if view else ["--ro-bind-fd", str(fds[f"/{name}"]), f"/{name}"]

    argv = bind("usr")
    for name in USR_ROOTS:
        if (rootfs / name).is_symlink():
            argv += ["--symlink", os.readlink(rootfs / name), f"/{name}"]
        elif (rootfs / name).is_dir():
            argv += bind(name)
    # The template's whole /etc: it was built for the sandbox, unlike the host's.
    return argv + bind("etc")


def build_argv(
    bwrap: str, limits: Limits, fds: LaunchFds, command: list[str], egress_socket: str | None = None
) -> list[str]:
    """`egress_socket`: the host path of the sandbox's egress proxy, if it has one."""
    argv = [
        bwrap,
        # Every namespace; --disable-userns stops the sandbox nesting its own.
        "--unshare-all",
        "--unshare-user",
        "--disable-userns",
        "--uid", str(SANDBOX_UID),
        "--gid", str(SANDBOX_UID),
        "--hostname", HOSTNAME,
        # A new session defeats TIOCSTI on the host terminal; dying with the
        # manager means no sandbox outlives the process that accounts for it.
        "--new-session",
        "--die-with-parent",
        # The agent is PID 1: bwrap's own init would be a process of the sandbox's
        # uid, dumpable and holding the host's pipes, that sandboxed code could
        # take over through /proc/1/mem.
        "--as-pid-1",
        "--cap-drop", "ALL",
        *(_host_root_filesystem() if fds.rootfs is None else _template_root_filesystem(fds.rootfs, fds.root, fds.view)),
    ]  # fmt: skip
    for path, fd in fds.files.items():
        argv += ["--perms", "0444", "--ro-bind-data", str(fd), path]
    if egress_socket is not None:
        # Read-only still lets the sandbox connect; it cannot replace the socket.
        argv += ["--ro-bind", egress_socket, EGRESS_SOCKET]
    argv += [
        "--proc", "/proc",
        "--dev", "/dev",
        "--perms", "1777", "--size", str(limits.tmp_mb * MiB), "--tmpfs", "/dev/shm",
        "--remount-ro", "/dev",  # device nodes stay usable; new files there do not
        "--perms", "1777", "--size", str(limits.tmp_mb * MiB), "--tmpfs", "/tmp",
        "--dir", "/home",
        "--perms", "0700", "--size", str(limits.workspace_mb * MiB), "--tmpfs", HOME,
        "--remount-ro", "/",
        "--chdir", HOME,
        "--seccomp", str(fds.seccomp),
        "--info-fd", str(fds.info),
        "--block-fd", str(fds.block),
        "--",
        *command,
    ]  # fmt: skip
    return argv
