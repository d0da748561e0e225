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
import sys

GUEST_ROOT = "/opt/tramontane"
SECCOMP_PROGRAM = GUEST_ROOT + "/seccomp.bpf"
SANDBOX_UID = 1000
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2
BPF_INSTRUCTION_BYTES = 8

LIBC = ctypes.CDLL(None, use_errno=True)


class SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_char_p)]


def check(result, what):
    if result != 0:
        raise OSError(ctypes.get_errno(), f"{what} failed")


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
    drop_privileges()
    install_seccomp()
    sys.path.insert(0, GUEST_ROOT)
    from guest.agent import main as agent_main

    agent_main(rlimits)


if __name__ == "__main__":
    main()
