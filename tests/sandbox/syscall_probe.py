"""Runs inside a sandbox (x86-64): tries syscalls the seccomp filter must deny and
prints {name: errno name} as JSON. Arguments are valid enough that, unfiltered,
most calls would succeed or fail differently (EINVAL, EBADF, ENOTTY...), so
EPERM shows the filter answered."""

import ctypes
import errno
import json
import os

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long

CLONE_NEWUSER = 0x10000000
SIGCHLD = 17
TIOCSTI, TIOCLINUX = 0x5412, 0x541C
buffer = ctypes.create_string_buffer(4096)
text = ctypes.c_char_p
ptr = ctypes.addressof(buffer)


def attempt(number, *args):
    ctypes.set_errno(0)
    result = libc.syscall(ctypes.c_long(number), *[ctypes.c_long(a) if isinstance(a, int) else a for a in args])
    if result == 0 and number == 56:  # clone succeeded: this is the child
        os._exit(0)
    if result >= 0:
        return "allowed"
    return errno.errorcode[ctypes.get_errno()]


perf_attr = ctypes.create_string_buffer(128)
ctypes.memmove(perf_attr, (1).to_bytes(4, "little") + (0).to_bytes(4, "little") + (128).to_bytes(4, "little"), 12)

probes = {
    "mount": (165, text(b"none"), text(b"/tmp"), text(b"tmpfs"), 0, 0),
    "umount2": (166, text(b"/tmp"), 0),
    "unshare": (272, CLONE_NEWUSER),
    "setns": (308, 0, 0),
    "bpf": (321, 0, ptr, 72),
    "keyctl": (250, 0, -3, 0),
    "add_key": (248, text(b"user"), text(b"probe"), text(b"x"), 1, -3),
    "request_key": (249, text(b"user"), text(b"probe"), 0, -3),
    "perf_event_open": (298, ctypes.addressof(perf_attr), 0, -1, -1, 0),
    "userfaultfd": (323, 0),
    "ptrace": (101, 0, 0, 0, 0),
    "io_uring_setup": (425, 1, ptr),
    "io_uring_enter": (426, -1, 0, 0, 0, 0, 0),
    "io_uring_register": (427, -1, 0, 0, 0),
    "init_module": (175, ptr, 16, text(b"")),
    "finit_module": (313, -1, text(b""), 0),
    "delete_module": (176, text(b"probe"), 0),
    "kexec_load": (246, 0, 0, 0, 0),
    "kexec_file_load": (320, -1, -1, 0, text(b""), 0),
    "pivot_root": (155, text(b"/tmp"), text(b"/tmp")),
    "chroot": (161, text(b"/tmp")),
    "open_by_handle_at": (304, -1, ptr, 0),
    "name_to_handle_at": (303, -100, text(b"/"), ptr, ptr, 0),
    "process_vm_readv": (310, 1, ptr, 1, ptr, 1, 0),
    "process_vm_writev": (311, 1, ptr, 1, ptr, 1, 0),
    "fsopen": (430, text(b"tmpfs"), 0),
    "fsconfig": (431, -1, 0, 0, 0, 0),
    "fsmount": (432, -1, 0, 0),
    "fspick": (433, -100, text(b"/"), 0),
    "open_tree": (428, -100, text(b"/"), 0),
    "move_mount": (429, -1, text(b""), -1, text(b""), 0),
    "mount_setattr": (442, -100, text(b"/"), 0, ptr, 32),
    "acct": (163, 0),
    "swapon": (167, text(b"/tmp/swap"), 0),
    "reboot": (169, 0, 0, 0, 0),
    "syslog": (103, 3, ptr, 4096),
    "quotactl": (179, 0, text(b"/"), 0, 0),
    "iopl": (172, 3),
    "ioperm": (173, 0, 1, 1),
    "settimeofday": (164, ptr, 0),
    "clock_settime": (227, 0, ptr),
    "clock_adjtime": (305, 0, ptr),
    "get_mempolicy": (239, 0, 0, 0, 0, 0),
    "set_mempolicy": (238, 0, 0, 0),
    "mbind": (237, ptr, 4096, 0, 0, 0, 0),
    "move_pages": (279, 0, 0, 0, 0, 0, 0),
    "kcmp": (312, os.getpid(), os.getpid(), 0, 0, 0),
    "pidfd_getfd": (438, -1, 0, 0),
    "process_madvise": (440, -1, ptr, 1, 0, 0),
    "vhangup": (153,),
    "personality_no_aslr": (135, 0x0040000),
    "tiocsti": (16, 0, TIOCSTI, text(b"x")),
    "tiocsti_high_bits": (16, 0, TIOCSTI | (1 << 32), text(b"x")),
    "tioclinux": (16, 0, TIOCLINUX, ptr),
    "clone_newuser": (56, CLONE_NEWUSER | SIGCHLD, 0, 0, 0, 0),
    "clone3": (435, ptr, 88),
    "socket_vsock": (41, 40, 1, 0),
    "socket_packet": (41, 17, 3, 0),
}
print(json.dumps({name: attempt(*args) for name, args in probes.items()}))
