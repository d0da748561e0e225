"""Probes the isolation suites of both tiers share."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

from tramontane.sandbox import CommandExitException, Sandbox


def sh(sandbox: Sandbox, cmd: str, timeout: float = 30) -> tuple[int, str]:
    """Exit code and stdout+stderr of a command that may fail."""
    try:
        result = sandbox.commands.run(cmd, timeout=timeout)
    except CommandExitException as failed:
        return failed.exit_code, failed.stdout + failed.stderr
    return result.exit_code, result.stdout + result.stderr


def py(sandbox: Sandbox, code: str, timeout: float = 30) -> dict:
    """Runs a Python snippet in the sandbox that prints one JSON object."""
    sandbox.files.write("probe.py", code)
    return json.loads(sandbox.commands.run("python3 probe.py", timeout=timeout).stdout)


def denied_syscalls(sandbox: Sandbox) -> tuple[dict[str, str], dict[str, str]]:
    """(what each syscall of syscall_probe.py gave inside `sandbox`, what the seccomp
    policy says it must give): x86-64 syscall numbers."""
    sandbox.files.write("syscalls.py", (Path(__file__).parent / "syscall_probe.py").read_text())
    results = json.loads(sandbox.commands.run("python3 syscalls.py").stdout)
    expected = {name: "EPERM" for name in results}
    expected |= {"clone3": "ENOSYS", "socket_vsock": "EAFNOSUPPORT", "socket_packet": "EAFNOSUPPORT"}
    return results, expected


def host_pids_of_uid(uid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                status = (entry / "status").read_text()
            except OSError:
                continue
            real_uid = next(line.split()[1] for line in status.splitlines() if line.startswith("Uid:"))
            if int(real_uid) == uid:
                found.append(int(entry.name))
    return found


# What the channel hijack of a tier-1 sandbox began with: opening its PID 1's memory
# for writing (bwrap's init was dumpable), to overwrite its code.
PID1_MEM_WRITE = """
import json
try:
    with open("/proc/1/mem", "r+b", buffering=0) as mem:
        mem.seek(0x400000)
        mem.write(b"\\xcc")
    result = "written"
except OSError as e:
    result = type(e).__name__
print(json.dumps({"mem": result}))
"""

NETWORK_PROBE = """
import json, socket
def attempt(host, port):
    s = socket.socket()
    s.settimeout(2)
    try:
        s.connect((host, port))
        return "connected"
    except OSError as e:
        return type(e).__name__
def resolve():
    try:
        socket.getaddrinfo("example.com", 80)
        return "resolved"
    except OSError as e:
        return type(e).__name__
def udp():
    try:
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b"x", ("8.8.8.8", 53))
        return "sent"
    except OSError as e:
        return type(e).__name__
print(json.dumps({
    "external": attempt("1.1.1.1", 80),
    "metadata": attempt("169.254.169.254", 80),
    "host_loopback": attempt("127.0.0.1", HOST_PORT),
    "dns": resolve(),
    "udp": udp(),
    "interfaces": sorted(l.split(":")[0].strip() for l in open("/proc/net/dev").readlines()[2:]),
}))
"""

UNIX_SOCKET_PROBE = """
import json, socket
def attempt(address):
    s = socket.socket(socket.AF_UNIX)
    try:
        s.connect(address)
        return "connected"
    except OSError as e:
        return type(e).__name__
print(json.dumps({"path": attempt(PATH), "abstract": attempt(ABSTRACT)}))
"""

# /dev inside a sandbox, in both tiers: the usual character devices, nothing else.
SANDBOX_DEV = "core fd full null ptmx pts random shm stderr stdin stdout tty urandom zero".split()


def probe_host_unix_sockets(sandbox: Sandbox, tag: str) -> dict:
    """Listens on a host Unix socket by path and on an abstract one, and reports
    what the sandbox gets when it tries to connect to each."""
    path = f"/tmp/tramontane-{tag}-{os.getpid()}.sock"
    abstract = f"\0tramontane-{tag}-{os.getpid()}"
    servers = []
    for address in (path, abstract):
        server = socket.socket(socket.AF_UNIX)
        server.bind(address)
        server.listen()
        servers.append(server)
    try:
        return py(sandbox, UNIX_SOCKET_PROBE.replace("PATH", repr(path)).replace("ABSTRACT", repr(abstract)))
    finally:
        for server in servers:
            server.close()
        os.unlink(path)
