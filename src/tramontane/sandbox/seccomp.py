"""The seccomp filter every sandboxed process runs under, compiled with libseccomp.

Default-allow with an explicit deny list: Docker's default profile blocks these
(it is written as an allow-list, these are the syscalls it leaves out that exist
on x86-64/arm64), plus io_uring (a long run of kernel CVEs and it bypasses
seccomp for the operations it queues), the new mount API, namespace creation
through clone flags, and the TIOCSTI/TIOCLINUX ioctls that inject keystrokes.
Syscalls from a foreign ABI (i386 `int 0x80`, x32) hit libseccomp's bad-arch
action, which kills the process.
"""

from __future__ import annotations

import errno
import os
from functools import lru_cache
from typing import Any

DENIED_SYSCALLS = (
    # Docker's default profile
    "acct", "add_key", "bpf", "clock_adjtime", "clock_settime", "create_module",
    "delete_module", "finit_module", "get_kernel_syms", "get_mempolicy", "init_module",
    "ioperm", "iopl", "kcmp", "kexec_file_load", "kexec_load", "keyctl",
    "lookup_dcookie", "mbind", "mount", "move_pages", "name_to_handle_at",
    "nfsservctl", "open_by_handle_at", "perf_event_open", "pivot_root",
    "process_vm_readv", "process_vm_writev", "ptrace", "query_module", "quotactl",
    "reboot", "request_key", "set_mempolicy", "setns", "settimeofday", "stime",
    "swapon", "swapoff", "sysfs", "_sysctl", "umount", "umount2", "unshare", "uselib",
    "userfaultfd", "ustat", "vm86", "vm86old", "syslog", "vhangup", "chroot",
    # io_uring
    "io_uring_setup", "io_uring_enter", "io_uring_register",
    # the new mount API and friends
    "fsopen", "fsconfig", "fsmount", "fspick", "move_mount", "open_tree", "mount_setattr",
    "quotactl_fd",
    # reaching into other processes without ptrace
    "pidfd_getfd", "process_madvise",
)  # fmt: skip

# clone(2) flags that create namespaces; clone3 passes flags in memory seccomp
# cannot read, so it answers ENOSYS and libc falls back to clone(2).
_CLONE_NAMESPACE_FLAGS = (
    0x00000080,  # CLONE_NEWTIME
    0x00020000,  # CLONE_NEWNS
    0x02000000,  # CLONE_NEWCGROUP
    0x04000000,  # CLONE_NEWUTS
    0x08000000,  # CLONE_NEWIPC
    0x10000000,  # CLONE_NEWUSER
    0x20000000,  # CLONE_NEWPID
    0x40000000,  # CLONE_NEWNET
)
_TIOCSTI = 0x5412
_TIOCLINUX = 0x541C

# personality(2) bits that weaken the process: no ASLR, executable data.
_ADDR_NO_RANDOMIZE = 0x0040000
_READ_IMPLIES_EXEC = 0x0400000

# Socket families with any business in a sandbox; the rest (AF_VSOCK reaches the
# hypervisor and is not namespaced, AF_ALG, AF_PACKET...) are refused.
_AF_UNIX, _AF_INET, _AF_INET6, _AF_NETLINK = 1, 2, 10, 16


def _build() -> Any:
    # Imported here: pyseccomp loads libseccomp when imported, and the SDK side of
    # this package (tramontane.sandbox.Sandbox) must import on any OS.
    import pyseccomp as seccomp

    f = seccomp.SyscallFilter(seccomp.ALLOW)
    deny = seccomp.ERRNO(errno.EPERM)
    for name in DENIED_SYSCALLS:
        try:
            f.add_rule(deny, name)
        except (ValueError, OSError):
            # The name does not exist on this architecture (e.g. vm86 on arm64).
            continue
    f.add_rule(seccomp.ERRNO(errno.ENOSYS), "clone3")
    for flag in _CLONE_NAMESPACE_FLAGS:
        f.add_rule(deny, "clone", seccomp.Arg(0, seccomp.MASKED_EQ, flag, flag))
    # The kernel truncates the ioctl request to 32 bits, so compare only those.
    for request in (_TIOCSTI, _TIOCLINUX):
        f.add_rule(deny, "ioctl", seccomp.Arg(1, seccomp.MASKED_EQ, 0xFFFFFFFF, request))
    for bit in (_ADDR_NO_RANDOMIZE, _READ_IMPLIES_EXEC):
        f.add_rule(deny, "personality", seccomp.Arg(0, seccomp.MASKED_EQ, bit, bit))
    no_family = seccomp.ERRNO(errno.EAFNOSUPPORT)
    for family in (0, *range(3, 10), *range(11, 16)):
        f.add_rule(no_family, "socket", seccomp.Arg(0, seccomp.EQ, family))
    f.add_rule(no_family, "socket", seccomp.Arg(0, seccomp.GT, _AF_NETLINK))
    return f


@lru_cache(maxsize=1)
def filter_bpf() -> bytes:
    """The compiled BPF program, as bwrap's `--seccomp FD` reads it."""
    fd = os.memfd_create("tramontane-seccomp", os.MFD_CLOEXEC)
    with open(fd, "w+b") as out:
        _build().export_bpf(out)
        out.seek(0)
        return out.read()


def filter_fd() -> int:
    """A fresh fd holding the BPF program: bwrap reads it to the end, so one per launch."""
    fd = os.memfd_create("tramontane-seccomp", os.MFD_CLOEXEC)
    os.write(fd, filter_bpf())
    os.lseek(fd, 0, os.SEEK_SET)
    return fd
