"""Start of the agent inside a tier-2 microVM, run by the guest's init as root.

It gives up everything a tier-1 sandbox never had: the capability bounding set,
new privileges, and root itself (the agent and the commands run as uid 1000),
and installs the same seccomp filter tier 1 uses, so a command meets the same
kernel surface in both tiers, here with a whole guest kernel in front of the host.
argv[1] holds the rlimits as "resource:value,..." (the kernel command line that
carries it mangles JSON quotes).
"""

import ctypes
import os
import struct
import sys
import time

GUEST_ROOT = "/opt/tramontane"
SECCOMP_PROGRAM = GUEST_ROOT + "/seccomp.bpf"
SANDBOX_UID = 1000
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_SET_SECCOMP = 22
CAP_SYS_TIME = 25
CAPABILITY_VERSION_3 = 0x20080522
SECCOMP_MODE_FILTER = 2
BPF_INSTRUCTION_BYTES = 8

LIBC = ctypes.CDLL(None, use_errno=True)


class SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_char_p)]


def check(result, what):
    if result != 0:
        raise OSError(ctypes.get_errno(), f"{what} failed")


class CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


def start_clock_keeper():
    """The guest has no clock of its own (no RTC) and its clock stands still while
    the VM is on disk, and only root may set it. So one child keeps root for that
    alone: CAP_SYS_TIME and no other capability, reading 8-byte times (ns since
    the epoch) from a pipe whose write end only the agent holds; the host sends
    the time after each boot and resume (the agent's `set_clock`). Sandboxed code
    runs as another uid and cannot signal, trace or reach it. Returns the write end."""
    read_end, write_end = os.pipe()
    if os.fork() != 0:
        os.close(read_end)
        return write_end
    try:
        null = os.open("/dev/null", os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        os.closerange(3, read_end)
        os.closerange(read_end + 1, 1 << 16)
        with open("/proc/sys/kernel/cap_last_cap") as f:
            last_cap = int(f.read())
        for cap in range(last_cap + 1):
            if cap != CAP_SYS_TIME:
                check(LIBC.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0), "dropping a capability")
        header, data = CapHeader(CAPABILITY_VERSION_3, 0), (CapData * 2)()
        data[0].effective = data[0].permitted = 1 << CAP_SYS_TIME
        check(LIBC.capset(ctypes.byref(header), data), "keeping only CAP_SYS_TIME")
        check(LIBC.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")
        while len(message := os.read(read_end, 8)) == 8:
            try:
                time.clock_settime_ns(time.CLOCK_REALTIME, struct.unpack("<q", message)[0])
            except (OSError, OverflowError):
                pass
    finally:
        os._exit(0)


def drop_privileges():
    with open("/proc/sys/kernel/cap_last_cap") as f:
        last_cap = int(f.read())
    for cap in range(last_cap + 1):
        check(LIBC.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0), "dropping a capability")
    os.setgroups([])
    os.setresgid(SANDBOX_UID, SANDBOX_UID, SANDBOX_UID)
    os.setresuid(SANDBOX_UID, SANDBOX_UID, SANDBOX_UID)
    check(LIBC.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")


def install_seccomp():
    with open(SECCOMP_PROGRAM, "rb") as f:
        program = f.read()
    fprog = SockFprog(len(program) // BPF_INSTRUCTION_BYTES, program)
    check(LIBC.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0), "installing seccomp")


def main():
    rlimits = {int(k): int(v) for k, v in (item.split(":") for item in sys.argv[1].split(","))}
    clock_fd = start_clock_keeper()
    drop_privileges()
    install_seccomp()
    sys.path.insert(0, GUEST_ROOT)
    from guest.agent import main as agent_main

    agent_main(rlimits, clock_fd=clock_fd)


if __name__ == "__main__":
    main()
